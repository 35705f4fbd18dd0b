"""``medshare bench service``: the records service end to end, in one embedded consortium.

One consortium is built in a temporary directory (3 hospitals, 7 ledger nodes, committee of
4, SQLite, real keys) and three things are measured in it, in this order:

* **Read of a 100 kB record** (DESIGN §7: auth, fetch, unwrap, verify, log < 50 ms): an
  Observation with a ~100,000-character ``valueString`` ingested at H001 (department 02,
  General practice), read through the institution area (a department-02 physician's CP-ABE
  key) and through the personal area (a one-record H-KAC share). Every repeat times the whole
  :meth:`~medshare.service.api.MedShare.read` and, inside the same call, its parts: the
  reader's device (``open_on_device``: CP-ABE or KAC decrypt, DEK unwrap, AEAD, salted
  digest, with the wallet lookups it needs), the hospital's fetch (``_check_anchor`` and
  ``_blob``: ledger anchor, blob hash) and the ledger log (``_log_access``: the access tx
  committed on the 7-node in-process ledger); ``other`` is the rest (the gate's grant and
  key-record checks, principal and record lookups). Right after each read the bare crypto
  step is timed (interleaved, so both see the same noise): ``abe.decrypt`` of the area-key
  ciphertext alone, or ``hkac.open_record`` alone; the device step's ratio to it is
  reported. ``met`` compares the median end-to-end read with the target.
* **Ingest throughput**: Synthea-style bundles (:func:`medshare.records.synthetic.generate_bundle`),
  one ingest call per patient bundle after one untimed warm-up bundle (which creates the
  area keys of the common departments), with the per-record cost split into classification,
  personal-area sealing (KAC encrypt), blob store writes, the rest of protection (AES seal,
  wraps), ledger anchoring and the remainder (parsing, enrolment, SQL commit).
* **Patient key-management overhead on the real service state**: a patient with N records
  (the Patient resource and N - 1 small Observations spread round-robin over 10 departments
  by their SNOMED CT codes), then real ``service.share(...)`` grants of one record, a
  10-record set, one department and the whole record. Reported: the patient's secret (the
  32-B seed), the public directory as stored, the shares' key bytes (96 B per key) and file
  bytes, next to one-key-per-record baselines (32-B AES or 96-B KAC keys per record covered).
  The model (:func:`medshare.crypto.hkac.key_overhead`) is included twice: at its defaults,
  and at the service's parameters (its ``n``, slab size and the same 10 departments), where
  its key counts must equal the measured ones.

Times are medians (and p90) over the repeats, in milliseconds with ``time.perf_counter``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import string
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medshare.crypto import abe, group, hkac, kac
from medshare.crypto.group import G2_BYTES
from medshare.records import synthetic
from medshare.service import db
from medshare.service.api import MedShare
from medshare.service.areas import Area, top_department
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.roster import StaffMember

TARGET_MS = 50.0
RECORD_CHARS = 100_000
HOSPITALS = ("H001", "H002", "H003")
NODES = 7
COMMITTEE = 4
READER = "dr.gp@H001"
ROSTER = (StaffMember(READER, "H001", "02", "physician"),)
SHARE_READER = "dr.friend"
SHARE_GRANTEE = "family:bench"
BIG_PATIENT = "bench-read"
BIG_RECORD = "Observation/bench-100kb"
SEED = 11
SNOMED = "http://snomed.info/sct"
# Ten departments, as in the model: 02 by default (no code), the others by a SNOMED CT code
# of the default classification rules (records/data/classification.json).
DEPARTMENT_CODES: tuple[tuple[str, str | None], ...] = (
    ("02", None),
    ("0304", "38341003"),
    ("0307", "44054006"),
    ("0305", "271737000"),
    ("1103", "195662009"),
    ("1102", "444814009"),
    ("1101", "65363002"),
    ("0301", "233604007"),
    ("0303", "230690007"),
    ("0302", "68496003"),
)
MODEL_SIZES = (10, 100, 1000)
SHARE_PATTERNS = ("one record", "10 records (set)", "one department", "whole record (all)")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    repeats: int
    ingest_patients: int
    ingest_records: int
    key_sizes: tuple[int, ...]

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(repeats=10, ingest_patients=4, ingest_records=30, key_sizes=(10, 100))
        return cls(repeats=40, ingest_patients=12, ingest_records=40, key_sizes=MODEL_SIZES)


# --- timing helpers --------------------------------------------------------------------------


class _Stopwatch:
    """Accumulated milliseconds per label, fed by wrapped methods."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.ms.clear()

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ms[label] += (time.perf_counter() - start) * 1e3

        return timed


