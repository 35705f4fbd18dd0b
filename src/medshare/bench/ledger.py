"""``medshare bench ledger``: elected committee vs all-node BFT, and the real in-process rate.

Simulated part (DESIGN §4, §7): :func:`medshare.ledger.sim.runner.run` drives real
consensus cores over the simulated institution network, charging every node the CPU a
message costs (Ed25519 verify/sign and SHA-256, calibrated in this run by
:func:`~medshare.ledger.sim.calibrate` and printed with the results) and every byte its
uplink. Both modes run the same code, the same dissemination, the same per-tx costs, the
same seed and the same links; only the committee size differs (``m = N`` is the
all-node baseline). The whole curve is reported — N × block size × mode — with
``block_txs`` in every row, and the ratios the DESIGN asks about in ``summary``. At the
DESIGN's comparison point (N = 64, 10-tx blocks) both modes also run with f of their
voters Byzantine-silent (``"faults": "f_silent"``: f = ⌊(m−1)/3⌋ members of the first
committee, or of all N nodes, never vote), the most a BFT run tolerates; every other row
has ``"faults": "none"``.

Overlapping heights (``"consensus": "pipelined"`` rows, N = 64, 10-tx blocks): the same
BFT code with up to W heights in flight (:mod:`medshare.ledger.pipeline`), one leader for
a run of heights, and nodes outside the committee fed by a relay tree; the same settings
in both modes. One height at a time is latency-bound in both modes (three one-way delays
per block; docs/ledger-throughput.md), so only overlapping heights let the committee's
smaller CPU and message cost show in throughput. These rows report ``steady_tps``, the
rate once the pipeline has filled, and the summary compares them as well.

In-process part: committed tx/s of the real :class:`~medshare.ledger.cluster.InProcessCluster`
(4 nodes, one SQLite store each in a temporary directory, real signatures verified on
admission, the cluster's default settings), from the first submission to the last commit
on every node, with ``time.perf_counter``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from medshare.crypto.signing import SigningKey
from medshare.ledger import chain, election
from medshare.ledger.sim import CostModel, calibrate
from medshare.ledger.sim.runner import (
    INSTITUTION_LINKS,
    Behaviour,
    Scenario,
    SimReport,
    initial_committee,
    tx_pool,
)
from medshare.ledger.sim.runner import run as simulate

SEED = 7
BLOCK_SIZES = (10, 100, 1000)
COMMITTEES = (4, 7)
QUICK_NODES = (4, 16, 32, 64)
FULL_NODES = (4, 16, 32, 64, 128, 256)
KEY_NODES = 64  # the DESIGN's comparison point: 7 of 64 vs all 64
EPOCH_LENGTH = 4  # every run crosses at least one epoch change (new committee)
QUICK_BLOCKS = {10: 8, 100: 6, 1000: 5}  # heights decided per run, by block size
FULL_BLOCKS = {10: 20, 100: 15, 1000: 8}

#: Overlapping heights, the same for both modes: W heights in flight, one leader per run
#: of heights, replicas fed by a relay tree of fan-out F; epochs long enough that the
#: pipeline rarely drains (it does at every epoch boundary, for the next committee).
PIPELINE = {"certificate_lag": 128, "proposer_run": 100, "relay_fanout": 4}
PIPELINE_EPOCH_LENGTH = 1000
PIPELINE_FULL_NODES = (16, 32, 64)
#: Heights per pipelined run. All-node BFT at N = 64 costs ~1 s of Python per height and
#: is CPU-bound from its first heights on; the committee needs about three windows to
#: reach its steady rate. Both are measured the same way (steady_tps).
PIPELINE_BLOCKS = {
    True: {"committee": 384, "all-node": 16},
    False: {"committee": 768, "all-node": 48},
}

INPROCESS_NODES = 4
INPROCESS_TXS = 5000
INPROCESS_BLOCK_TXS = 500


@dataclass(frozen=True)
class Plan:
    nodes: tuple[int, ...]
    calibration_samples: int
    inprocess_repeats: int
    quick: bool

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(QUICK_NODES, 200, 1, True)
        return cls(FULL_NODES, 1000, 3, False)

    def block_sizes(self, nodes: int) -> tuple[int, ...]:
        """Quick: 10-tx blocks for every N, the whole size curve at N = 64 only."""
        if self.quick and nodes != KEY_NODES:
            return (BLOCK_SIZES[0],)
        return BLOCK_SIZES

    def blocks(self, nodes: int, block_txs: int) -> int:
        """Heights to decide per run (Python time grows ~N² per block in all-node mode)."""
        base = (QUICK_BLOCKS if self.quick else FULL_BLOCKS)[block_txs]
        if nodes > 128:
            return max(6, base // 3)
        return base if nodes <= 64 else max(6, base // 2)

    def committees(self, nodes: int) -> tuple[int, ...]:
        """Committee sizes below N, then N itself (all-node; at N = 4 that is m = 4)."""
        return (*[m for m in COMMITTEES if m < nodes], nodes)

    def pipelined(self) -> list[tuple[int, int]]:
        """(N, m) of the runs with overlapping heights: quick, the DESIGN's comparison point
        (7 of 64 and all 64); full, the curve over N = 16 … 64 and m = 4, 7, N."""
        if self.quick:
            return [(KEY_NODES, 7), (KEY_NODES, KEY_NODES)]
        return [(n, m) for n in PIPELINE_FULL_NODES for m in self.committees(n)]


def sim_rows(
    plan: Plan,
    costs: CostModel,
    progress: Callable[[str], None] = lambda _: None,
    workers: int = 1,
) -> list[dict]:
    """Every simulated row, in plan order. The runs are independent and deterministic, so
    ``workers`` > 1 runs them in that many processes (wall time only: results are
    identical), the costliest first."""
    runs: list[tuple[Scenario, str]] = []
    for nodes in plan.nodes:
        for block_txs in plan.block_sizes(nodes):
            for committee in plan.committees(nodes):
                runs.append((_scenario(plan, costs, nodes, committee, block_txs), "none"))
    for committee in (7, KEY_NODES):
        scenario = _with_silent_members(_scenario(plan, costs, KEY_NODES, committee, 10))
        runs.append((scenario, "f_silent"))
    for nodes, committee in plan.pipelined():
        runs.append((_pipelined(plan, costs, nodes, committee), "none"))
    if workers <= 1:
        return [_simulated(scenario, faults, progress) for scenario, faults in runs]
    order = sorted(range(len(runs)), key=lambda i: -_python_cost(runs[i][0]))
    rows: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_simulated, *runs[i]): i for i in order}
        for future in as_completed(futures):
            row = rows[futures[future]] = future.result()
            progress(_describe(row))
    return [rows[i] for i in range(len(runs))]


def _python_cost(scenario: Scenario) -> float:
    """Rough wall time of a run: every vote is handled by every member, every block by
    every node."""
    blocks = scenario.blocks or 1
    return blocks * (scenario.committee**2 + scenario.nodes * (1 + scenario.block_txs / 100))


def _describe(row: dict) -> str:
    return (
        f"simulated {row['mode']} m={row['committee']} of N={row['nodes']}, "
        f"{row['block_txs']} tx, {row['consensus']}, faults: {row['faults']}: "
        f"{row['tps']:.0f} tx/s ({row['wall_s']:.1f} s)"
    )


def _pipelined(plan: Plan, costs: CostModel, nodes: int, committee: int) -> Scenario:
    mode = "all-node" if committee == nodes else "committee"
    return replace(
        _scenario(plan, costs, nodes, committee, BLOCK_SIZES[0]),
        epoch_length=PIPELINE_EPOCH_LENGTH,
        blocks=PIPELINE_BLOCKS[plan.quick][mode],
        **PIPELINE,
    )


def _scenario(plan: Plan, costs: CostModel, nodes: int, committee: int, block_txs: int) -> Scenario:
    return Scenario(
        seed=SEED,
        nodes=nodes,
        committee=committee,
        epoch_length=EPOCH_LENGTH,
        block_txs=block_txs,
        blocks=plan.blocks(nodes, block_txs),
        links=INSTITUTION_LINKS,
        costs=costs,
    )


def _with_silent_members(scenario: Scenario) -> Scenario:
    """f = ⌊(m−1)/3⌋ members of the first elected committee never vote (in all-node mode:
    f of all N). Silence is not provable, so only lost reputation removes them later."""
    members = initial_committee(scenario)
    silent = members[: (scenario.committee - 1) // 3]
    return replace(scenario, byzantine={i: Behaviour.SILENT for i in silent})


def _simulated(
    scenario: Scenario, faults: str, progress: Callable[[str], None] = lambda _: None
) -> dict:
    pipelined = scenario.certificate_lag > 1
    progress(
        f"simulating {scenario.mode} m={scenario.committee} of N={scenario.nodes}, "
        f"{scenario.block_txs} tx, faults: {faults}"
        + (f", {scenario.certificate_lag} heights in flight" if pipelined else "")
    )
    start = time.perf_counter()
    report = simulate(scenario)
    row = _row(report, scenario, time.perf_counter() - start)
    row = {**row, "faults": faults, "byzantine": len(scenario.byzantine)}
    if not pipelined:
        return {**row, "consensus": "sequential"}
    settings = {name: getattr(scenario, name) for name in PIPELINE}
    return {**row, "consensus": "pipelined", **settings, "epoch_length": scenario.epoch_length}


def _row(report: SimReport, scenario: Scenario, wall_s: float) -> dict:
    if not report.safe:
        raise AssertionError(f"safety violated (seed {report.seed}): {report.safety_violations}")
    cpu = report.cpu_utilisation
    return {
        "mode": report.mode,
        "nodes": report.nodes,
        "committee": report.committee,
        "block_txs": report.block_txs,
        "blocks": report.committed_blocks,
        "blocks_requested": scenario.blocks,
        "tps": round(report.tps, 2),
        "steady_tps": round(report.steady_tps, 2),
        "latency_ms": round(report.latency_ms, 2),
        "messages_per_block": round(report.messages_per_block, 1),
        "bytes_per_block": round(report.bytes_per_block),
        "messages_by_kind": dict(report.messages_by_kind),
        "view_changes": report.view_changes,
        "cpu_max": round(max(cpu), 4),
        "uplink_max": round(max(report.uplink_utilisation), 4),
        # The pipelining ceiling: the tx/s at which the busiest node's CPU or uplink would
        # be saturated if heights overlapped (work per block measured in this run). The
        # sequential BFT here is latency-bound, far below it; see summary().
        "ceiling_tps": round(report.tps / max(max(cpu), max(report.uplink_utilisation), 1e-9), 1),
        "cpu_mean": round(sum(cpu) / len(cpu), 4),
        "sim_ms": round(report.sim_ms, 1),
        "safe": report.safe,
        "seed": report.seed,
        "trace_digest": report.trace_digest,
        "wall_s": round(wall_s, 2),
    }


def summary(rows: list[dict]) -> dict:
    """The DESIGN §7 ratios at N = 64: committee of 7 vs all 64, per block size."""

    def find(
        mode: str, committee: int, block_txs: int, faults: str = "none", how: str = "sequential"
    ) -> dict | None:
        return next(
            (
                r
                for r in rows
                if (r["mode"], r["nodes"], r["committee"], r["block_txs"])
                == (mode, KEY_NODES, committee, block_txs)
                and r.get("faults", "none") == faults
                and r.get("consensus", "sequential") == how
            ),
            None,
        )

    tps_ratio: dict[str, float] = {}
    msg_ratio: dict[str, float] = {}
    ceiling_ratio: dict[str, float] = {}
    for block_txs in BLOCK_SIZES:
        small, full = find("committee", 7, block_txs), find("all-node", KEY_NODES, block_txs)
        if small is None or full is None:
            continue
        tps_ratio[str(block_txs)] = round(small["tps"] / full["tps"], 3)
        ceiling_ratio[str(block_txs)] = round(small["ceiling_tps"] / full["ceiling_tps"], 2)
        msg_ratio[str(block_txs)] = round(
            full["messages_per_block"] / small["messages_per_block"], 2
        )
    head = str(BLOCK_SIZES[0])
    small, full = (
        find("committee", 7, BLOCK_SIZES[0], "f_silent"),
        find("all-node", KEY_NODES, BLOCK_SIZES[0], "f_silent"),
    )
    silent_ratio = None if small is None or full is None else round(small["tps"] / full["tps"], 3)
    small, full = (
        find("committee", 7, BLOCK_SIZES[0], how="pipelined"),
        find("all-node", KEY_NODES, BLOCK_SIZES[0], how="pipelined"),
    )
    piped: dict[str, float] | None = None
    if small is not None and full is not None:
        piped = {
            "tps_ratio": round(small["steady_tps"] / full["steady_tps"], 3),
            "messages_ratio": round(full["messages_per_block"] / small["messages_per_block"], 2),
            "committee_steady_tps": small["steady_tps"],
            "all_node_steady_tps": full["steady_tps"],
        }
    ratios = [r for r in (tps_ratio.get(head), piped and piped["tps_ratio"]) if r is not None]
    best = max(ratios, default=0.0)
    out = {
        "committee7_vs_all_at_64_tps_ratio": tps_ratio.get(head),
        "messages_ratio_at_64": msg_ratio.get(head),
        "tps_ratio_at_64_by_block_txs": tps_ratio,
        "messages_ratio_at_64_by_block_txs": msg_ratio,
        # What the same work would give with heights pipelined until a resource saturates.
        "ceiling_tps_ratio_at_64_by_block_txs": ceiling_ratio,
        # Both modes with f of their voters silent (10-tx blocks).
        "tps_ratio_at_64_with_f_silent": silent_ratio,
        # Both modes with overlapping heights (10-tx blocks, rates once the pipeline filled).
        "pipelined_at_64": piped,
        "best_tps_ratio_at_64": best,
        "targets": {"tps_ratio_min": 5.0, "messages_ratio_min": 10.0},
    }
    out["targets"]["tps_ratio_met"] = best >= 5.0
    out["targets"]["messages_ratio_met"] = (msg_ratio.get(head) or 0.0) >= 10.0
    return out


def inprocess(repeats: int = 1, txs: int = INPROCESS_TXS) -> dict:
    """Committed tx/s of the real in-process cluster (best of ``repeats``)."""
    from medshare.ledger.cluster import InProcessCluster
    from medshare.ledger.consensus import ConsensusConfig
    from medshare.ledger.store import SQLiteStore

    keys = [
        SigningKey(hashlib.sha256(f"medshare.bench/inprocess/{i}".encode()).digest())
        for i in range(INPROCESS_NODES)
    ]
    validators = tuple(election.Validator(k.public, f"inst{i}", 1000) for i, k in enumerate(keys))
    config = chain.ChainConfig(
        "medshare-bench", validators, epoch_length=10, committee_size=INPROCESS_NODES
    )
    pool = tx_pool(txs, config.chain_id)  # signed before the clock starts
    best: float | None = None
    height = 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="medshare-bench-") as tmp:
            stores = [SQLiteStore(Path(tmp) / f"node{i}.db") for i in range(INPROCESS_NODES)]
            try:
                consensus = ConsensusConfig(max_block_txs=INPROCESS_BLOCK_TXS)
                cluster = InProcessCluster(config, keys, stores, consensus=consensus)
                start = time.perf_counter()
                for i, tx in enumerate(pool):
                    if not cluster.submit(tx, node=i % INPROCESS_NODES):
                        raise RuntimeError("the cluster refused a valid transaction")
                while min(n.committed_txs for n in cluster.nodes) < txs:
                    if not cluster.step():
                        raise RuntimeError("the in-process cluster stalled")
                elapsed = time.perf_counter() - start
                cluster.check_safety()
                height = cluster.heads()[0][0]  # type: ignore[index]
            finally:
                for store in stores:
                    store.close()
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return {
        "nodes": INPROCESS_NODES,
        "txs": txs,
        "block_txs": INPROCESS_BLOCK_TXS,
        "blocks": height,
        "seconds": round(best, 3),
        "tps": round(txs / best, 1),
        "repeats": repeats,
        "store": "sqlite",
    }


def run(quick: bool, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Calibrate, simulate the curve, measure the in-process cluster; the JSON report."""
    plan = Plan.for_mode(quick)
    progress("calibrating Ed25519 and SHA-256")
    costs = calibrate(plan.calibration_samples)
    progress(f"costs: {costs.as_dict()}")
    start = time.perf_counter()
    # Simulated time does not depend on the wall clock, so the runs may share the cores;
    # calibration before and the in-process cluster after run alone.
    rows = sim_rows(plan, costs, progress, workers=min(2, os.cpu_count() or 1))
    sim_wall = time.perf_counter() - start
    progress("in-process cluster")
    local = inprocess(plan.inprocess_repeats)
    return {
        "quick": quick,
        "costs": {**costs.as_dict(), "calibrated": True, "samples": plan.calibration_samples},
        "links": asdict(INSTITUTION_LINKS),
        "seed": SEED,
        "epoch_length": EPOCH_LENGTH,
        "sim": rows,
        "sim_wall_s": round(sim_wall, 1),
        "inprocess": local,
        "summary": summary(rows),
    }
