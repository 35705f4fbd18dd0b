"""The records service end to end on a real consortium (SQLite, keys, the ledger application
in-process)."""

from __future__ import annotations

import json

import pytest

from medshare.crypto import hkac
from medshare.ledger.types import TxKind
from medshare.records import canonical, fhir
from medshare.service.areas import Area
from medshare.service.consortium import add_person
from medshare.service.errors import AccessDenied, InvalidInput, NotFound

from .conftest import write_bundle

DAY = 86_400_000


def _patient(service, index=0):
    return service.patients()[index]["id"]


def _record_in(service, pid, prefix):
    return next(r["id"] for r in service.records_of(pid) if r["dept"].startswith(prefix))


def test_ingest_counts_and_anchors(consortium):
    service, _, _ = consortium
    people = service.patients()
    assert len(people) == 2
    assert all(p["records"] >= 30 for p in people)
    anchors = [c for c in service.ledger.txs(TxKind.ANCHOR_RECORD)]
    assert len(anchors) == sum(p["records"] for p in people)
    assert all("digest" in c.tx.body and "blob" in c.tx.body for c in anchors)


def test_reingest_is_idempotent_and_conflicts_are_rejected(consortium, tmp_path):
    service, _, root = consortium
    again = service.ingest("H001", [root / "bundle-7-0.json"])
    assert again.records == 0 and again.unchanged > 0 and not again.rejected
    doc = json.loads((root / "bundle-7-0.json").read_text())
    entry = next(e for e in doc["entry"] if e["resource"]["resourceType"] == "Observation")
    entry["resource"]["status"] = "amended"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc))
    report = service.ingest("H001", [changed])
    assert report.records == 0
    assert any("never overwritten" in r["reason"] for r in report.rejected)


def test_the_same_id_twice_in_one_ingest_is_stored_once(consortium, tmp_path):
    """Blobs are stored before their rows (all at once): an id met twice in one call is
    one record, and a second, different resource under it is refused as on a re-ingest."""
    service, _, _ = consortium
    patient = service.patients()[0]["id"]
    first = {"resourceType": "Observation", "id": "twice-1", "status": "final",
             "code": {"text": "x"}, "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": first}, {"resource": first},
                        {"resource": {**first, "status": "amended"}}]}  # fmt: skip
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(bundle))
    report = service.ingest("H001", [path])
    assert report.records == 1 and report.unchanged == 1
    assert [r["item"] for r in report.rejected] == ["Observation/twice-1"]
    assert sum(r["id"] == "Observation/twice-1" for r in service.records_of(patient)) == 1


def test_malformed_fhir_is_rejected_with_reason(consortium, tmp_path):
    service, _, _ = consortium
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Observation", "status": 12}')
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    report = service.ingest("H001", [bad, broken])
    assert report.records == 0
    assert [r["item"] for r in report.rejected] == ["bad.json", "broken.json"]


def test_institution_area_allows_department_staff_only(consortium):
    service, _, _ = consortium
    pid = _patient(service)
    rid = _record_in(service, pid, "03")
    got = service.read("dr.wang@H001", rid, area=Area.INSTITUTION)
    assert json.loads(got.resource)["id"] == rid.split("/")[1]
    assert service.ledger.find(got.txid).tx.body["outcome"] == "success"
    nurse = service.read("nurse.li@H001", rid, area=Area.INSTITUTION)
    assert nurse.resource == got.resource
    with pytest.raises(AccessDenied, match="do not satisfy"):
        service.read("dr.zhao@H001", rid, area=Area.INSTITUTION)  # surgery, not 03
    with pytest.raises(AccessDenied, match="holds no key of H001"):
        service.read("dr.chen@H002", rid, area=Area.INSTITUTION)  # another hospital
    denied = [c for c in service.ledger.txs(TxKind.ACCESS) if c.tx.body.get("outcome") == "denied"]
    assert {c.tx.body["actor"] for c in denied} >= {"dr.zhao@H001", "dr.chen@H002"}


def test_unknown_reader_and_record(consortium):
    service, _, _ = consortium
    pid = _patient(service)
    rid = _record_in(service, pid, "03")
    with pytest.raises(NotFound, match="unknown person"):
        service.read("mallory@H009", rid, area=Area.INSTITUTION)
    with pytest.raises(NotFound, match="unknown record"):
        service.read("dr.wang@H001", "Observation/nope", area=Area.INSTITUTION)


