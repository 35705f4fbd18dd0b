"""Attacks on research over HTTP (83babde: POST /v1/studies, GET /v1/studies/{study},
POST /v1/patients/{id}/consents, study keys by the issuance protocol, grant ids with
slashes) and on the replication speed-ups (df0262e and the working tree: pooled peer
clients, ``ReplicatedBlobStore.put_many`` before the ingest's rows, reads from the
hospital's own replica first, since dropped).

Resisted attacks are plain tests named ``test_resisted_...``. What this review found, and
fixed since (each test now shows it resisted): a consent refused after its copies were made
left them in the replicas (the nonce is checked before any copy now); a research release
carried the original's salt and digest (a re-identification oracle); a study name the
policy grammar refuses was committed; one record the de-identifier refuses failed every
consent with a 500; a study approval did not name its ethics officer; pooled peer clients
kept a peer's cookies; reads from the own replica first skipped read repair (that
preference was dropped); ending one study (revoking its approval, which revokes the
researcher's study key) barred the researcher from every key of the authority, for every
other study it approved (a key retired with its study is no revocation for cause now).

One small consortium (one hospital, in-process ledger running the real ABCI rules) and
one in-process app serve the module; the replica tests run a tiny HTTP peer on loopback.
Test order matters at the end: the last test ends a study (an epoch bump).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from medshare.api import consent_grants
from medshare.api.peer_replica import MAX_IDLE, PeerReplica
from medshare.crypto.signing import SigningKey
from medshare.ledger.types import Tx, TxKind
from medshare.records import canonical
from medshare.records.blobstore import (
    BlobUnavailable,
    DirectoryReplica,
    InsufficientReplicas,
    ReplicatedBlobStore,
)
from medshare.server.app import create_app
from medshare.service import db
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet import device
from medshare.wallet.client import HospitalClient
from medshare.wallet.keys import obtain_key
from server.devices import device_wallet, staff_wallet
from service.conftest import Clock, one_hospital, patient_of, write_bundle

NOW = 1_800_000_000_000
BASE = "http://testserver"
ROSTER = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)
STUDY = "S-A"  # approved for res.zhou, who obtains its key over HTTP
ZHOU, TWO = "res.zhou@H001", "res.two@H001"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """H001 with two patients on their own devices (records ingested), an ethics officer,
    two researchers and a records officer on theirs."""
    root = tmp_path_factory.mktemp("attack-research")
    clock = Clock(NOW)
    service = one_hospital(root, ROSTER, clock)
    mine, theirs = write_bundle(root, 41, 0, 8), write_bundle(root, 41, 1, 6)
    me, other = patient_of(mine), patient_of(theirs)
    codes = {
        p: service.enrol("H001", f"patient:{p}", kind="patient", name=n).code
        for p, n in ((me, "Ms Me"), (other, "Mr Other"))
    }
    assert not service.ingest("H001", [mine, theirs]).rejected
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:

        def wallet(name: str, code: str) -> device.PersonalWallet:
            return device_wallet(root, http, clock, name, code)

        def staff(who: str, role: str) -> device.PersonalWallet:
            return staff_wallet(service, root, http, clock, who, role)

        yield {
            "service": service, "http": http, "clock": clock, "root": root,
            "me": me, "other": other, "bundle": mine,
            "w_me": wallet("me", codes[me]), "w_other": wallet("other", codes[other]),
            "ethics": staff("ethics@H001", "ethics"), "records": staff("ro@H001", "records"),
            "zhou": staff(ZHOU, "researcher"), "two": staff(TWO, "researcher"),
        }  # fmt: skip
    service.close()


def _client(world, wallet: device.PersonalWallet) -> HospitalClient:
    return wallet.client(http=world["http"], clock_ms=world["clock"])


def _approve(world, study: str, researcher: str, by: str = "ethics") -> dict:
    body = json.dumps({"study": study, "researcher": researcher}).encode()
    return _client(world, world[by]).post_json("/v1/studies", body)


def _consent_tx(world, who: str, body: dict, *, nonce_skew: int = 0, key=None) -> bytes:
    """A GRANT tx with ``body``, signed by ``who``'s wallet key (or ``key``)."""
    wallet = world[who]
    nonce = wallet.nonce(_client(world, wallet)) + nonce_skew
    tx = Tx.create(TxKind.GRANT, body, nonce, key or wallet.identity_key(),
                   chain=wallet.info().chain_id)  # fmt: skip
    return json.dumps({"tx": tx.encode().hex()}).encode()


