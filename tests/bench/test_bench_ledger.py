"""``medshare bench ledger --quick`` writes the report the DESIGN asks for, and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.bench.ledger import EPOCH_LENGTH, KEY_NODES, SEED, Plan, summary
from medshare.cli.main import app
from medshare.ledger.sim import CostModel
from medshare.ledger.sim.runner import INSTITUTION_LINKS, Scenario
from medshare.ledger.sim.runner import run as simulate

ROW_KEYS = {
    "mode",
    "nodes",
    "committee",
    "block_txs",
    "tps",
    "latency_ms",
    "messages_per_block",
    "bytes_per_block",
    "uplink_max",
    "ceiling_tps",
}


def test_quick_plan_always_holds_the_key_comparison() -> None:
    plan = Plan.for_mode(quick=True)
    assert plan.nodes == (4, 16, 32, 64)
    for nodes in plan.nodes:
        assert 10 in plan.block_sizes(nodes)
    assert plan.block_sizes(64) == (10, 100, 1000)
    assert plan.committees(64) == (4, 7, 64)
    assert plan.committees(4) == (4,)  # m = 4 at N = 4 is the all-node run
    assert plan.pipelined() == [(64, 7), (64, 64)]  # 7 of 64 vs all 64, heights overlapping
    full = Plan.for_mode(quick=False)
    assert full.nodes[-2:] == (128, 256)
    assert all(full.block_sizes(n) == (10, 100, 1000) for n in full.nodes)
    assert (64, 4) in full.pipelined() and (16, 16) in full.pipelined()


def test_summary_ratios() -> None:
    rows = [
        {"mode": "committee", "nodes": 64, "committee": 7, "block_txs": 10, "tps": 500.0,
         "messages_per_block": 300.0, "ceiling_tps": 3600.0},
        {"mode": "all-node", "nodes": 64, "committee": 64, "block_txs": 10, "tps": 100.0,
         "messages_per_block": 8100.0, "ceiling_tps": 600.0},
    ]  # fmt: skip
    out = summary(rows)
    assert out["committee7_vs_all_at_64_tps_ratio"] == 5.0
    assert out["messages_ratio_at_64"] == 27.0
    assert out["targets"]["tps_ratio_met"] and out["targets"]["messages_ratio_met"]
    assert out["tps_ratio_at_64_by_block_txs"] == {"10": 5.0}
    assert out["ceiling_tps_ratio_at_64_by_block_txs"] == {"10": 6.0}


def test_summary_compares_pipelined_rows_at_their_steady_rate() -> None:
    def row(mode: str, committee: int, how: str, tps: float, steady: float, msgs: float):
        return {"mode": mode, "nodes": 64, "committee": committee, "block_txs": 10,
                "consensus": how, "tps": tps, "steady_tps": steady,
                "messages_per_block": msgs, "ceiling_tps": 1.0}  # fmt: skip

    rows = [
        row("committee", 7, "sequential", 66.0, 66.0, 300.0),
        row("all-node", 64, "sequential", 60.0, 60.0, 8100.0),
        row("committee", 7, "pipelined", 3000.0, 4000.0, 200.0),
        row("all-node", 64, "pipelined", 400.0, 640.0, 9000.0),
    ]
    out = summary(rows)
    assert out["committee7_vs_all_at_64_tps_ratio"] == 1.1  # one height at a time
    assert out["pipelined_at_64"]["tps_ratio"] == 6.25  # steady rates, not whole-run ones
    assert out["pipelined_at_64"]["messages_ratio"] == 45.0
    assert out["best_tps_ratio_at_64"] == 6.25 and out["targets"]["tps_ratio_met"]
    rows[2] = row("committee", 7, "pipelined", 2000.0, 2560.0, 200.0)  # 4.0x
    out = summary(rows)
    assert out["best_tps_ratio_at_64"] == 4.0 and not out["targets"]["tps_ratio_met"]
    assert summary(rows[:2])["pipelined_at_64"] is None  # no pipelined rows: sequential only


@pytest.mark.slow
def test_bench_ledger_quick_report_shape(tmp_path: Path) -> None:
    out, plot = tmp_path / "ledger.json", tmp_path / "ledger.png"
    result = CliRunner().invoke(
        app, ["bench", "ledger", "--quick", "--json", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    costs = report["costs"]
    for name in ("verify_us", "sign_us", "hash_us_per_kb", "per_message_us"):
        assert costs[name] > 0
    assert "calibrated costs" in result.output  # printed with the results
    assert "with heights overlapping (target ≥ 5.0×" in result.output
    assert report["links"]["latency_ms_min"] == 5.0 and report["links"]["latency_ms_max"] == 80.0
    rows = report["sim"]
    for row in rows:
        assert set(row) >= ROW_KEYS, row
        assert row["safe"] and row["tps"] > 0 and row["blocks"] == row["blocks_requested"], row
    silent = {(r["mode"], r["committee"]): r for r in rows if r["faults"] == "f_silent"}
    assert set(silent) == {("committee", 7), ("all-node", 64)}
    assert (
        silent[("committee", 7)]["byzantine"] == 2 and silent[("all-node", 64)]["byzantine"] == 21
    )
    assert report["summary"]["tps_ratio_at_64_with_f_silent"] == pytest.approx(
        silent[("committee", 7)]["tps"] / silent[("all-node", 64)]["tps"], rel=0.01
    )
    piped = {r["mode"]: r for r in rows if r["consensus"] == "pipelined"}
    assert set(piped) == {"committee", "all-node"}
    for r in piped.values():
        assert (r["nodes"], r["block_txs"], r["certificate_lag"]) == (64, 10, 128), r
    assert report["summary"]["pipelined_at_64"]["tps_ratio"] == pytest.approx(
        piped["committee"]["steady_tps"] / piped["all-node"]["steady_tps"], rel=0.01
    )
    rows = [r for r in rows if r["faults"] == "none" and r["consensus"] == "sequential"]
    index = {(r["mode"], r["nodes"], r["committee"], r["block_txs"]) for r in rows}
    for nodes in (4, 16, 32, 64):
        assert ("all-node", nodes, nodes, 10) in index
    for block_txs in (10, 100, 1000):
        assert ("committee", 64, 7, block_txs) in index
        assert ("all-node", 64, 64, block_txs) in index
    by_key = {(r["mode"], r["nodes"], r["committee"], r["block_txs"]): r for r in rows}
    small, full = by_key[("committee", 64, 7, 10)], by_key[("all-node", 64, 64, 10)]
    summary_ = report["summary"]
    assert summary_["committee7_vs_all_at_64_tps_ratio"] == pytest.approx(
        small["tps"] / full["tps"], rel=0.01
    )
    assert summary_["messages_ratio_at_64"] == pytest.approx(
        full["messages_per_block"] / small["messages_per_block"], rel=0.01
    )
    assert summary_["messages_ratio_at_64"] >= 10  # O(N²) vs O(m² + N)
    local = report["inprocess"]
    assert {"nodes", "tps", "txs", "block_txs"} <= set(local)
    assert local["nodes"] == 4 and local["txs"] == 5000 and local["tps"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "costs",
    [
        pytest.param(CostModel(100.0, 30.0, 0.57), id="verify100"),
        pytest.param(CostModel(140.0, 42.0, 0.5), id="verify140"),
    ],
)
def test_key_committee_row_commits_every_block(costs: CostModel) -> None:
    """Regression: at these calibrated-like costs the quick plan's committee-7-of-64,
    1,000-tx row (as :func:`sim_rows` builds it) committed 4 of 5 heights. Non-members at
    the end of a proposer's fan-out fall behind; some are in the next epoch's committee,
    and their catch-up stalled: a sync retry armed at an older height gave up once they
    had advanced part of the way, and proposals and votes that reached them while far
    behind were marked seen, so the regossiped copies were dropped after catching up."""
    plan = Plan.for_mode(quick=True)
    scenario = Scenario(
        seed=SEED,
        nodes=KEY_NODES,
        committee=7,
        epoch_length=EPOCH_LENGTH,
        block_txs=1000,
        blocks=plan.blocks(KEY_NODES, 1000),
        links=INSTITUTION_LINKS,
        costs=costs,
    )
    report = simulate(scenario)
    context = f"{costs} {report.honest_heights} {dict(report.messages_by_kind)}"
    assert report.safe, context
    assert report.committed_blocks == scenario.blocks, context


def test_uplink_time_is_counted_per_sender() -> None:
    """A 1 Mbit/s uplink sending 125,000 bytes is busy 1 s; the receiver's is not."""
    from medshare.ledger.sim.network import LinkModel, Simulator

    links = LinkModel(latency_ms_min=10.0, latency_ms_max=10.0, bandwidth_mbps=1.0)
    sim = Simulator(2, links, seed=1)
    sim.send(0, 1, "hello", 125_000, 0.0)
    busy = sim.stats().uplink_busy_ms
    assert busy[0] == pytest.approx(1000.0) and busy[1] == 0.0
