"""``medshare bench http``: reads and ingest over HTTP between separate parties, under load.

The consortium is the one ``medshare consortium up`` makes: three hospitals, each its own
data directory, SQLite database, blob replica, attribute authority, CometBFT node and
server process, and a regulator's node (4 validators), all on 127.0.0.1. Every person
is a wallet folder made the way a user makes it: the records officers' wallets from the
one-time codes ``up`` prints; the readers (department-02 physicians of H001) enrolled by
their officer and given their CP-ABE keys by the two-party issuance protocol. Nothing
is in-process between the parties: the wallets run in this process (one thread and one
connection each), the servers and nodes are their own processes.

What a read measures is the read a clinician's wallet makes: a signed request to H001's
server, the server's gate, the ``access`` tx committed on the ledger, the sealed release
(blob, CP-ABE area-key ciphertext, wrapped DEK) sent back, and the decryption in the
wallet with the reader's own key, digest checked. The record is a ~100 kB Observation of
department 02, ingested by H001's officer and replicated to a peer. For each concurrency
level ``c`` the ``c`` wallets each read it ``reads`` times back to back; reported are the
latency percentiles over all reads of the level (nearest rank), the throughput (reads per
second of wall time), and the ledger blocks the reads' access txs landed in.

Ingest: each hospital's records officer posts Synthea-style bundles to their own
hospital's server, all three at once (each server encrypts, replicates to a peer over
HTTP and anchors on the shared ledger); records per second per hospital.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medshare.api.sealed_record import open_sealed
from medshare.bench.service import big_record_bundle, machine
from medshare.crypto import abe
from medshare.ledger.cometbft.client import LedgerClient
from medshare.records import synthetic
from medshare.server import consortium
from medshare.wallet import device
from medshare.wallet.device import PersonalWallet

HOSPITALS = 3
READ_AT = "H001"
TARGET_P50_MS = 150.0
TARGET_P99_MS = 400.0
MAX_WALLETS = 8
READERS = tuple(f"dr.gp{i}@{READ_AT}" for i in range(MAX_WALLETS))
TARGET_INGEST_PER_S = 200.0

Progress = Callable[[str], None]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


class _Wallet:
    """One reader's wallet folder: their identity and CP-ABE keys, a signed client of its
    own (its own connection)."""

    def __init__(self, folder: Path) -> None:
        wallet = PersonalWallet(folder)
        self.who = wallet.info().identity
        self.client = wallet.client()
        self.keys = [
            abe.AbeUserKey.from_bytes(p.read_bytes())
            for p in wallet.keys.abe_key_files(self.who, READ_AT)
        ]
        self.public = self.client.authority_public(READ_AT)

    def read(self, record: str) -> tuple[float, str, int]:
        """One read end to end: (milliseconds, the access txid, plaintext bytes)."""
        start = time.perf_counter()
        sealed = self.client.sealed_record(record, area="institution")
        data = open_sealed(sealed, abe_keys=self.keys, authority_public=self.public)
        return (time.perf_counter() - start) * 1e3, sealed.txid, len(data)


def _level(wallets: list[_Wallet], reads: int, record: str) -> dict[str, Any]:
    """Every wallet reads ``reads`` times at once; the latencies, txids and wall time."""
    latencies: list[float] = []
    txids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(wallets))

    def run(wallet: _Wallet) -> None:
        barrier.wait()
        for _ in range(reads):
            try:
                ms, txid, _ = wallet.read(record)
            except Exception as exc:  # a failed read is counted and named, not hidden
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(ms)
                txids.append(txid)

    threads = [threading.Thread(target=run, args=(w,)) for w in wallets]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "txids": txids, "errors": errors,
            "seconds": time.perf_counter() - start}  # fmt: skip


def run(quick: bool, progress: Progress | None = None) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    levels = (1, 4) if quick else (1, 2, 4, 8)
    reads = 5 if quick else 20
    bundles, records = (2, 30) if quick else (6, 40)
    with tempfile.TemporaryDirectory(prefix="ms-bench-http-") as tmp:
        root = Path(tmp)
        folder = root / "consortium"
        say(f"consortium up: {HOSPITALS} hospitals and a regulator, each its own processes")
        try:
            summary = consortium.up(folder, hospitals=HOSPITALS, precompute=0)
            hospitals = {h["code"]: h for h in summary["hospitals"]}
            officers = {
                code: _wallet(root / f"officer@{code}", h["api"], h["officer_code"])
                for code, h in hospitals.items()
            }
            say(f"{max(levels)} readers enrolled at {READ_AT}; keys by the issuance protocol")
            readers = [
                _wallet(root / who, hospitals[READ_AT]["api"], _staff_code(officers[READ_AT], who))
                for who in READERS[: max(levels)]
            ]
            record = _big_record(officers[READ_AT])
            size = 0
            measured = []
            for level in levels:
                say(f"{level} concurrent wallet(s) × {reads} reads")
                wallets = [_Wallet(folder) for folder in readers[:level]]
                _, _, size = wallets[0].read(record)  # warm-up: connections, caches
                measured.append((level, _level(wallets, reads, record)))
                for wallet in wallets:
                    wallet.client.close()
            say(f"ingest: {len(officers)} records officers, each to their own hospital, at once")
            ingest = _ingest(officers, bundles, records)
            say("blocks of the reads' access txs")
            rpc = hospitals[READ_AT]["node_rpc"]
            rows = [_row(level, got, _heights(rpc, got)) for level, got in measured]
        finally:
            if (folder / consortium.CONSORTIUM_FILE).exists():
                consortium.down(folder)
    return {
        "benchmark": "http",
        "machine": machine(),
        "quick": quick,
        "setup": {"hospitals": HOSPITALS, "nodes": len(summary["hospitals"]) + 1,
                  "committee": consortium.GENESIS_COMMITTEE,
                  "parties": "separate processes: one server and one CometBFT node per "
                             "hospital, a regulator's node; wallets in this process",
                  "record": record, "record_bytes": size, "area": "institution",
                  "target_p50_ms": TARGET_P50_MS, "target_p99_ms": TARGET_P99_MS},
        "levels": rows,
        "ingest": ingest,
    }  # fmt: skip


def _wallet(folder: Path, api: str, code: str) -> Path:
    """``medshare wallet new``: the holder's keys made in ``folder`` (staff get their CP-ABE
    keys from the authorities that offer them)."""
    device.enrol(folder, api, code)
    return folder


def _staff_code(officer: Path, who: str) -> str:
    """The one-time code ``officer`` obtains for ``who``, a department-02 physician."""
    body = {"staff": who, "role": "physician", "dept": "02", "days": 1}
    with PersonalWallet(officer).client() as client:
        return client.post_json("/v1/enrolments", json.dumps(body).encode())["code"]


def _big_record(officer: Path) -> str:
    """The ~100 kB Observation, ingested by ``officer``; its record id."""
    bundle, record = big_record_bundle()
    with PersonalWallet(officer).client() as client:
        report = client.post_json("/v1/ingest", bundle)
    if report["rejected"] or report["records"] < 1:
        raise RuntimeError(f"the benchmark record was not ingested: {report['rejected'][:3]}")
    return record


def _ingest(officers: dict[str, Path], bundles: int, records: int) -> dict[str, Any]:
    """Each hospital's records officer posts ``bundles`` Synthea-style bundles (one patient
    of ``records`` records each) to their own hospital's ``/v1/ingest``, all officers at
    once; records per second per hospital and in all, over the wall time of the phase."""
    per_hospital: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(len(officers))

    def run(index: int, code: str, officer: Path) -> None:
        client = PersonalWallet(officer).client()
        payloads = [
            json.dumps(synthetic.generate_bundle(100 + index, i, records)).encode()
            for i in range(bundles)
        ]
        stored = rejected = 0
        barrier.wait()
        start = time.perf_counter()
        try:
            for payload in payloads:
                report = client.post_json("/v1/ingest", payload)
                stored += report["records"]
                rejected += len(report["rejected"])
        finally:
            seconds = time.perf_counter() - start
            client.close()
            with lock:
                per_hospital[code] = {"records": stored, "rejected": rejected,
                                      "seconds": round(seconds, 2),
                                      "records_per_s": round(stored / seconds, 1)}  # fmt: skip

    threads = [
        threading.Thread(target=run, args=(i, code, officer))
        for i, (code, officer) in enumerate(officers.items())
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    total = sum(h["records"] for h in per_hospital.values())
    slowest = min((h["records_per_s"] for h in per_hospital.values()), default=0.0)
    return {
        "hospitals": per_hospital,
        "records": total,
        "seconds": round(wall, 2),
        "records_per_s": round(total / wall, 1) if wall else None,
        "target_per_hospital_per_s": TARGET_INGEST_PER_S,
        "met": len(per_hospital) == len(officers) and slowest >= TARGET_INGEST_PER_S,
    }


def _heights(rpc: str, got: dict[str, Any]) -> list[int]:
    """The heights the level's access txs committed at (read from a node's tx index)."""
    with LedgerClient([rpc]) as ledger:
        return [found.height for t in got["txids"] if (found := ledger.find(t)) is not None]


def _row(level: int, got: dict[str, Any], heights: list[int]) -> dict[str, Any]:
    lat = got["latencies"]
    blocks = len(set(heights))
    return {
        "wallets": level,
        "reads": len(lat),
        "errors": len(got["errors"]),
        "first_errors": got["errors"][:3],
        "p50_ms": round(_percentile(lat, 0.5), 1) if lat else None,
        "p90_ms": round(_percentile(lat, 0.9), 1) if lat else None,
        "p99_ms": round(_percentile(lat, 0.99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "reads_per_s": round(len(lat) / got["seconds"], 2),
        "blocks": blocks,
        "reads_per_block": round(len(heights) / blocks, 2) if blocks else None,
        "met": bool(lat) and not got["errors"]
        and _percentile(lat, 0.5) < TARGET_P50_MS and _percentile(lat, 0.99) < TARGET_P99_MS,
    }  # fmt: skip