def test_department_share_opens_later_record_and_expires(consortium):
    service, clock, root = consortium
    pid = _patient(service)
    encounter = next(r for r in service.records_of(pid) if r["type"] == "Encounter")
    dept = encounter["dept"]
    share = service.share(pid, "family:mother", dept=dept, until_ms=clock() + DAY)
    assert share.size_bytes == 96 * len(share.keys)
    later = {
        "resourceType": "Observation",
        "id": "later-1",
        "status": "final",
        "code": {"text": "added after the share"},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": encounter["id"]},
    }
    (root / "later.json").write_text(json.dumps(later))
    assert service.ingest("H001", [root / "later.json"]).records == 1
    got = service.read("family:mother", "Observation/later-1", area=Area.PERSONAL, share=share)
    assert b"added after the share" in got.resource
    rid = next(r["id"] for r in service.records_of(pid) if r["dept"] == dept)
    assert service.read("family:mother", rid, area=Area.PERSONAL, share=share).resource
    other = next(r["id"] for r in service.records_of(pid) if r["dept"] != dept)
    with pytest.raises(AccessDenied):
        service.read("family:mother", other, area=Area.PERSONAL, share=share)
    with pytest.raises(AccessDenied, match=r"not given to dr\.wang@H001"):
        service.read("dr.wang@H001", rid, area=Area.PERSONAL, share=share)
    clock.now_ms += 2 * DAY
    with pytest.raises(AccessDenied, match="expired"):
        service.read("family:mother", rid, area=Area.PERSONAL, share=share)


def test_record_share_revoked_reseals(consortium):
    service, _, _ = consortium
    pid = _patient(service, 1)
    rid = service.records_of(pid)[3]["id"]
    share = service.share(pid, "dr.friend", records=[rid])
    assert len(share.keys) == 1 and share.size_bytes == 96
    assert service.read("dr.friend", rid, area=Area.PERSONAL, share=share).resource
    out = service.revoke(share.share_id)
    assert out["records_resealed"] == 1
    with pytest.raises(AccessDenied, match="revoked"):
        service.read("dr.friend", rid, area=Area.PERSONAL, share=share)
    # Even past the gate, the old key no longer opens the resealed wrap.
    with service.sessions() as session:
        from medshare.service import db

        header = session.get(db.Record, rid).kac_header
    from medshare.crypto import kac
    from medshare.crypto.errors import DecryptionFailed, PolicyNotSatisfied

    with pytest.raises((PolicyNotSatisfied, DecryptionFailed)):
        hkac.open_record(service.params, share, kac.KacCiphertext.from_bytes(header), rid)
    # The patient still reads everything.
    assert rid.encode() in service.export(pid) or json.loads(service.export(pid).splitlines()[0])


def test_share_input_errors(consortium):
    service, clock, _ = consortium
    pid = _patient(service)
    with pytest.raises(InvalidInput, match="exactly one"):
        service.share(pid, "x", dept="03", everything=True)
    with pytest.raises(InvalidInput, match="future"):
        service.share(pid, "x", everything=True, until_ms=clock() - 1)
    with pytest.raises(InvalidInput, match="unknown department"):
        service.share(pid, "x", dept="9999")
    with pytest.raises(NotFound, match="unknown patient"):
        service.share("nobody", "x", everything=True)
    with pytest.raises(ValueError, match="not a valid name"):
        service.share(pid, "bad name!", everything=True)


def test_export_round_trips_the_resources_as_submitted(consortium):
    service, _, root = consortium
    pid = _patient(service)
    exported = service.export(pid).splitlines()
    texts = fhir.entry_resource_texts((root / "bundle-7-0.json").read_text())
    originals = {}
    for text in texts:
        res = json.loads(text)
        originals[f"{res['resourceType']}/{res['id']}"] = canonical.on_one_line(text.encode())
    keyed = {}
    for line in exported:
        res = json.loads(line)
        keyed[f"{res['resourceType']}/{res['id']}"] = line
    mine = {k: v for k, v in originals.items() if k in keyed}
    assert mine and all(keyed[k] == v for k, v in mine.items())


def test_referral_allows_partner_until_expiry(consortium):
    service, clock, _ = consortium
    pid = _patient(service)
    rid = _record_in(service, pid, "03")
    with pytest.raises(AccessDenied, match="no referral"):
        service.read("dr.chen@H002", rid, area=Area.COLLABORATION)
    referral = service.refer(pid, "H001", "dr.chen@H002", until_ms=clock() + DAY)
    assert service.read("dr.chen@H002", rid, area=Area.COLLABORATION).resource
    with pytest.raises(InvalidInput, match="partner"):
        service.refer(pid, "H001", "dr.wang@H001")
    clock.now_ms += 2 * DAY
    with pytest.raises(AccessDenied, match="expired"):
        service.read("dr.chen@H002", rid, area=Area.COLLABORATION)
    assert referral.startswith("R")


