"""Wallets made on the holder's device: a one-time enrolment code, keys that never reach
the hospital, a patient's records sealed to block keys their wallet published, reads and
exports opened with the seed, shares made on the device and checked by the hospital's
gate. The hospital's HTTP app runs in-process (FastAPI's test client) over a real records
service (SQLite, in-process ledger running the real ABCI rules)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from medshare.api import share_grants
from medshare.crypto import abe, hkac, recovery
from medshare.crypto.signing import SigningKey
from medshare.ledger.app import published
from medshare.ledger.types import Tx, TxKind
from medshare.server.app import create_app
from medshare.service.areas import top_department
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet import device
from medshare.wallet.client import HospitalClient
from service.conftest import Clock, one_hospital, patient_of, write_bundle

ROSTER = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)
NOW = 1_800_000_000_000
BASE = "http://testserver"


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """H001 with a patient enrolled *before* their records arrive (ingested while the
    patient has no wallet: seals pending), then the patient's wallet made on the device."""
    root = tmp_path_factory.mktemp("device-wallets")
    clock = Clock(NOW)
    service = one_hospital(root, ROSTER, clock)
    bundle = write_bundle(root, 11, 0, 20)
    patient = patient_of(bundle)
    code = service.enrol("H001", f"patient:{patient}", kind="patient", name="Ms Device")
    report = service.ingest("H001", [bundle])
    assert not report.rejected and report.records > 0
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:
        yield {
            "service": service,
            "http": http,
            "clock": clock,
            "root": root,
            "patient": patient,
            "code": code.code,
        }
    service.close()


def _wallet(story, name: str) -> device.PersonalWallet:
    return device.PersonalWallet(story["root"] / "devices" / name)


def _client(story, wallet: device.PersonalWallet) -> HospitalClient:
    return wallet.client(http=story["http"], clock_ms=story["clock"])


@pytest.fixture(scope="module")
def patient_wallet(story):
    service, patient = story["service"], story["patient"]
    records = service.records_of(patient)
    assert records
    # Before the wallet exists the hospital holds the records but cannot seal them to the
    # patient: their personal-area seal waits for the patient's block key.
    assert all(r["id"] for r in records)
    wallet = _wallet(story, "patient")
    answer = device.enrol(
        wallet.directory, BASE, story["code"], http=story["http"], clock_ms=story["clock"]
    )
    assert answer["kind"] == "patient" and answer["sealed"] == len(records)
    return wallet


