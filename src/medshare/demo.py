"""``medshare demo --single-directory``: the whole story over one data directory (every
party's state in one folder: the test harness), every step checked. ``medshare demo``
runs the story with the parties apart (:mod:`medshare.demo_parties`).

Three hospitals and seven ledger nodes (CometBFT processes with our application, on
127.0.0.1) form a consortium with an elected committee; synthetic Synthea-style patients
are ingested; then each access area is tried, allowed and denied; a department share
opens a record added after it; shares expire and are revoked; a referral expires; a
researcher reads de-identified copies of consenting patients only; an emergency physician
breaks the glass; a leaked key is traced to its holder and revoked, a forged one blamed on
the authority; a tampered blob is repaired, a byte changed in a block a node serves is
found at its height; a committee member is killed and the ledger goes on, then it
restarts and catches up; the patient reads the access log as FHIR AuditEvents and exports
their records with their own keys. The nodes are stopped at the end, also on failure.

Every step states what it expects and the demo exits non-zero if any step does not
behave that way. The service runs on a demo clock that starts at the wall clock and is
moved forward to show expiry without waiting.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from medshare.crypto import abe, group, hkac
from medshare.demo_steps import Outcome, catch_up, run_steps, verdict
from medshare.ledger.comet_port import CometLedger
from medshare.ledger.cometbft import network
from medshare.ledger.cometbft import verify as chain_verify
from medshare.ledger.types import TxKind
from medshare.records import canonical, fhir, synthetic
from medshare.service import db, ledgers
from medshare.service.api import MedShare, wall_clock_ms
from medshare.service.areas import Area
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.errors import AccessDenied, InvalidInput

DAY_MS = 86_400_000
PATIENTS_PER_HOSPITAL = 6
RECORDS_PER_PATIENT = 30
SEED = 2026


class DemoClock:
    """Wall-clock time plus a manual offset, so expiry can be shown without waiting."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset_ms


@dataclass
class Story:
    """What the steps build on; filled in as the story goes."""

    out: Path
    config: ServiceConfig | None = None
    clock: DemoClock = field(default_factory=DemoClock)
    service: MedShare | None = None
    bundles: dict[str, list[Path]] = field(default_factory=dict)
    patient: str = ""
    encounter: str = ""
    share: hkac.Share | None = None

    @property
    def svc(self) -> MedShare:
        assert self.service is not None
        return self.service

    @property
    def ledger(self) -> CometLedger:
        ledger = self.svc.ledger
        assert isinstance(ledger, CometLedger)
        return ledger


def _denied(fn: Callable[[], object]) -> str | None:
    """The refusal message if ``fn`` is refused, None if it was (wrongly) allowed."""
    try:
        fn()
    except (AccessDenied, InvalidInput) as exc:
        return str(exc)
    return None


def _record_in(svc: MedShare, pid: str, prefix: str, hospital: str | None = None) -> str:
    return next(
        r["id"]
        for r in svc.records_of(pid)
        if r["dept"].startswith(prefix) and (hospital is None or r["hospital"] == hospital)
    )


# --- steps -------------------------------------------------------------------------------------


def step_consortium(story: Story) -> Outcome:
    story.config = ServiceConfig(data_dir=story.out / "data", ledger="cometbft")
    story.service = init(story.config, clock=story.clock)
    committee = list(story.svc.ledger.committee())  # genesis names them H001-a, …
    people = story.svc.people()
    running = sum(
        network.running(story.ledger.network, i) for i in range(len(story.ledger.network.nodes))
    )
    ok = len(story.svc.ledger.node_names) == 7 and running == 7 and len(committee) == 4
    return Outcome(
        ok,
        f"3 hospitals, 7 CometBFT nodes on 127.0.0.1, elected committee "
        f"{', '.join(committee)}; {len(people)} identities registered by their hospitals' "
        f"nodes, {sum(p['kind'] == 'clinician' for p in people)} clinicians' keys issued "
        "(accountable protocol, tags on the ledger)",
    )


