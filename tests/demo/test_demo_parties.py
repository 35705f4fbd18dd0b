"""``medshare demo``: the story with every party apart, on real processes (its own
module, so that it runs beside the other slow modules on another worker)."""

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
from medshare.server import consortium


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_with_the_parties_apart() -> None:
    """``medshare demo``: hospitals as their own processes and folders, wallets apart;
    every step behaves, the outputs are written, and nothing is left running."""
    try:
        install.binary()
    except install.EngineMissing as exc:
        pytest.fail(f"CometBFT binary missing ({exc}): run `medshare net install`")
    root = Path(tempfile.mkdtemp(prefix="ms-demo-", dir="/tmp"))
    out = root / "out"
    try:
        result = CliRunner().invoke(app, ["demo", "--data-dir", str(out)])
        assert result.exit_code == 0, result.output
        assert "steps behaved as expected" in result.output
        assert "where each party's data lives" in result.output
        log = json.loads((out / "access-log.json").read_text())
        outcomes = {e["resource"]["outcome"] for e in log["entry"]}
        assert outcomes == {"0", "4"}  # successes and refusals are both in the patient's log
        assert (out / "export.ndjson").read_bytes().count(b"\n") > 10
        status = consortium.status(out / "consortium")
        assert not any(h["server_running"] or h["node_running"] for h in status["hospitals"])
    finally:
        with contextlib.suppress(consortium.ConsortiumError, network.NetworkError):
            consortium.down(out / "consortium")
        shutil.rmtree(root, ignore_errors=True)