def test_research_needs_approval_and_consent_and_is_deidentified(consortium):
    service, _, _ = consortium
    pid = _patient(service)
    rid = f"Patient/{pid}"
    service.approve_study("S-1", "H001", "researcher@uni")
    with pytest.raises(AccessDenied, match="no consent"):
        service.read("researcher@uni", rid, area=Area.RESEARCH)
    made = service.consent_research(pid, "S-1")
    assert made >= 30
    got = json.loads(service.read("researcher@uni", rid, area=Area.RESEARCH).resource)
    assert got["id"] != pid and "name" not in got
    with pytest.raises(AccessDenied, match="no approved study"):
        service.read("dr.wang@H001", rid, area=Area.RESEARCH)


def test_break_glass_needs_reason_and_is_logged(consortium):
    service, _, _ = consortium
    pid = _patient(service, 1)
    rid = _record_in(service, pid, "")
    with pytest.raises(InvalidInput, match="reason"):
        service.read("er.sun@H001", rid, area=Area.EMERGENCY)
    got = service.read("er.sun@H001", rid, area=Area.EMERGENCY, reason="unconscious at ER")
    assert got.resource
    glass = [c for c in service.ledger.txs(TxKind.BREAK_GLASS) if c.tx.body["patient"] == pid]
    assert glass and glass[-1].tx.body["reason"] == "unconscious at ER"
    with pytest.raises(AccessDenied):
        service.read("dr.wang@H001", rid, area=Area.EMERGENCY, reason="curious")
    alerts = service.alerts(pid)
    assert alerts[0]["actor"] == "er.sun@H001" and alerts[0]["reason"] == "unconscious at ER"
    log = service.log(pid)
    assert log["resourceType"] == "Bundle"
    text = json.dumps(log)
    assert glass[-1].tx.txid in text and "unconscious at ER" in text


def test_trace_leaked_key_revokes_and_rewraps(consortium):
    service, _, _ = consortium
    pid = _patient(service)
    rid = _record_in(service, pid, "03")
    leaked = service.wallets.abe_key_files("nurse.li@H001", "H001")[-1].read_bytes()
    verdict = service.trace(leaked)
    assert verdict["verdict"] == "user" and verdict["identity"] == "nurse.li@H001"
    recorded = service.ledger.find(verdict["txid"]).tx
    assert recorded.kind == TxKind.TRACE_VERDICT and recorded.body["verdict"] == "user"
    assert verdict["revocation"]["records_rewrapped"] > 0
    key_revokes = [
        c.tx.body["grant"]
        for c in service.ledger.txs(TxKind.REVOKE)
        if c.tx.body["grant"].startswith("key/H001/")
    ]
    assert key_revokes  # the revocation itself is on the ledger
    with pytest.raises(AccessDenied):
        service.read("nurse.li@H001", rid, area=Area.INSTITUTION)
    # Colleagues got new keys at the new epoch and still read.
    assert service.read("dr.wang@H001", rid, area=Area.INSTITUTION).resource
    with pytest.raises(InvalidInput, match="not a CP-ABE key"):
        service.trace(b"garbage")


def test_verify_finds_tampered_blob_and_repairs_copy(consortium):
    service, _, _ = consortium
    report = service.verify()
    assert report["ok"], report["problems"]
    pid = _patient(service)
    rid = _record_in(service, pid, "03")
    with service.sessions() as session:
        from medshare.service import db

        blob_id = session.get(db.Record, rid).blob_id
    holder = service.blobs.ranked(blob_id)[0]
    path = holder.path_of(blob_id)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    fixed = service.verify(rid)
    assert fixed["ok"] and fixed["repaired"]
    assert path.read_bytes() != bytes(data)


def test_new_patient_file_adds_to_ledger(consortium):
    service, _, root = consortium
    before = service.ledger.height()
    report = service.ingest("H002", [write_bundle(root, 9, 0, 5)])
    assert report.patients == 1 and report.records >= 5
    assert service.ledger.height() > before