def _blob_count(world) -> int:
    return sum(1 for replica in world["service"].blobs.replicas for _ in replica.ids())


def _research_wraps(world, patient: str) -> int:
    service = world["service"]
    with service.sessions() as session:
        rows = session.execute(
            select(db.Wrap)
            .join(db.Record, db.Record.id == db.Wrap.record)
            .join(db.AreaKey, db.AreaKey.id == db.Wrap.area_key)
            .where(db.Record.patient == patient, db.AreaKey.area == "research")
        ).all()
    return len(rows)


def _a_record(world, patient: str) -> str:
    return next(r["id"] for r in world["service"].records_of(patient) if r["type"] != "Patient")


@pytest.fixture(scope="module")
def study_key(world):
    """res.zhou's key of study S-A, obtained by their wallet over HTTP."""
    assert _approve(world, STUDY, ZHOU)["hospital"] == "H001"
    zhou = world["zhou"]
    got = obtain_key(_client(world, zhou), ZHOU, zhou.identity_key(), "H001")
    assert f"ethics:{STUDY}" in got.key.components
    return got.key


# --------------------------------------------------------------------------------------
# Who approves, who is approved, who gets which study key
# --------------------------------------------------------------------------------------


def test_resisted_a_researcher_is_offered_only_the_keys_of_studies_approved_for_them(
    world, study_key
):
    """res.two asks the authority for a key: it decides, from res.two's own approvals.
    Nobody else (the ethics officer who approves, a records officer, a physician, a
    patient) is offered a study key at all."""
    service = world["service"]
    _approve(world, "S-B", TWO)
    offered = service.entitled_attributes(TWO, "H001")
    assert "ethics:S-B" in offered and f"ethics:{STUDY}" not in offered
    assert not any(a.startswith(("dept:", "hospital:", "area:")) for a in offered)
    assert not any(c.startswith("ethics:S-B") for c in study_key.components)
    for who in ("ethics", "records", "w_me"):
        wallet = world[who]
        identity = wallet.info().identity
        with pytest.raises(AccessDenied):
            obtain_key(_client(world, wallet), identity, wallet.identity_key(), "H001")
    # a physician keeps their clinical key only: no study key rides along
    assert not any(a.startswith("ethics:") for a in
                   service.entitled_attributes("dr.wang@H001", "H001"))  # fmt: skip
    # a registration in another identity's name is refused (res.two cannot ask for S-A
    # in res.zhou's name)
    two = world["two"]
    with pytest.raises(AccessDenied):
        obtain_key(_client(world, two), ZHOU, two.identity_key(), "H001")


def test_resisted_only_an_ethics_officer_here_approves_and_only_for_a_researcher(world):
    service = world["service"]
    wang = HospitalClient(BASE, "dr.wang@H001", service.wallets.identity("dr.wang@H001"),
                          clock_ms=world["clock"], http=world["http"])  # fmt: skip
    body = json.dumps({"study": "S-X", "researcher": TWO}).encode()
    for caller in (_client(world, world["records"]), _client(world, world["zhou"]),
                   _client(world, world["w_me"]), wang):  # fmt: skip
        with pytest.raises(AccessDenied, match="not an ethics officer"):
            caller.post_json("/v1/studies", body)
    # an ethics officer does not approve a study for themself, a patient or a physician
    for researcher in ("ethics@H001", f"patient:{world['me']}", "dr.wang@H001", "ro@H001"):
        with pytest.raises(InvalidInput, match="not a researcher"):
            _approve(world, "S-X", researcher)
    with pytest.raises(NotFound):
        _approve(world, "S-X", "nobody@H001")
    with pytest.raises(NotFound):
        _client(world, world["w_me"]).get("/v1/studies/S-X")  # nothing was approved
    # a records officer enrols ethics officers and researchers of their own hospital only
    records = _client(world, world["records"])
    for name in ("eth.x@H002", "eth.x@H0011", "eth.x"):
        doc = {"staff": name, "role": "ethics", "dept": "69"}
        with pytest.raises(InvalidInput):
            records.post_json("/v1/enrolments", json.dumps(doc).encode())


