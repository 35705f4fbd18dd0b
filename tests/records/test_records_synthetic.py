"""The Synthea-style generator: deterministic, Synthea-shaped, valid FHIR R4(B)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from medshare.records import fhir, synthetic

CLINICAL = {
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Procedure",
    "DiagnosticReport",
}


def test_deterministic_per_seed_and_patient() -> None:
    a = json.dumps(synthetic.generate_bundle(7, 3, records=50), sort_keys=True)
    assert a == json.dumps(synthetic.generate_bundle(7, 3, records=50), sort_keys=True)
    assert a != json.dumps(synthetic.generate_bundle(8, 3, records=50), sort_keys=True)
    assert a != json.dumps(synthetic.generate_bundle(7, 4, records=50), sort_keys=True)
    nd = synthetic.generate_ndjson(7, 2, records=20)
    assert nd == synthetic.generate_ndjson(7, 2, records=20)


@pytest.mark.parametrize("records", [1, 5, 25, 80])
def test_patients_times_records_all_valid(records: int) -> None:
    bundles = list(synthetic.generate_bundles(42, 4, records=records))
    patient_ids = set()
    for bundle in bundles:
        found = list(fhir.iter_bundle(bundle))  # every resource validates (R4B)
        kinds = Counter(r.resource_type for r in found)
        assert kinds["Patient"] == 1 and kinds["Provenance"] == 1
        clinical = len(found) - 2
        assert records <= clinical <= records + 2
        patient_ids.add(found[0].id)
        assert {r.patient for r in found} == {found[0].key}
    assert len(patient_ids) == 4


def test_records_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        synthetic.generate_bundle(1, 0, records=0)


def test_covers_the_clinical_resource_types() -> None:
    kinds = Counter(
        e["resource"]["resourceType"]
        for bundle in synthetic.generate_bundles(5, 6, records=60)
        for e in bundle["entry"]
    )
    assert set(kinds) >= CLINICAL
    assert kinds["Observation"] > kinds["Encounter"] > 0


def test_synthea_shape(bundle_json: dict) -> None:
    assert bundle_json["type"] == "transaction"
    for entry in bundle_json["entry"]:
        res = entry["resource"]
        assert entry["fullUrl"] == f"urn:uuid:{res['id']}"
        assert entry["request"] == {"method": "POST", "url": res["resourceType"]}
    patient = bundle_json["entry"][0]["resource"]
    assert patient["meta"]["profile"] == [
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
    ]
    assert patient["text"]["status"] == "generated"
    assert patient["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    urls = {ext["url"] for ext in patient["extension"]}
    assert "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race" in urls
    assert "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity" in urls
    assert {i.get("system") for i in patient["identifier"]} >= {
        synthetic.SYNTHEA,
        "http://hospital.smarthealthit.org",
        "http://hl7.org/fhir/sid/us-ssn",
    }
    enc = next(e["resource"] for e in bundle_json["entry"] if e["request"]["url"] == "Encounter")
    assert enc["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert enc["type"][0]["coding"][0]["system"] == "http://snomed.info/sct"
    assert enc["subject"]["reference"] == f"urn:uuid:{patient['id']}"
    text = json.dumps(bundle_json)
    assert f'"Organization?identifier={synthetic.SYNTHEA}|' in text
    assert f'"Location?identifier={synthetic.SYNTHEA}|' in text
    assert '"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|' in text


def test_diagnostic_reports_point_at_their_observations(parsed: list) -> None:
    by_url = {r.full_url: r for r in parsed}
    reports = [r for r in parsed if r.resource_type == "DiagnosticReport"]
    for report in reports:
        results = [by_url[ref["reference"]] for ref in report.original["result"]]
        assert results and {r.resource_type for r in results} == {"Observation"}
        assert {r.encounter for r in results} == {report.encounter}


def test_ndjson_is_bulk_export_style() -> None:
    files = synthetic.generate_ndjson(9, 3, records=20)
    assert {"Patient", "Encounter", "Observation", "Organization", "Practitioner"} <= set(files)
    assert all(text.endswith("\n") for text in files.values())
    assert not any("urn:uuid:" in text for text in files.values())
    patients = [r.key for r in fhir.iter_ndjson(files["Patient"].splitlines(), source="Patient")]
    assert len(patients) == 3
    for rtype, text in files.items():
        found = list(fhir.iter_ndjson(text.splitlines(), source=rtype))  # strict: all valid
        assert {r.resource_type for r in found} == {rtype}
        if rtype in CLINICAL:
            assert {r.patient for r in found} <= set(patients)
    directory = synthetic.generate_directory_bundle(9)
    assert files["Organization"].count("\n") == sum(
        e["request"]["url"] == "Organization" for e in directory["entry"]
    )
