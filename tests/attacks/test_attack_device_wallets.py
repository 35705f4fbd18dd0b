"""Attacks on device-held wallets: one-time enrolment codes, block keys published by the
patient's own device, shares and revocations signed on the device, and the wallet's
trust in the server it talks to (commits 5f1e51b, cb243c6, 127089f).

The review's four findings are fixed and their tests now pass: a revoked share no longer
opens records whose seal was pending (they move too), a refused redemption binds nothing
(publication nonces checked before the registration; a key speaks only for a person the
hospital's records know by that key), a malformed publication is a 400, and a wallet signs
nothing for another address that claims its home hospital's audience. Resisted attacks
are the tests named ``test_resisted_...``.

One small consortium (hospital H001 alone, in-process ledger running the real ABCI rules,
real SQLite, real keys) and one in-process FastAPI app serve the whole module:

* ``victim``  — a patient enrolled *before* their records arrived, whose wallet was made
  on the device with ``wallet new`` (all 8 first blocks published);
* ``other``   — a patient first seen at ingest, whose keys this directory holds
  (``patient_keys = custodial``): an enrolled identity other than the victim;
* ``late``    — a patient whose device published block 1 only, so their records (in
  block 0) wait for a block key (finding 1);
* ``dr.wang@H001`` — a staff member (keys held by the directory).
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from medshare.api import share_grants
from medshare.api.sealed_record import SealedRecord, open_sealed
from medshare.crypto import hkac, kac
from medshare.crypto.signing import SigningKey
from medshare.ledger.app import published
from medshare.ledger.types import Tx, TxKind
from medshare.server.app import create_app
from medshare.service import db
from medshare.service.errors import AccessDenied, IntegrityError, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet import device
from medshare.wallet.client import HospitalClient
from service.conftest import Clock, one_hospital, patient_of, write_bundle

ROSTER = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)
NOW = 1_800_000_000_000
BASE = "http://testserver"


def _decoded_blocks(body: dict) -> tuple[list[Tx], dict[int, bytes]]:
    txs = [Tx.decode(bytes.fromhex(t)) for t in body["publications"]]
    return txs, {int(b): bytes.fromhex(h) for b, h in body["block_publics"].items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack-device-wallets")
    clock = Clock(NOW)
    service = one_hospital(root, ROSTER, clock)
    victim_bundle, other_bundle, late_bundle = (write_bundle(root, s, 0, 20) for s in (11, 12, 13))
    victim, other, late = (patient_of(b) for b in (victim_bundle, other_bundle, late_bundle))
    victim_code = service.enrol("H001", f"patient:{victim}", kind="patient")
    late_code = service.enrol("H001", f"patient:{late}", kind="patient")
    report = service.ingest("H001", [victim_bundle, other_bundle, late_bundle])
    assert not report.rejected
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:
        wallet = device.PersonalWallet(root / "devices" / "victim")
        answer = device.enrol(wallet.directory, BASE, victim_code.code, http=http, clock_ms=clock)
        assert answer["sealed"] > 0
        yield {
            "service": service,
            "http": http,
            "clock": clock,
            "root": root,
            "victim": victim,
            "other": other,
            "late": late,
            "late_code": late_code.code,
            "wallet": wallet,
        }
    service.close()


def _victim_client(world) -> HospitalClient:
    return world["wallet"].client(http=world["http"], clock_ms=world["clock"])


def _held_client(world, identity: str) -> HospitalClient:
    """A client of an identity whose key the hospital's directory holds (staff, custodial)."""
    key = world["service"].wallets.identity(identity)
    return HospitalClient(BASE, identity, key, http=world["http"], clock_ms=world["clock"])


def _signed_post(world, client: HospitalClient, path: str, doc: object) -> httpx.Response:
    body = json.dumps(doc).encode()
    return world["http"].post(path, content=body, headers=client._headers("POST", path, body))


def _fresh_code(world, patient_id: str) -> str:
    return world["service"].enrol("H001", f"patient:{patient_id}", kind="patient").code


def _directory(world, patient_id: str) -> hkac.Directory:
    doc = world["service"].directory_of(patient_id)
    return hkac.Directory.from_bytes(base64.b64decode(doc["directory"]))


# --- Finding 1: records waiting for a block key escape a revocation ----------------------