def test_department_share_extends_to_a_new_slab(consortium):
    """More records than one slab holds: the share's grantee gets the new slab's key."""
    service, _, root = consortium
    pid = _patient(service, 1)
    encounter = next(r for r in service.records_of(pid) if r["type"] == "Encounter")
    share = service.share(pid, "family:son", dept=encounter["dept"])
    slab = service.config.slab_size
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"many-{i}",
                    "status": "final",
                    "code": {"text": f"reading {i}"},
                    "subject": {"reference": f"Patient/{pid}"},
                    "encounter": {"reference": encounter["id"]},
                }
            }
            for i in range(slab + 2)
        ],
    }
    (root / "many.json").write_text(json.dumps(bundle))
    assert service.ingest("H001", [root / "many.json"]).records == slab + 2
    last = f"Observation/many-{slab + 1}"
    got = service.read("family:son", last, area=Area.PERSONAL, share=share)
    assert f"reading {slab + 1}".encode() in got.resource
    extensions = [
        c for c in service.ledger.txs(TxKind.GRANT) if c.tx.body.get("grant") == share.share_id
    ]
    assert len(extensions) == 2 and extensions[-1].tx.body["extension"] >= 1


def test_seed_recovery_from_shares(consortium, tmp_path):
    service, _, _ = consortium
    pid = _patient(service)
    words = service.recovery_split(pid, 2, 3)
    assert len(words) == 3
    original = service.wallets.seed(pid).secret_bytes()
    service.wallets.save_seed(pid, hkac.PatientSeed(bytes(32)))  # the phone is lost
    with pytest.raises(InvalidInput, match="cannot rebuild"):
        service.recovery_restore(pid, words[:1])
    other = service.recovery_split(_patient(service, 1), 2, 3)
    with pytest.raises(InvalidInput, match="different seed"):
        service.recovery_restore(pid, other[:2])
    assert service.recovery_restore(pid, [words[0], words[2]])["restored"]
    assert service.wallets.seed(pid).secret_bytes() == original
    assert service.export(pid)


def test_hospital_adds_a_sub_department(consortium):
    service, _, _ = consortium
    service.add_department("030401", "0304", "心衰专病门诊", "Heart-failure clinic")
    assert any(d["code"] == "030401" for d in service.departments())
    with pytest.raises(InvalidInput, match="cannot add"):
        service.add_department("9", "0304", "x", "bad code")
    from medshare.service.patients import load_taxonomy

    assert "030401" in load_taxonomy(service.config.data_dir)


def test_two_referrals_from_one_hospital_both_work(consortium):
    """A partner physician referred twice by the same hospital holds two keys of it."""
    service, clock, _ = consortium
    at_h001 = [
        p["id"]
        for p in service.patients()
        if any(r["hospital"] == "H001" for r in service.records_of(p["id"]))
    ]
    first, second = at_h001[:2]
    service.refer(first, "H001", "dr.chen@H002", until_ms=clock() + 10 * DAY)
    service.refer(second, "H001", "dr.chen@H002", until_ms=clock() + 10 * DAY)
    assert len(service.wallets.abe_key_files("dr.chen@H002", "H001")) >= 2
    for pid in (first, second):
        rid = next(r["id"] for r in service.records_of(pid) if r["hospital"] == "H001")
        assert service.read("dr.chen@H002", rid, area=Area.COLLABORATION).resource


def test_revoking_a_consent_destroys_the_patients_derivatives(consortium):
    service, _, _ = consortium
    pid = _patient(service)
    rid = f"Patient/{pid}"
    add_person(service, "researcher2@uni", "researcher", None, ["researcher"])
    service.approve_study("S-old", "H001", "researcher2@uni")
    service.approve_study("S-new", "H001", "researcher2@uni")
    assert service.consent_research(pid, "S-old") > 0
    assert service.consent_research(pid, "S-new") > 0
    assert service.read("researcher2@uni", rid, area=Area.RESEARCH).resource
    out = service.revoke(f"consent/S-new/{pid}")
    assert out["wraps_destroyed"] > 0
    # The researcher's other study still has the patient's consent and copies.
    got = json.loads(service.read("researcher2@uni", rid, area=Area.RESEARCH).resource)
    assert got["id"] != pid
    service.revoke(f"consent/S-old/{pid}")
    with pytest.raises(AccessDenied, match="revoked"):
        service.read("researcher2@uni", rid, area=Area.RESEARCH)
    # Withdrawn consent can be given again (a new grant; the old one stays revoked).
    assert service.consent_research(pid, "S-new") > 0
    assert service.read("researcher2@uni", rid, area=Area.RESEARCH).resource
    with pytest.raises(InvalidInput, match="already consented"):
        service.consent_research(pid, "S-new")
