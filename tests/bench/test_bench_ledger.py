"""``medshare bench ledger``: calibration rows, the model's curve and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medshare.bench import ledger
from medshare.cli.main import app
from medshare.ledger.sim import calibration as cal
from medshare.ledger.sim.cometbft_model import Costs

CURVE_KEYS = {
    "nodes",
    "validators",
    "mode",
    "block_txs",
    "measured_block_txs",
    "tx_per_s",
    "p50_ms",
    "block_interval_ms",
    "messages_per_block",
    "vote_messages_per_block",
    "bytes_per_block",
    "messages_by_type",
    "cpu_ms_per_block_validator",
    "cpu_ms_per_block_full_node",
    "cpu_ms_per_block_max",
    "cpu_utilisation_max",
    "saturated",
}
CALIBRATION_KEYS = {
    "nodes",
    "validators",
    "mode",
    "cores_available",
    "measured_tx_per_s",
    "predicted_tx_per_s",
    "tx_per_s_ratio",
    "measured_p50_ms",
    "predicted_p50_ms",
    "p50_ratio",
    "loo_predicted_tx_per_s",
    "loo_predicted_p50_ms",
    "within_30pct",
    "reasons",
}


def synthetic_runs() -> list[dict]:
    """Run records shaped like real ones, with CPU made by known costs."""
    rng = np.random.default_rng(5)
    runs = []
    for nodes, validators, tps, p50 in ((4, 4, 300.0, 900.0), (8, 4, 200.0, 1100.0)):
        run = cal.synthetic_run(
            Costs.reference(),
            nodes=nodes,
            validators=validators,
            heights=18,
            txs=tps * 10,
            seconds=10.0,
            rng=rng,
        )
        run.update(tx_per_s=tps, p50_ms=p50, seconds=10.0, machine_cores=2.0)
        runs.append(run)
    return runs


def test_plans() -> None:
    plan = ledger.curve_plan()
    assert {n for n, _, _ in plan} == {16, 32, 64, 128, 256}
    assert {b for _, _, b in plan} == {10, 100, 1000}
    assert (64, 7, 10) in plan and (64, 64, 10) in plan
    assert all(v in (7, n) for n, v, _ in plan)
    assert ledger.QUICK_CALIBRATION == ((4, 4), (8, 4), (8, 8))
    assert set(ledger.CALIBRATION) >= {(16, 4), (16, 16)}


def test_summary_states_the_targets() -> None:
    def row(validators: int, block_txs: int, tps: float, msgs: float, votes: float) -> dict:
        return {"nodes": 64, "validators": validators, "block_txs": block_txs,
                "tx_per_s": tps, "messages_per_block": msgs,
                "vote_messages_per_block": votes}  # fmt: skip

    rows = [row(7, 10, 13.0, 160_000, 85_000), row(64, 10, 12.5, 960_000, 900_000)]
    out = ledger.summary(rows, [{"within_30pct": True}, {"within_30pct": False}])
    assert out["tx_per_s_ratio_7_vs_64_at_10tx"] == 1.04
    assert out["messages_ratio_7_vs_64_at_10tx"] == 6.0
    assert not out["targets"]["tx_per_s_ratio_met"]
    assert not out["targets"]["messages_ratio_met"]
    assert out["targets"]["vote_messages_ratio_met"]  # 900k / 85k ≥ 10
    assert out["calibration_rows_within_30pct"] == 1 and out["calibration_rows"] == 2
    rows[0] = row(7, 10, 65.0, 90_000, 90_000)
    out = ledger.summary(rows, [])
    assert out["targets"]["tx_per_s_ratio_met"] and out["targets"]["messages_ratio_met"]


def test_curve_rows_carry_block_size_messages_and_cpu() -> None:
    rows = ledger.curve(Costs.reference(), True, plan=[(16, 7, 10), (16, 16, 100)])
    assert [(r["nodes"], r["validators"], r["block_txs"]) for r in rows] == [
        (16, 7, 10),
        (16, 16, 100),
    ]
    for r in rows:
        assert set(r) >= CURVE_KEYS, r
        assert r["tx_per_s"] > 0 and r["messages_per_block"] > r["vote_messages_per_block"] > 0
    assert rows[0]["cpu_ms_per_block_full_node"] is not None
    assert rows[1]["cpu_ms_per_block_full_node"] is None  # every node validates
    again = ledger.curve(Costs.reference(), True, plan=[(16, 7, 10)])
    assert {k: v for k, v in again[0].items() if k != "wall_s"} == {
        k: v for k, v in rows[0].items() if k != "wall_s"
    }


def test_calibration_rows_from_runs() -> None:
    runs = synthetic_runs()
    shares = cal.AppShares(150.0, 1.0, 8.0, 5.0)
    fitted = cal.fit(runs, shares)
    rows = ledger.calibration_rows(runs, fitted, shares, heights=6)
    assert len(rows) == 2
    for row in rows:
        assert set(row) >= CALIBRATION_KEYS, row
        assert row["predicted_tx_per_s"] > 0
        assert row["within_30pct"] == (
            abs(row["tx_per_s_ratio"] - 1) <= 0.3 and abs(row["p50_ratio"] - 1) <= 0.3
        )
        assert row["within_30pct"] or row["reasons"]


def test_app_profile_splits_the_app_cost() -> None:
    profile = ledger.app_profile(txs=40)
    assert set(profile) == {"checktx", "prepare", "process", "finalize", "recheck", "empty_height"}
    assert all(v >= 0 for v in profile.values())
    # the first CheckTx verifies a signature; the re-check of the same bytes does not
    assert profile["checktx"] > profile["recheck"]


@pytest.mark.slow
def test_bench_ledger_fits_earlier_runs_and_writes_report_and_plot(tmp_path: Path) -> None:
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(synthetic_runs()))
    out, plot = tmp_path / "ledger.json", tmp_path / "ledger.png"
    result = CliRunner().invoke(
        app,
        ["bench", "ledger", "--quick", "--no-real", "--calibration-runs", str(runs),
         "--nodes", "64,16", "--json", str(out), "--plot", str(plot)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "within ±30 %" in text and "(target ≥ 5.0×:" in text
    assert set(report["calibration"]["fit"]["costs_us"]) >= set(cal.GO_FEATURES)
    assert len(report["calibration"]["rows"]) == 2
    assert {(r["nodes"], r["validators"], r["block_txs"]) for r in report["curve"]} == set(
        ledger.curve_plan((16, 64))
    )
    assert report["summary"]["tx_per_s_ratio_7_vs_64_at_10tx"] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("nodes", ["", "16,x", "4,64", "64,2000"])
def test_bench_ledger_refuses_a_bad_node_list(tmp_path: Path, nodes: str) -> None:
    result = CliRunner().invoke(
        app, ["bench", "ledger", "--no-real", "--nodes", nodes, "--json", str(tmp_path / "o.json")]
    )
    assert result.exit_code == 2, result.output
    assert "--nodes" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.json").exists()