def step_ingest(story: Story) -> Outcome:
    folder = story.out / "fhir"
    folder.mkdir(exist_ok=True)
    total = {"patients": 0, "records": 0, "rejected": 0}
    for h, code in enumerate(story.svc.config.hospitals):
        paths = []
        for i in range(PATIENTS_PER_HOSPITAL):
            bundle = synthetic.generate_bundle(SEED + h, i, RECORDS_PER_PATIENT)
            path = folder / f"{code}-patient-{i}.json"
            path.write_text(json.dumps(bundle, indent=1))
            paths.append(path)
        story.bundles[code] = paths
        report = story.svc.ingest(code, paths)
        for key in ("patients", "records"):
            total[key] += getattr(report, key)
        total["rejected"] += len(report.rejected)
    bad = folder / "malformed.json"
    bad.write_text('{"resourceType": "Observation", "status": 42}')
    refused = story.svc.ingest("H001", [bad])
    story.patient = next(
        p["id"] for p in story.svc.patients() if _has_dept(story.svc, p["id"], "03", "H001")
    )
    expected = PATIENTS_PER_HOSPITAL * len(story.svc.config.hospitals)
    ok = total["rejected"] == 0 and refused.rejected and total["patients"] == expected
    return Outcome(
        bool(ok),
        f"{total['patients']} patients, {total['records']} records encrypted, replicated "
        f"×{story.svc.config.replication} and anchored; a malformed file was rejected: "
        f"{refused.rejected[0]['reason'][:60]}",
    )


def _has_dept(svc: MedShare, pid: str, prefix: str, hospital: str) -> bool:
    return any(
        r["dept"].startswith(prefix) and r["hospital"] == hospital for r in svc.records_of(pid)
    )


def step_institution(story: Story) -> Outcome:
    svc = story.svc
    rid = _record_in(svc, story.patient, "03", "H001")
    served = svc.read("dr.wang@H001", rid, area=Area.INSTITUTION)
    surgeon = _denied(lambda: svc.read("dr.zhao@H001", rid, area=Area.INSTITUTION))
    other = _denied(lambda: svc.read("dr.liu@H002", rid, area=Area.INSTITUTION))
    ok = bool(served.resource) and surgeon and other
    return Outcome(
        bool(ok),
        "dr.wang@H001 (internal medicine) reads; the surgeon dr.zhao@H001 and dr.liu@H002 are "
        "refused, each refusal logged on the ledger",
    )


def step_personal_share(story: Story) -> Outcome:
    svc = story.svc
    pid = story.patient
    encounter = next(
        r for r in svc.records_of(pid) if r["type"] == "Encounter" and r["dept"].startswith("03")
    )
    story.encounter, dept = encounter["id"], encounter["dept"]
    story.share = svc.share(pid, "family:daughter", dept=dept, until_ms=story.clock() + DAY_MS)
    (story.out / "share-daughter.json").write_bytes(story.share.to_bytes())
    inside = _record_in(svc, pid, dept)
    outside = next(r["id"] for r in svc.records_of(pid) if not r["dept"].startswith(dept))
    read = svc.read("family:daughter", inside, area=Area.PERSONAL, share=story.share)
    refused = _denied(
        lambda: svc.read("family:daughter", outside, area=Area.PERSONAL, share=story.share)
    )
    ok = bool(read.resource) and refused
    return Outcome(
        bool(ok),
        f"patient shares department {dept} with one {story.share.size_bytes}-byte key; "
        "it opens that department and nothing else",
    )


def step_later_record(story: Story) -> Outcome:
    """A record added after the share, in the shared department, opens with the same key."""
    svc = story.svc
    pid = story.patient
    dept = story.share.scope[0]
    later = _later_observation(story.encounter, pid)
    path = story.out / "fhir" / "later-observation.json"
    path.write_text(json.dumps(later))
    report = svc.ingest("H001", [path])
    rid = f"Observation/{later['id']}"
    in_dept = next(r["dept"] for r in svc.records_of(pid) if r["id"] == rid)
    read = svc.read("family:daughter", rid, area=Area.PERSONAL, share=story.share)
    ok = report.records == 1 and in_dept == dept and b"Later" in read.resource
    return Outcome(bool(ok), f"{rid[:24]}… added to {dept} after the share; same key opens it")


