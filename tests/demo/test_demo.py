"""``medshare demo`` runs the whole story and says where its outputs are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.cli.main import app


@pytest.mark.slow
def test_demo_succeeds_and_writes_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "steps behaved as expected" in result.output
    assert "FAILED" not in result.output
    log = json.loads((out / "access-log.json").read_text())
    outcomes = {e["resource"]["outcome"] for e in log["entry"]}
    assert outcomes == {"0", "4"}  # successes and refusals are both in the patient's log
    assert (out / "share-daughter.json").exists()
    assert (out / "export.ndjson").read_bytes().count(b"\n") > 10


def test_demo_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not empty" in " ".join(result.output.split())
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_demo_reports_a_failing_step(tmp_path: Path, monkeypatch) -> None:
    """A step that does not behave as expected makes the demo exit non-zero."""
    from medshare import demo

    broken = tuple(
        (name, (lambda story: demo.Outcome(False, "forced")) if name == "consortium" else fn)
        for name, fn in demo.STEPS
    )
    monkeypatch.setattr(demo, "STEPS", broken[:2])
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "demo failed" in result.output
