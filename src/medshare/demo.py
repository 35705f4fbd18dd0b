"""``medshare demo``: the crypto story end to end, each step checked.

An attribute authority, three clinicians issued keys through the accountable
two-party protocol, a record encrypted under a policy, access allowed and denied,
a collusion that fails, a leaked key traced to its holder, a forged key blamed on
the authority, and a patient who shares a chosen set of records with one 96-byte
key. Every step states what it expects; the demo exits non-zero if any step does
not behave as expected. (The records service, ledger and areas come in later
issues and will join this story.)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from medshare.crypto import abe, group, issuance, kac
from medshare.crypto.errors import DecryptionFailed, PolicyNotSatisfied
from medshare.crypto.signing import SigningKey
from medshare.ledger import audit, chain, election
from medshare.ledger.cluster import InProcessCluster
from medshare.ledger.store import SQLiteStore
from medshare.ledger.types import Tx, TxKind

POLICY = "hospital:H001 and dept:0304 and (role:physician or role:chief)"
CLINICIANS = {
    "dr.wang@H001": ("hospital:H001", "dept:0304", "role:physician"),
    "nurse.li@H001": ("hospital:H001", "dept:0304", "role:nurse"),
    "dr.chen@H002": ("hospital:H002", "dept:0304", "role:physician"),
}
KAC_CLASSES = 64
LEDGER_NODES = ("H001-a", "H001-b", "H002-a", "H002-b", "H003-a", "H003-b", "regulator")
COMMITTEE = 4


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


@dataclass
class Story:
    """What the steps build on; filled in as the story goes."""

    out: Path
    authority: issuance.AuthorityKeys | None = None
    keys: dict | None = None
    identities: dict[str, SigningKey] | None = None
    registry: list | None = None
    ciphertext: abe.AbeCiphertext | None = None
    trace_result: abe.AuditResult | None = None
    ledger_dbs: list[Path] | None = None
    ledger_txs: list[Tx] | None = None


def _record(i: int, code: str, text: str) -> bytes:
    """A small FHIR R4 Observation, as a hospital would encrypt it."""
    resource = {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}]},
        "subject": {"reference": "Patient/p-001"},
    }
    return json.dumps(resource, sort_keys=True).encode()


def _expect_denied(fn: Callable[[], object]) -> str | None:
    try:
        fn()
    except (PolicyNotSatisfied, DecryptionFailed) as exc:
        return type(exc).__name__
    return None


def step_authority(story: Story) -> Outcome:
    story.authority = issuance.AuthorityKeys.generate()
    story.authority.master.public.check()
    (story.out / "authority").mkdir(parents=True, exist_ok=True)
    (story.out / "authority" / "public.json").write_bytes(story.authority.master.public.to_bytes())
    return Outcome(True, "BLS12-381 authority with a 3072-bit Paillier key; public key checks")


def step_issue(story: Story) -> Outcome:
    issuer = issuance.IssuanceAuthority(story.authority)
    public = story.authority.master.public
    story.keys, story.registry, story.identities = {}, [], {}
    for who, attrs in CLINICIANS.items():
        story.identities[who] = SigningKey.generate()  # the clinician's own identity key
        key, registration = issuance.issue_key(
            issuer, public, who, attrs, identity_key=story.identities[who]
        )
        story.keys[who] = key
        story.registry.append(registration)
        (story.out / "keys").mkdir(exist_ok=True)
        (story.out / "keys" / f"{who}.json").write_bytes(key.to_bytes())
    (story.out / "authority" / "registry.json").write_bytes(abe.registry_to_bytes(story.registry))
    return Outcome(True, f"{len(story.keys)} keys issued; the authority never saw any user's k")


def step_encrypt(story: Story) -> Outcome:
    public = story.authority.master.public
    story.ciphertext = abe.encrypt(public, POLICY, _record(1, "8867-4", "Heart rate"))
    (story.out / "record-1.ct.json").write_bytes(story.ciphertext.to_bytes())
    return Outcome(True, f"record sealed under '{story.ciphertext.policy}'")


def step_access(story: Story) -> Outcome:
    public = story.authority.master.public
    opened = abe.decrypt(public, story.keys["dr.wang@H001"], story.ciphertext)
    denied = {
        who: _expect_denied(lambda k=story.keys[who]: abe.decrypt(public, k, story.ciphertext))
        for who in ("nurse.li@H001", "dr.chen@H002")
    }
    ok = b"Heart rate" in opened and all(denied.values())
    return Outcome(ok, "dr.wang reads it; nurse.li and dr.chen are denied")


def step_collusion(story: Story) -> Outcome:
    """nurse.li has the hospital and department, dr.chen the role: together they still fail."""
    public = story.authority.master.public
    nurse, chen = story.keys["nurse.li@H001"], story.keys["dr.chen@H002"]
    merged = abe.AbeUserKey(
        nurse.k_prime,
        nurse.K,
        nurse.L,
        nurse.L_prime,
        {**nurse.components, "role:physician": chen.components["role:physician"]},
    )
    denied = _expect_denied(lambda: abe.decrypt(public, merged, story.ciphertext))
    return Outcome(denied == "DecryptionFailed", "merged key of two users fails the AEAD check")


def step_trace(story: Story) -> Outcome:
    public = story.authority.master.public
    leaked_path = story.out / "leaked-key.json"
    leaked_path.write_bytes(story.keys["dr.wang@H001"].to_bytes())
    leaked = abe.AbeUserKey.from_bytes(leaked_path.read_bytes())
    trusted = {who: key.public for who, key in story.identities.items()}
    result = abe.audit(public, leaked, story.registry, trusted)
    story.trace_result = result
    ok = result.verdict is abe.Verdict.USER and result.identity == "dr.wang@H001"
    return Outcome(ok, f"leaked key → {result.verdict.value}: {result.identity}")


def step_forgery(story: Story) -> Outcome:
    master = story.authority.master
    forged = abe.keygen(master, group.random_scalar(), CLINICIANS["dr.wang@H001"])
    result = abe.audit(master.public, forged, story.registry)
    k = story.keys["nurse.li@H001"]
    laundered = abe.AbeUserKey(k.k_prime + 1, k.K, k.L, k.L_prime, k.components)
    relabelled = abe.audit(master.public, laundered, story.registry)
    ok = result.verdict is abe.Verdict.AUTHORITY and relabelled.verdict is abe.Verdict.MALFORMED
    return Outcome(ok, "authority-made key → authority; key with altered K' → malformed")


def step_patient_share(story: Story) -> Outcome:
    params = kac.setup(KAC_CLASSES)
    patient = kac.keygen(params)
    records = {
        i: kac.encrypt(params, patient.public, i, _record(i, "x", f"rec{i}")) for i in range(1, 13)
    }
    chosen = [2, 3, 5, 8]
    share = kac.extract(params, patient, chosen)
    (story.out / "patient-share.json").write_bytes(share.to_bytes())
    opened = [i for i, ct in records.items() if _try_kac(params, share, ct)]
    ok = opened == chosen and len(share.key_bytes()) == 96
    return Outcome(ok, f"one {len(share.key_bytes())}-byte key opens records {opened} of 1..12")


def _try_kac(params: kac.KacParams, key: kac.AggregateKey, ct: kac.KacCiphertext) -> bool:
    try:
        kac.decrypt(params, key, ct)
    except (PolicyNotSatisfied, DecryptionFailed):
        return False
    return True


def step_ledger(story: Story) -> Outcome:
    """Key tags and the trace verdict go on a 7-node ledger run by an elected committee."""
    keys = [SigningKey.generate() for _ in LEDGER_NODES]
    validators = tuple(
        election.Validator(k.public, name, 1000) for k, name in zip(keys, LEDGER_NODES, strict=True)
    )
    config = chain.ChainConfig(
        "medshare-demo", validators, epoch_length=5, committee_size=COMMITTEE
    )
    folder = story.out / "ledger"
    folder.mkdir(exist_ok=True)
    story.ledger_dbs = [folder / f"{name}.db" for name in LEDGER_NODES]
    for path in story.ledger_dbs:
        path.unlink(missing_ok=True)
    stores = [SQLiteStore(path) for path in story.ledger_dbs]
    cluster = InProcessCluster(config, keys, stores)
    authority = keys[-1]  # the regulator's node signs on behalf of the authority here
    # Each clinician registers its own key tag with its identity key (the authority
    # cannot), so the ledger is where auditors find whose identity key is whose.
    story.ledger_txs = [
        Tx.create(
            TxKind.REGISTER_KEY_TAG,
            {"identity": reg.identity, "tag": reg.tag().hex(), "R": reg.R_hex()},
            0,
            story.identities[reg.identity],
        )
        for reg in story.registry
    ]
    verdict = {"verdict": story.trace_result.as_dict(), "evidence": "leaked-key"}
    story.ledger_txs.append(Tx.create(TxKind.TRACE_VERDICT, verdict, 0, authority))
    for tx in story.ledger_txs:
        cluster.submit(tx)
    while not all(s.find_tx(tx.txid) for s in stores for tx in story.ledger_txs):
        cluster.run_until_height(cluster.node(0).state.height + 1)
    reports = [audit.verify_chain(store) for store in stores]
    proof = audit.make_proof(stores[0], story.ledger_txs[-1].txid)
    checked = audit.check_proof(proof)
    (story.out / "trace-verdict-proof.json").write_text(json.dumps(proof, indent=1))
    committee = [v.name for v in validators if v.public in cluster.node(0).state.committee]
    for store in stores:
        store.close()
    ok = all(r.ok for r in reports) and checked["ok"]
    return Outcome(
        ok,
        f"{len(stores)} nodes, elected committee {', '.join(committee)}; "
        f"{len(story.ledger_txs)} txs committed, chain verified from genesis on every node, "
        f"verdict proof signed by {checked['signers']}/{checked['committee']}",
    )


def step_ledger_tamper(story: Story) -> Outcome:
    """One changed byte in a node's database is found by re-verification."""
    original = story.ledger_dbs[2]
    tampered = original.with_name("tampered.db")
    tampered.write_bytes(original.read_bytes())
    store = SQLiteStore(tampered)
    height = store.find_tx(story.ledger_txs[0].txid)[0]
    data = store.raw(height)
    store.close()
    at = data.index(b'"identity":"') + len(b'"identity":"')
    changed = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    with sqlite3.connect(tampered) as db:  # an attacker with file access, not the node API
        db.execute("UPDATE blocks SET data = ? WHERE height = ?", (changed, height))
    store = SQLiteStore(tampered)
    report = audit.verify_chain(store)
    store.close()
    ok = not report.ok and report.first_bad_height == height
    return Outcome(ok, f"altered byte in block {height} found: {report.reason}")