def test_resisted_a_study_answers_only_its_public_facts(world, study_key):
    facts = _client(world, world["w_me"]).get(f"/v1/studies/{STUDY}")
    assert facts == {"study": STUDY, "hospital": "H001"}  # not the researcher, no counts


# --------------------------------------------------------------------------------------
# Consents: whose, which, when
# --------------------------------------------------------------------------------------


def test_resisted_a_patient_cannot_consent_in_another_patients_name(world, study_key):
    me, other = world["me"], world["other"]
    mine = _client(world, world["w_me"])
    grant = consent_grants.next_consent_id(STUDY, other, [])
    theirs = consent_grants.consent_body(grant, other, STUDY, "H001")
    blobs = _blob_count(world)
    # the other patient's route: refused by the route
    with pytest.raises(AccessDenied):
        mine.post_json(f"/v1/patients/{other}/consents", _consent_tx(world, "w_me", theirs))
    # the other patient's genuine signed consent, relayed by me: refused by the route
    genuine = _consent_tx(world, "w_other", theirs)
    with pytest.raises(AccessDenied):
        mine.post_json(f"/v1/patients/{other}/consents", genuine)
    # ... and through my own route: not signed by me
    with pytest.raises(AccessDenied, match="signed by the patient"):
        mine.post_json(f"/v1/patients/{me}/consents", genuine)
    # my key, my route, a body naming the other patient: not the consent as written
    with pytest.raises(InvalidInput, match="not the consent grant"):
        mine.post_json(f"/v1/patients/{me}/consents", _consent_tx(world, "w_me", theirs))
    assert _research_wraps(world, other) == 0 and _blob_count(world) == blobs
    assert world["service"].consents(other) == []


def test_resisted_a_consent_tx_is_not_replayed_after_its_withdrawal(world, study_key):
    """The consent's exact bytes, sent again after the patient withdrew, do not make a
    consent: its id is taken and its nonce used. The next consent is the patient's own,
    with the next id."""
    me = world["me"]
    mine = _client(world, world["w_me"])
    path = f"/v1/patients/{me}/consents"
    grant = consent_grants.next_consent_id(STUDY, me, [])
    signed = _consent_tx(world, "w_me", consent_grants.consent_body(grant, me, STUDY, "H001"))
    made = mine.post_json(path, signed)
    assert made["grant"] == grant and made["copies"] == len(world["service"].records_of(me))
    device.revoke(world["w_me"], mine, grant, "withdrawn")
    assert _research_wraps(world, me) == 0
    with pytest.raises(InvalidInput, match="not the consent grant"):
        mine.post_json(path, signed)
    assert _research_wraps(world, me) == 0
    again = device.consent(world["w_me"], mine, STUDY)
    assert again["grant"] == consent_grants.consent_base(STUDY, me) + "/2"
    # another patient (or the researcher) cannot withdraw it: grant ids with slashes route,
    # and the revocation must be the consenting patient's own
    for who in ("w_other", "zhou"):
        with pytest.raises(AccessDenied):
            device.revoke(world[who], _client(world, world[who]), again["grant"], "not yours")
    assert _research_wraps(world, me) == again["copies"]


def test_resisted_a_consent_to_a_withdrawn_study_is_refused(world):
    """A study whose approval ended takes no consent: neither through the wallet nor as a
    signed tx with the body the study had."""
    me = world["me"]
    _approve(world, "S-R", TWO)
    body = consent_grants.consent_body(consent_grants.consent_base("S-R", me), me, "S-R", "H001")
    world["service"].revoke("study/S-R", reason="approval withdrawn")
    mine = _client(world, world["w_me"])
    blobs = _blob_count(world)
    with pytest.raises(NotFound, match="unknown study"):
        device.consent(world["w_me"], mine, "S-R")
    with pytest.raises(NotFound, match="unknown study"):
        mine.post_json(f"/v1/patients/{me}/consents", _consent_tx(world, "w_me", body))
    with pytest.raises(InvalidInput, match="already exists"):
        _approve(world, "S-R", TWO)  # and its name is not handed out again
    assert _blob_count(world) == blobs


