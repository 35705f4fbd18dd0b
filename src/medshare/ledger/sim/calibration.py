"""Fit the model's CPU costs from real CometBFT runs, and predict those runs with the model.

A real run (``medshare.bench.ledger.measure_run``) gives, per node and per window (an idle
window, then a window under load), the CPU seconds of its two processes (``cometbft``,
the app) read from ``/proc``, and CometBFT's own Prometheus counters: heights, committed
transactions, ``CheckTx`` requests, p2p bytes by message type, block parts, duplicate
votes. From those counts every node-window is a row of a linear system::

    cometbft CPU = abci_request · CheckTx requests + tx_go · transactions + msg · messages
                   + kb · KiB + verify · votes verified + sign · votes and proposals
                   signed + height_go · heights + rpc · transactions its clients submitted
    app CPU      = app_tx · transactions + recheck_app · re-checks + app_height · heights

(re-checks: the ``CheckTx`` requests beyond one per committed transaction; with
``mempool.recheck`` on, CometBFT checks again after every commit what is left in the
mempool).

solved by non-negative least squares (:func:`nnls`), every (run, window) weighted alike.
Two splits cannot come from these totals, because every node makes exactly one first
``CheckTx`` and executes exactly one copy of every transaction: the app's per-tx cost is
split between ``CheckTx`` and the block's calls by timing the app's own handlers
in-process (``app_shares``), and Go's per-tx cost is split half and half between the
``CheckTx`` request and the block (an assumption, stated with the results).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from medshare.ledger.sim.cometbft_model import (
    HAS_VOTE_BYTES,
    LOOPBACK,
    NEW_ROUND_STEP_BYTES,
    NEW_VALID_BLOCK_BYTES,
    PROPOSAL_BYTES,
    VOTE_BYTES,
    ClosedLoop,
    Costs,
    Cpu,
    Report,
    Scenario,
    simulate,
)

CHECKTX = "cometbft_abci_connection_method_timing_seconds_count{method=check_tx}"
HEIGHT = "cometbft_consensus_height"
TXS = "cometbft_consensus_total_txs"
PARTS = "cometbft_consensus_block_parts"
RECEIVED = "cometbft_p2p_message_receive_bytes_total{message_type="
SENT = "cometbft_p2p_message_send_bytes_total{message_type="

#: Bytes of one message of each type as the p2p metrics count them (block parts and
#: transactions are counted from their own counters).
MESSAGE_BYTES = {
    "consensus_Vote": VOTE_BYTES,
    "consensus_HasVote": HAS_VOTE_BYTES,
    "consensus_NewRoundStep": NEW_ROUND_STEP_BYTES,
    "consensus_NewValidBlock": NEW_VALID_BLOCK_BYTES,
    "consensus_Proposal": PROPOSAL_BYTES,
    "consensus_VoteSetMaj23": 50,
    "consensus_VoteSetBits": 60,
    "p2p_PexAddrs": 100,
    "p2p_PexRequest": 2,
    "blocksync_StatusResponse": 6,
    "blocksync_StatusRequest": 2,
}
TX_MESSAGE_BYTES = 356  # a load transaction (352 B, CometBFT's mempool metric) and framing

GO_FEATURES = (
    "abci_request_us",
    "tx_go_us",
    "msg_us",
    "kb_us",
    "verify_us",
    "sign_us",
    "height_go_us",
    "rpc_tx_us",
)
APP_FEATURES = ("app_tx_us", "recheck_app_us", "app_height_us")


@dataclass(frozen=True)
class AppShares:
    """How the app's per-transaction CPU divides between its calls, from timing its
    handlers in-process (``medshare.bench.ledger.app_profile``)."""

    checktx: float
    process: float
    finalize: float
    prepare: float

    def normalised(self) -> AppShares:
        total = self.checktx + self.process + self.finalize
        return AppShares(
            self.checktx / total, self.process / total, self.finalize / total, self.prepare / total
        )


@dataclass(frozen=True)
class Fit:
    costs: Costs
    go_r2: float
    app_r2: float
    rows: int
    go_residual_rms_s: float
    app_residual_rms_s: float

    def as_dict(self) -> dict:
        return {
            "costs_us": self.costs.as_dict(),
            "go_r2": round(self.go_r2, 4),
            "app_r2": round(self.app_r2, 4),
            "rows": self.rows,
            "go_residual_rms_s": round(self.go_residual_rms_s, 4),
            "app_residual_rms_s": round(self.app_residual_rms_s, 4),
        }


# --- features ------------------------------------------------------------------------------


def _messages(counters: Mapping[str, float], prefix: str, parts: float) -> tuple[float, float]:
    """(messages, bytes) of one direction, from the per-type byte counters."""
    count = 0.0
    total = 0.0
    for key, value in counters.items():
        if not key.startswith(prefix):
            continue
        kind = key[len(prefix) : -1]
        total += value
        if kind == "mempool_Txs":
            count += value / TX_MESSAGE_BYTES
        elif kind == "consensus_BlockPart":
            count += parts
        else:
            count += value / MESSAGE_BYTES.get(kind, 50)
    return count, total


def node_features(
    node: Mapping, *, validators: int, clients: int, client_txs: float
) -> tuple[dict[str, float], dict[str, float]]:
    """The Go and app feature rows of one node in one window."""
    c = node["counters"]
    heights = c.get(HEIGHT, 0.0)
    checktx = c.get(CHECKTX, 0.0)
    parts = c.get(PARTS, 0.0)
    recv_msgs, recv_bytes = _messages(c, RECEIVED, parts)
    # parts sent: the bytes sent over the bytes per part received (same blocks)
    recv_part_bytes = c.get(RECEIVED + "consensus_BlockPart}", 0.0)
    sent_part_bytes = c.get(SENT + "consensus_BlockPart}", 0.0)
    sent_parts = sent_part_bytes / (recv_part_bytes / parts) if parts and recv_part_bytes else 0.0
    sent_msgs, sent_bytes = _messages(c, SENT, sent_parts)
    own = 2 if node["validator"] else 0
    signed = heights * (2 + 1 / validators) if node["validator"] else 0.0
    txs = c.get(TXS, 0.0)
    go = {
        "abci_request_us": checktx,
        "tx_go_us": txs,
        "msg_us": recv_msgs + sent_msgs,
        "kb_us": (recv_bytes + sent_bytes) / 1024,
        "verify_us": heights * (2 * validators - own),
        "sign_us": signed,
        "height_go_us": heights,
        "rpc_tx_us": client_txs * node.get("clients", 0) / clients if clients else 0.0,
    }
    # first checks ≈ the transactions committed; the other CheckTx calls are re-checks
    app = {
        "app_tx_us": txs,
        "recheck_app_us": max(0.0, checktx - txs),
        "app_height_us": heights,
    }
    return go, app


def rows(run: Mapping) -> list[tuple[dict, dict, float, float, float]]:
    """(go features, app features, cometbft CPU s, app CPU s, weight) of every node-window."""
    out = []
    for phase in ("idle", "window"):
        window = run[phase]
        nodes = window["nodes"]
        client_txs = max((n["counters"].get(TXS, 0.0) for n in nodes), default=0.0)
        for node in nodes:
            go, app = node_features(
                node,
                validators=run["validators"],
                clients=run["clients"] if phase == "window" else 0,
                client_txs=client_txs if phase == "window" else 0.0,
            )
            out.append((go, app, node["cometbft_cpu_s"], node["app_cpu_s"], 1.0 / len(nodes)))
    return out


# --- fitting -------------------------------------------------------------------------------


def nnls(a: np.ndarray, b: np.ndarray, *, iterations: int = 500) -> np.ndarray:
    """min ‖a·x − b‖ subject to x ≥ 0 (Lawson–Hanson active set)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    w = a.T @ (b - a @ x)
    tol = 1e-10 * max(1.0, float(np.abs(a).max(initial=0.0))) * max(m, n)
    for _ in range(iterations):
        if passive.all() or (w[~passive] <= tol).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


