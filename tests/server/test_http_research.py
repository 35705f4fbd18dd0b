"""Research over HTTP with every key on its holder's device: an ethics officer approves a
study for a researcher; the researcher's wallet obtains the study key from the authority;
a patient's wallet signs the consent, the hospital makes de-identified copies; the
researcher reads those copies of consenting patients only, until the patient withdraws.
The hospital's app runs in-process (FastAPI's test client) over a real records service
(SQLite, in-process ledger running the real ABCI rules)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from medshare.api import consent_grants
from medshare.api.sealed_record import open_sealed
from medshare.crypto.signing import SigningKey
from medshare.ledger.types import Tx, TxKind
from medshare.server.app import create_app
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet import device
from medshare.wallet.keys import obtain_key
from server.devices import device_wallet, staff_wallet
from service.conftest import Clock, one_hospital, patient_of, write_bundle

NOW = 1_800_000_000_000
BASE = "http://testserver"
ROSTER = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)
STUDY = "S-2026-07"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """H001 with a patient who enrols on their device (records ingested before), another
    patient (who never consents), an ethics officer and a researcher on their devices."""
    root = tmp_path_factory.mktemp("http-research")
    clock = Clock(NOW)
    service = one_hospital(root, ROSTER, clock)
    bundle = write_bundle(root, 21, 0, 12)
    patient = patient_of(bundle)
    code = service.enrol("H001", f"patient:{patient}", kind="patient", name="Ms Study")
    other = write_bundle(root, 21, 1, 8)
    assert not service.ingest("H001", [bundle, other]).rejected
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:

        def wallet(name: str, code: str) -> device.PersonalWallet:
            return device_wallet(root, http, clock, name, code)

        def staff(who: str, role: str) -> device.PersonalWallet:
            return staff_wallet(service, root, http, clock, who, role)

        yield {
            "service": service, "http": http, "clock": clock, "patient": patient,
            "other": patient_of(other), "me": wallet("patient", code.code),
            "ethics": staff("ethics@H001", "ethics"),
            "researcher": staff("res.zhou@H001", "researcher"),
        }  # fmt: skip
    service.close()


def _client(world, wallet: device.PersonalWallet):
    return wallet.client(http=world["http"], clock_ms=world["clock"])


def _approve(world, study: str, researcher: str = "res.zhou@H001") -> dict:
    body = json.dumps({"study": study, "researcher": researcher}).encode()
    return _client(world, world["ethics"]).post_json("/v1/studies", body)


def _research_read(world, record: str, key) -> dict:
    client = _client(world, world["researcher"])
    sealed = client.sealed_record(record, area="research")
    public = client.authority_public("H001")
    return json.loads(open_sealed(sealed, abe_keys=[key], authority_public=public))


@pytest.fixture(scope="module")
def study_key(world):
    approved = _approve(world, STUDY)
    assert approved["hospital"] == "H001" and approved["txid"]
    researcher = world["researcher"]
    # Nothing of the researcher's is at the hospital: their wallet asks for the key.
    assert not world["service"].wallets.has_identity("res.zhou@H001")
    got = obtain_key(_client(world, researcher), "res.zhou@H001", researcher.identity_key(), "H001")
    assert f"ethics:{STUDY}" in got.key.components and "role:researcher" in got.key.components
    assert not any(a.startswith("dept:") for a in got.key.components)  # no clinical key
    return got.key


def test_a_researcher_reads_deidentified_copies_of_consenting_patients_only(world, study_key):
    service, patient = world["service"], world["patient"]
    record = next(r["id"] for r in service.records_of(patient) if r["type"] != "Patient")
    with pytest.raises(AccessDenied, match="no consent"):
        _research_read(world, record, study_key)  # before the patient consents
    made = device.consent(world["me"], _client(world, world["me"]), STUDY)
    assert made["copies"] == len(service.records_of(patient)) and made["study"] == STUDY
    copy = _research_read(world, record, study_key)
    assert copy["resourceType"] == record.split("/")[0]
    assert patient not in json.dumps(copy) and "Ms Study" not in json.dumps(copy)
    other = next(r["id"] for r in service.records_of(world["other"]) if r["type"] != "Patient")
    with pytest.raises(AccessDenied):
        _research_read(world, other, study_key)  # never consented
    # The consent is the patient's own act: signed by their key, on their Consents list.
    me = _client(world, world["me"])
    consents = me.get(f"/v1/patients/{patient}/consents")
    assert any(made["grant"] in json.dumps(c) for c in consents)
    assert service.ledger.find(made["txid"]).tx.sender == world["me"].identity_key().public
    # Consenting again while the consent is live is refused; withdrawing ends the reads.
    with pytest.raises(InvalidInput, match="already consented"):
        device.consent(world["me"], me, STUDY)
    device.revoke(world["me"], me, made["grant"], "withdrawn")
    with pytest.raises(AccessDenied):
        _research_read(world, record, study_key)
    # Consenting again after the withdrawal takes the next consent id.
    again = device.consent(world["me"], me, STUDY)
    assert again["grant"] == consent_grants.consent_base(STUDY, patient) + "/2"
    assert _research_read(world, record, study_key)["resourceType"] == record.split("/")[0]


def test_only_an_ethics_officer_approves_and_only_researchers_are_approved(world, study_key):
    wang = world["service"].wallets.identity("dr.wang@H001")
    from medshare.wallet.client import HospitalClient

    physician = HospitalClient(BASE, "dr.wang@H001", wang, clock_ms=world["clock"],
                               http=world["http"])  # fmt: skip
    body = json.dumps({"study": "S-x", "researcher": "res.zhou@H001"}).encode()
    with pytest.raises(AccessDenied, match="not an ethics officer"):
        physician.post_json("/v1/studies", body)
    with pytest.raises(InvalidInput, match="not a researcher"):
        _approve(world, "S-y", researcher="dr.wang@H001")
    with pytest.raises(InvalidInput, match="already exists"):
        _approve(world, STUDY)
    with pytest.raises(InvalidInput):
        _client(world, world["ethics"]).post_json("/v1/studies", b'{"study": ["S-z"]}')
    with pytest.raises(NotFound, match="unknown study"):
        _client(world, world["me"]).get("/v1/studies/S-never")
    # A key holder cannot ask for a study key twice (the authority decides what it issues).
    researcher = world["researcher"]
    with pytest.raises(AccessDenied):
        obtain_key(_client(world, researcher), "res.zhou@H001", researcher.identity_key(), "H001")


def _consent_tx(world, key: SigningKey, body: dict) -> bytes:
    me = world["me"]
    tx = Tx.create(TxKind.GRANT, body, me.nonce(_client(world, me)), key,
                   chain=me.info().chain_id)  # fmt: skip
    return json.dumps({"tx": tx.encode().hex()}).encode()


def test_a_consent_not_made_by_the_patient_or_not_as_written_is_refused(world, study_key):
    service, patient = world["service"], world["patient"]
    study = "S-2026-08"
    _approve(world, study)
    me = _client(world, world["me"])
    path = f"/v1/patients/{patient}/consents"
    grant = consent_grants.next_consent_id(study, patient, [])
    body = consent_grants.consent_body(grant, patient, study, "H001")
    wraps_before = len(service.consents(patient))
    # Signed by another key (a hospital forging the patient's consent): refused.
    with pytest.raises(AccessDenied, match="signed by the patient"):
        me.post_json(path, _consent_tx(world, SigningKey.generate(), body))
    key = world["me"].identity_key()
    # The patient's key, but not the consent as written: another hospital, an extra
    # field, a grant id out of sequence, another patient.
    for wrong in (
        {**body, "scope": {"study": study, "hospital": "H002"}},
        {**body, "until": None},
        {**body, "grant": grant + "/7"},
        {**body, "area": "personal"},
    ):
        with pytest.raises(InvalidInput, match="not the consent grant"):
            me.post_json(path, _consent_tx(world, key, wrong))
    with pytest.raises(NotFound, match="unknown study"):
        me.post_json(path, _consent_tx(world, key, {**body, "grantee": "S-never"}))
    with pytest.raises(InvalidInput):
        me.post_json(path, b'{"tx": "zz"}')
    # Nothing was committed or kept for the refused ones.
    assert len(service.consents(patient)) == wraps_before
    # Another patient's consent through this patient's route: refused by the route.
    with pytest.raises(AccessDenied):
        me.post_json(f"/v1/patients/{world['other']}/consents", _consent_tx(world, key, body))
    # The right one goes through once; the same bytes again are refused.
    signed = _consent_tx(world, key, body)
    assert me.post_json(path, signed)["grant"] == grant
    with pytest.raises(InvalidInput, match="already consented"):
        me.post_json(path, signed)
