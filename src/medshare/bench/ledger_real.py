"""The ledger on real processes: CometBFT + our app under load, next to etcd, same run.

Rows:

* ``system = "medshare-cometbft"``: ``medshare net up`` on 127.0.0.1 and ``run_load``
  (clients × outstanding transactions, each committed by the elected committee); with the
  CPU seconds every process used during the window, per committed block, split into
  validators and full nodes, and the p2p bytes (total and consensus votes) per block read
  from each node's Prometheus metrics.
* ``system = "etcd"``: a 3-member etcd cluster on loopback, sequential and concurrent
  writes (:mod:`medshare.bench.etcd`), the reference row.
* The committee comparison: the same N nodes once with an elected committee of m and once
  with every node a validator (``committee = N``), same load.

Nothing here is timed by a test: ``medshare bench ledger`` writes these rows to its JSON.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from medshare.bench import etcd
from medshare.bench.timing import process_cpu_seconds
from medshare.ledger.cometbft import network
from medshare.ledger.cometbft.load import run_load


def _cpu(net: network.Network) -> dict[int, dict[str, float]]:
    return {
        i: {role: process_cpu_seconds(pid) for role, pid in network.pids(net, i).items()}
        for i in range(len(net.nodes))
    }


_METRIC = re.compile(
    r'^cometbft_p2p_message_receive_bytes_total\{[^}]*message_type="([^"]+)"[^}]*\} (\S+)$', re.M
)


def _p2p_bytes(net: network.Network) -> dict[str, float]:
    """Bytes received over p2p by every node, by message type (from Prometheus)."""
    totals: dict[str, float] = {}
    with httpx.Client(timeout=5.0) as http:
        for node in net.nodes:
            try:
                text = http.get(node.metrics).text
            except httpx.HTTPError:
                continue
            for kind, value in _METRIC.findall(text):
                totals[kind] = totals.get(kind, 0.0) + float(value)
    return totals


def _validators(net: network.Network) -> set[int]:
    state = network.status(net)
    names = {v["name"] for v in state["validators"] or []}
    return {n.index for n in net.nodes if n.name in names}


def measure_network(
    root: Path,
    *,
    nodes: int,
    committee: int,
    seconds: float,
    clients: int,
    outstanding: int,
) -> dict:
    """One row: a fresh network of ``nodes`` (``committee`` validators) under load."""
    directory = Path(tempfile.mkdtemp(prefix="n", dir=root))
    net = network.up(directory, nodes=nodes, committee=committee, epoch=100_000)
    try:
        time.sleep(2.0)
        validators = _validators(net)
        height0 = network.status(net)["height"]
        cpu0, bytes0 = _cpu(net), _p2p_bytes(net)
        load = run_load(directory, seconds=seconds, clients=clients, outstanding=outstanding)
        cpu1, bytes1 = _cpu(net), _p2p_bytes(net)
        height1 = network.status(net)["height"]
    finally:
        network.down(net)
        shutil.rmtree(directory, ignore_errors=True)
    blocks = max(1, height1 - height0)

    def spent(indices: set[int], role: str) -> float:
        return sum(cpu1[i].get(role, 0) - cpu0[i].get(role, 0) for i in indices)

    everyone = set(range(nodes))
    full = everyone - validators
    votes = bytes1.get("consensus_Vote", 0) - bytes0.get("consensus_Vote", 0)
    total_bytes = sum(bytes1.values()) - sum(bytes0.values())
    return {
        **load,
        "validators": len(validators),
        "blocks": blocks,
        "block_txs": load["committed"] / blocks,
        "cpu_s": spent(everyone, "cometbft") + spent(everyone, "app"),
        "cpu_s_per_block": (spent(everyone, "cometbft") + spent(everyone, "app")) / blocks,
        "cpu_s_per_block_validator": (spent(validators, "cometbft") + spent(validators, "app"))
        / blocks
        / max(1, len(validators)),
        "cpu_s_per_block_full_node": (spent(full, "cometbft") + spent(full, "app"))
        / blocks
        / len(full)
        if full
        else None,
        "signatures_per_commit": len(validators),
        "vote_bytes_per_block": votes / blocks,
        "p2p_bytes_per_block": total_bytes / blocks,
        "note": "CPU and bytes cover the whole load run (identity registration included)",
    }


def run(quick: bool, progress: Callable[[str], None] = lambda _: None) -> dict:
    seconds = 8.0 if quick else 20.0
    root = Path(tempfile.mkdtemp(prefix="mb", dir="/tmp"))
    rows: list[dict] = []
    try:
        progress("CometBFT: 4 validators, 4 clients")
        rows.append(
            {
                "case": "4 validators, 4 clients",
                **measure_network(
                    root, nodes=4, committee=4, seconds=seconds, clients=4, outstanding=256
                ),
            }
        )
        if etcd.etcd_binary() is not None:
            progress("etcd: 3 members")
            for row in etcd.run_reference(root / "etcd", seconds=seconds, clients=4):
                rows.append({"case": f"etcd 3 members, {row['clients']} client(s)", **row})
        else:
            rows.append(
                {
                    "case": "etcd",
                    "system": "etcd",
                    "skipped": "etcd not installed (apt-get install etcd-server)",
                }
            )
        if not quick:
            for committee in (4, 16):
                progress(f"CometBFT: 16 nodes, {committee} validators")
                rows.append(
                    {
                        "case": f"16 nodes, {committee} validators",
                        **measure_network(
                            root,
                            nodes=16,
                            committee=committee,
                            seconds=seconds,
                            clients=4,
                            outstanding=64,
                        ),
                    }
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary: dict = {}
    ours = rows[0]
    etcd_rows = [r for r in rows if r.get("system") == "etcd" and "tx_per_s" in r]
    if etcd_rows:
        summary["tx_per_s_vs_etcd_concurrent"] = ours["tx_per_s"] / max(
            r["tx_per_s"] for r in etcd_rows
        )
    summary["meets_1000_tx_per_s"] = ours["tx_per_s"] >= 1000
    summary["meets_p50_below_1s"] = ours["p50_ms"] is not None and ours["p50_ms"] < 1000
    by_case = {r["case"]: r for r in rows}
    small, big = by_case.get("16 nodes, 4 validators"), by_case.get("16 nodes, 16 validators")
    if small and big:
        summary["cpu_per_block_all_vs_committee_at_16"] = (
            big["cpu_s_per_block"] / small["cpu_s_per_block"]
        )
        summary["tx_per_s_committee_vs_all_at_16"] = small["tx_per_s"] / big["tx_per_s"]
    return {"rows": rows, "summary": summary}