#: Weak priors (µs: mean, scale) that hold the fit where the runs cannot tell two costs
#: apart (per message vs per KiB, say): a cost moves one scale away from its prior only if
#: that lowers the CPU residual by about (PRIOR_WEIGHT_S)² per row... see :func:`fit`.
#: ``verify_us``: Go's crypto/ed25519 verifies in 58 µs on this machine (``go test
#: crypto/ed25519 -bench Verification``, under the load of the day) plus a vote's sign
#: bytes; the others are broad guesses (scale = mean).
PRIORS: dict[str, tuple[float, float]] = {
    "verify_us": (65.0, 15.0),
    "abci_request_us": (40.0, 40.0),
    "recheck_app_us": (30.0, 30.0),
    "sign_us": (150.0, 150.0),
    "msg_us": (10.0, 10.0),
    "kb_us": (3.0, 3.0),
    "tx_go_us": (200.0, 200.0),
    "height_go_us": (10_000.0, 10_000.0),
    "rpc_tx_us": (200.0, 200.0),
    "app_tx_us": (250.0, 250.0),
    "app_height_us": (3000.0, 3000.0),
}
PRIOR_WEIGHT_S = 0.02


def _solve(
    features: list[dict],
    target: list[float],
    weights: list[float],
    names: Sequence[str],
    priors: Mapping[str, tuple[float, float]],
):
    """Weighted NNLS of ``target`` (CPU seconds) on ``features``, with each cost held by its
    prior (mean, scale) through one extra row: PRIOR_WEIGHT_S · (x − mean) / scale."""
    a = np.array([[f[name] for name in names] for f in features], float) / 1e6  # s per µs
    b = np.array(target, float)
    w = np.sqrt(np.array(weights, float))
    rows_a = [a * w[:, None]]
    rows_b = [b * w]
    for i, name in enumerate(names):
        if name in priors:
            mean, scale = priors[name]
            row = np.zeros(len(names))
            row[i] = PRIOR_WEIGHT_S / scale
            rows_a.append(row[None, :])
            rows_b.append(np.array([PRIOR_WEIGHT_S * mean / scale]))
    big_a, big_b = np.vstack(rows_a), np.concatenate(rows_b)
    scale = np.maximum(np.abs(big_a).max(axis=0), 1e-18)  # columns to comparable size
    x = nnls(big_a / scale, big_b) / scale
    residual = b - a @ x
    total = float((((b - b.mean()) ** 2) * w**2).sum())
    r2 = 1.0 - float(((residual * w) ** 2).sum()) / total if total > 0 else 1.0
    rms = float(np.sqrt((residual**2).mean())) if residual.size else 0.0
    return {name: float(v) for name, v in zip(names, x, strict=True)}, r2, rms