def test_a_revoked_share_opens_records_that_were_pending_at_revocation(world):
    service, http, clock, late = world["service"], world["http"], world["clock"], world["late"]
    # The patient's wallet is made on the device; it publishes block 1 only (its choice:
    # e.g. blocks 0-7 are used up and block 8 is not synced yet), so the records it has
    # in block 0 wait for that block's key.
    wallet = device.PersonalWallet(world["root"] / "devices" / "late")
    identity = f"patient:{late}"
    wallet.keys.create_identity(identity)
    seed = hkac.PatientSeed.generate()
    wallet.keys.save_seed(late, seed)
    key = wallet.keys.identity(identity)
    health = http.get("/v1/health").json()
    wallet.save_info(
        device.WalletInfo(identity, BASE, health["audience"], health["chain_id"], True)
    )
    body = {"code": world["late_code"], "identity_key": key.public.hex()}
    body.update(device.block_publications(seed, late, key, health["chain_id"], [1], 0))
    enrolled = http.post("/v1/enrolment", json=body)
    assert enrolled.status_code == 200 and enrolled.json()["sealed"] == 0
    assert service.directory_of(late)["pending"] == [0]
    client = wallet.client(http=http, clock_ms=clock)
    # The patient shares everything with Dr Wang, then changes their mind and revokes.
    made, _ = device.share(wallet, client, "dr.wang@H001", everything=True, now_ms=NOW)
    device.revoke(wallet, client, made.share_id, "changed my mind")
    # Later the wallet syncs: the waiting records are sealed to their slots.
    synced = device.sync_blocks(wallet, client)
    assert synced["sealed"] > 0
    sealed, pending = service.seal_export(identity, late)
    assert sealed and not pending
    opened_by_revoked = []
    for record in sealed:
        try:
            open_sealed(record, params=service.params, share=made)
        except AccessDenied:
            continue
        opened_by_revoked.append(record.record_id)
    # Secure: a revoked share's key opens nothing stored after its revocation.
    assert opened_by_revoked == [], f"revoked key opens {len(opened_by_revoked)} records"


# --- Finding 2: a refused redemption leaves the key registered on the ledger -------------


def test_a_refused_redemption_binds_nothing(world):
    service, http, clock = world["service"], world["http"], world["clock"]
    patient = "P-hijack"
    code = _fresh_code(world, patient)
    # Whoever got hold of the code (an SMS read over a shoulder) redeems it with their
    # own key and a publication with a nonce the ledger refuses.
    attacker, seed = SigningKey.generate(), hkac.PatientSeed.generate()
    body = {"code": code, "identity_key": attacker.public.hex()}
    body.update(device.block_publications(seed, patient, attacker, service.ledger.chain_id, [0], 7))
    refused = http.post("/v1/enrolment", json=body)
    assert refused.status_code >= 400  # refused, and so it should change nothing
    assert service.ledger.registered(attacker.public) is None, (
        "the refused redemption registered the attacker's key as the patient"
    )
    thief = HospitalClient(BASE, f"patient:{patient}", attacker, http=http, clock_ms=clock)
    with pytest.raises(AccessDenied):
        thief.patient_records(patient)
    wallet = device.PersonalWallet(world["root"] / "devices" / "hijack-victim")
    answer = device.enrol(wallet.directory, BASE, code, http=http, clock_ms=clock)
    assert answer["identity"] == f"patient:{patient}"


# --- Finding 3: a non-hashable publication key is a 500 ----------------------------------


def test_a_publication_with_a_list_as_key_name_is_refused_as_invalid(world):
    service = world["service"]
    wallet, victim = world["wallet"], world["victim"]
    key, chain = wallet.identity_key(), service.ledger.chain_id
    raw = hkac.block_public(wallet.seed(), 40).to_bytes()
    tx = Tx.create(
        TxKind.PUBLISH_KEY, {"key": [published.block_key(victim, 40)],
                             "digest": published.digest(raw)},
        service.ledger.next_nonce(key.public), key, chain=chain,
    )  # fmt: skip
    doc = {"block_publics": {"40": raw.hex()}, "publications": [tx.encode().hex()]}
    answer = _signed_post(world, _victim_client(world), f"/v1/patients/{victim}/blocks", doc)
    assert answer.status_code == 400, answer.text
    code, mine = _fresh_code(world, "P-list"), SigningKey.generate()
    seed = hkac.PatientSeed.generate()
    raw = hkac.block_public(seed, 0).to_bytes()
    tx = Tx.create(
        TxKind.PUBLISH_KEY, {"key": [published.block_key("P-list", 0)],
                             "digest": published.digest(raw)}, 0, mine, chain=chain,
    )  # fmt: skip
    body = {"code": code, "identity_key": mine.public.hex(),
            "block_publics": {"0": raw.hex()}, "publications": [tx.encode().hex()]}  # fmt: skip
    answer = world["http"].post("/v1/enrolment", json=body)
    assert answer.status_code == 400, answer.text