STEPS: tuple[tuple[str, Callable[[Story], Outcome]], ...] = (
    ("attribute authority", step_authority),
    ("accountable key issuance", step_issue),
    ("encrypt a record under a policy", step_encrypt),
    ("access allowed and denied", step_access),
    ("collusion of two users", step_collusion),
    ("leaked key traced", step_trace),
    ("forged key blamed on authority", step_forgery),
    ("verdict and key tags on the ledger", step_ledger),
    ("tampered ledger byte detected", step_ledger_tamper),
    ("patient shares a set, one key", step_patient_share),
)


def run_demo(data_dir: Path | None, console: Console | None = None) -> int:
    """Run every step; print a summary table; return the process exit code."""
    console = console or Console()
    out = (data_dir or Path.cwd() / "medshare-demo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    story = Story(out)
    results: list[tuple[str, Outcome, float]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("medshare demo", total=len(STEPS))
        for name, step in STEPS:
            progress.update(task, description=name)
            start = time.perf_counter()
            try:
                outcome = step(story)
            except Exception as exc:  # a step that crashes is a failed step, reported plainly
                outcome = Outcome(False, f"unexpected {type(exc).__name__}: {exc}")
            results.append((name, outcome, time.perf_counter() - start))
            progress.advance(task)
            if not outcome.ok and story.authority is None:
                break
    table = Table(title="medshare demo")
    for column in ("step", "result", "what happened", "ms"):
        table.add_column(column)
    for name, outcome, seconds in results:
        mark = "[green]ok[/]" if outcome.ok else "[bold red]FAILED[/]"
        table.add_row(name, mark, outcome.detail, f"{seconds * 1e3:.0f}")
    console.print(table)
    failed = [name for name, outcome, _ in results if not outcome.ok]
    if failed or len(results) != len(STEPS):
        console.print(f"[bold red]demo failed:[/] {', '.join(failed) or 'stopped early'}")
        return 1
    console.print(f"all {len(STEPS)} steps behaved as expected; outputs are in {out}")
    return 0