def fit(
    runs: Sequence[Mapping],
    shares: AppShares,
    *,
    go_checktx_share: float = 0.5,
    priors: Mapping[str, tuple[float, float]] | None = None,
) -> Fit:
    """Fit :class:`Costs` (µs) from real runs (``priors=None``: :data:`PRIORS`; ``{}``: no
    prior, plain NNLS)."""
    priors = PRIORS if priors is None else priors
    all_rows = [row for run in runs for row in rows(run)]
    if not all_rows:
        raise ValueError("no runs to fit")
    weights = [r[4] for r in all_rows]
    go, go_r2, go_rms = _solve(
        [r[0] for r in all_rows], [r[2] for r in all_rows], weights, GO_FEATURES, priors
    )
    app, app_r2, app_rms = _solve(
        [r[1] for r in all_rows], [r[3] for r in all_rows], weights, APP_FEATURES, priors
    )
    client_cpu = sum(run["window"]["clients_cores"] * run["window"]["seconds"] for run in runs)
    client_txs = sum(
        max(n["counters"].get(TXS, 0.0) for n in run["window"]["nodes"]) for run in runs
    )
    s = shares.normalised()
    costs = Costs(
        verify_us=go["verify_us"],
        sign_us=go["sign_us"],
        msg_us=go["msg_us"],
        kb_us=go["kb_us"],
        abci_request_us=go["abci_request_us"],
        tx_go_us=go["tx_go_us"],
        height_go_us=go["height_go_us"],
        rpc_tx_us=go["rpc_tx_us"],
        app_tx_us=app["app_tx_us"],
        recheck_app_us=app["recheck_app_us"],
        app_height_us=app["app_height_us"],
        client_tx_us=1e6 * client_cpu / client_txs if client_txs else 0.0,
        checktx_share=s.checktx,
        process_share=s.process,
        prepare_share=s.prepare,
        go_checktx_share=go_checktx_share,
    )
    return Fit(costs, go_r2, app_r2, len(all_rows), go_rms, app_rms)


# --- predicting a real run -----------------------------------------------------------------