def test_resisted_research_reads_stay_within_the_consenting_patients_copies(world, study_key):
    """res.zhou (study S-A) reads my de-identified copies; not the other patient's (no
    consent), not my identified record through another area, and res.two (no key of
    S-A) nothing."""
    me, other = world["me"], world["other"]
    zhou = _client(world, world["zhou"])
    mine = _a_record(world, me)
    sealed = zhou.sealed_record(mine, area="research")
    assert not sealed.check_digest  # a copy, not the original
    with pytest.raises(AccessDenied):
        zhou.sealed_record(_a_record(world, other), area="research")
    for area in ("institution", "emergency", "collaboration"):
        with pytest.raises((AccessDenied, InvalidInput)):
            zhou.sealed_record(mine, area=area)
    with pytest.raises(AccessDenied):
        _client(world, world["two"]).sealed_record(mine, area="research")


# --------------------------------------------------------------------------------------
# Weaknesses in the research routes
# --------------------------------------------------------------------------------------


def test_resisted_a_refused_consent_leaves_no_research_copies_behind(world, study_key):
    me = world["me"]
    _approve(world, "S-N", TWO)
    grant = consent_grants.next_consent_id("S-N", me, [])
    body = consent_grants.consent_body(grant, me, "S-N", "H001")
    skewed = _consent_tx(world, "w_me", body, nonce_skew=9)  # signed, well formed
    mine = _client(world, world["w_me"])
    before, wraps = _blob_count(world), _research_wraps(world, me)
    for _ in range(3):
        with pytest.raises(InvalidInput, match="nonce"):
            mine.post_json(f"/v1/patients/{me}/consents", skewed)
    assert _research_wraps(world, me) == wraps  # the rows rolled back ...
    grown = _blob_count(world) - before
    assert grown == 0, f"3 refused consents left {grown} orphaned blob copies"


def test_resisted_a_research_release_does_not_carry_the_originals_digest(world, study_key):
    me = world["me"]
    record = _a_record(world, me)
    sealed = _client(world, world["zhou"]).sealed_record(record, area="research")
    bundle = json.loads(world["bundle"].read_text())
    original = next(
        e["resource"] for e in bundle["entry"]
        if f"{e['resource']['resourceType']}/{e['resource']['id']}" == record
    )  # fmt: skip
    # nothing to confirm a guessed original with: neither its salt nor its digest is sent
    assert original and sealed.salt == b"" and sealed.digest == "" and not sealed.check_digest


def test_resisted_a_study_name_is_checked_before_its_approval_is_committed(world):
    mine = _client(world, world["w_me"])
    with pytest.raises(InvalidInput):
        _approve(world, "S+1", TWO)
    with pytest.raises(NotFound):
        mine.get("/v1/studies/S+1")
    with pytest.raises(InvalidInput):
        _approve(world, "S 2", TWO)


def test_resisted_one_record_the_deidentifier_refuses_does_not_break_a_consent(world, study_key):
    other = world["other"]
    odd = {
        "resourceType": "Observation", "id": "attack-modext-1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{other}"},
        "modifierExtension": [{"url": "http://example.org/x", "valueBoolean": True}],
    }  # fmt: skip
    report = world["service"].ingest("H001", [json.dumps(odd).encode()])
    assert report.records == 1 and not report.rejected  # ingest takes it
    theirs = _client(world, world["w_other"])
    try:
        made = device.consent(world["w_other"], theirs, STUDY)
    except InvalidInput as exc:  # a clear refusal naming the record would do
        assert "attack-modext-1" in str(exc)
    else:
        assert made["copies"] >= 1


def test_resisted_a_study_approval_names_the_ethics_officer_who_made_it(world):
    approved = _approve(world, "S-ACC", TWO)
    committed = world["service"].ledger.find(approved["txid"])
    assert committed is not None
    on_ledger = json.dumps(committed.tx.body)
    assert "ethics@H001" in on_ledger or committed.tx.sender == (
        world["ethics"].identity_key().public
    ), f"the approval's ledger record names no approver: {on_ledger}"