# --- Finding 4: the wallet signs for whatever audience another server names --------------


class _Relay(httpx.BaseTransport):
    """A server at another URL that names the victim's home hospital's audience in its
    health answer and relays every signed request to the home hospital."""

    def __init__(self, home: httpx.BaseTransport, health: dict) -> None:
        self.home, self.health, self.leaked = home, health, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/health":
            return httpx.Response(200, json=self.health)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        relayed = httpx.Request(
            request.method, BASE + request.url.raw_path.decode(), headers=headers,
            content=request.read(),
        )  # fmt: skip
        response = self.home.handle_request(relayed)
        content = response.read()
        if response.status_code == 200:
            self.leaked.append((request.url.path, content))
        return httpx.Response(response.status_code, headers=response.headers, content=content)


def test_another_server_cannot_make_the_wallet_sign_for_the_home_hospital(world):
    http, victim, wallet = world["http"], world["victim"], world["wallet"]
    info = wallet.info()
    health = {"status": "ok", "hospitals": ["H001"], "audience": info.audience,
              "chain_id": info.chain_id}  # fmt: skip
    relay = _Relay(http._transport, health)
    evil = httpx.Client(transport=relay)
    with pytest.raises(IntegrityError, match="claims to be"):
        client = wallet.client("http://evil.example", http=evil, clock_ms=world["clock"])
        client.patient_records(victim)
    assert relay.leaked == [], f"relayed and answered by the home hospital: {relay.leaked[:1]}"


# --- Resisted: enrolment codes --------------------------------------------------------------


def test_resisted_a_code_is_bound_to_its_identity(world):
    service, http = world["service"], world["http"]
    code_a = _fresh_code(world, "P-bound-a")
    _fresh_code(world, "P-bound-b")
    _, secret = code_a.rsplit("/", 1)
    key = SigningKey.generate()
    # The secret of A's code with B's name: refused (the secret is per identity).
    swapped = http.post(
        "/v1/enrolment",
        json={"code": f"patient:P-bound-b/{secret}", "identity_key": key.public.hex()},
    )
    assert swapped.status_code == 403
    assert service.ledger.registered(key.public) is None


def test_resisted_a_key_registered_to_someone_else_is_not_enrolled_again(world):
    service, http = world["service"], world["http"]
    code = _fresh_code(world, "P-steal-key")
    victim_key = world["wallet"].identity_key().public
    answer = http.post("/v1/enrolment", json={"code": code, "identity_key": victim_key.hex()})
    assert answer.status_code == 400 and "registered already" in answer.text
    # The code is still good for its holder's own key (a refused code changes nothing).
    with service.sessions() as session:
        assert session.get(db.Enrolment, "patient:P-steal-key").redeemed_ms is None


def test_resisted_publications_naming_another_patients_blocks(world):
    """A code holder cannot publish (nor make the hospital store) block keys of another
    patient: each publication must be the code's patient's own block."""
    service, victim = world["service"], world["victim"]
    code, mine = _fresh_code(world, "P-squat"), SigningKey.generate()
    seed = hkac.PatientSeed.generate()
    raw = hkac.block_public(seed, 30).to_bytes()
    tx = Tx.create(
        TxKind.PUBLISH_KEY, {"key": published.block_key(victim, 30),
                             "digest": published.digest(raw)}, 0, mine,
        chain=service.ledger.chain_id,
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="not the patient's own"):
        service.redeem(code, mine.public, publications=[tx], block_publics={30: raw})
    assert service.ledger.published(published.block_key(victim, 30)) is None
    assert service.ledger.registered(mine.public) is None


