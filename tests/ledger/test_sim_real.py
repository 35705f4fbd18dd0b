"""One real CometBFT run (4 nodes) gives a calibration row with every field."""

from __future__ import annotations

from pathlib import Path

import pytest

from medshare.bench import ledger
from medshare.ledger.sim import calibration as cal


@pytest.mark.slow
def test_one_real_run_makes_a_calibration_row(tmp_path: Path) -> None:
    run = ledger.measure_run(tmp_path, nodes=4, validators=4, seconds=4.0, idle_seconds=1.0)
    assert run["errors"] == [] and run["committed"] > 0
    for window in ("idle", "window"):
        nodes = run[window]["nodes"]
        assert len(nodes) == 4 and all(n["validator"] for n in nodes)
        assert all(n["counters"].get(cal.HEIGHT, 0) > 0 for n in nodes)
    assert all(n["counters"].get(cal.CHECKTX, 0) > 0 for n in run["window"]["nodes"])
    shares = ledger.shares(ledger.app_profile(txs=20))
    fitted = cal.fit([run], shares)
    (row,) = ledger.calibration_rows([run], fitted, shares, heights=6)
    for key in (
        "measured_tx_per_s",
        "predicted_tx_per_s",
        "tx_per_s_ratio",
        "measured_p50_ms",
        "predicted_p50_ms",
        "p50_ratio",
        "cores_available",
        "measured_block_interval_ms",
        "predicted_block_interval_ms",
    ):
        assert row[key] is not None and row[key] > 0, key
    assert isinstance(row["within_30pct"], bool)
    assert row["within_30pct"] or row["reasons"]
