"""``medshare bench ledger``: a model of CometBFT, calibrated on this machine, over large N.

Three parts, one JSON report:

* **Calibration** (``calibration``): real CometBFT networks with our app on this machine
  (``medshare net up``, N = 4, 8, 16; an elected committee of 4, and every node a
  validator), loaded like ``medshare.ledger.cometbft.load`` (4 clients × 64 transactions
  in flight). Each run records, per node and per window (idle, then under load), the CPU
  of both processes and CometBFT's Prometheus counters. The model's CPU costs are fitted
  from those runs (:mod:`medshare.ledger.sim.calibration`), then every run is predicted
  by the model (on a pool of the cores the run had: 2 minus what other processes used
  meanwhile) and the measured and predicted tx/s and median latency are set side by side.
  Each run is also predicted with costs fitted on the *other* runs only (leave-one-out).
* **Curve** (``curve``): the calibrated model over N = 16 … 256, blocks of 10, 100 and
  1,000 transactions, an elected committee of 7 or every node a validator, each node
  with its own 2 cores, links of 5–80 ms and 100 Mbit/s–1 Gbit/s (``INSTITUTIONS``),
  full mesh. With the committee-of-7 vs all-64 ratios at 10-tx blocks in ``summary``.
* The ``real`` section (``medshare.bench.ledger_real``) is added by the command.

Nothing here is timed by a test; tests check shapes, determinism and the fitting code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from medshare.bench.timing import CLOCK_TICKS, process_cpu_seconds
from medshare.crypto.signing import SigningKey
from medshare.ledger.sim import calibration as cal
from medshare.ledger.sim.cometbft_model import (
    INSTITUTIONS,
    Costs,
    Cpu,
    PerHeight,
    Scenario,
    Timing,
    simulate,
)

SEED = 7
MACHINE_CORES = float(os.cpu_count() or 2)
CLIENTS = 4
OUTSTANDING = 64
IDLE_SECONDS = 3.0
#: (nodes, validators) of the real calibration runs
CALIBRATION = ((4, 4), (8, 4), (8, 8), (16, 4), (16, 16))
QUICK_CALIBRATION = ((4, 4), (8, 4), (8, 8))
CALIBRATION_SECONDS = {True: 8.0, False: 12.0}
TOLERANCE = 0.30
#: the curve
CURVE_NODES = (16, 32, 64, 128, 256)
CURVE_BLOCK_TXS = (10, 100, 1000)
COMMITTEE = 7
KEY_NODES = 64
NODE_CORES = 2.0
CURVE_HEIGHTS = {True: 6, False: 12}
CURVE_WARMUP = 3
TARGETS = {"tx_per_s_ratio_min": 5.0, "messages_ratio_min": 10.0}
SATURATED = 0.98


# --- the app's own split of its per-transaction CPU ----------------------------------------


def app_profile(txs: int = 300) -> dict[str, float]:
    """CPU µs per transaction of each of our app's ABCI calls, timed in-process through the
    socket server's dispatch (protobuf in and out, as CometBFT sends them): ``checktx``
    (with the ``Flush`` CometBFT sends after it), ``prepare``, ``process``, ``finalize``
    (``FinalizeBlock`` + ``Commit``), ``recheck`` (a transaction left in the mempool,
    checked again after a commit), and ``empty_height`` (µs for a height without
    transactions)."""
    from medshare.ledger import election
    from medshare.ledger.app import rules
    from medshare.ledger.app.abci import LedgerApplication
    from medshare.ledger.app.genesis import MEMBER_POWER, Genesis
    from medshare.ledger.app.store import StateStore
    from medshare.ledger.cometbft import server
    from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
    from medshare.ledger.cometbft.proto.tendermint.types import validator_pb2
    from medshare.ledger.types import Tx, TxKind

    def key(label: str, i: int) -> SigningKey:
        return SigningKey(hashlib.sha256(f"medshare.bench/{label}/{i}".encode()).digest())

    nodes = [key("node", i) for i in range(4)]
    genesis = Genesis(
        "bench",
        tuple(election.Validator(k.public, f"node-{i}", 1000) for i, k in enumerate(nodes)),
        epoch_length=100_000,
        committee_size=4,
    )
    users = [key("user", i) for i in range(txs)]
    with tempfile.TemporaryDirectory(prefix="medshare-bench-") as tmp:
        store = StateStore(Path(tmp) / "app.db")
        app = LedgerApplication(store)

        def call(**request: object) -> bytes:
            payload = abci.Request(**request).SerializeToString()
            return server.handle(app, abci.Request.FromString(payload)).SerializeToString()

        def block(height: int, raws: list[bytes]) -> abci.RequestFinalizeBlock:
            committee = app._committed().committee
            votes = [
                abci.VoteInfo(
                    validator=abci.Validator(address=rules.address(m), power=MEMBER_POWER),
                    block_id_flag=validator_pb2.BLOCK_ID_FLAG_COMMIT,
                )
                for m in committee
            ]
            return abci.RequestFinalizeBlock(
                txs=raws,
                decided_last_commit=abci.CommitInfo(votes=votes),
                hash=hashlib.sha256(b"%d" % height).digest(),
                height=height,
                proposer_address=rules.address(committee[0]),
            )

        def timed(work: Callable[[], object]) -> float:
            start = time.process_time()
            work()
            return (time.process_time() - start) * 1e6

        state = json.dumps(genesis.to_json()).encode()
        call(init_chain=abci.RequestInitChain(chain_id="bench", app_state_bytes=state))
        chain = genesis.chain_id
        registrations = [
            Tx.create(
                TxKind.REGISTER_IDENTITY, {"identity": f"u{i}", "key": u.public.hex()}, i,
                nodes[0], chain=chain,
            ).encode()
            for i, u in enumerate(users)
        ]  # fmt: skip
        call(finalize_block=block(1, registrations))
        call(commit=abci.RequestCommit())
        raws = [
            Tx.create(
                TxKind.ACCESS,
                {"record": f"r{i}", "actor": f"load-{i % 4}", "area": "institution"},
                0,
                u,
                chain=chain,
            ).encode()
            for i, u in enumerate(users)
        ]

        def check() -> None:
            for raw in raws:
                call(check_tx=abci.RequestCheckTx(tx=raw))
                call(flush=abci.RequestFlush())

        out = {"checktx": timed(check) / txs}
        prepare = abci.RequestPrepareProposal(txs=raws, max_tx_bytes=4 << 20, height=2)
        out["prepare"] = timed(lambda: call(prepare_proposal=prepare)) / txs
        process = abci.RequestProcessProposal(txs=raws, height=2)
        out["process"] = timed(lambda: call(process_proposal=process)) / txs
        half = len(raws) // 2
        decided = block(2, raws[:half])
        out["finalize"] = (
            timed(lambda: (call(finalize_block=decided), call(commit=abci.RequestCommit()))) / half
        )

        def recheck() -> None:  # what CometBFT does after a commit: the rest, in order
            for raw in raws[half:]:
                call(check_tx=abci.RequestCheckTx(tx=raw, type=abci.CheckTxType.RECHECK))
                call(flush=abci.RequestFlush())

        out["recheck"] = timed(recheck) / (len(raws) - half)
        empty = block(3, [])
        out["empty_height"] = timed(
            lambda: (
                call(prepare_proposal=abci.RequestPrepareProposal(max_tx_bytes=4 << 20)),
                call(process_proposal=abci.RequestProcessProposal(height=3)),
                call(finalize_block=empty),
                call(commit=abci.RequestCommit()),
            )
        )
        store.close()
    return {k: round(v, 2) for k, v in out.items()}


def shares(profile: Mapping[str, float]) -> cal.AppShares:
    return cal.AppShares(
        profile["checktx"], profile["process"], profile["finalize"], profile["prepare"]
    )


# --- real runs ----------------------------------------------------------------------------

_METRIC = re.compile(r"^(cometbft_[a-z0-9_]+)(?:\{([^}]*)\})? (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_KEPT_LABELS = frozenset({"message_type", "method", "step"})
_KEPT_METRICS = (
    cal.CHECKTX.split("{")[0],
    cal.HEIGHT,
    cal.TXS,
    cal.PARTS,
    "cometbft_p2p_message_receive_bytes_total",
    "cometbft_p2p_message_send_bytes_total",
    "cometbft_consensus_duplicate_vote",
    "cometbft_consensus_duplicate_block_part",
    "cometbft_consensus_step_duration_seconds_sum",
    "cometbft_consensus_rounds",
)


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from ``/proc/stat``."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def _metrics(http: httpx.Client, url: str) -> dict[str, float]:
    """One node's counters we use, keyed by name and the labels that matter (per-peer and
    chain labels summed away)."""
    try:
        text = http.get(url).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for name, labels, value in _METRIC.findall(text):
        if name not in _KEPT_METRICS:
            continue
        kept = ",".join(f"{k}={v}" for k, v in _LABEL.findall(labels or "") if k in _KEPT_LABELS)
        key = f"{name}{{{kept}}}" if kept else name
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _snapshot(net, client_pids: Sequence[int]) -> dict:
    from medshare.ledger.cometbft import network

    with httpx.Client(timeout=5.0) as http:
        metrics = [_metrics(http, node.metrics) for node in net.nodes]
    return {
        "t": time.time(),
        "machine": _machine_busy(),
        "cpu": [
            {role: process_cpu_seconds(pid) for role, pid in network.pids(net, i).items()}
            for i in range(len(net.nodes))
        ],
        "clients": sum(process_cpu_seconds(pid) for pid in client_pids),
        "metrics": metrics,
    }


def _window(a: dict, b: dict, validators: set[int], clients_at: Mapping[int, int]) -> dict:
    seconds = b["t"] - a["t"]
    nodes = []
    ours = 0.0
    for i, (ca, cb) in enumerate(zip(a["cpu"], b["cpu"], strict=True)):
        cpu = {role: cb.get(role, 0.0) - ca.get(role, 0.0) for role in ("cometbft", "app")}
        ours += sum(cpu.values())
        ma, mb = a["metrics"][i], b["metrics"][i]
        counters = {k: round(mb[k] - ma.get(k, 0.0), 6) for k in mb if mb[k] != ma.get(k, 0.0)}
        nodes.append(
            {
                "validator": i in validators,
                "clients": clients_at.get(i, 0),
                "cometbft_cpu_s": round(cpu["cometbft"], 3),
                "app_cpu_s": round(cpu["app"], 3),
                "counters": counters,
            }
        )
    clients = b["clients"] - a["clients"]
    busy = (b["machine"] - a["machine"]) / seconds
    return {
        "seconds": round(seconds, 3),
        "machine_busy_cores": round(busy, 3),
        "ours_cores": round(ours / seconds, 3),
        "clients_cores": round(clients / seconds, 3),
        "others_cores": round(max(0.0, busy - (ours + clients) / seconds), 3),
        "nodes": nodes,
    }


def _ready_client(job, ready, go, out) -> None:  # runs in a spawned client process
    """A load client that says when it is up (imports done), then waits for the common
    start time before running ``load._client``: spawning Python on a busy 2-core machine
    can take longer than ``run_load``'s fixed 2 s head start."""
    from medshare.ledger.cometbft import load

    ready.put(job.index)
    start_at = go.get()
    load._client(dataclasses.replace(job, start_at=start_at), out)


