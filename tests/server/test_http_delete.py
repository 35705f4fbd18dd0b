"""Crypto-shredding over HTTP: a records officer deletes a record of their own hospital
(every wrap of its key destroyed, the deletion on the ledger and in the patient's log);
nobody else may, and a deleted record is never released again. The hospital's app runs
in-process (FastAPI's test client) over a real records service (SQLite, in-process ledger
running the real ABCI rules)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from medshare.server.app import create_app
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember
from medshare.wallet import device
from medshare.wallet.client import HospitalClient
from service.conftest import Clock, patient_of, write_bundle

NOW = 1_800_000_000_000
BASE = "http://testserver"
ROSTER = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-delete")
    clock = Clock(NOW)
    config = ServiceConfig(
        data_dir=root / "data", hospitals=("H001", "H002"), nodes=2, committee=2, replication=2
    )
    service = init(config, roster=ROSTER, clock=clock)
    bundle = write_bundle(root, 7, 0, 20)  # has department-03 records (dr.wang reads them)
    assert not service.ingest("H001", [bundle]).rejected
    app = create_app(service, clock_ms=clock)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as http:

        def officer(who: str, hospital: str) -> HospitalClient:
            code = service.enrol(hospital, who, kind="clinician", role="records", dept="69")
            wallet = device.PersonalWallet(root / "devices" / who)
            device.enrol(wallet.directory, BASE, code.code, http=http, clock_ms=clock)
            return wallet.client(http=http, clock_ms=clock)

        yield {"service": service, "http": http, "clock": clock, "patient": patient_of(bundle),
               "h1": officer("rec.ma@H001", "H001"),
               "h2": officer("rec.qi@H002", "H002")}  # fmt: skip
    service.close()


def _delete(client: HospitalClient, record: str, reason: object = "filed in error") -> dict:
    return client.post_json(f"/v1/records/{record}/delete", json.dumps({"reason": reason}).encode())


def test_a_records_officer_shreds_a_record_of_their_hospital_only(world):
    service, patient = world["service"], world["patient"]
    record = next(
        r["id"] for r in service.records_of(patient)
        if r["type"] != "Patient" and r["dept"].startswith("03")
    )  # fmt: skip
    wang = HospitalClient(BASE, "dr.wang@H001", service.wallets.identity("dr.wang@H001"),
                          clock_ms=world["clock"], http=world["http"])  # fmt: skip
    assert wang.sealed_record(record, area="institution").record_id == record
    with pytest.raises(AccessDenied, match="not a records officer"):
        _delete(wang, record)
    with pytest.raises(AccessDenied, match="H001's, not H002's"):
        _delete(world["h2"], record)
    for reason in ("", "   ", "x" * 501, None, ["why"]):
        with pytest.raises(InvalidInput, match="reason"):
            _delete(world["h1"], record, reason)
    with pytest.raises(NotFound):
        _delete(world["h1"], "Observation/no-such-record")
    assert wang.sealed_record(record, area="institution")  # nothing refused above changed it
    done = _delete(world["h1"], record)
    assert done["deleted"] is True
    tx = service.ledger.find(done["txid"]).tx
    assert tx.body["action"] == "delete" and tx.body["reason"] == "filed in error"
    with pytest.raises(NotFound, match="deleted"):
        wang.sealed_record(record, area="institution")
    with pytest.raises(InvalidInput, match="already deleted"):
        _delete(world["h1"], record)
    # The patient's log shows the deletion; the record's ledger digest stays.
    log = service.log(patient)
    assert any(
        e["resource"]["action"] == "D" and record in json.dumps(e["resource"]) for e in log["entry"]
    )