@contextmanager
def _instrumented(watch: _Stopwatch, targets: list[tuple[object, str, str]]) -> Iterator[None]:
    """Shadow ``owner.name`` with a timed wrapper (an instance attribute) while inside."""
    for owner, name, label in targets:
        setattr(owner, name, watch.wrap(label, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, _ in targets:
            delattr(owner, name)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def _r(value: float) -> float:
    return round(value, 3)


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "backend": group.BACKEND,
    }


# --- the consortium and its records -------------------------------------------------------------


def build_consortium(root: Path) -> MedShare:
    config = ServiceConfig(
        data_dir=root / "data", hospitals=HOSPITALS, nodes=NODES, committee=COMMITTEE
    )
    return init(config, roster=ROSTER)


def _bundle(resources: list[dict[str, Any]]) -> bytes:
    entries = [{"resource": r} for r in resources]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def _patient(pid: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Bench"]}]}


def _ingest(service: MedShare, hospital: str, data: bytes) -> int:
    report = service.ingest(hospital, [data])
    if report.rejected:
        raise RuntimeError(f"benchmark ingest rejected: {report.rejected[:3]}")
    return report.records


def big_record_bundle(chars: int = RECORD_CHARS) -> tuple[bytes, str]:
    """A Bundle of the benchmark's patient and its ~100 kB free-text Observation (filed in
    department 02); (the bundle's bytes, the Observation's record id)."""
    rng = random.Random(SEED)
    text = "".join(rng.choices(string.ascii_letters + string.digits + " .,", k=chars))
    observation = {
        "resourceType": "Observation",
        "id": BIG_RECORD.split("/", 1)[1],
        "status": "final",
        "code": {"text": "Free-text clinical note (benchmark)"},
        "subject": {"reference": f"Patient/{BIG_PATIENT}"},
        "valueString": text,
    }
    return _bundle([_patient(BIG_PATIENT, "Read"), observation]), BIG_RECORD


def big_record(
    service: MedShare, chars: int = RECORD_CHARS, *, reader: str = READER
) -> tuple[str, int]:
    """Ingest the ~100 kB Observation at H001; (record id, its size in bytes, as ``reader``,
    a department-02 physician, reads it)."""
    bundle, record = big_record_bundle(chars)
    _ingest(service, "H001", bundle)
    row = next(r for r in service.records_of(BIG_PATIENT) if r["id"] == record)
    if row["dept"] != "02":
        raise RuntimeError(f"the benchmark record went to department {row['dept']}, not 02")
    size = len(service.read(reader, record, area=Area.INSTITUTION).resource)
    return record, size


# --- 1. reads ----------------------------------------------------------------------------------


def _institution_bound(service: MedShare, record_id: str) -> Callable[[], object]:
    """``abe.decrypt`` of the record's institution area-key ciphertext, objects pre-parsed."""
    with service.sessions() as session:
        record = session.get(db.Record, record_id)
        scope = f"institution/{record.hospital}/{top_department(record.dept, service.taxonomy)}"
        area_key = session.execute(
            select(db.AreaKey).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one()
        authority, key_id = area_key.authority, area_key.id
        ciphertext = area_key.abe_ciphertext
        public_bytes = session.get(db.Hospital, authority).abe_public
    public = abe.AbePublicKey.from_bytes(public_bytes)
    key = service.wallets.abe_key(READER, authority)
    ct = abe.AbeCiphertext.from_bytes(ciphertext)
    context = key_id.encode()
    return lambda: abe.decrypt(public, key, ct, context=context)


def _personal_bound(service: MedShare, record_id: str, share: hkac.Share) -> Callable[[], object]:
    """``hkac.open_record`` with the share's key, the KAC header pre-parsed."""
    with service.sessions() as session:
        header = session.get(db.Record, record_id).kac_header
    ct = kac.KacCiphertext.from_bytes(header)
    params = service.params
    return lambda: hkac.open_record(params, share, ct, record_id)


def bench_reads(
    service: MedShare, record_id: str, size: int, repeats: int, progress: Progress
) -> list[dict[str, Any]]:
    """Both areas, interleaved per repeat: read (with its breakdown), then the bare bound."""
    progress("reads: preparing the share and the bounds")
    with service.sessions() as session:
        patient = session.get(db.Record, record_id).patient
    share = service.share(patient, SHARE_READER, records=[record_id])
    cases = {
        Area.INSTITUTION: (READER, None, _institution_bound(service, record_id)),
        Area.PERSONAL: (SHARE_READER, share, _personal_bound(service, record_id, share)),
    }
    watch = _Stopwatch()
    targets = [
        (service, "open_on_device", "decrypt"),
        (service, "_check_anchor", "fetch"),
        (service, "_blob", "fetch"),
        (service, "_log_access", "log"),
    ]
    samples: dict[Area, dict[str, list[float]]] = {a: defaultdict(list) for a in cases}
    with _instrumented(watch, targets):
        for area, (who, key, bound) in cases.items():  # warm-up: caches, first-use tables
            service.read(who, record_id, area=area, share=key)
            bound()
        for i in range(repeats):
            progress(f"reads: repeat {i + 1} of {repeats}")
            for area, (who, key, bound) in cases.items():
                watch.reset()
                start = time.perf_counter()
                result = service.read(who, record_id, area=area, share=key)
                total = _ms_since(start)
                if len(result.resource) != size:
                    raise RuntimeError(f"{area.value} read returned {len(result.resource)} bytes")
                start = time.perf_counter()
                bound()
                bound_ms = _ms_since(start)
                parts = dict(watch.ms)
                got = samples[area]
                got["total"].append(total)
                got["bound"].append(bound_ms)
                for label in ("decrypt", "fetch", "log"):
                    got[label].append(parts[label])
                got["other"].append(total - parts["decrypt"] - parts["fetch"] - parts["log"])
    rows = []
    for area, got in samples.items():
        median = _median(got["total"])
        decrypt, bound = _median(got["decrypt"]), _median(got["bound"])
        rows.append(
            {
                "area": area.value,
                "record_kb": round(size / 1000, 1),
                "record_bytes": size,
                "repeats": repeats,
                "median_ms": _r(median),
                "p90_ms": _r(_p90(got["total"])),
                "decrypt_ms": _r(decrypt),
                "fetch_ms": _r(_median(got["fetch"])),
                "log_ms": _r(_median(got["log"])),
                "other_ms": _r(_median(got["other"])),
                "bound_ms": _r(bound),
                "bound_op": "abe.decrypt" if area is Area.INSTITUTION else "hkac.open_record",
                "decrypt_ratio": _r(decrypt / bound),
                "target_ms": TARGET_MS,
                "met": median < TARGET_MS,
            }
        )
    return rows


# --- 2. ingest ---------------------------------------------------------------------------------


def bench_ingest(
    service: MedShare, patients: int, records: int, progress: Progress
) -> dict[str, Any]:
    """Records/s over one ingest call per bundle, and the per-record cost split."""
    bundles = [
        json.dumps(synthetic.generate_bundle(SEED, i, records)).encode()
        for i in range(patients + 1)
    ]
    progress("ingest: warm-up bundle")
    _ingest(service, "H002", bundles[0])
    watch = _Stopwatch()
    targets = [
        (service.classifier, "classify_all", "classify"),
        (service, "_protect", "protect"),
        (service, "_seal_personal", "personal_seal"),
        (service.blobs, "put_many", "blob_put"),  # an ingest's blobs, stored at once
        (service, "_anchor", "anchor"),
    ]
    stored = 0
    with _instrumented(watch, targets):
        start = time.perf_counter()
        for i, data in enumerate(bundles[1:]):
            progress(f"ingest: bundle {i + 1} of {patients}")
            stored += _ingest(service, "H002", data)
        total = _ms_since(start)
    parts = dict(watch.ms)
    split = {
        "classify": parts["classify"],
        "personal_seal": parts["personal_seal"],
        "blob_put": parts["blob_put"],
        "protect_rest": parts["protect"] - parts["personal_seal"],
        "anchor": parts["anchor"],
    }
    split["other"] = total - sum(split.values())
    return {
        "hospital": "H002",
        "patients": patients,
        "records_per_bundle": records,
        "warmup_bundles": 1,
        "records": stored,
        "seconds": round(total / 1e3, 3),
        "records_per_s": round(stored / (total / 1e3), 1),
        "per_record_ms": {k: _r(v / stored) for k, v in split.items()},
        "per_record_total_ms": _r(total / stored),
    }


# --- 3. key-management overhead ----------------------------------------------------------------


def _key_patient_resources(pid: str, n_records: int) -> list[dict[str, Any]]:
    """The Patient and ``n_records - 1`` Observations, round-robin over the 10 departments
    (the Patient itself goes to 02, the first of them)."""
    resources = [_patient(pid, f"Keys{n_records}")]
    for i in range(1, n_records):
        _, code = DEPARTMENT_CODES[i % len(DEPARTMENT_CODES)]
        concept = {"coding": [{"system": SNOMED, "code": code}]} if code else {"text": "Visit note"}
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-obs-{i:05d}",
                "status": "final",
                "code": concept,
                "subject": {"reference": f"Patient/{pid}"},
                "valueString": f"note {i}",
            }
        )
    return resources


def _share_row(share: hkac.Share, directory: hkac.Directory) -> dict[str, int]:
    covered = len(directory.records_in(share.classes()))
    return {
        "keys": len(share.keys),
        "size_bytes": share.size_bytes,
        "file_bytes": len(share.to_bytes()),
        "records_covered": covered,
        "per_record_32B_bytes": 32 * covered,
        "per_record_96B_bytes": G2_BYTES * covered,
    }


def measure_key_overhead(service: MedShare, n_records: int) -> dict[str, Any]:
    """A patient with ``n_records`` records on the real service, and four real shares."""
    pid = f"bench-keys-{n_records}"
    resources = _key_patient_resources(pid, n_records)
    _ingest(service, "H003", _bundle(resources))
    depts = {r["dept"] for r in service.records_of(pid)}
    expected = {code for code, _ in DEPARTMENT_CODES[: min(n_records, len(DEPARTMENT_CODES))]}
    if depts != expected:
        raise RuntimeError(f"records went to departments {sorted(depts)}, not {sorted(expected)}")
    ids = [f"{r['resourceType']}/{r['id']}" for r in resources]
    shares = {
        "one record": service.share(pid, SHARE_GRANTEE, records=ids[1:2]),
        "10 records (set)": service.share(pid, SHARE_GRANTEE, records=ids[:10]),
        "one department": service.share(pid, SHARE_GRANTEE, dept=DEPARTMENT_CODES[0][0]),
        "whole record (all)": service.share(pid, SHARE_GRANTEE, everything=True),
    }
    with service.sessions() as session:
        row = session.get(db.Patient, pid)
        directory_bytes = row.directory
        publics = dict(row.block_publics)
    directory = hkac.Directory.from_bytes(directory_bytes)
    seed = service.wallets.seed(pid)
    return {
        "n_records": len(directory),
        "departments": len(directory.departments),
        "slabs": sum(len(directory.slabs_of(c)) for c in directory.departments),
        "blocks": len(directory.blocks),
        "kac_classes": directory.n,
        "slab_size": directory.slab_size,
        "patient_seed_bytes": len(seed.secret_bytes()),
        "directory_bytes": len(directory_bytes),
        "allocation_bytes": len(directory.without_records().to_bytes()),
        "published_block_keys": len(publics),
        "published_block_key_bytes": sum(len(v) // 2 for v in publics.values()),
        "per_record_32B_bytes": 32 * len(directory),
        "per_record_96B_bytes": G2_BYTES * len(directory),
        "shares": {label: _share_row(s, directory) for label, s in shares.items()},
    }


def bench_key_overhead(
    service: MedShare, sizes: tuple[int, ...], progress: Progress
) -> dict[str, Any]:
    measured = []
    for n_records in sizes:
        progress(f"key overhead: a patient with {n_records} records")
        measured.append(measure_key_overhead(service, n_records))
    config = service.config
    at_service = hkac.key_overhead(
        sizes, departments=len(DEPARTMENT_CODES), n=config.kac_classes, slab_size=config.slab_size
    )
    for row, model_row in zip(measured, at_service["rows"], strict=True):
        row["keys_match_model"] = all(
            row["shares"][label]["keys"] == model_row["shares"][label]["keys"]
            for label in SHARE_PATTERNS
        )
    return {
        "measured": measured,
        "model": hkac.key_overhead(MODEL_SIZES),
        "model_at_service_params": at_service,
    }


# --- the whole run -----------------------------------------------------------------------------


def run(
    quick: bool,
    progress: Progress = lambda _: None,
    *,
    repeats: int | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Build the consortium, run the three measurements, return the JSON-ready report.

    ``repeats`` overrides the plan's read repeats; ``workdir`` keeps the consortium there
    instead of in a temporary directory removed afterwards.
    """
    plan = Plan.for_mode(quick)
    reads = repeats if repeats is not None else plan.repeats
    with tempfile.TemporaryDirectory(prefix="medshare-bench-") as tmp:
        root = workdir if workdir is not None else Path(tmp)
        progress(f"consortium: {len(HOSPITALS)} hospitals, {NODES} nodes, committee {COMMITTEE}")
        service = build_consortium(root)
        try:
            progress("ingesting the 100 kB record")
            record_id, size = big_record(service)
            read_rows = bench_reads(service, record_id, size, reads, progress)
            ingest = bench_ingest(service, plan.ingest_patients, plan.ingest_records, progress)
            overhead = bench_key_overhead(service, plan.key_sizes, progress)
        finally:
            service.close()
    return {
        "quick": quick,
        "machine": machine(),
        "consortium": {
            "hospitals": len(HOSPITALS),
            "nodes": NODES,
            "committee": COMMITTEE,
            "database": "sqlite",
        },
        "read": read_rows,
        "ingest": ingest,
        "key_overhead": overhead,
    }
