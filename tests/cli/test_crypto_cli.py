"""The ``medshare crypto`` commands, run through Typer's CliRunner on real files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medshare.cli.main import app

RECORD = b'{"resourceType": "Observation", "id": "o1", "status": "final"}'
POLICY = "hospital:H001 and dept:0304 and role:physician"


def crypto(command: str, **options: object) -> Result:
    """``medshare crypto COMMAND --opt value …``; ``in_`` → ``--in``, ``class_`` → ``--class``."""
    args = ["crypto", command]
    for name, value in options.items():
        args += [f"--{name.rstrip('_').replace('_', '-')}", str(value)]
    return CliRunner().invoke(app, args, catch_exceptions=False)


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output


def assert_fails(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("auth")
    assert_ok(crypto("abe-setup", out=directory))
    for who, attrs in (
        ("alice", "hospital:H001,dept:0304,role:physician"),
        ("bob", "hospital:H001,dept:0304,role:nurse"),
    ):
        assert_ok(
            crypto(
                "abe-keygen",
                authority=directory,
                id=who,
                attrs=attrs,
                out=directory / f"{who}.json",
            )
        )
    (directory / "record.json").write_bytes(RECORD)
    return directory


@pytest.fixture(scope="module")
def sealed(authority: Path) -> Path:
    out = authority / "record.ct"
    assert_ok(
        crypto(
            "abe-encrypt",
            public=authority / "public.json",
            policy=POLICY,
            in_=authority / "record.json",
            out=out,
        )
    )
    return out


def abe_decrypt(authority: Path, key: Path, ct: Path, out: Path) -> Result:
    return crypto("abe-decrypt", public=authority / "public.json", key=key, in_=ct, out=out)


def abe_trace(authority: Path, key: Path) -> dict:
    result = crypto("abe-trace", authority=authority, key=key)
    assert_ok(result)
    return json.loads(result.stdout)


def test_abe_setup_writes_secret_master_and_registry(authority: Path) -> None:
    assert stat.S_IMODE((authority / "master.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((authority / "alice.json").stat().st_mode) == 0o600
    registry = json.loads((authority / "registry.json").read_text())
    assert [row["identity"] for row in registry["keys"]] == ["alice", "bob"]
    assert json.loads((authority / "public.json").read_text())["type"] == "abe-public-key"


def test_abe_setup_refuses_to_overwrite(authority: Path) -> None:
    assert_fails(crypto("abe-setup", out=authority), 2, "refusing to overwrite")


def test_abe_round_trip_for_allowed_key(authority: Path, sealed: Path) -> None:
    out = authority / "alice.out"
    assert_ok(abe_decrypt(authority, authority / "alice.json", sealed, out))
    assert out.read_bytes() == RECORD


def test_abe_decrypt_denied_with_clear_message(authority: Path, sealed: Path) -> None:
    out = authority / "bob.out"
    assert_fails(abe_decrypt(authority, authority / "bob.json", sealed, out), 1, "not allowed")
    assert not out.exists()


def test_abe_decrypt_tampered_ciphertext(authority: Path, sealed: Path) -> None:
    doc = json.loads(sealed.read_text())
    text = doc["sealed"]
    doc["sealed"] = text[:5] + ("A" if text[5] != "A" else "B") + text[6:]
    bad = authority / "tampered.ct"
    bad.write_text(json.dumps(doc))
    result = abe_decrypt(authority, authority / "alice.json", bad, authority / "t.out")
    assert_fails(result, 1, "not allowed")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"format": "medshare", "type": "kac-ciphertext", "version": 1}', "expected a abe-user"),
        (b'{"format": "medshare", "type": "abe-user-key", "version": 9}', "unsupported version 9"),
        (b'{"format": "medshare", "type": "abe-user-key", "version": 1}', "missing field"),
    ],
)
def test_abe_decrypt_bad_key_file(
    authority: Path, sealed: Path, content: bytes, message: str
) -> None:
    bad = authority / "bad-key.json"
    bad.write_bytes(content)
    assert_fails(abe_decrypt(authority, bad, sealed, authority / "x.out"), 2, message)


def test_abe_decrypt_truncated_key_file(authority: Path, sealed: Path) -> None:
    data = (authority / "alice.json").read_bytes()
    bad = authority / "truncated.json"
    bad.write_bytes(data[: len(data) // 2])
    assert_fails(abe_decrypt(authority, bad, sealed, authority / "x.out"), 2, "invalid input")


def test_abe_encrypt_bad_policy_names_position(authority: Path) -> None:
    result = crypto(
        "abe-encrypt",
        public=authority / "public.json",
        policy="a and (b or",
        in_=authority / "record.json",
        out=authority / "p.ct",
    )
    assert_fails(result, 2, "position")


def test_missing_file_is_a_clear_error(authority: Path) -> None:
    result = crypto(
        "abe-encrypt",
        public=authority / "nope.json",
        policy="a",
        in_=authority / "record.json",
        out=authority / "p.ct",
    )
    assert_fails(result, 2, "no such file")


def test_abe_keygen_without_attributes(authority: Path) -> None:
    result = crypto(
        "abe-keygen", authority=authority, id="eve", attrs=" , ", out=authority / "eve.json"
    )
    assert_fails(result, 2, "--attrs")
    assert not (authority / "eve.json").exists()


def test_trace_leaked_key_names_its_holder(authority: Path) -> None:
    verdict = abe_trace(authority, authority / "bob.json")
    assert verdict["verdict"] == "user"
    assert verdict["identity"] == "bob"
    assert set(verdict) == {"verdict", "identity", "reason"}


def test_trace_authority_forged_key(authority: Path) -> None:
    from medshare.crypto import abe, group, issuance

    keys = issuance.AuthorityKeys.from_bytes((authority / "master.json").read_bytes())
    forged = abe.keygen(keys.master, group.random_scalar(), ["hospital:H001", "dept:0304"])
    path = authority / "forged.json"
    path.write_bytes(forged.to_bytes())
    verdict = abe_trace(authority, path)
    assert verdict == {"verdict": "authority", "identity": None, "reason": verdict["reason"]}


def test_trace_laundered_key_is_malformed_not_another_user(authority: Path) -> None:
    doc = json.loads((authority / "alice.json").read_text())
    doc["k_prime"] = json.loads((authority / "bob.json").read_text())["k_prime"]
    path = authority / "laundered.json"
    path.write_text(json.dumps(doc))
    verdict = abe_trace(authority, path)
    assert verdict["verdict"] == "malformed"
    assert verdict["identity"] is None


def test_trace_garbage_file_is_malformed(authority: Path) -> None:
    path = authority / "garbage.json"
    path.write_bytes(b"\x00\x01not json")
    assert abe_trace(authority, path)["verdict"] == "malformed"


@pytest.fixture(scope="module")
def kac_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kac")
    params = directory / "params.json"
    assert_ok(crypto("kac-setup", classes=16, out=directory))
    assert_ok(crypto("kac-keygen", params=params, out=directory / "patient.json"))
    assert (directory / "patient.pub.json").exists()
    plain = directory / "rec.json"
    plain.write_bytes(RECORD)
    for cls in (1, 5, 9):
        assert_ok(
            crypto(
                "kac-encrypt",
                params=params,
                patient=directory / "patient.pub.json",
                class_=cls,
                in_=plain,
                out=directory / f"rec{cls}.ct",
            )
        )
    assert_ok(
        crypto(
            "kac-extract",
            params=params,
            patient=directory / "patient.json",
            classes="1,5",
            out=directory / "agg.json",
        )
    )
    return directory


def kac_decrypt(directory: Path, key: Path, ct: Path, out: Path) -> Result:
    return crypto("kac-decrypt", params=directory / "params.json", key=key, in_=ct, out=out)


@pytest.mark.parametrize(("cls", "code"), [(1, 0), (5, 0), (9, 1)])
def test_kac_decrypt_members_only(kac_dir: Path, cls: int, code: int) -> None:
    out = kac_dir / f"rec{cls}.out"
    result = kac_decrypt(kac_dir, kac_dir / "agg.json", kac_dir / f"rec{cls}.ct", out)
    if code == 0:
        assert_ok(result)
        assert out.read_bytes() == RECORD
    else:
        assert_fails(result, 1, "not allowed")
        assert not out.exists()


def test_kac_key_is_96_bytes_and_secret(kac_dir: Path) -> None:
    from medshare.crypto import kac

    key = kac.AggregateKey.from_bytes((kac_dir / "agg.json").read_bytes())
    assert len(key.key_bytes()) == 96
    assert stat.S_IMODE((kac_dir / "patient.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((kac_dir / "agg.json").stat().st_mode) == 0o600


def test_kac_wrong_file_type_is_clear(kac_dir: Path) -> None:
    result = kac_decrypt(kac_dir, kac_dir / "patient.pub.json", kac_dir / "rec1.ct", kac_dir / "w")
    assert_fails(result, 2, "kac-aggregate-key")


@pytest.mark.parametrize(("classes", "message"), [("1,x", "--classes"), ("99", "99")])
def test_kac_extract_bad_classes(kac_dir: Path, classes: str, message: str) -> None:
    result = crypto(
        "kac-extract",
        params=kac_dir / "params.json",
        patient=kac_dir / "patient.json",
        classes=classes,
        out=kac_dir / "b.json",
    )
    assert_fails(result, 2, message)
    assert not (kac_dir / "b.json").exists()


def test_kac_setup_rejects_bad_class_count(tmp_path: Path) -> None:
    assert_fails(crypto("kac-setup", classes=0, out=tmp_path), 2, "n")
    assert not (tmp_path / "params.json").exists()


def test_keygen_saves_the_identity_key_and_trace_checks_it(authority: Path) -> None:
    identity = json.loads((authority / "bob.identity.json").read_text())
    assert identity["type"] == "identity-key"
    assert stat.S_IMODE((authority / "bob.identity.json").stat().st_mode) == 0o600
    trusted = authority / "identities.json"
    trusted.write_text(json.dumps({"bob": identity["public"]}))
    result = crypto(
        "abe-trace", authority=authority, key=authority / "bob.json", identities=trusted
    )
    assert_ok(result)
    assert json.loads(result.stdout)["identity"] == "bob"
    trusted.write_text(json.dumps({"bob": "00" * 32}))  # the ledger says bob's key is another
    result = crypto(
        "abe-trace", authority=authority, key=authority / "bob.json", identities=trusted
    )
    assert json.loads(result.stdout)["verdict"] == "authority"
    trusted.write_text("[1, 2]")
    result = crypto(
        "abe-trace", authority=authority, key=authority / "bob.json", identities=trusted
    )
    assert_fails(result, 2, "must be a JSON object")


# --- every loader checks the public key / parameters before using them -----------------------


@pytest.fixture(scope="module")
def bad_authority(authority: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``authority`` whose public.json and master.json carry a public key with
    mismatched G1/G2 copies (``AbePublicKey.check`` refuses it)."""
    import dataclasses
    import shutil

    from medshare.crypto import issuance

    directory = tmp_path_factory.mktemp("bad-auth")
    shutil.copytree(authority, directory, dirs_exist_ok=True)
    keys = issuance.AuthorityKeys.from_bytes((authority / "master.json").read_bytes())
    bad = dataclasses.replace(keys.master.public, w2=keys.master.public.v2)
    (directory / "public.json").write_bytes(bad.to_bytes())
    master = dataclasses.replace(keys, master=dataclasses.replace(keys.master, public=bad))
    (directory / "master.json").write_bytes(master.to_bytes())
    return directory