def test_resisted_a_staff_code_takes_its_role_and_department_from_the_hospital(world):
    service, http = world["service"], world["http"]
    code = service.enrol("H001", "dr.intern@H001", kind="clinician", role="nurse", dept="03")
    key = SigningKey.generate()
    body = {
        "code": code.code, "identity_key": key.public.hex(),
        # fields the holder would like to choose: ignored
        "kind": "patient", "roles": ["emergency"], "role": "emergency", "dept": "20",
        "hospital": "H002",
    }  # fmt: skip
    answer = http.post("/v1/enrolment", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"identity": "dr.intern@H001", "hospital": "H001", "kind": "clinician"}
    with service.sessions() as session:
        row = session.get(db.Principal, "dr.intern@H001")
        assert (row.kind, row.roles, row.dept, row.hospital) == (
            "clinician",
            ["nurse"],
            "03",
            "H001",
        )
    # A staff code carries no block keys.
    other = service.enrol("H001", "dr.extra@H001", kind="clinician", role="nurse", dept="03")
    seed, k2 = hkac.PatientSeed.generate(), SigningKey.generate()
    body = {"code": other.code, "identity_key": k2.public.hex()}
    body.update(device.block_publications(seed, "x", k2, service.ledger.chain_id, [0], 0))
    assert http.post("/v1/enrolment", json=body).status_code == 400
    assert service.ledger.registered(k2.public) is None


def test_resisted_no_block_key_is_decoded_nor_signature_checked_before_the_code(world, monkeypatch):
    """64 block keys (G1 decodes) and 64 signatures cost nothing with a wrong code."""
    service, http = world["service"], world["http"]
    code = _fresh_code(world, "P-dos")
    identity, secret = code.rsplit("/", 1)
    wrong = f"{identity}/{'A' * len(secret)}"
    key, seed = SigningKey.generate(), hkac.PatientSeed.generate()
    body = {"code": wrong, "identity_key": key.public.hex()}
    body.update(
        device.block_publications(seed, "P-dos", key, service.ledger.chain_id, range(64), 0)
    )
    calls = {"g1": 0, "verify": 0}
    real_from_bytes = kac.KacPatientPublic.from_bytes.__func__
    real_verify = Tx.verify

    def counting_from_bytes(cls, data):
        calls["g1"] += 1
        return real_from_bytes(cls, data)

    def counting_verify(self, *args, **kwargs):
        calls["verify"] += 1
        return real_verify(self, *args, **kwargs)

    monkeypatch.setattr(kac.KacPatientPublic, "from_bytes", classmethod(counting_from_bytes))
    monkeypatch.setattr(Tx, "verify", counting_verify)
    answer = http.post("/v1/enrolment", json=body)
    assert answer.status_code == 403
    assert calls == {"g1": 0, "verify": 0}
    # More than 64 publications: refused on its form; a body over 1 MiB: 413 unread.
    body["publications"] = body["publications"] * 2
    assert http.post("/v1/enrolment", json=body).status_code == 400
    huge = http.post("/v1/enrolment", content=b"{" + b" " * (1 << 20) + b"}")
    assert huge.status_code == 413


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b'{"code": 5, "identity_key": 7}',
        b'{"code": "patient:x/AAAA", "identity_key": "' + b"11" * 32 + b'", "publications": {}}',
        b'{"code": "patient:x/AAAA", "identity_key": "'
        + b"11" * 32
        + b'", "block_publics": {"1": "zz"}, "publications": []}',
        b'{"code": "patient:x/AAAA", "identity_key": "'
        + b"11" * 32
        + b'", "block_publics": {"99999999": "00"}, "publications": []}',
        b'{"code": "patient:x/AAAA", "identity_key": "'
        + b"11" * 32
        + b'", "block_publics": {}, "publications": [{"a": 1}]}',
        b"[" * 100_000,
    ],
)
def test_resisted_malformed_enrolment_bodies_are_4xx_without_internals(world, raw):
    answer = world["http"].post("/v1/enrolment", content=raw)
    assert 400 <= answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text


# --- Resisted: block keys, the patient routes ----------------------------------------------


