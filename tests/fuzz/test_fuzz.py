"""The fuzz campaign at CI size (issue 12): every target of :mod:`medshare.bench.fuzz` with a
small budget, its regression examples, and ``medshare bench fuzz`` itself.

The long run (``medshare bench fuzz``, 10,000 inputs per target) shares these targets; here
each gets a few dozen derandomized inputs, so a change that makes a decoder raise an
undocumented exception on common malformations fails CI, and the inputs that once did
stay fixed (``fuzz.REGRESSIONS``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.bench import fuzz
from medshare.bench.fuzz_mutate import fuzz_bytes
from medshare.cli.main import app
from medshare.crypto import encoding
from medshare.crypto.errors import InvalidEncoding

CI_EXAMPLES = 25


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> fuzz.Fixtures:
    with fuzz.Fixtures(tmp_path_factory.mktemp("fuzz")) as fixtures:
        yield fixtures


def _failures(report: dict) -> str:
    return json.dumps(report["failures"], indent=1)


@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_target_keeps_its_contract(fx: fuzz.Fixtures, name: str) -> None:
    report = fuzz.run_target(fuzz.TARGETS[name], fx, CI_EXAMPLES)
    assert report["harness_error"] is None
    assert report["examples"] >= CI_EXAMPLES
    assert not report["failures"], _failures(report)


@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_seeds_are_accepted(fx: fuzz.Fixtures, name: str) -> None:
    """The valid encodings mutations start from pass: a harness that refused everything
    would make every target vacuously green."""
    t = fuzz.TARGETS[name]
    report = fuzz.run_inputs(t, fx, t.seeds(fx))
    assert not report["failures"], _failures(report)
    assert report["accepted"] >= 1


REGRESSIONS = [
    (name, i) for name, examples in fuzz.REGRESSIONS.items() for i in range(len(examples))
]


@pytest.mark.parametrize(("name", "index"), REGRESSIONS)
def test_regression_example(fx: fuzz.Fixtures, name: str, index: int) -> None:
    example = fuzz.regression_inputs(name, fx)[index]
    report = fuzz.run_inputs(fuzz.TARGETS[name], fx, [example])
    assert not report["failures"], _failures(report)
    assert report["examples"] == 1


def test_version_must_be_an_integer() -> None:
    """``true`` and ``1.0`` equal 1 in a set lookup; they are not version 1 (fixed with
    the unhashable-version TypeError)."""
    for version in ("true", "1.0", "[1]", "{}"):
        doc = b'{"format": "medshare", "type": "x", "version": %s}' % version.encode()
        with pytest.raises(InvalidEncoding, match="unsupported version"):
            encoding.loads(doc, "x")


def test_cli_error_is_one_escaped_line(fx: fuzz.Fixtures) -> None:
    """Rich markup and line breaks in quoted input are printed as text, on one line."""
    files = fx.cli_files
    result = CliRunner().invoke(
        app,
        [
            "crypto",
            "kac-extract",
            "--params",
            str(files / "kac/params.json"),
            "--patient",
            str(files / "kac/patient.json"),
            "--classes=[/x]\n[bold]y",
            "--out",
            str(fx.root / "agg.json"),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        'error: --classes must be comma-separated class numbers, got "[/x] [bold]y"'
    )


def test_bench_fuzz_command(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    result = CliRunner().invoke(
        app,
        ["bench", "fuzz", "--examples", "5", "--target", "policy-text", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (row,) = report["targets"]
    assert row["target"] == "policy-text"
    assert row["examples"] >= 5
    assert row["allowed"] == ["InvalidPolicy"]
    assert report["failures"] == 0


def test_bench_fuzz_reports_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash is reported with its input in hex, its exception and where it was raised,
    and the command exits 1."""

    def crash(fx: fuzz.Fixtures, data: bytes) -> None:
        if data:
            {}[data]

    broken = fuzz.Target(
        name="broken",
        area="test",
        summary="raises KeyError",
        allowed=("builtins.ValueError",),
        strategy=lambda fx: fuzz_bytes([b"abc"]),
        call=crash,
        seeds=lambda fx: [b"abc"],
    )
    monkeypatch.setitem(fuzz.TARGETS, "broken", broken)
    out = tmp_path / "fuzz.json"
    result = CliRunner().invoke(
        app, ["bench", "fuzz", "--examples", "10", "--target", "broken", "--json", str(out)]
    )
    assert result.exit_code == 1, result.output
    (row,) = json.loads(out.read_text())["targets"]
    (failure,) = row["failures"]
    assert failure["exception"].startswith("KeyError")
    assert "test_fuzz.py" in failure["traceback"]
    assert bytes.fromhex(failure["input_hex"])
    assert failure["count"] == row["failed_examples"]


def test_fixture_failure_is_one_harness_error(fx: fuzz.Fixtures) -> None:
    """A target whose fixtures cannot be built reports that once, not as a failure of
    every example (a half-edited tree once made 10,000 "failures" of one cause)."""

    def no_fixtures(fx: fuzz.Fixtures) -> list[bytes]:
        raise RuntimeError("cannot build")

    broken = fuzz.Target(
        name="no-fixtures",
        area="test",
        summary="fixtures fail",
        allowed=(),
        strategy=lambda fx: fuzz_bytes(no_fixtures(fx)),
        call=lambda fx, data: None,
        seeds=no_fixtures,
    )
    report = fuzz.run_target(broken, fx, 5)
    assert report["harness_error"] == "fixtures: RuntimeError: cannot build"
    assert report["examples"] == 0
    assert not report["failures"]


def test_bench_fuzz_unknown_target(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "fuzz", "--target", "nope", "--json", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2
    assert "unknown target" in result.output