def test_the_hospital_never_holds_the_patients_seed_or_identity_key(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    assert not service.wallets.has_seed(patient)
    assert not service.wallets.has_identity(f"patient:{patient}")
    seed = patient_wallet.seed().secret_bytes()
    identity = patient_wallet.identity_key()
    assert service.ledger.registered(identity.public) == f"patient:{patient}"
    name = published.block_key(patient, 0)
    raw = hkac.block_public(patient_wallet.seed(), 0).to_bytes()
    assert service.ledger.published(name) == published.digest(raw)
    # Every byte the hospital keeps: neither secret is anywhere in its data directory.
    data = story["root"] / "data"
    for path in data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert seed not in content and identity.seed not in content, path


def test_a_code_is_redeemed_once_and_a_wrong_or_expired_one_enrols_nobody(story, patient_wallet):
    service, clock = story["service"], story["clock"]
    key = SigningKey.generate().public
    with pytest.raises(AccessDenied, match="not valid"):
        service.redeem(story["code"], key)  # used already
    code = service.enrol("H001", "patient:P-late", kind="patient", ttl_ms=60_000)
    identity, secret = code.code.rsplit("/", 1)
    wrong = f"{identity}/{'A' * len(secret)}"
    with pytest.raises(AccessDenied, match="not valid"):
        service.redeem(wrong, key)
    with pytest.raises(InvalidInput):
        service.redeem(f"{identity}/ＡＢＣ", key)  # not base32: refused, not a crash
    clock.now_ms += 61_000
    try:
        with pytest.raises(AccessDenied, match="not valid"):
            service.redeem(code.code, key)
    finally:
        clock.now_ms -= 61_000
    assert service.ledger.registered(key) is None
    with pytest.raises(InvalidInput, match="already has an identity"):
        service.enrol("H001", f"patient:{story['patient']}", kind="patient")


def test_publications_signed_by_another_key_are_refused_and_the_code_stays_valid(story):
    service = story["service"]
    code = service.enrol("H001", "patient:P-forged", kind="patient")
    mine, other = SigningKey.generate(), SigningKey.generate()
    seed = hkac.PatientSeed.generate()
    body = device.block_publications(seed, "P-forged", other, service.ledger.chain_id, [0], 0)
    publics = {int(b): bytes.fromhex(h) for b, h in body["block_publics"].items()}
    txs = [Tx.decode(bytes.fromhex(t)) for t in body["publications"]]
    with pytest.raises(InvalidInput, match="not the patient's own"):
        service.redeem(code.code, mine.public, publications=txs, block_publics=publics)
    assert service.ledger.registered(mine.public) is None
    good = device.block_publications(seed, "P-forged", mine, service.ledger.chain_id, [0], 0)
    answer = service.redeem(
        code.code,
        mine.public,
        publications=[Tx.decode(bytes.fromhex(t)) for t in good["publications"]],
        block_publics={int(b): bytes.fromhex(h) for b, h in good["block_publics"].items()},
    )
    assert answer["blocks"] == [0]


def test_the_patient_reads_and_exports_with_the_seed_on_the_device(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    client = _client(story, patient_wallet)
    rid = service.records_of(patient)[0]["id"]
    data = device.read_own(patient_wallet, client, rid)
    assert f"{json.loads(data)['resourceType']}/{json.loads(data)['id']}" == rid
    opened, pending = device.export(patient_wallet, client)
    assert pending == [] and len(opened) == len(service.records_of(patient))
    assert data in opened
    actions = [c.tx.body.get("action") for c in service.ledger.txs(TxKind.ACCESS)]
    assert "export" in actions


def test_a_share_made_on_the_device_opens_for_the_grantee_only(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    client = _client(story, patient_wallet)
    rid = next(r["id"] for r in service.records_of(patient) if r["type"] != "Patient")
    made, answer = device.share(patient_wallet, client, "dr.wang@H001", records=[rid], now_ms=NOW)
    assert answer["grant"] == made.share_id
    logged = service.ledger.find(answer["txid"]).tx
    assert logged.kind is TxKind.GRANT and logged.sender == patient_wallet.identity_key().public
    wang = HospitalClient(
        BASE, "dr.wang@H001", service.wallets.identity("dr.wang@H001"),
        clock_ms=story["clock"], http=story["http"],
    )  # fmt: skip
    sealed = wang.sealed_record(rid, area="personal", share_id=made.share_id)
    from medshare.api.sealed_record import open_sealed

    data = open_sealed(sealed, params=wang.kac_params(), share=made)
    assert data == device.read_own(patient_wallet, client, rid)
    others = [r["id"] for r in service.records_of(patient) if r["id"] != rid]
    with pytest.raises(AccessDenied, match="does not cover"):
        wang.sealed_record(others[0], area="personal", share_id=made.share_id)
    with pytest.raises(NotFound):
        device.share(patient_wallet, client, "nobody@H001", everything=True, now_ms=NOW)


def test_the_gate_refuses_a_forged_or_overreaching_share(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    rid = next(r["id"] for r in service.records_of(patient) if r["type"] != "Patient")
    directory = hkac.Directory.from_bytes(
        __import__("base64").b64decode(service.directory_of(patient)["directory"])
    )
    made = hkac.share_records(
        patient_wallet.seed(), service.params, directory, [rid], grantee="dr.wang@H001"
    )
    body = share_grants.grant_body(made, patient, None)
    key = patient_wallet.identity_key()
    nonce = service.ledger.next_nonce(key.public)
    chain = service.ledger.chain_id
    forged = Tx.create(TxKind.GRANT, body, nonce, SigningKey.generate(), chain=chain)
    with pytest.raises(AccessDenied, match="signed by the patient"):
        service.accept_share(patient, forged, made.classes())
    honest = Tx.create(TxKind.GRANT, body, nonce, key, chain=chain)
    slot = directory.slot_of(rid)
    wider = {slot.block: frozenset(range(directory.n))}  # claims the whole block
    with pytest.raises(InvalidInput, match="outside its scope"):
        service.accept_share(patient, honest, wider)
    other = dict(body, patient="someone-else")
    with pytest.raises(InvalidInput, match="names patient"):
        service.accept_share(
            patient, Tx.create(TxKind.GRANT, other, nonce, key, chain=chain), made.classes()
        )
    assert service.accept_share(patient, honest, made.classes())["grant"] == made.share_id
    with pytest.raises(InvalidInput, match="exists already"):
        service.accept_share(patient, honest, made.classes())


def test_only_the_patient_may_use_the_patient_routes(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    wang = HospitalClient(
        BASE, "dr.wang@H001", service.wallets.identity("dr.wang@H001"),
        clock_ms=story["clock"], http=story["http"],
    )  # fmt: skip
    for path in ("directory", "export"):
        with pytest.raises(AccessDenied):
            wang.get(f"/v1/patients/{patient}/{path}")
    for path in ("blocks", "shares"):
        with pytest.raises(AccessDenied):
            wang.post_json(f"/v1/patients/{patient}/{path}", b"{}")
    refused = story["http"].post("/v1/enrolment", content=b"[1,2")
    assert refused.status_code == 400 and "Traceback" not in refused.text
    unknown = story["http"].post(
        "/v1/enrolment", json={"code": "patient:x/AAAA", "identity_key": "00" * 32}
    )
    assert unknown.status_code in (400, 403) and "Traceback" not in unknown.text


def test_records_ingested_later_are_sealed_and_a_sync_publishes_more_blocks(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    client = _client(story, patient_wallet)
    before = service.directory_of(patient)
    spare = [b for b in before["published"] if b not in {0}]
    assert spare and before["pending"] == []
    answer = device.sync_blocks(patient_wallet, client)
    assert answer["added"] == []  # enough spare blocks: nothing to publish yet
    # The hospital's copy of the published blocks is checked against the ledger: a block
    # key edited in its database is refused before anything is sealed to it.
    name = published.block_key(patient, 1)
    assert service.ledger.published(name) is not None


def test_a_staff_wallet_gets_its_keys_on_the_device_and_reads(story):
    service = story["service"]
    record = next(r for r in service.records_of(story["patient"]) if r["type"] != "Patient")
    rid, dept = record["id"], top_department(record["dept"], service.taxonomy)
    code = service.enrol("H001", "dr.device@H001", kind="clinician", role="physician", dept=dept)
    wallet = _wallet(story, "dr.device")
    answer = device.enrol(
        wallet.directory, BASE, code.code, http=story["http"], clock_ms=story["clock"]
    )
    assert [k["authority"] for k in answer["keys"]] == ["H001"]
    assert not service.wallets.has_identity("dr.device@H001")
    client = _client(story, wallet)
    sealed = client.sealed_record(rid, area="institution")
    keys = [
        abe.AbeUserKey.from_bytes(p.read_bytes())
        for p in wallet.keys.abe_key_files("dr.device@H001", "H001")
    ]
    from medshare.api.sealed_record import open_sealed

    data = open_sealed(sealed, abe_keys=keys, authority_public=client.authority_public("H001"))
    assert json.loads(data)["id"] == rid.split("/")[-1]
    logged = service.ledger.find(sealed.txid).tx
    assert logged.body["actor"] == "dr.device@H001"  # logged by the node on their behalf
    for bad in (
        dict(role="surgeon", dept="03"),
        dict(role="physician", dept="no-such-dept"),
    ):
        with pytest.raises(InvalidInput):
            service.enrol("H001", "dr.other@H001", kind="clinician", **bad)
    with pytest.raises(InvalidInput, match="named <name>@H001"):
        service.enrol("H001", "dr.other@H002", kind="clinician", role="physician", dept="03")


def test_the_patient_revokes_a_share_from_the_device(story, patient_wallet):
    service, patient = story["service"], story["patient"]
    client = _client(story, patient_wallet)
    made, _ = device.share(patient_wallet, client, "dr.wang@H001", everything=True, now_ms=NOW)
    rid = next(r["id"] for r in service.records_of(patient) if r["type"] != "Patient")
    wang = HospitalClient(
        BASE, "dr.wang@H001", service.wallets.identity("dr.wang@H001"),
        clock_ms=story["clock"], http=story["http"],
    )  # fmt: skip
    assert wang.sealed_record(rid, area="personal", share_id=made.share_id)
    # Nobody but the patient revokes it: not the grantee, not with another key.
    key = service.wallets.identity("dr.wang@H001")
    forged = Tx.create(
        TxKind.REVOKE, {"grant": made.share_id, "reason": "x"},
        service.ledger.next_nonce(key.public), key, chain=service.ledger.chain_id,
    )  # fmt: skip
    with pytest.raises(AccessDenied, match="revoked by its patient"):
        wang.post_json(
            f"/v1/grants/{made.share_id}/revoke",
            json.dumps({"tx": forged.encode().hex()}).encode(),
        )
    done = device.revoke(patient_wallet, client, made.share_id, "changed my mind")
    assert done["records_resealed"] > 0
    assert service.ledger.find(done["txid"]).tx.sender == patient_wallet.identity_key().public
    with pytest.raises(AccessDenied, match="revoked"):
        wang.sealed_record(rid, area="personal", share_id=made.share_id)
    # The patient's own key still opens every record at its new slot.
    opened, pending = device.export(patient_wallet, client)
    assert pending == [] and len(opened) == len(service.records_of(patient))
    with pytest.raises(InvalidInput, match="already revoked"):
        device.revoke(patient_wallet, client, made.share_id, "again")


def test_a_records_officer_ingests_over_http_and_others_may_not(story):
    service, http = story["service"], story["http"]
    code = service.enrol("H001", "it.officer@H001", kind="clinician", role="records", dept="02")
    wallet = _wallet(story, "it.officer")
    answer = device.enrol(wallet.directory, BASE, code.code, http=http, clock_ms=story["clock"])
    assert answer["keys"] == []  # a records officer reads nothing through an area
    client = _client(story, wallet)
    bundle = write_bundle(story["root"], 12, 0, 10).read_bytes()
    report = client.post_json("/v1/ingest", bundle)
    assert report["records"] > 0 and report["rejected"] == []
    assert client.post_json("/v1/ingest", bundle)["unchanged"] == report["records"]
    # The officer enrols a patient while the server runs; the code makes their wallet.
    doc = json.dumps({"patient": "P-officer", "name": "Ms Officer", "days": 1}).encode()
    code = client.post_json("/v1/enrolments", doc)
    assert code["identity"] == "patient:P-officer" and code["hospital"] == "H001"
    made = device.enrol(_wallet(story, "p-officer").directory, BASE, code["code"], http=http,
                        clock_ms=story["clock"])  # fmt: skip
    assert made["identity"] == "patient:P-officer"
    for bad_doc in (
        {"patient": "x", "staff": "y@H001"},
        {"patient": 7},
        {"patient": "x", "days": 0},
    ):
        with pytest.raises(InvalidInput):
            client.post_json("/v1/enrolments", json.dumps(bad_doc).encode())
    bad = client.post_json("/v1/ingest", b'{"resourceType": "Observation", "status": 7}')
    assert bad["records"] == 0 and bad["rejected"]  # refused with its reason, nothing lost
    wang = HospitalClient(
        BASE, "dr.wang@H001", service.wallets.identity("dr.wang@H001"),
        clock_ms=story["clock"], http=http,
    )  # fmt: skip
    with pytest.raises(AccessDenied, match="not a records officer"):
        wang.post_json("/v1/ingest", bundle)
    with pytest.raises(AccessDenied, match="not a records officer"):
        wang.post_json("/v1/enrolments", json.dumps({"patient": "P-x"}).encode())


def test_the_seed_alone_restores_the_patients_wallet_on_a_new_device(story, patient_wallet):
    patient = story["patient"]
    words = device.backup(patient_wallet, 2, 3)
    assert len(words) == 3
    # The identity key is derived from the seed: the restored wallet is the same person.
    assert patient_wallet.identity_key().seed == hkac.identity_seed(patient_wallet.seed())
    fresh = _wallet(story, "patient-restored")
    done = device.restore(
        fresh.directory, BASE, patient, words[1:], http=story["http"], clock_ms=story["clock"]
    )
    assert done["restored"]
    assert fresh.seed() == patient_wallet.seed()
    client = _client(story, fresh)
    rid = story["service"].records_of(patient)[0]["id"]
    assert device.read_own(fresh, client, rid) == device.read_own(
        patient_wallet, _client(story, patient_wallet), rid
    )
    other = device.backup(patient_wallet, 2, 3)  # another split: shares do not mix
    with pytest.raises(InvalidInput, match="cannot rebuild"):
        device.restore(_wallet(story, "mixed").directory, BASE, patient, [words[0], other[1]],
                       http=story["http"], clock_ms=story["clock"])  # fmt: skip
    wrong_seed = recovery.split_seed(hkac.PatientSeed.generate(), 2, 2)
    with pytest.raises(InvalidInput, match="not patient"):
        device.restore(_wallet(story, "wrong").directory, BASE, patient, wrong_seed,
                       http=story["http"], clock_ms=story["clock"])  # fmt: skip
    assert not _wallet(story, "wrong").exists()
    with pytest.raises(InvalidInput, match="holds a wallet"):
        device.restore(fresh.directory, BASE, patient, words[:2],
                       http=story["http"], clock_ms=story["clock"])  # fmt: skip