# --------------------------------------------------------------------------------------
# Ingest: the blobs first (put_many), then the rows; one record per id
# --------------------------------------------------------------------------------------


def _obs(oid: str, patient: str, value: int) -> dict:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value, "unit": "/min",
                          "system": "http://unitsofmeasure.org", "code": "/min"},
    }  # fmt: skip


def _ndjson(*resources: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in resources)


def test_resisted_the_same_id_twice_in_one_ingest_keeps_one_record(world):
    """Within one call: the same resource twice is one record and one unchanged; a
    different resource under the same id is rejected (never a second row, a second blob
    or an overwrite of the first)."""
    service, me = world["service"], world["me"]
    same = _obs("dup-same", me, 60)
    first, second = _obs("dup-diff", me, 61), _obs("dup-diff", me, 99)
    report = service.ingest("H001", [_ndjson(same, first, same, second)])
    assert (report.records, report.unchanged, len(report.rejected)) == (2, 1, 1)
    assert "never overwritten" in report.rejected[0]["reason"]
    with service.sessions() as session:
        ids = ("Observation/dup-same", "Observation/dup-diff")
        rows = {r: session.get(db.Record, r) for r in ids}
        for row in rows.values():
            assert row is not None and row.anchor_txid
            assert service.blobs.get(row.blob_id)  # the row's blob is stored
            scopes = session.execute(
                select(db.AreaKey.scope).join(db.Wrap, db.Wrap.area_key == db.AreaKey.id)
                .where(db.Wrap.record == row.id)
            ).scalars().all()  # fmt: skip
            assert any(s.startswith("institution/") for s in scopes)
        kept = rows["Observation/dup-diff"]
        assert canonical.verify_record(json.dumps(first).encode(), kept.salt, kept.digest)


class _FailingReplica:
    """A replica whose ``fail_at``-th write (and later ones) fails."""

    def __init__(self, inner: DirectoryReplica, fail_at: int) -> None:
        self.inner, self.name, self.fail_at = inner, inner.name, fail_at
        self.writes = itertools.count(1)
        self.lock = threading.Lock()

    def put(self, blob_id: str, data: bytes) -> None:
        with self.lock:
            n = next(self.writes)
        if n >= self.fail_at:
            raise OSError("disk full")
        self.inner.put(blob_id, data)

    def get(self, blob_id):
        return self.inner.get(blob_id)

    def delete(self, blob_id):
        self.inner.delete(blob_id)

    def ids(self):
        return self.inner.ids()


def test_resisted_a_blob_that_cannot_be_stored_leaves_no_row_or_anchor(world):
    """put_many stores an ingest's blobs 8 at a time before the rows: when one fails, the
    ingest fails whole: no row names a blob that is not stored, nothing is anchored."""
    service, me = world["service"], world["me"]
    real = service.blobs
    anchors = len(list(service.ledger.txs(TxKind.ANCHOR_RECORD)))
    failing = _FailingReplica(real.replicas[0], fail_at=5)
    service.blobs = ReplicatedBlobStore([failing], real.replication)
    try:
        batch = [_obs(f"pm-{i}", me, 70 + i) for i in range(12)]
        with pytest.raises(InsufficientReplicas):
            service.ingest("H001", [_ndjson(*batch)])
    finally:
        service.blobs = real
    ids = {r["id"] for r in service.records_of(me)}
    assert not any(i.startswith("Observation/pm-") for i in ids)
    assert len(list(service.ledger.txs(TxKind.ANCHOR_RECORD))) == anchors
    with service.sessions() as session:  # every row's blob is there
        for row in session.execute(select(db.Record)).scalars():
            assert real.replicas[0].get(row.blob_id) is not None, row.id


# --------------------------------------------------------------------------------------
# Pooled peer clients (peer_replica)
# --------------------------------------------------------------------------------------


