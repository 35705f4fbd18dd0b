"""End to end through the records service: a FHIR decimal comes back as submitted
(``0.0`` stays ``0.0``) from a read and an export; the digest stays canonical, so the
same resource written differently is the same record."""

from __future__ import annotations

import json

from medshare.service.areas import Area
from service.conftest import one_hospital

PATIENT = '{"resourceType": "Patient", "id": "p-fid", "name": [{"family": "Lovelace"}]}'
OBSERVATION = (
    '{"resourceType":"Observation","id":"o-fid","status":"final",'
    '"code":{"text":"serum sodium — 钠"},"subject":{"reference":"Patient/p-fid"},'
    '"valueQuantity":{"value":0.0,"unit":"mmol/L"},'
    '"referenceRange":[{"low":{"value":1.50},"high":{"value":145.000}}]}'
)


def test_a_decimal_comes_back_from_the_hospital_as_it_was_submitted(tmp_path):
    service = one_hospital(tmp_path)
    try:
        report = service.ingest("H001", [f"{PATIENT}\n{OBSERVATION}\n".encode()])
        assert not report.rejected and report.records == 2
        share = service.share("p-fid", "friend@H001", everything=True)
        read = service.read("friend@H001", "Observation/o-fid", area=Area.PERSONAL, share=share)
        assert read.resource == OBSERVATION.encode()
        assert service.export("p-fid").splitlines() == [PATIENT.encode(), OBSERVATION.encode()]
        # the same resource written differently is the same record (the digest is canonical)
        again = json.dumps(json.loads(OBSERVATION), indent=2)
        assert service.ingest("H001", [again.encode()]).unchanged == 1
        assert service.verify()["problems"] == []
    finally:
        service.close()