def _later_observation(encounter: str, pid: str) -> dict:
    """A new Observation recorded in an Encounter that was ingested earlier."""
    return {
        "resourceType": "Observation",
        "id": "later-0001",
        "status": "final",
        "code": {"text": "Later blood pressure check"},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": encounter},
        "valueString": "Later reading: 128/82 mmHg",
    }


def step_share_expiry_and_revocation(story: Story) -> Outcome:
    svc = story.svc
    pid = story.patient
    rid = _record_in(svc, pid, story.share.scope[0])
    story.clock.offset_ms += 2 * DAY_MS
    expired = _denied(
        lambda: svc.read("family:daughter", rid, area=Area.PERSONAL, share=story.share)
    )
    one = svc.share(pid, "dr.friend", records=[rid])
    before = svc.read("dr.friend", rid, area=Area.PERSONAL, share=one)
    moved = svc.revoke(one.share_id)
    revoked = _denied(lambda: svc.read("dr.friend", rid, area=Area.PERSONAL, share=one))
    ok = expired and "expired" in expired and before.resource and revoked
    return Outcome(
        bool(ok),
        f"two days later the daughter's share has expired; a revoked record share is "
        f"refused and its {moved['records_resealed']} record moved to a fresh slot",
    )


def step_collaboration(story: Story) -> Outcome:
    svc = story.svc
    pid = story.patient
    rid = _record_in(svc, pid, "03", "H001")
    before = _denied(lambda: svc.read("dr.liu@H002", rid, area=Area.COLLABORATION))
    referral = svc.refer(pid, "H001", "dr.liu@H002", until_ms=story.clock() + 7 * DAY_MS)
    during = svc.read("dr.liu@H002", rid, area=Area.COLLABORATION)
    story.clock.offset_ms += 8 * DAY_MS
    after = _denied(lambda: svc.read("dr.liu@H002", rid, area=Area.COLLABORATION))
    ok = before and during.resource and after and "expired" in after
    return Outcome(
        bool(ok),
        f"dr.liu@H002 is refused, reads on referral {referral} (7 days), refused after expiry",
    )


def step_research(story: Story) -> Outcome:
    svc = story.svc
    consenting = story.patient
    other = next(
        p["id"] for p in svc.patients() if p["id"] != consenting and _at(svc, p["id"], "H001")
    )
    svc.approve_study("S-2026-01", "H001", "researcher@uni")
    made = svc.consent_research(consenting, "S-2026-01")
    copy = json.loads(
        svc.read("researcher@uni", f"Patient/{consenting}", area=Area.RESEARCH).resource
    )
    refused = _denied(lambda: svc.read("researcher@uni", f"Patient/{other}", area=Area.RESEARCH))
    ok = made > 0 and "name" not in copy and copy["id"] != consenting and refused
    return Outcome(
        bool(ok),
        f"ethics approval + consent: {made} de-identified copies; the researcher sees a "
        "pseudonym without name, address or identifiers; a non-consenting patient is refused",
    )


def _at(svc: MedShare, pid: str, hospital: str) -> bool:
    return any(r["hospital"] == hospital for r in svc.records_of(pid))


def step_break_glass(story: Story) -> Outcome:
    svc = story.svc
    pid = story.patient
    rid = _record_in(svc, pid, "", "H001")
    no_reason = _denied(lambda: svc.read("er.wang@H003", rid, area=Area.EMERGENCY))
    served = svc.read(
        "er.wang@H003", rid, area=Area.EMERGENCY, reason="unconscious, arrived by ambulance"
    )
    nurse = _denied(lambda: svc.read("nurse.chen@H001", rid, area=Area.EMERGENCY, reason="x"))
    alerts = svc.alerts(pid)
    ok = no_reason and served.resource and nurse and alerts and alerts[0]["actor"] == "er.wang@H003"
    return Outcome(
        bool(ok),
        "an ER physician of H003 breaks the glass with a reason (1 h window, on the ledger); "
        f"the patient's alerts show who, when and why ({len(alerts)}); without a reason, or "
        "without the emergency role: refused",
    )


