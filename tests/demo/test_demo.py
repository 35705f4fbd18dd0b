"""``medshare demo`` runs the whole story and says where its outputs are."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.ledger.cometbft import install, network


@pytest.mark.slow
@pytest.mark.timeout(900)  # the whole story, with every key issued under the authority's proofs
def test_single_directory_demo_succeeds_and_writes_outputs() -> None:
    """The single-directory story runs on CometBFT nodes (a short folder: their Unix
    sockets need one) and stops them at the end."""
    try:
        install.binary()
    except install.EngineMissing as exc:
        pytest.fail(f"CometBFT binary missing ({exc}): run `medshare net install`")
    root = Path(tempfile.mkdtemp(prefix="ms-demo-", dir="/tmp"))
    out = root / "out"
    try:
        result = CliRunner().invoke(app, ["demo", "--single-directory", "--data-dir", str(out)])
        assert result.exit_code == 0, result.output
        assert "steps behaved as expected" in result.output
        assert "FAILED" not in result.output
        log = json.loads((out / "access-log.json").read_text())
        outcomes = {e["resource"]["outcome"] for e in log["entry"]}
        assert outcomes == {"0", "4"}  # successes and refusals are both in the patient's log
        assert (out / "share-daughter.json").exists()
        assert (out / "export.ndjson").read_bytes().count(b"\n") > 10
        net = network.Network.load(out / "data" / "ledger")
        assert not any(network.running(net, i) for i in range(len(net.nodes)))
    finally:
        with contextlib.suppress(network.NetworkError):
            network.down(network.Network.load(out / "data" / "ledger"))
        shutil.rmtree(root, ignore_errors=True)


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
    result = CliRunner().invoke(
        app, ["demo", "--single-directory", "--data-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert "demo failed" in result.output