def test_every_abe_loader_refuses_an_inconsistent_public_key(
    bad_authority: Path, sealed: Path
) -> None:
    d = bad_authority
    before = sorted(p.name for p in d.iterdir())
    registry = (d / "registry.json").read_bytes()
    runs = {
        "abe-encrypt": crypto(
            "abe-encrypt",
            public=d / "public.json",
            policy=POLICY,
            in_=d / "record.json",
            out=d / "new.ct",
        ),
        "abe-decrypt": abe_decrypt(d, d / "alice.json", sealed, d / "refused.out"),
        "abe-trace": crypto("abe-trace", authority=d, key=d / "bob.json"),
        "abe-keygen": crypto(
            "abe-keygen", authority=d, id="carol", attrs="a", out=d / "carol.json"
        ),
    }
    for command, result in runs.items():
        assert result.exit_code == 2, (command, result.output)
        assert "not a well-formed ABE public key" in result.output, command
        assert "Traceback" not in result.output, command
        assert len(result.output.strip().splitlines()) == 1, (command, result.output)
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written
    assert (d / "registry.json").read_bytes() == registry


@pytest.fixture(scope="module")
def bad_params(kac_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kac_dir``'s params.json with two G2 powers swapped (``KacParams.verify`` refuses it)."""
    import dataclasses

    from medshare.crypto import kac

    params = kac.KacParams.from_bytes((kac_dir / "params.json").read_bytes())
    g2 = params.g2_powers
    bad = dataclasses.replace(params, g2_powers=(g2[1], g2[0], *g2[2:]))
    path = tmp_path_factory.mktemp("bad-kac") / "params.json"
    path.write_bytes(bad.to_bytes())
    return path


def test_every_kac_loader_refuses_unverified_parameters(kac_dir: Path, bad_params: Path) -> None:
    d, out = kac_dir, bad_params.parent
    runs = {
        "kac-keygen": crypto("kac-keygen", params=bad_params, out=out / "patient.json"),
        "kac-encrypt": crypto(
            "kac-encrypt",
            params=bad_params,
            patient=d / "patient.pub.json",
            class_=1,
            in_=d / "rec.json",
            out=out / "rec.ct",
        ),
        "kac-extract": crypto(
            "kac-extract",
            params=bad_params,
            patient=d / "patient.json",
            classes="1",
            out=out / "agg.json",
        ),
        "kac-decrypt": crypto(
            "kac-decrypt",
            params=bad_params,
            key=d / "agg.json",
            in_=d / "rec1.ct",
            out=out / "rec1.out",
        ),
    }
    for command, result in runs.items():
        assert result.exit_code == 2, (command, result.output)
        assert "not well-formed KAC parameters" in result.output, command
        assert "Traceback" not in result.output, command
        assert len(result.output.strip().splitlines()) == 1, (command, result.output)
    assert sorted(p.name for p in out.iterdir()) == ["params.json"]