def step_trace(story: Story) -> Outcome:
    svc = story.svc
    rid = _record_in(svc, story.patient, "03", "H001")
    leaked = svc.wallets.abe_key_files("nurse.chen@H001", "H001")[-1]
    shutil.copy(leaked, story.out / "leaked-key.json")
    verdict = svc.trace((story.out / "leaked-key.json").read_bytes())
    after = _denied(lambda: svc.read("nurse.chen@H001", rid, area=Area.INSTITUTION))
    colleague = svc.read("dr.wang@H001", rid, area=Area.INSTITUTION)
    # The authority itself mints a key for a made-up holder: no registered commitment
    # matches it, so tracing blames the authority, not any user.
    master = svc.wallets.authority("H001").master
    attrs = ("hospital:H001", "dept:03", "role:physician", "epoch:1")
    forged = abe.keygen(master, group.random_scalar(), attrs)
    blamed = svc.trace(forged.to_bytes())
    rev = verdict.get("revocation", {})
    ok = (
        verdict["verdict"] == "user"
        and verdict["identity"] == "nurse.chen@H001"
        and after
        and colleague.resource
        and blamed["verdict"] == "authority"
    )
    return Outcome(
        bool(ok),
        f"leaked key → user nurse.chen@H001 (verdict tx {verdict['txid'][:10]}…); revoked: "
        f"epoch {rev.get('epoch')}, {rev.get('records_rewrapped')} wraps re-wrapped, "
        f"{rev.get('keys_reissued')} keys re-issued; a forged key → authority",
    )


