"""Load on a running network: committed transactions per second and commit latency.

``C`` client processes each keep ``K`` transactions outstanding, each from its own
registered identity key (a key's transactions must commit in nonce order, so one key has
one transaction in flight). A client broadcasts every ready transaction to its node in
one JSON-RPC batch (``broadcast_tx_async``: pipelined to the app's ``CheckTx``, see
:meth:`LedgerClient.broadcast`), reads each new block, and counts a transaction as
committed when a block carries it with result code 0; the latency is from
just before its broadcast to the moment the client read that block. Committed tx/s
counts transactions committed inside the measured window.

Identity keys are registered first by node 0 (``register_identity``), as a hospital
would register its staff.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medshare.crypto.signing import SigningKey
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft.client import LedgerClient, LedgerUnavailable
from medshare.ledger.cometbft.network import Network
from medshare.ledger.types import Tx, TxKind

DRAIN_S = 15.0
REGISTER_BATCH = 200


@dataclass(frozen=True)
class _Job:
    index: int
    seeds: tuple[bytes, ...]
    chain_id: str
    submit_url: str
    read_urls: tuple[str, ...]
    start_at: float  # time.time() at which to start
    seconds: float


def register_identities(
    network: Network, keys: Sequence[SigningKey], *, timeout: float = 60.0
) -> None:
    """Register ``keys`` as identities, signed by node 0's key, in order."""
    node_key = SigningKey(node_home.validator_seed(network.node_dir(0)))
    with LedgerClient([n.rpc for n in network.nodes], timeout=timeout) as client:
        nonce = client.next_nonce(node_key.public)
        for start in range(0, len(keys), REGISTER_BATCH):
            txs = [
                Tx.create(
                    TxKind.REGISTER_IDENTITY,
                    {"identity": f"load-{start + i}", "key": key.public.hex()},
                    nonce + start + i,
                    node_key,
                    chain=network.chain_id,
                )
                for i, key in enumerate(keys[start : start + REGISTER_BATCH])
            ]
            client.submit(txs, timeout=timeout)


def _client(job: _Job, out: multiprocessing.Queue) -> None:
    try:
        out.put(_drive(job))
    except Exception as exc:  # reported to the parent, which fails the run
        out.put({"error": f"client {job.index}: {type(exc).__name__}: {exc}"})


def _drive(job: _Job) -> dict:
    keys = [SigningKey(seed) for seed in job.seeds]
    nonces = [0] * len(keys)
    in_flight: dict[str, tuple[int, float]] = {}  # txid -> (slot, submitted at)
    latencies: list[float] = []
    committed_in_window = 0
    refused = 0
    failed = 0
    submitter = LedgerClient([job.submit_url])
    reader = LedgerClient([job.submit_url, *(u for u in job.read_urls if u != job.submit_url)])
    cursor = reader.height() + 1
    idle = list(range(len(keys)))
    while time.time() < job.start_at:
        time.sleep(0.005)
    end = job.start_at + job.seconds
    drain_end = end + DRAIN_S
    counter = 0
    while True:
        now = time.time()
        if now >= drain_end or (now >= end and not in_flight):
            break
        if idle and now < end:
            txs = []
            for slot in idle:
                counter += 1
                body = {
                    "record": f"r{counter}",
                    "actor": f"load-{job.index}",
                    "area": "institution",
                }
                txs.append(
                    (
                        slot,
                        Tx.create(
                            TxKind.ACCESS, body, nonces[slot], keys[slot], chain=job.chain_id
                        ),
                    )
                )
            idle = []
            sent_at = time.time()
            answers = submitter.broadcast([tx.encode() for _, tx in txs], checked=False)
            for (slot, tx), (code, _log) in zip(txs, answers, strict=True):
                if code == 0:
                    in_flight[tx.txid] = (slot, sent_at)
                else:
                    refused += 1  # this slot stops: its nonce state is unknown
        progressed = False
        while True:  # read blocks until the next one is not decided yet
            seen_at = time.time()
            decided = reader.block_txs(cursor)
            if decided is None:
                break
            for committed in decided:
                entry = in_flight.pop(committed.txid, None)
                if entry is None:
                    continue
                slot, sent_at = entry
                if committed.code != 0:
                    failed += 1
                    continue
                latencies.append(seen_at - sent_at)
                if seen_at <= end:
                    committed_in_window += 1
                nonces[slot] += 1
                idle.append(slot)
            cursor += 1
            progressed = True
        if not progressed:
            time.sleep(0.02)
    submitter.close()
    reader.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "committed_in_window": committed_in_window,
        "latencies": latencies,
        "refused": refused,
        "failed": failed,
        "lost": len(in_flight),
    }


def run_load(directory: Path, *, seconds: float, clients: int, outstanding: int = 64) -> dict:
    """Measure committed tx/s and latency with ``clients`` × ``outstanding`` in flight."""
    network = Network.load(directory)
    keys = [SigningKey.generate() for _ in range(clients * outstanding)]
    register_identities(network, keys)
    urls = tuple(n.rpc for n in network.nodes)
    start_at = time.time() + 2.0
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    jobs = [
        _Job(
            c,
            tuple(k.seed for k in keys[c * outstanding : (c + 1) * outstanding]),
            network.chain_id,
            urls[c % len(urls)],
            urls,
            start_at,
            seconds,
        )
        for c in range(clients)
    ]
    procs = [ctx.Process(target=_client, args=(job, out)) for job in jobs]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + DRAIN_S + 120) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise LedgerUnavailable("; ".join(errors))
    latencies = sorted(x for r in results for x in r["latencies"])
    committed = sum(r["committed_in_window"] for r in results)
    return {
        "system": "medshare-cometbft",
        "broadcast": "async",
        "nodes": len(network.nodes),
        "clients": clients,
        "outstanding_per_client": outstanding,
        "seconds": seconds,
        "committed": committed,
        "tx_per_s": committed / seconds,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else None,
        "refused": sum(r["refused"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "not_committed_after_drain": sum(r["lost"] for r in results),
        "client_cpu_s": sum(r["cpu_s"] for r in results),
    }