def measure_run(
    root: Path,
    *,
    nodes: int,
    validators: int,
    seconds: float,
    clients: int = CLIENTS,
    outstanding: int = OUTSTANDING,
    idle_seconds: float = IDLE_SECONDS,
) -> dict:
    """One real run: a fresh network (``medshare net up``), an idle window, then clients ×
    outstanding transactions in flight for ``seconds`` (the counters' window leaves out the
    first second). Latency: from broadcast to the client reading the block."""
    from medshare.ledger.cometbft import load, network

    directory = Path(tempfile.mkdtemp(prefix="cal", dir=root))
    started = time.perf_counter()
    net = network.up(directory, nodes=nodes, committee=validators, epoch=100_000)
    try:
        time.sleep(2.0)
        names = {v["name"] for v in network.status(net)["validators"] or []}
        voting = {n.index for n in net.nodes if n.name in names}
        clients_at: dict[int, int] = {}
        for c in range(clients):
            clients_at[c % nodes] = clients_at.get(c % nodes, 0) + 1
        idle0 = _snapshot(net, [])
        time.sleep(idle_seconds)
        idle1 = _snapshot(net, [])
        keys = [SigningKey.generate() for _ in range(clients * outstanding)]
        load.register_identities(net, keys)
        urls = tuple(n.rpc for n in net.nodes)
        ctx = multiprocessing.get_context("spawn")
        ready, go, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
        jobs = [
            load._Job(
                c,
                tuple(k.seed for k in keys[c * outstanding : (c + 1) * outstanding]),
                net.chain_id,
                urls[c % len(urls)],
                urls,
                0.0,
                seconds,
            )
            for c in range(clients)
        ]
        procs = [ctx.Process(target=_ready_client, args=(j, ready, go, out)) for j in jobs]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        start_at = time.time() + 1.0
        for _ in procs:
            go.put(start_at)
        pids = [p.pid for p in procs if p.pid is not None]
        snaps: dict[str, dict] = {}

        def take(name: str, at: float) -> None:
            time.sleep(max(0.0, at - time.time()))
            snaps[name] = _snapshot(net, pids)

        timers = [
            threading.Thread(target=take, args=("a", start_at + 1.0)),
            threading.Thread(target=take, args=("b", start_at + seconds)),
        ]
        for t in timers:
            t.start()
        results = [out.get(timeout=seconds + load.DRAIN_S + 120) for _ in procs]
        for t in timers:
            t.join()
        for p in procs:
            p.join(timeout=10)
    finally:
        network.down(net)
        shutil.rmtree(directory, ignore_errors=True)
    errors = [r["error"] for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    latencies = sorted(x for r in results for x in r["latencies"])
    committed = sum(r["committed_in_window"] for r in results)
    return {
        "nodes": nodes,
        "validators": len(voting),
        "clients": clients,
        "outstanding": outstanding,
        "seconds": seconds,
        "machine_cores": MACHINE_CORES,
        "tx_per_s": round(committed / seconds, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)
        if latencies
        else None,
        "committed": committed,
        "refused": sum(r["refused"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "not_committed_after_drain": sum(r["lost"] for r in results),
        "wall_s": round(time.perf_counter() - started, 1),
        "errors": errors,  # a client that failed (its transactions are not counted)
        "idle": _window(idle0, idle1, voting, {}),
        "window": _window(snaps["a"], snaps["b"], voting, clients_at),
    }


def measure_all(
    plan: Sequence[tuple[int, int]],
    seconds: float,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix="mscal", dir="/tmp"))
    runs = []
    try:
        for nodes, validators in plan:
            progress(f"real CometBFT run: {nodes} nodes, {validators} validators, {seconds:g} s")
            runs.append(measure_run(root, nodes=nodes, validators=validators, seconds=seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return runs


# --- calibration rows ----------------------------------------------------------------------


def _heights_in_window(run: Mapping) -> float:
    nodes = run["window"]["nodes"]
    return sum(n["counters"].get(cal.HEIGHT, 0.0) for n in nodes) / len(nodes)


def _block_tx_per_s(run: Mapping) -> float | None:
    """Transactions per second the blocks carried in the window (CometBFT's own count),
    next to what the clients saw committed (they count a transaction when they have read
    its block)."""
    window = run["window"]
    txs = max((n["counters"].get(cal.TXS, 0.0) for n in window["nodes"]), default=0.0)
    return txs / window["seconds"] if window["seconds"] else None


def _reasons(run: Mapping, predicted: Mapping, ok_tps: bool, ok_p50: bool) -> list[str]:
    """Why a row may miss ±30 %: what this run's own numbers show."""
    if ok_tps and ok_p50:
        return []
    out = []
    window = run["window"]
    blocks = _block_tx_per_s(run)
    if blocks and run["tx_per_s"] < 0.85 * blocks:
        out.append(
            f"the clients saw {run['tx_per_s']:.0f} tx/s committed while the blocks carried "
            f"{blocks:.0f} tx/s: on the saturated machine they read blocks late, which the "
            "model's clients do not"
        )
    if run.get("errors"):
        out.append(f"client errors: {'; '.join(run['errors'])}")
    if window["others_cores"] > 0.4:
        out.append(
            f"other processes used {window['others_cores']:.2f} of the "
            f"{run.get('machine_cores', MACHINE_CORES):.0f} cores during the window, and "
            "their share moved during it (the model gets the window's average)"
        )
    heights = _heights_in_window(run)
    if heights < 10:
        out.append(f"only {heights:.0f} heights in the measured window")
    measured_interval = 1000 * window["seconds"] / heights if heights else None
    model_interval = predicted["block_interval_ms"]
    if measured_interval and abs(model_interval / measured_interval - 1) > TOLERANCE:
        out.append(
            f"block interval: measured {measured_interval:.0f} ms, modelled {model_interval:.0f} ms"
        )
    if run.get("not_committed_after_drain"):
        out.append(f"{run['not_committed_after_drain']} transactions never committed")
    if not out:
        out.append("no run-specific cause found: a limit of the model (see the docs)")
    return out


def calibration_rows(
    runs: Sequence[Mapping],
    fitted: cal.Fit,
    app_shares: cal.AppShares,
    *,
    heights: int = 12,
) -> list[dict]:
    """Measured vs predicted per real run; predicted twice: with costs fitted on all runs,
    and with costs fitted on the other runs only (leave-one-out)."""
    rows = []
    for i, run in enumerate(runs):
        predicted = cal.predict(run, fitted.costs, seed=SEED, heights=heights).as_dict()
        others = [r for j, r in enumerate(runs) if j != i]
        loo = None
        if others:
            costs = cal.fit(others, app_shares).costs
            loo = cal.predict(run, costs, seed=SEED, heights=heights).as_dict()
        tps = cal.relative_error(predicted["tx_per_s"], run["tx_per_s"])
        p50 = cal.relative_error(predicted["p50_ms"], run["p50_ms"])
        ok_tps, ok_p50 = cal.within(tps, TOLERANCE), cal.within(p50, TOLERANCE)
        heights_measured = _heights_in_window(run)
        rows.append(
            {
                "nodes": run["nodes"],
                "validators": run["validators"],
                "mode": "all-validator" if run["validators"] == run["nodes"] else "committee",
                "clients": run["clients"],
                "outstanding": run["outstanding"],
                "cores_available": round(
                    run.get("machine_cores", MACHINE_CORES) - run["window"]["others_cores"], 2
                ),
                "measured_tx_per_s": run["tx_per_s"],
                "measured_block_tx_per_s": None
                if _block_tx_per_s(run) is None
                else round(_block_tx_per_s(run), 1),
                "predicted_tx_per_s": round(predicted["tx_per_s"], 1),
                "tx_per_s_ratio": None if tps is None else round(1 + tps, 3),
                "measured_p50_ms": run["p50_ms"],
                "predicted_p50_ms": None
                if predicted["p50_ms"] is None
                else round(predicted["p50_ms"], 1),
                "p50_ratio": None if p50 is None else round(1 + p50, 3),
                "measured_block_interval_ms": round(
                    1000 * run["window"]["seconds"] / heights_measured, 1
                )
                if heights_measured
                else None,
                "predicted_block_interval_ms": round(predicted["block_interval_ms"], 1),
                "predicted_block_txs": round(predicted["block_txs"], 1),
                "loo_predicted_tx_per_s": None if loo is None else round(loo["tx_per_s"], 1),
                "loo_tx_per_s_ratio": None
                if loo is None or not run["tx_per_s"]
                else round(loo["tx_per_s"] / run["tx_per_s"], 3),
                "loo_predicted_p50_ms": None
                if loo is None or loo["p50_ms"] is None
                else round(loo["p50_ms"], 1),
                "within_30pct": ok_tps and ok_p50,
                "tx_per_s_within_30pct": ok_tps,
                "p50_within_30pct": ok_p50,
                "reasons": _reasons(run, predicted, ok_tps, ok_p50),
            }
        )
    return rows


# --- the curve -----------------------------------------------------------------------------


def curve_scenario(costs: Costs, nodes: int, validators: int, block_txs: int, quick: bool):
    heights = CURVE_HEIGHTS[quick]
    if nodes * validators >= 128 * 128:  # the costliest runs (all 256, all 128)
        heights = max(4, heights // 2)
    return Scenario(
        nodes=nodes,
        validators=validators,
        load=PerHeight(block_txs),
        cpu=Cpu(NODE_CORES),
        links=INSTITUTIONS,
        costs=costs,
        heights=heights,
        warmup=CURVE_WARMUP,
        seed=SEED,
        chunk_txs=max(8, block_txs // 16),
    )


def _curve_point(costs: Costs, nodes: int, validators: int, block_txs: int, quick: bool) -> dict:
    start = time.perf_counter()
    report = simulate(curve_scenario(costs, nodes, validators, block_txs, quick))
    r = report.as_dict()
    votes = r["messages_by_type"]["Vote"] + r["messages_by_type"]["HasVote"]
    return {
        "nodes": nodes,
        "validators": validators,
        "mode": "all-validator" if validators == nodes else "committee",
        "block_txs": block_txs,
        "measured_block_txs": round(r["block_txs"], 1),
        "heights": r["heights"],
        "tx_per_s": round(r["tx_per_s"], 2),
        "p50_ms": None if r["p50_ms"] is None else round(r["p50_ms"], 1),
        "p99_ms": None if r["p99_ms"] is None else round(r["p99_ms"], 1),
        "block_interval_ms": round(r["block_interval_ms"], 1),
        "messages_per_block": round(r["messages_per_block"]),
        "vote_messages_per_block": round(votes),
        "bytes_per_block": round(r["bytes_per_block"]),
        "messages_by_type": {k: round(v) for k, v in r["messages_by_type"].items()},
        "cpu_ms_per_block_validator": round(r["cpu_ms_per_block_validator"], 2),
        "cpu_ms_per_block_full_node": None
        if r["cpu_ms_per_block_full_node"] is None
        else round(r["cpu_ms_per_block_full_node"], 2),
        "cpu_ms_per_block_max": round(r["cpu_ms_per_block_max"], 2),
        "cpu_utilisation_max": round(r["cpu_utilisation_max"], 3),
        # the busiest node's cores are all in use: it cannot keep up with block_txs per
        # height (queues grow), so the rate is a lower bound from a short run, not a level
        "saturated": r["cpu_utilisation_max"] >= SATURATED,
        "duplicate_votes_per_node_block": round(r["duplicate_votes_per_node_block"], 1),
        "seed": r["seed"],
        "wall_s": round(time.perf_counter() - start, 2),
    }


def curve_plan(nodes: Sequence[int] = CURVE_NODES) -> list[tuple[int, int, int]]:
    """(nodes, validators, block_txs): every N and block size, committee of 7 and all."""
    return [(n, v, b) for n in nodes for b in CURVE_BLOCK_TXS for v in (COMMITTEE, n)]


def curve(
    costs: Costs,
    quick: bool,
    progress: Callable[[str], None] = lambda _: None,
    workers: int = 1,
    plan: Sequence[tuple[int, int, int]] | None = None,
) -> list[dict]:
    """The model's rows over the plan (deterministic; ``workers`` processes change only the
    wall time), in plan order."""
    plan = list(plan if plan is not None else curve_plan())
    if workers <= 1:
        rows = []
        for n, v, b in plan:
            progress(f"model: N = {n}, {v} validators, {b}-tx blocks")
            rows.append(_curve_point(costs, n, v, b, quick))
        return rows
    order = sorted(range(len(plan)), key=lambda i: -plan[i][0] * plan[i][1])
    out: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(_curve_point, costs, *plan[i], quick) for i in order}
        for i in order:
            out[i] = futures[i].result()
            n, v, b = plan[i]
            progress(f"model: N = {n}, {v} validators, {b}-tx blocks done")
    return [out[i] for i in range(len(plan))]


def summary(curve_rows: Sequence[Mapping], calibration: Sequence[Mapping]) -> dict:
    """The DESIGN's comparison at N = 64 (committee of 7 vs all 64) per block size, and how
    many calibration rows agree within ±30 %."""

    def find(validators: int, block_txs: int) -> Mapping | None:
        return next(
            (
                r
                for r in curve_rows
                if (r["nodes"], r["validators"], r["block_txs"])
                == (KEY_NODES, validators, block_txs)
            ),
            None,
        )

    tps: dict[str, float] = {}
    msgs: dict[str, float] = {}
    votes: dict[str, float] = {}
    for block_txs in CURVE_BLOCK_TXS:
        small, full = find(COMMITTEE, block_txs), find(KEY_NODES, block_txs)
        if small is None or full is None:
            continue
        tps[str(block_txs)] = round(small["tx_per_s"] / full["tx_per_s"], 3)
        msgs[str(block_txs)] = round(full["messages_per_block"] / small["messages_per_block"], 2)
        votes[str(block_txs)] = round(
            full["vote_messages_per_block"] / small["vote_messages_per_block"], 2
        )
    head = str(CURVE_BLOCK_TXS[0])
    out = {
        "tx_per_s_ratio_7_vs_64_at_10tx": tps.get(head),
        "messages_ratio_7_vs_64_at_10tx": msgs.get(head),
        "vote_messages_ratio_7_vs_64_at_10tx": votes.get(head),
        "tx_per_s_ratio_7_vs_64_by_block_txs": tps,
        "messages_ratio_7_vs_64_by_block_txs": msgs,
        "vote_messages_ratio_7_vs_64_by_block_txs": votes,
        "targets": dict(TARGETS),
        "calibration_rows_within_30pct": sum(1 for r in calibration if r["within_30pct"]),
        "calibration_rows": len(calibration),
    }
    t = out["targets"]
    t["tx_per_s_ratio_met"] = bool((tps.get(head) or 0.0) >= TARGETS["tx_per_s_ratio_min"])
    t["messages_ratio_met"] = bool((msgs.get(head) or 0.0) >= TARGETS["messages_ratio_min"])
    t["vote_messages_ratio_met"] = bool((votes.get(head) or 0.0) >= TARGETS["messages_ratio_min"])
    return out


def run(
    quick: bool,
    progress: Callable[[str], None] = lambda _: None,
    *,
    runs: Sequence[Mapping] | None = None,
    curve_plan_: Sequence[tuple[int, int, int]] | None = None,
) -> dict:
    """Real calibration runs (or ``runs`` measured before), the fit, the calibration rows,
    and the model's curve: the JSON report."""
    started = time.perf_counter()
    progress("timing the app's ABCI calls in-process")
    profile = app_profile()
    app_shares = shares(profile)
    if runs is None:
        plan = QUICK_CALIBRATION if quick else CALIBRATION
        runs = measure_all(plan, CALIBRATION_SECONDS[quick], progress)
    real_s = time.perf_counter() - started
    progress("fitting the model's costs")
    fitted = cal.fit(runs, app_shares)
    progress("predicting the real runs with the model")
    rows = calibration_rows(runs, fitted, app_shares)
    model_started = time.perf_counter()
    workers = min(2, os.cpu_count() or 1)
    curve_rows = curve(fitted.costs, quick, progress, workers, curve_plan_)
    model_s = time.perf_counter() - model_started
    return {
        "quick": quick,
        "seed": SEED,
        "calibration": {
            "runs": list(runs),
            "app_profile_us": profile,
            "fit": fitted.as_dict(),
            "priors_us": {k: {"mean": m, "scale": s} for k, (m, s) in cal.PRIORS.items()},
            "go_checktx_share_assumed": fitted.costs.go_checktx_share,
            "rows": rows,
            "tolerance": TOLERANCE,
        },
        "curve": curve_rows,
        "model": {
            "timing": dataclasses.asdict(Timing()),
            "links": dataclasses.asdict(INSTITUTIONS),
            "node_cores": NODE_CORES,
            "peers": "full mesh",
            "committee": COMMITTEE,
            "load": "per height: block_txs transactions over the height, 8 submissions at "
            "random nodes",
        },
        "summary": summary(curve_rows, rows),
        "runtime_s": {
            "real_runs": round(real_s, 1),
            "model": round(model_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