def step_tamper(story: Story) -> Outcome:
    svc = story.svc
    rid = _record_in(svc, story.patient, "03", "H001")
    with svc.sessions() as session:
        blob_id = session.get(db.Record, rid).blob_id
    path = svc.blobs.ranked(blob_id)[0].path_of(blob_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = svc.verify(rid)
    repaired = report["ok"] and report["repaired"] and path.read_bytes() != bytes(data)
    height, reason = _tampered_ledger_copy(svc, story.out)
    return Outcome(
        bool(repaired and height),
        f"a flipped bit in one blob copy was found and repaired from the other replica; a "
        f"byte changed in block {height} as a node serves it: {reason[:70]}",
    )


def _tampered_ledger_copy(svc: MedShare, out: Path) -> tuple[int | None, str]:
    """A byte of an anchored digest changed in the block a node serves (an attacker who
    controls that node): re-verification from genesis names that height."""
    anchor = next(svc.ledger.txs(TxKind.ANCHOR_RECORD))
    assert isinstance(svc.ledger, CometLedger)
    url = svc.ledger.network.nodes[1].rpc
    source = _TamperingSource(url, anchor.height, anchor.index)
    try:
        verifier = chain_verify.ChainVerifier(source.genesis())
        report = chain_verify.run(verifier, source, anchor.height, source.latest())
    finally:
        source.close()
    (out / "tampered-chain-report.json").write_text(json.dumps(report.as_dict(), indent=1))
    if report.ok or report.first_bad_height != anchor.height:
        return None, "not detected"
    return anchor.height, report.problem or ""


class _TamperingSource(chain_verify.NodeSource):
    """A node's RPC, with one byte of one transaction changed at ``height``."""

    def __init__(self, url: str, height: int, index: int) -> None:
        super().__init__(url)
        self._height, self._index = height, index

    def heights(self, start: int, stop: int) -> Iterator[chain_verify.Served]:
        for served in super().heights(start, stop):
            if served.height == self._height:
                block = copy.deepcopy(served.block)
                txs = block["block"]["data"]["txs"]
                raw = base64.b64decode(txs[self._index])
                at = raw.index(b'"digest":"') + len(b'"digest":"')
                raw = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
                txs[self._index] = base64.b64encode(raw).decode()
                served = dataclasses.replace(served, block=block)
            yield served


def step_node_down(story: Story) -> Outcome:
    svc, net = story.svc, story.ledger.network
    member = svc.ledger.committee()[0]
    victim = svc.ledger.node_names.index(member)
    network.kill(net, victim)
    rid = _record_in(svc, story.patient, "03", "H001")
    served = svc.read("dr.wang@H001", rid, area=Area.INSTITUTION)
    down = not network.running(net, victim)
    network.start(net, victim)
    caught_up = catch_up(net.nodes[victim].rpc, svc.ledger.height())
    checks = svc.ledger.verify()
    heads = {c.height for c in checks}
    ok = served.resource and down and caught_up and all(c.ok for c in checks) and len(heads) == 1
    return Outcome(
        bool(ok),
        f"committee member {member} killed: reads and their log entries "
        f"still commit; restarted, it caught up; all {len(checks)} nodes' chains re-verified "
        f"from genesis (signatures, validator sets, app replay) to height {max(heads)}",
    )


def step_log_and_export(story: Story) -> Outcome:
    svc = story.svc
    pid = story.patient
    log = svc.log(pid)
    (story.out / "access-log.json").write_text(json.dumps(log, indent=1))
    consents = svc.consents(pid)
    (story.out / "consents.json").write_text(json.dumps(consents, indent=1))
    events = [e["resource"] for e in log.get("entry", [])]
    denied = sum(e.get("outcome") == "4" for e in events)
    exported = svc.export(pid).splitlines()
    (story.out / "export.ndjson").write_bytes(b"\n".join(exported) + b"\n")
    original = _original_resources(story.bundles["H001"])
    later = (story.out / "fhir" / "later-observation.json").read_text()
    original[_key(later.encode())] = canonical.on_one_line(later.strip().encode())
    same = sum(original.get(_key(line)) == line for line in exported)
    ok = events and denied and same == len(exported)
    return Outcome(
        bool(ok),
        f"{len(events)} AuditEvents ({denied} refusals, the break-glass flagged), "
        f"{len(consents)} Consents; export with the patient's own seed: {len(exported)} "
        f"records, {same} byte-identical to the JSON the hospitals submitted",
    )


def _key(line: bytes) -> str:
    doc = json.loads(line)
    return f"{doc['resourceType']}/{doc['id']}"


def _original_resources(paths: list[Path]) -> dict[str, bytes]:
    """Each bundle entry's resource as its text stands in the file (on one line)."""
    out = {}
    for path in paths:
        text = path.read_text()
        for source in fhir.entry_resource_texts(text):
            if source is not None and "id" in json.loads(source):
                out[_key(source.encode())] = canonical.on_one_line(source.encode())
    return out


STEPS: tuple[tuple[str, Callable[[Story], Outcome]], ...] = (
    ("consortium", step_consortium),
    ("ingest synthetic patients", step_ingest),
    ("institution area", step_institution),
    ("personal area: department share", step_personal_share),
    ("share opens a later record", step_later_record),
    ("expired and revoked shares", step_share_expiry_and_revocation),
    ("collaboration on referral", step_collaboration),
    ("research on de-identified copies", step_research),
    ("emergency break-glass", step_break_glass),
    ("leaked key traced, forged key blamed", step_trace),
    ("tampered blob and block byte", step_tamper),
    ("node killed, ledger goes on", step_node_down),
    ("access log and patient export", step_log_and_export),
)


def run_demo(
    data_dir: Path | None, console: Console | None = None, *, single_directory: bool = False
) -> int:
    """Run the story — the parties apart (:mod:`medshare.demo_parties`), or with
    ``single_directory`` this module's story over one data directory — print a summary
    table and return the process exit code."""
    console = console or Console()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (data_dir or Path.cwd() / f"medshare-demo-{stamp}").resolve()
    if out.exists() and any(out.iterdir()):
        console.print(f"[bold red]error:[/] {out} is not empty; choose a new --data-dir")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if not single_directory:
        from medshare import demo_parties

        return demo_parties.run_demo(out, console)
    story = Story(out)
    results: list = []
    try:
        results = run_steps(story, STEPS, console, go_on=lambda: story.service is not None)
    finally:
        if story.service is not None:
            story.service.close()
        if story.config is not None and ledgers.stop(story.config):
            console.print(f"ledger nodes in {story.config.ledger_dir} stopped")
    return verdict(console, "medshare demo --single-directory", results, STEPS, out)