def test_resisted_a_block_key_other_than_the_published_one_is_not_stored(world):
    """The patient's own signed publication names the digest of one key; the request
    carries another: the hospital would seal to a key the ledger does not vouch for."""
    service, victim, wallet = world["service"], world["victim"], world["wallet"]
    key = wallet.identity_key()
    honest = hkac.block_public(wallet.seed(), 41).to_bytes()
    swapped = hkac.block_public(hkac.PatientSeed.generate(), 41).to_bytes()
    tx = Tx.create(
        TxKind.PUBLISH_KEY, {"key": published.block_key(victim, 41),
                             "digest": published.digest(honest)},
        service.ledger.next_nonce(key.public), key, chain=service.ledger.chain_id,
    )  # fmt: skip
    doc = {"block_publics": {"41": swapped.hex()}, "publications": [tx.encode().hex()]}
    answer = _signed_post(world, _victim_client(world), f"/v1/patients/{victim}/blocks", doc)
    assert answer.status_code == 400
    assert 41 not in service.directory_of(victim)["published"]
    assert service.ledger.published(published.block_key(victim, 41)) is None


def test_resisted_another_patients_routes(world):
    victim, other = world["victim"], world["other"]
    client = _victim_client(world)
    for path in ("export", "directory", "records", "log"):
        with pytest.raises(AccessDenied):
            client.get(f"/v1/patients/{other}/{path}")
    for path in ("blocks", "shares"):
        answer = _signed_post(world, client, f"/v1/patients/{other}/{path}", {})
        assert answer.status_code == 403
    # The custodial patient cannot use the device routes of the victim either.
    intruder = _held_client(world, f"patient:{other}")
    with pytest.raises(AccessDenied):
        intruder.get(f"/v1/patients/{victim}/export")
    # Nor read the victim's record in the personal area without a share.
    rid = world["service"].records_of(victim)[0]["id"]
    with pytest.raises(AccessDenied):
        intruder.sealed_record(rid, area="personal")


def test_resisted_share_forgery_overreach_and_replay(world):
    service, victim, other = world["service"], world["victim"], world["other"]
    wallet, chain = world["wallet"], service.ledger.chain_id
    key = wallet.identity_key()
    directory = _directory(world, victim)
    records = [r for r in service.records_of(victim) if r["type"] != "Patient"]
    made = hkac.share_records(wallet.seed(), service.params, directory, [records[0]["id"]],
                              grantee="dr.wang@H001")  # fmt: skip
    body = share_grants.grant_body(made, victim, None)
    nonce = service.ledger.next_nonce(key.public)
    tx = Tx.create(TxKind.GRANT, body, nonce, key, chain=chain)
    classes = share_grants.wire_classes(made)
    request = {"tx": tx.encode().hex(), "classes": classes}
    # The victim's GRANT, captured, sent by another patient on their own route.
    intruder = _held_client(world, f"patient:{other}")
    answer = _signed_post(world, intruder, f"/v1/patients/{other}/shares", request)
    assert answer.status_code == 403
    # A share of the victim naming another patient's record.
    foreign = service.records_of(other)[1]["id"]
    stolen = dict(body, scope={"kind": "records", "items": [foreign]})
    bad = Tx.create(TxKind.GRANT, stolen, nonce, key, chain=chain)
    answer = _signed_post(world, _victim_client(world), f"/v1/patients/{victim}/shares",
                          {"tx": bad.encode().hex(), "classes": {}})  # fmt: skip
    assert answer.status_code == 404
    # A department share whose class map reaches into another department's slab.
    depts = directory.departments
    assert len(depts) >= 2
    dept_share = hkac.share_department(wallet.seed(), service.params, directory, depts[0],
                                       grantee="dr.wang@H001")  # fmt: skip
    wider = {b: set(c) for b, c in dept_share.classes().items()}
    for slab in directory.slabs_of(depts[1]):
        wider.setdefault(slab.block, set()).update(slab.classes())
    dbody = share_grants.grant_body(dept_share, victim, None)
    dtx = Tx.create(TxKind.GRANT, dbody, nonce, key, chain=chain)
    wire = {str(b): sorted(c) for b, c in wider.items()}
    answer = _signed_post(world, _victim_client(world), f"/v1/patients/{victim}/shares",
                          {"tx": dtx.encode().hex(), "classes": wire})  # fmt: skip
    assert answer.status_code == 400 and "outside its scope" in answer.text
    # The honest share goes through once; its replay is refused.
    client = _victim_client(world)
    assert _signed_post(world, client, f"/v1/patients/{victim}/shares", request).status_code == 200
    again = _signed_post(world, client, f"/v1/patients/{victim}/shares", request)
    assert again.status_code == 400 and "exists already" in again.text


