"""Referral, consents and tracing over HTTP between two hospitals' parties: a physician of
H001 refers a patient to a partner physician of H002 whose keys are on their own device;
the partner's wallet obtains the referral key from H001's authority and reads; the
patient sees the referral among their Consents; an auditor's leaked-key submission
names the partner. The hospital's app runs in-process (FastAPI's test client) over a
real records service (SQLite, in-process ledger running the real ABCI rules)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from medshare.api.sealed_record import open_sealed
from medshare.crypto import abe
from medshare.server.app import create_app
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet import device
from medshare.wallet.client import HospitalClient
from medshare.wallet.keys import obtain_key
from service.conftest import Clock, write_bundle

NOW = 1_800_000_000_000
BASE = "http://testserver"
ROSTER = (
    StaffMember("dr.wang@H001", "H001", "03", "physician"),
    StaffMember("nurse.li@H001", "H001", "03", "nurse"),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-referrals")
    clock = Clock(NOW)
    config = ServiceConfig(
        data_dir=root / "data", hospitals=("H001", "H002"), nodes=2, committee=2, replication=2
    )
    service = init(config, roster=ROSTER, clock=clock)
    assert not service.ingest("H001", [write_bundle(root, 7, 0, 20)]).rejected
    patient = service.patients()[0]["id"]
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:
        partner = _device(service, http, clock, root, "dr.dev@H002", "H002", "physician", "03")
        auditor = _device(service, http, clock, root, "audit@H001", "H001", "auditor", "02")
        yield {"service": service, "http": http, "clock": clock, "patient": patient,
               "partner": partner, "auditor": auditor}  # fmt: skip
    service.close()


def _device(service, http, clock, root, who, hospital, role, dept) -> device.PersonalWallet:
    code = service.enrol(hospital, who, kind="clinician", role=role, dept=dept)
    wallet = device.PersonalWallet(root / "devices" / who)
    device.enrol(wallet.directory, BASE, code.code, http=http, clock_ms=clock)
    return wallet


def _custodial(world, who: str) -> HospitalClient:
    key = world["service"].wallets.identity(who)
    return HospitalClient(BASE, who, key, clock_ms=world["clock"], http=world["http"])


def _referral_body(to: str, **extra) -> bytes:
    return json.dumps({"to": to, **extra}).encode()


def test_a_partner_with_keys_on_their_device_is_referred_and_reads(world):
    service, patient, partner = world["service"], world["patient"], world["partner"]
    wang = _custodial(world, "dr.wang@H001")
    path = f"/v1/patients/{patient}/referrals"
    made = wang.post_json(path, _referral_body("dr.dev@H002", dept="03"))
    assert made["hospital"] == "H001" and made["referral"].startswith("R")
    assert not service.wallets.has_identity("dr.dev@H002")  # nothing of theirs is here
    client = partner.client(http=world["http"], clock_ms=world["clock"])
    got = obtain_key(client, "dr.dev@H002", partner.identity_key(), "H001")
    assert f"referral:{made['referral']}" in got.key.components
    partner.keys.save_abe_key("dr.dev@H002", "H001", got.key)
    rid = next(r["id"] for r in service.records_of(patient) if r["dept"].startswith("03"))
    sealed = client.sealed_record(rid, area="collaboration")
    data = open_sealed(sealed, abe_keys=[got.key], authority_public=client.authority_public("H001"))
    assert f"{json.loads(data)['resourceType']}/{json.loads(data)['id']}" == rid
    # One referral, one key: asking again is refused (the authority decides what it issues).
    with pytest.raises(AccessDenied):
        obtain_key(client, "dr.dev@H002", partner.identity_key(), "H001")
    consents = _custodial(world, f"patient:{patient}").get(f"/v1/patients/{patient}/consents")
    assert any(made["referral"] in json.dumps(c) for c in consents)


def test_who_may_refer_and_to_whom(world):
    patient = world["patient"]
    path = f"/v1/patients/{patient}/referrals"
    with pytest.raises(AccessDenied, match="not a physician"):
        _custodial(world, "nurse.li@H001").post_json(path, _referral_body("dr.dev@H002"))
    wang = _custodial(world, "dr.wang@H001")
    with pytest.raises(InvalidInput, match="partner hospital"):
        wang.post_json(path, _referral_body("nurse.li@H001"))
    with pytest.raises(NotFound):
        wang.post_json(path, _referral_body("nobody@H002"))
    with pytest.raises(InvalidInput):
        wang.post_json(path, b'{"to": ["dr.dev@H002"]}')
    with pytest.raises(NotFound, match="unknown patient"):
        wang.post_json("/v1/patients/no-such-patient/referrals", _referral_body("dr.dev@H002"))


def test_an_auditor_traces_a_leaked_key_to_its_holder(world):
    service, partner, auditor = world["service"], world["partner"], world["auditor"]
    leaked = partner.keys.abe_key_files("dr.dev@H002", "H002")[0].read_bytes()
    client = auditor.client(http=world["http"], clock_ms=world["clock"])
    verdict = client.post_json("/v1/trace", leaked)
    assert verdict["verdict"] == "user" and verdict["identity"] == "dr.dev@H002"
    with pytest.raises(InvalidInput, match="not a CP-ABE key"):
        client.post_json("/v1/trace", b"not a key")
    with pytest.raises(AccessDenied, match="not an auditor"):
        _custodial(world, "dr.wang@H001").post_json("/v1/trace", leaked)
    assert abe.AbeUserKey.from_bytes(leaked)  # the key file itself was well formed
    assert service.people()  # the service is still answering