def scenario_for(run: Mapping, costs: Costs, *, seed: int = 7, heights: int = 12) -> Scenario:
    """The model of a measured run: the same nodes, validators and load, on a pool of the
    cores the run had (2 minus what other processes used during its window), measured
    like the real clients (from their start, for the run's seconds). ``heights``: when
    the run has no ``seconds``, how many heights to measure after the clients' start."""
    cores = max(0.25, run.get("machine_cores", 2.0) - run["window"]["others_cores"])
    seconds = run.get("seconds")
    return Scenario(
        nodes=run["nodes"],
        validators=run["validators"],
        load=ClosedLoop(
            run["clients"], run["outstanding"], None if seconds is None else 1000.0 * seconds
        ),
        cpu=Cpu(cores, shared=True),
        links=LOOPBACK,
        costs=costs,
        heights=heights,
        warmup=4,
        seed=seed,
    )


def predict(run: Mapping, costs: Costs, *, seed: int = 7, heights: int = 12) -> Report:
    return simulate(scenario_for(run, costs, seed=seed, heights=heights))


def synthetic_run(
    costs: Costs,
    *,
    nodes: int,
    validators: int,
    heights: float,
    txs: float,
    seconds: float,
    clients: int = 4,
    rng: np.random.Generator | None = None,
    noise: float = 0.0,
) -> dict:
    """A run record whose CPU is exactly what ``costs`` charge for its counts (plus
    relative noise): the fitting code must find ``costs`` back from it."""
    rng = rng or np.random.default_rng(0)

    def window(tx: float, h: float) -> dict:
        node_rows = []
        for i in range(nodes):
            validator = i < validators
            dup = (nodes - 1) * (0.6 + 0.4 * rng.random())
            counters = {
                HEIGHT: h,
                TXS: tx,
                CHECKTX: tx * (1.2 + 0.8 * rng.random()),  # with re-checks
                PARTS: h * (1 + dup / 4),
                RECEIVED + "mempool_Txs}": tx * dup * TX_MESSAGE_BYTES,
                SENT + "mempool_Txs}": tx * dup * TX_MESSAGE_BYTES * (0.8 + 0.4 * rng.random()),
                RECEIVED + "consensus_Vote}": h * 2 * validators * (1 + dup / 2) * VOTE_BYTES,
                SENT + "consensus_Vote}": h * 2 * validators * (1 + dup / 3) * VOTE_BYTES,
                RECEIVED + "consensus_HasVote}": h * 2 * validators * (nodes - 1) * HAS_VOTE_BYTES,
                SENT + "consensus_HasVote}": h * 2 * validators * (nodes - 1) * HAS_VOTE_BYTES,
                RECEIVED + "consensus_BlockPart}": h * (1 + dup / 4) * (900 + tx / h * 356)
                if h
                else 0.0,
                SENT + "consensus_BlockPart}": h * (1 + dup / 5) * (900 + tx / h * 356)
                if h
                else 0.0,
            }
            node = {
                "validator": validator,
                "clients": 1 if i < clients else 0,
                "counters": counters,
                "cometbft_cpu_s": 0.0,
                "app_cpu_s": 0.0,
            }
            go, app = node_features(
                node, validators=validators, clients=clients if tx else 0, client_txs=tx
            )
            cost = costs.as_dict()
            node["cometbft_cpu_s"] = sum(go[k] * cost[k] for k in go) / 1e6
            node["app_cpu_s"] = sum(app[k] * cost[k] for k in app) / 1e6
            if noise:
                node["cometbft_cpu_s"] *= 1 + noise * rng.standard_normal()
                node["app_cpu_s"] *= 1 + noise * rng.standard_normal()
            node_rows.append(node)
        return {
            "seconds": seconds,
            "nodes": node_rows,
            "clients_cores": costs.client_tx_us * tx / 1e6 / seconds,
            "others_cores": 0.0,
        }

    return {
        "nodes": nodes,
        "validators": validators,
        "clients": clients,
        "outstanding": 64,
        "idle": window(0.0, heights / 3),
        "window": window(txs, heights),
    }


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured == 0:
        return None
    return float(predicted) / float(measured) - 1.0


def within(ratio: float | None, tolerance: float = 0.30) -> bool:
    return ratio is not None and bool(math.isfinite(ratio) and abs(ratio) <= tolerance)


_ = replace