class _Peer:
    """A member's replica route on loopback: PUT answers 204 (after ``stall`` seconds
    for a blob whose bytes start with b"stall"), setting ``cookies`` cookies each time;
    it records the Cookie header of every request."""

    def __init__(self, cookies: int = 0) -> None:
        peer = self
        self.cookie_headers: list[str | None] = []
        self.serial = itertools.count()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_PUT(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                peer.cookie_headers.append(self.headers.get("cookie"))
                if data.startswith(b"stall"):
                    time.sleep(1.0)
                n = next(peer.serial)
                self.send_response(204)
                for j in range(cookies):
                    self.send_header("Set-Cookie", f"c{n}x{j}={'v' * 100}; Path=/")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def replica(self, **kwargs) -> PeerReplica:
        return PeerReplica(
            "H002", self.url, signer=SigningKey.generate(), identity="records@H001",
            audience="chain/H002", clock_ms=lambda: int(time.time() * 1000), **kwargs,
        )  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer_factory():
    made: list[_Peer] = []

    def make(**kwargs) -> _Peer:
        made.append(_Peer(**kwargs))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def _put(replica: PeerReplica, data: bytes) -> None:
    replica.put(hashlib.sha256(data).hexdigest(), data)


def test_resisted_a_client_the_deadline_closed_is_never_pooled_and_the_pool_is_bounded(
    peer_factory,
):
    peer = peer_factory()
    replica = peer.replica(deadline=0.3)
    try:
        _put(replica, b"first")
        assert len(replica._idle) == 1
        pooled = replica._idle[0]
        with pytest.raises(BlobUnavailable, match="did not answer"):
            _put(replica, b"stall: the deadline closes this request's client")
        assert pooled.is_closed and replica._idle == []  # the stalled one is not reused
        _put(replica, b"after")  # a fresh client
        assert len(replica._idle) == 1 and not replica._idle[0].is_closed
        with ThreadPoolExecutor(max_workers=24) as pool:
            list(pool.map(lambda i: _put(replica, b"many %d" % i), range(48)))
        assert 1 <= len(replica._idle) <= MAX_IDLE
        assert all(not c.is_closed for c in replica._idle)
    finally:
        replica.close()
    assert replica._idle == []


def test_resisted_pooled_peer_clients_carry_no_state_between_exchanges(peer_factory):
    peer = peer_factory(cookies=50)
    replica = peer.replica()
    try:
        failures = 0
        for i in range(15):
            try:
                _put(replica, b"copy %d" % i)
            except BlobUnavailable:
                failures += 1
        sent = [len(h or "") for h in peer.cookie_headers]
        jar = sum(len(c.cookies.jar) for c in replica._idle)
    finally:
        replica.close()
    assert failures == 0 and jar == 0 and max(sent) == 0, (
        f"{failures} copies refused; the pooled client holds {jar} cookies and sent a "
        f"Cookie header of up to {max(sent)} bytes"
    )


# --------------------------------------------------------------------------------------
# Last: a study ends (its key is revoked: an epoch bump for the authority)
# --------------------------------------------------------------------------------------


def test_resisted_ending_one_study_does_not_lock_its_researcher_out_of_the_others(world, study_key):
    service = world["service"]
    _approve(world, "S-LATE", ZHOU)
    service.revoke(f"study/{STUDY}", reason="study completed")
    zhou = world["zhou"]
    with pytest.raises(AccessDenied):  # the ended study's copies are out of reach
        _client(world, zhou).sealed_record(_a_record(world, world["me"]), area="research")
    got = obtain_key(_client(world, zhou), ZHOU, zhou.identity_key(), "H001")
    assert "ethics:S-LATE" in got.key.components


def test_resisted_a_retired_study_key_leaked_later_is_revoked_for_cause(world, study_key):
    """A key retired with its study (no cause) that then turns up leaked is traced to its
    researcher and revoked again, for cause: the authority issues them nothing more."""
    service, zhou = world["service"], world["zhou"]
    verdict = service.trace(study_key.to_bytes())
    assert verdict["verdict"] == "user" and verdict["identity"] == ZHOU
    assert verdict["revocation"] != {"already_revoked": True}
    with pytest.raises(AccessDenied, match="revoked"):
        obtain_key(_client(world, zhou), ZHOU, zhou.identity_key(), "H001")
