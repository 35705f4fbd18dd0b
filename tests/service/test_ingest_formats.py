"""Synthea-style input in both shapes goes in unchanged and comes back byte-identical:
each resource's text as submitted (on one line in an NDJSON export)."""

from __future__ import annotations

import json

import pytest

from medshare.records import canonical, fhir, synthetic
from medshare.service.areas import Area
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.roster import StaffMember

ROSTER = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    config = ServiceConfig(data_dir=root / "data", hospitals=("H001",), nodes=4, replication=1)
    svc = init(config, roster=ROSTER)
    yield svc, root
    svc.close()


DIRECTORY_TYPES = {"Organization", "Location", "Practitioner", "PractitionerRole"}


def _submitted_by_key(texts):
    """Each resource's text as submitted (on one line, as an export writes it), by key."""
    out = {}
    for text in texts:
        r = json.loads(text)
        if r["resourceType"] not in DIRECTORY_TYPES:
            out[f"{r['resourceType']}/{r['id']}"] = canonical.on_one_line(text.encode())
    return out


def test_ndjson_export_ingests_in_any_file_order_and_exports_identically(service):
    svc, root = service
    files = synthetic.generate_ndjson(41, patients=2, records=12)
    paths = []
    for rtype in sorted(files, reverse=True):  # Patient.ndjson is not first
        path = root / f"{rtype}.ndjson"
        path.write_text(files[rtype])
        paths.append(path)
    report = svc.ingest("H001", paths)
    assert report.rejected == [] and report.patients == 2
    originals = _submitted_by_key(line for text in files.values() for line in text.splitlines())
    for patient in svc.patients():
        exported = svc.export(patient["id"]).splitlines()
        assert len(exported) == patient["records"]
        for line in exported:
            doc = json.loads(line)
            assert originals[f"{doc['resourceType']}/{doc['id']}"] == line


def test_transaction_bundle_exports_every_resource_identically(service):
    svc, root = service
    bundle = synthetic.generate_bundle(43, 0, 20)
    path = root / "bundle.json"
    path.write_text(json.dumps(bundle))
    assert svc.ingest("H001", [path]).rejected == []
    pid = synthetic.patient_id(bundle)
    originals = _submitted_by_key(fhir.entry_resource_texts(path.read_text()))
    exported = svc.export(pid).splitlines()
    assert sorted(exported) == sorted(originals.values())
    # Export order is ingest order (the bundle's order, directory data left out).
    assert exported == list(originals.values())


def test_crypto_shredding_keeps_the_digest_and_loses_the_content(service):
    svc, root = service
    path = root / "shred.json"
    path.write_text(json.dumps(synthetic.generate_bundle(47, 0, 8)))
    assert svc.ingest("H001", [path]).rejected == []
    pid = synthetic.patient_id(json.loads(path.read_text()))
    rid = next(r["id"] for r in svc.records_of(pid) if r["type"] == "Observation")
    before = [c for c in svc.ledger.txs() if c.tx.body.get("record") == rid]
    txid = svc.shred(rid, reason="patient asked for deletion")
    deleted = svc.ledger.find(txid).tx.body
    assert deleted["action"] == "delete" and deleted["record"] == rid
    events = [e["resource"] for e in svc.log(pid)["entry"]]
    assert any(e["action"] == "D" and txid in json.dumps(e) for e in events)
    with pytest.raises(InvalidInput, match="already deleted"):
        svc.shred(rid)
    with pytest.raises(NotFound, match="crypto-shredded"):
        svc.read("dr.wang@H001", rid, area=Area.INSTITUTION)
    anchors = [c for c in svc.ledger.txs() if c.tx.body.get("record") == rid]
    assert anchors[: len(before)] == before and anchors[0].tx.body["digest"]
    assert all(json.loads(line)["id"] != rid.split("/")[1] for line in svc.export(pid).splitlines())
    assert svc.verify()["ok"]
    with pytest.raises(AccessDenied):
        svc.read("dr.wang@H001", f"Patient/{pid}", area=Area.RESEARCH)
