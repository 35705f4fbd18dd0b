"""``medshare demo``: its folder is the user's choice and never overwritten; a step that
misbehaves makes it exit non-zero."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medshare.cli.main import app


def test_demo_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not empty" in " ".join(result.output.split())
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_demo_reports_a_failing_step(tmp_path: Path, monkeypatch) -> None:
    """A step that does not behave as expected makes the demo exit non-zero (the first
    step failing, nothing was started and the story stops there)."""
    from medshare import demo_parties
    from medshare.demo_steps import Outcome

    forced = (("separate hospitals", lambda story: Outcome(False, "forced")),)
    monkeypatch.setattr(demo_parties, "STEPS", forced + demo_parties.STEPS[1:])
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "demo failed" in result.output
    assert not (tmp_path / "out" / "consortium").exists()
