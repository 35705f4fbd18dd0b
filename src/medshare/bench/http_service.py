"""``medshare bench http``: reads over HTTP between real processes, under concurrent load.

What it measures is the read a clinician's wallet makes: a signed request to the hospital
server process (``medshare hospital serve``), the server's gate, the ``access`` tx
committed on a real CometBFT network (node processes on 127.0.0.1), the sealed release
(blob, CP-ABE area-key ciphertext, wrapped DEK) sent back, and the decryption in the
wallet with the reader's own key, digest checked. Nothing is in-process between the
parties: the wallets run in this process (one thread each, as many wallets as the
concurrency level, each with its own identity and its own connection), the server and
the ledger nodes are their own processes.

The consortium is the one ``bench service`` builds (3 hospitals, SQLite, real keys) on a
smaller CometBFT network (4 nodes, committee 4) so that all of it fits a 2-core machine
beside the load: a ~100 kB Observation of department 02 at H001, read through the
institution area by department-02 physicians. For each concurrency level ``c`` the
``c`` wallets each read the record ``reads`` times back to back; reported are the
latency percentiles over all reads of the level, the throughput (reads per second of
wall time), and the ledger blocks the reads' access txs landed in (how many reads
shared a block). Percentiles are nearest-rank over the measured reads.
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
from medshare.bench.service import big_record, machine
from medshare.crypto import abe
from medshare.records import synthetic
from medshare.server.process import ServerProcess
from medshare.service import ledgers
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.roster import StaffMember
from medshare.service.wallets import Wallets
from medshare.wallet.client import HospitalClient

HOSPITALS = ("H001", "H002", "H003")
NODES = 4
COMMITTEE = 4
TARGET_P50_MS = 150.0
TARGET_P99_MS = 400.0
MAX_WALLETS = 8
READERS = tuple(f"dr.gp{i}@H001" for i in range(MAX_WALLETS))
OFFICERS = {code: f"records.office@{code}" for code in HOSPITALS}
TARGET_INGEST_PER_S = 200.0
START_TIMEOUT_S = 120

Progress = Callable[[str], None]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


class _Wallet:
    """One reader's wallet: their identity and CP-ABE keys, a signed client of its own."""

    def __init__(self, wallets: Wallets, who: str, url: str) -> None:
        self.who = who
        self.client = HospitalClient(url, who, wallets.identity(who))
        self.keys = [
            abe.AbeUserKey.from_bytes(p.read_bytes()) for p in wallets.abe_key_files(who, "H001")
        ]
        self.public = self.client.authority_public("H001")

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
        config = ServiceConfig(
            data_dir=root / "data", hospitals=HOSPITALS, nodes=NODES, committee=COMMITTEE,
            ledger="cometbft",
        )  # fmt: skip
        roster = tuple(StaffMember(who, "H001", "02", "physician") for who in READERS) + tuple(
            StaffMember(officer, code, "02", "records") for code, officer in OFFICERS.items()
        )
        say(f"consortium: {len(HOSPITALS)} hospitals, {NODES} CometBFT nodes")
        try:
            with init(config, roster=roster) as service:
                record, size = big_record(service, reader=READERS[0])
            say("hospital server process")
            server = ServerProcess(config.data_dir, root / "server.log")
            try:
                measured = []
                keys = Wallets(config.wallet_dir)
                for level in levels:
                    say(f"{level} concurrent wallet(s) × {reads} reads")
                    wallets = [_Wallet(keys, who, server.url) for who in READERS[:level]]
                    wallets[0].read(record)  # warm-up: connections, the server's caches
                    measured.append((level, _level(wallets, reads, record)))
                    for wallet in wallets:
                        wallet.client.close()
                say(f"ingest: {len(OFFICERS)} records officers posting bundles at once")
                ingest = _ingest(keys, server.url, bundles, records)
            finally:
                server.stop()
            say("blocks of the reads' access txs")
            rows = [_row(level, got, _heights(config, got)) for level, got in measured]
        finally:
            ledgers.stop(config)
    return {
        "benchmark": "http",
        "machine": machine(),
        "quick": quick,
        "setup": {"hospitals": len(HOSPITALS), "nodes": NODES, "committee": COMMITTEE,
                  "record": record, "record_bytes": size, "area": "institution",
                  "target_p50_ms": TARGET_P50_MS, "target_p99_ms": TARGET_P99_MS},
        "levels": rows,
        "ingest": ingest,
    }  # fmt: skip


def _ingest(keys: Wallets, url: str, bundles: int, records: int) -> dict[str, Any]:
    """Each hospital's records officer posts ``bundles`` Synthea-style bundles (one patient
    of ``records`` records each) to ``/v1/ingest``, all officers at once; records per
    second per hospital and in all, over the wall time of the whole phase."""
    per_hospital: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(len(OFFICERS))

    def run(index: int, code: str, officer: str) -> None:
        client = HospitalClient(url, officer, keys.identity(officer))
        payloads = [
            json.dumps(synthetic.generate_bundle(100 + index, i, records)).encode()
            for i in range(bundles)
        ]
        stored = rejected = 0
        barrier.wait()
        start = time.perf_counter()
        for payload in payloads:
            report = client.post_json("/v1/ingest", payload)
            stored += report["records"]
            rejected += len(report["rejected"])
        seconds = time.perf_counter() - start
        client.close()
        with lock:
            per_hospital[code] = {"records": stored, "rejected": rejected,
                                  "seconds": round(seconds, 2),
                                  "records_per_s": round(stored / seconds, 1)}  # fmt: skip

    threads = [
        threading.Thread(target=run, args=(i, code, officer))
        for i, (code, officer) in enumerate(OFFICERS.items())
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
        "met": len(per_hospital) == len(OFFICERS) and slowest >= TARGET_INGEST_PER_S,
    }


def _heights(config: ServiceConfig, got: dict[str, Any]) -> list[int]:
    """The heights the level's access txs committed at (read from the ledger's index)."""
    ledger = ledgers.open_ledger(config, None)
    try:
        return [found.height for t in got["txids"] if (found := ledger.find(t)) is not None]
    finally:
        ledger.close()


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