def test_resisted_revocation_by_others_mismatched_or_replayed(world):
    service, victim, other = world["service"], world["victim"], world["other"]
    wallet, chain = world["wallet"], service.ledger.chain_id
    client = _victim_client(world)
    rid = next(r["id"] for r in service.records_of(victim) if r["type"] != "Patient")
    made, _ = device.share(wallet, client, "dr.wang@H001", records=[rid], now_ms=NOW)
    path = f"/v1/grants/{made.share_id}/revoke"
    # Another patient, with their own key and their own signed request.
    intruder = _held_client(world, f"patient:{other}")
    ikey = service.wallets.identity(f"patient:{other}")
    forged = Tx.create(TxKind.REVOKE, {"grant": made.share_id, "reason": "x"},
                       service.ledger.next_nonce(ikey.public), ikey, chain=chain)  # fmt: skip
    assert _signed_post(world, intruder, path, {"tx": forged.encode().hex()}).status_code == 403
    # The patient's REVOKE of another grant, sent to this grant's path.
    key = wallet.identity_key()
    nonce = service.ledger.next_nonce(key.public)
    elsewhere = Tx.create(TxKind.REVOKE, {"grant": "0" * 32, "reason": "x"}, nonce, key,
                          chain=chain)  # fmt: skip
    assert _signed_post(world, client, path, {"tx": elsewhere.encode().hex()}).status_code == 400
    # The patient's genuine REVOKE, relayed by someone else: refused (sender ≠ caller).
    genuine = Tx.create(TxKind.REVOKE, {"grant": made.share_id, "reason": "bye"}, nonce, key,
                        chain=chain)  # fmt: skip
    assert _signed_post(world, intruder, path, {"tx": genuine.encode().hex()}).status_code == 403
    assert _signed_post(world, client, path, {"tx": genuine.encode().hex()}).status_code == 200
    replay = _signed_post(world, client, path, {"tx": genuine.encode().hex()})
    assert replay.status_code == 400 and "revoked" in replay.text
    wang = _held_client(world, "dr.wang@H001")
    with pytest.raises(AccessDenied):
        wang.sealed_record(rid, area="personal", share_id=made.share_id)


# --- Resisted: the wallet against a server that lies in an export --------------------------


class _Tamper(httpx.BaseTransport):
    """The home hospital, except that its export answer is rewritten."""

    def __init__(self, home: httpx.BaseTransport, rewrite) -> None:
        self.home, self.rewrite = home, rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.home.handle_request(request)
        content = response.read()
        if request.url.path.endswith("/export") and response.status_code == 200:
            content = json.dumps(self.rewrite(json.loads(content))).encode()
            return httpx.Response(200, headers={"content-type": "application/json"},
                                  content=content)  # fmt: skip
        return httpx.Response(response.status_code, headers=response.headers, content=content)


def _foreign_sealed(world) -> dict:
    other = world["other"]
    sealed, _ = world["service"].seal_export(f"patient:{other}", other)
    return sealed[0].to_json()


@pytest.mark.parametrize("lie", ["another patient's record", "record ids swapped"])
def test_resisted_the_wallet_refuses_an_export_that_is_not_its_own(world, lie):
    foreign = _foreign_sealed(world) if lie == "another patient's record" else None

    def rewrite(doc):
        if foreign is not None:
            doc["records"].append(foreign)
        else:
            a, b = doc["records"][0], doc["records"][1]
            a["record"], b["record"] = b["record"], a["record"]
        return doc

    tampered = httpx.Client(transport=_Tamper(world["http"]._transport, rewrite))
    client = world["wallet"].client(http=tampered, clock_ms=world["clock"])
    with pytest.raises((AccessDenied, IntegrityError)):
        device.export(world["wallet"], client)


def test_resisted_sealed_record_json_field_names_are_what_the_tamper_rewrites(world):
    """Guard for the test above: 'record' is the field SealedRecord.from_json reads."""
    doc = _foreign_sealed(world)
    assert SealedRecord.from_json(doc).record_id == doc["record"]


def test_resisted_a_grantee_that_is_not_enrolled_and_an_expired_share(world):
    wallet = world["wallet"]
    client = _victim_client(world)
    with pytest.raises(NotFound):
        device.share(wallet, client, "nobody@H001", everything=True, now_ms=NOW)
    with pytest.raises(InvalidInput):
        device.share(wallet, client, "dr.wang@H001", everything=True, until_ms=NOW - 1,
                     now_ms=NOW)  # fmt: skip
