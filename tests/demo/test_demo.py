"""``medshare demo`` runs every step and says where its outputs are."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medshare.cli.main import app


def test_demo_succeeds_and_writes_outputs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "steps behaved as expected" in result.output
    assert "FAILED" not in result.output
    registry = json.loads((tmp_path / "out" / "authority" / "registry.json").read_text())
    assert len(registry["keys"]) == 3
    assert (tmp_path / "out" / "patient-share.json").exists()


def test_demo_reports_a_failing_step(tmp_path: Path, monkeypatch) -> None:
    """A step that does not behave as expected makes the demo exit non-zero."""
    from medshare import demo

    broken = tuple(
        (name, (lambda story: demo.Outcome(False, "forced")) if name == "leaked key traced" else fn)
        for name, fn in demo.STEPS
    )
    monkeypatch.setattr(demo, "STEPS", broken)
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "demo failed" in result.output
