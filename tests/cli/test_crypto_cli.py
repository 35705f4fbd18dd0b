"""The ``medshare crypto`` commands, run through Typer's CliRunner on real files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.cli.main import app

RECORD = b'{"resourceType": "Observation", "id": "o1", "status": "final"}'


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def authority(runner: CliRunner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("auth")
    result = run(runner, "crypto", "abe-setup", "--out", directory)
    assert result.exit_code == 0, result.output
    for who, attrs in (
        ("alice", "hospital:H001,dept:0304,role:physician"),
        ("bob", "hospital:H001,dept:0304,role:nurse"),
    ):
        result = run(
            runner,
            "crypto",
            "abe-keygen",
            "--authority",
            directory,
            "--id",
            who,
            "--attrs",
            attrs,
            "--out",
            directory / f"{who}.json",
        )
        assert result.exit_code == 0, result.output
    return directory


@pytest.fixture(scope="module")
def sealed(runner: CliRunner, authority: Path) -> Path:
    plain = authority / "record.json"
    plain.write_bytes(RECORD)
    result = run(
        runner,
        "crypto",
        "abe-encrypt",
        "--public",
        authority / "public.json",
        "--policy",
        "hospital:H001 and dept:0304 and role:physician",
        "--in",
        plain,
        "--out",
        authority / "record.ct",
    )
    assert result.exit_code == 0, result.output
    return authority / "record.ct"


def test_abe_setup_writes_secret_master_and_empty_registry(authority: Path) -> None:
    assert stat.S_IMODE((authority / "master.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((authority / "alice.json").stat().st_mode) == 0o600
    registry = json.loads((authority / "registry.json").read_text())
    assert [row["identity"] for row in registry["keys"]] == ["alice", "bob"]
    assert json.loads((authority / "public.json").read_text())["type"] == "abe-public-key"


def test_abe_setup_refuses_to_overwrite(runner: CliRunner, authority: Path) -> None:
    result = run(runner, "crypto", "abe-setup", "--out", authority)
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.output


def test_abe_round_trip_for_allowed_key(runner: CliRunner, authority: Path, sealed: Path) -> None:
    out = authority / "alice.out"
    result = run(
        runner,
        "crypto",
        "abe-decrypt",
        "--public",
        authority / "public.json",
        "--key",
        authority / "alice.json",
        "--in",
        sealed,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == RECORD


def test_abe_decrypt_denied_with_clear_message(
    runner: CliRunner, authority: Path, sealed: Path
) -> None:
    out = authority / "bob.out"
    result = run(
        runner,
        "crypto",
        "abe-decrypt",
        "--public",
        authority / "public.json",
        "--key",
        authority / "bob.json",
        "--in",
        sealed,
        "--out",
        out,
    )
    assert result.exit_code == 1
    assert "not allowed" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_abe_decrypt_tampered_ciphertext(runner: CliRunner, authority: Path, sealed: Path) -> None:
    doc = json.loads(sealed.read_text())
    sealed_field = doc["sealed"]
    doc["sealed"] = ("A" if sealed_field[5] != "A" else "B").join(
        (sealed_field[:5], sealed_field[6:])
    )
    bad = authority / "tampered.ct"
    bad.write_text(json.dumps(doc))
    result = run(
        runner,
        "crypto",
        "abe-decrypt",
        "--public",
        authority / "public.json",
        "--key",
        authority / "alice.json",
        "--in",
        bad,
        "--out",
        authority / "t.out",
    )
    assert result.exit_code == 1
    assert "not allowed" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not valid JSON"),
        (
            b'{"format": "medshare", "type": "kac-ciphertext", "version": 1}',
            "expected a abe-user-key",
        ),
        (b'{"format": "medshare", "type": "abe-user-key", "version": 9}', "unsupported version 9"),
        (b'{"format": "medshare", "type": "abe-user-key", "version": 1}', "missing field"),
    ],
)
def test_abe_decrypt_bad_key_file(
    runner: CliRunner, authority: Path, sealed: Path, content: bytes, message: str
) -> None:
    bad = authority / "bad-key.json"
    bad.write_bytes(content)
    result = run(
        runner,
        "crypto",
        "abe-decrypt",
        "--public",
        authority / "public.json",
        "--key",
        bad,
        "--in",
        sealed,
        "--out",
        authority / "x.out",
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_abe_decrypt_truncated_key_file(runner: CliRunner, authority: Path, sealed: Path) -> None:
    data = (authority / "alice.json").read_bytes()
    bad = authority / "truncated.json"
    bad.write_bytes(data[: len(data) // 2])
    result = run(
        runner,
        "crypto",
        "abe-decrypt",
        "--public",
        authority / "public.json",
        "--key",
        bad,
        "--in",
        sealed,
        "--out",
        authority / "x.out",
    )
    assert result.exit_code == 2
    assert "invalid input" in result.output


def test_abe_encrypt_bad_policy_names_position(runner: CliRunner, authority: Path) -> None:
    result = run(
        runner,
        "crypto",
        "abe-encrypt",
        "--public",
        authority / "public.json",
        "--policy",
        "a and (b or",
        "--in",
        authority / "record.json",
        "--out",
        authority / "p.ct",
    )
    assert result.exit_code == 2
    assert "position" in result.output


def test_missing_file_is_a_clear_error(runner: CliRunner, authority: Path) -> None:
    result = run(
        runner,
        "crypto",
        "abe-encrypt",
        "--public",
        authority / "nope.json",
        "--policy",
        "a",
        "--in",
        authority / "record.json",
        "--out",
        authority / "p.ct",
    )
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_trace_leaked_key_names_its_holder(runner: CliRunner, authority: Path) -> None:
    result = run(
        runner, "crypto", "abe-trace", "--authority", authority, "--key", authority / "bob.json"
    )
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "user"
    assert verdict["identity"] == "bob"
    assert set(verdict) == {"verdict", "identity", "reason"}


def test_trace_authority_forged_key(runner: CliRunner, authority: Path) -> None:
    from medshare.crypto import abe, group, issuance

    keys = issuance.AuthorityKeys.from_bytes((authority / "master.json").read_bytes())
    forged = abe.keygen(keys.master, group.random_scalar(), ["hospital:H001", "dept:0304"])
    path = authority / "forged.json"
    path.write_bytes(forged.to_bytes())
    result = run(runner, "crypto", "abe-trace", "--authority", authority, "--key", path)
    verdict = json.loads(result.stdout)
    assert verdict == {"verdict": "authority", "identity": None, "reason": verdict["reason"]}


def test_trace_altered_key_is_malformed_not_another_user(
    runner: CliRunner, authority: Path
) -> None:
    doc = json.loads((authority / "alice.json").read_text())
    bob = json.loads((authority / "bob.json").read_text())
    doc["k_prime"] = bob["k_prime"]  # launder alice's key into bob's identity value
    path = authority / "laundered.json"
    path.write_text(json.dumps(doc))
    result = run(runner, "crypto", "abe-trace", "--authority", authority, "--key", path)
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "malformed"
    assert verdict["identity"] is None


def test_trace_garbage_file_is_malformed(runner: CliRunner, authority: Path) -> None:
    path = authority / "garbage.json"
    path.write_bytes(b"\x00\x01not json")
    result = run(runner, "crypto", "abe-trace", "--authority", authority, "--key", path)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["verdict"] == "malformed"


@pytest.fixture(scope="module")
def kac_dir(runner: CliRunner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kac")
    assert run(runner, "crypto", "kac-setup", "--classes", "16", "--out", directory).exit_code == 0
    result = run(
        runner,
        "crypto",
        "kac-keygen",
        "--params",
        directory / "params.json",
        "--out",
        directory / "patient.json",
    )
    assert result.exit_code == 0, result.output
    assert (directory / "patient.pub.json").exists()
    plain = directory / "rec.json"
    plain.write_bytes(RECORD)
    for cls in (1, 5, 9):
        result = run(
            runner,
            "crypto",
            "kac-encrypt",
            "--params",
            directory / "params.json",
            "--patient",
            directory / "patient.pub.json",
            "--class",
            str(cls),
            "--in",
            plain,
            "--out",
            directory / f"rec{cls}.ct",
        )
        assert result.exit_code == 0, result.output
    result = run(
        runner,
        "crypto",
        "kac-extract",
        "--params",
        directory / "params.json",
        "--patient",
        directory / "patient.json",
        "--classes",
        "1,5",
        "--out",
        directory / "agg.json",
    )
    assert result.exit_code == 0, result.output
    return directory


@pytest.mark.parametrize(("cls", "code"), [(1, 0), (5, 0), (9, 1)])
def test_kac_decrypt_members_only(runner: CliRunner, kac_dir: Path, cls: int, code: int) -> None:
    out = kac_dir / f"rec{cls}.out"
    result = run(
        runner,
        "crypto",
        "kac-decrypt",
        "--params",
        kac_dir / "params.json",
        "--key",
        kac_dir / "agg.json",
        "--in",
        kac_dir / f"rec{cls}.ct",
        "--out",
        out,
    )
    assert result.exit_code == code, result.output
    if code == 0:
        assert out.read_bytes() == RECORD
    else:
        assert "not allowed" in result.output
        assert not out.exists()


def test_kac_key_is_96_bytes_and_secret(kac_dir: Path) -> None:
    from medshare.crypto import kac

    key = kac.AggregateKey.from_bytes((kac_dir / "agg.json").read_bytes())
    assert len(key.key_bytes()) == 96
    assert stat.S_IMODE((kac_dir / "patient.json").stat().st_mode) == 0o600


def test_kac_wrong_file_type_is_clear(runner: CliRunner, kac_dir: Path) -> None:
    result = run(
        runner,
        "crypto",
        "kac-decrypt",
        "--params",
        kac_dir / "params.json",
        "--key",
        kac_dir / "patient.pub.json",
        "--in",
        kac_dir / "rec1.ct",
        "--out",
        kac_dir / "w",
    )
    assert result.exit_code == 2
    assert "kac-aggregate-key" in result.output


def test_kac_extract_bad_classes(runner: CliRunner, kac_dir: Path) -> None:
    result = run(
        runner,
        "crypto",
        "kac-extract",
        "--params",
        kac_dir / "params.json",
        "--patient",
        kac_dir / "patient.json",
        "--classes",
        "1,x",
        "--out",
        kac_dir / "b.json",
    )
    assert result.exit_code == 2
    assert "--classes" in result.output
    result = run(
        runner,
        "crypto",
        "kac-extract",
        "--params",
        kac_dir / "params.json",
        "--patient",
        kac_dir / "patient.json",
        "--classes",
        "99",
        "--out",
        kac_dir / "b.json",
    )
    assert result.exit_code == 2
    assert "99" in result.output
