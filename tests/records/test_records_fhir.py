"""FHIR ingest: dispatch, errors with paths, bundles, NDJSON, originals kept byte-exact."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from medshare.records import fhir, synthetic
from medshare.records.canonical import canonical_bytes
from medshare.records.references import parse_reference, patient_reference

SYNTHEA = synthetic.SYNTHEA


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


# -- bundles ------------------------------------------------------------------------------


def test_transaction_bundle_parses(bundle_json: dict, parsed: list[fhir.Resource]) -> None:
    assert bundle_json["type"] == "transaction"
    assert [r.resource_type for r in parsed] == [r["resourceType"] for r in entries(bundle_json)]
    assert [r.full_url for r in parsed] == [e["fullUrl"] for e in bundle_json["entry"]]
    assert all(r.location == f"Bundle.entry[{i}].resource" for i, r in enumerate(parsed))
    assert {type(r.model).__module__.split(".")[2] for r in parsed} == {"R4B"}


def test_originals_round_trip_byte_identical(bundle_copy: dict) -> None:
    before = copy.deepcopy(bundle_copy)
    found = list(fhir.iter_bundle(bundle_copy))
    assert bundle_copy == before, "parsing must not touch its input"
    for res, src in zip(found, entries(bundle_copy), strict=True):
        assert res.original == src
        assert res.canonical == canonical_bytes(src)
        assert json.loads(res.canonical) == src
        assert canonical_bytes(json.loads(res.canonical)) == res.canonical
    # The stored JSON is a private copy: later changes to the caller's dict don't reach it.
    entries(bundle_copy)[1]["status"] = "cancelled"
    assert found[1].original["status"] == "finished"
    assert found[1].canonical == canonical_bytes(entries(before)[1])


def test_export_returns_exactly_what_went_in(parsed: list[fhir.Resource]) -> None:
    exported = fhir.to_ndjson(parsed)
    loaded = fhir.load_any(exported)
    assert loaded.kind == "ndjson" and not loaded.errors
    assert [r.canonical for r in loaded.resources] == [r.canonical for r in parsed]
    assert exported.count(b"\n") == len(parsed)


def test_validation_does_not_reshape_the_stored_json() -> None:
    """The model normalises (here: drops the empty extension list, reorders keys); the
    stored bytes are the input's canonical form, not the model's dump."""
    raw = {"resourceType": "Patient", "id": "p1", "extension": [], "active": True}
    res = fhir.parse_resource(raw)
    assert res.canonical == b'{"active":true,"extension":[],"id":"p1","resourceType":"Patient"}'
    assert json.loads(res.model.model_dump_json()) != raw


def test_urn_uuid_patient_references_resolve(bundle_json: dict, parsed: list) -> None:
    patient = bundle_json["entry"][0]["resource"]
    key = f"Patient/{patient['id']}"
    assert parsed[0].patient == key
    for res in parsed:
        assert res.patient == key, res.resource_type
    # the raw JSON names the patient by urn:uuid
    condition = next(r for r in parsed if r.resource_type == "Condition")
    assert condition.original["subject"]["reference"] == f"urn:uuid:{patient['id']}"
    encounters = {r.key for r in parsed if r.resource_type == "Encounter"}
    in_encounter = [r for r in parsed if r.resource_type not in ("Patient", "Encounter")]
    assert all(r.encounter in encounters for r in in_encounter if r.resource_type != "Provenance")


def test_patient_without_id_is_keyed_by_full_url(bundle_copy: dict) -> None:
    del bundle_copy["entry"][0]["resource"]["id"]
    found = list(fhir.iter_bundle(bundle_copy))
    full_url = bundle_copy["entry"][0]["fullUrl"]
    assert {r.patient for r in found} == {full_url}


def test_unresolved_urn_in_a_patient_field_is_an_error(bundle_copy: dict) -> None:
    bundle_copy["entry"][3]["resource"]["subject"]["reference"] = "urn:uuid:nowhere"
    with pytest.raises(fhir.FhirError) as err:
        list(fhir.iter_bundle(bundle_copy))
    assert err.value.path == "Bundle.entry[3].resource.subject"
    assert "urn:uuid:nowhere matches no fullUrl" in str(err.value)


def test_conditional_references_are_accepted(parsed: list[fhir.Resource]) -> None:
    enc = next(r for r in parsed if r.resource_type == "Encounter")
    provider = enc.original["serviceProvider"]["reference"]
    doctor = enc.original["participant"][0]["individual"]["reference"]
    assert provider.startswith(f"Organization?identifier={SYNTHEA}|")
    assert doctor.startswith("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|")
    ref = parse_reference(doctor)
    assert ref.kind == "conditional" and ref.type == "Practitioner"
    assert ref.identifier == ("http://hl7.org/fhir/sid/us-npi", doctor.rsplit("|", 1)[1])
    only_directory = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "performer": [{"reference": doctor}],
        "subject": {"reference": provider},
    }
    fhir.parse_resource(only_directory)
    assert patient_reference(only_directory) is None


def test_conditional_patient_reference_resolves_by_identifier(bundle_copy: dict) -> None:
    pid = bundle_copy["entry"][0]["resource"]["id"]
    claim = next(e["resource"] for e in bundle_copy["entry"] if e["request"]["url"] == "Claim")
    claim["patient"] = {"reference": f"Patient?identifier={SYNTHEA}|{pid}"}
    found = {r.key: r for r in fhir.iter_bundle(bundle_copy)}
    assert found[f"Claim/{claim['id']}"].patient == f"Patient/{pid}"


def test_other_synthea_resources_link_to_patient_and_encounter(bundle_copy: dict) -> None:
    """Shapes Synthea writes beyond the generator's: an ExplanationOfBenefit with contained
    resources and ``#`` references, an Immunization (``patient``), a DocumentReference
    (``context.encounter``)."""
    pat, enc = bundle_copy["entry"][0]["fullUrl"], bundle_copy["entry"][1]["fullUrl"]
    npi = "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999"
    extra = [
        {
            "resourceType": "ExplanationOfBenefit",
            "id": "eob-1",
            "contained": [
                {"resourceType": "ServiceRequest", "id": "referral", "status": "completed",
                 "intent": "order", "subject": {"reference": pat}, "requester": {"reference": npi}},
                {"resourceType": "Coverage", "id": "coverage", "status": "active",
                 "beneficiary": {"reference": pat}, "payor": [{"display": "Medicaid"}]},
            ],
            "status": "active",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                 "code": "professional"}]},
            "use": "claim",
            "patient": {"reference": pat},
            "created": "2020-01-01T10:15:00-05:00",
            "insurer": {"display": "Medicaid"},
            "provider": {"reference": npi},
            "referral": {"reference": "#referral"},
            "outcome": "complete",
            "insurance": [{"focal": True, "coverage": {"reference": "#coverage"}}],
            "item": [{"sequence": 1, "productOrService": {"text": "Check up"},
                      "encounter": [{"reference": enc}]}],
        },
        {
            "resourceType": "Immunization",
            "id": "imm-1",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
            "patient": {"reference": pat},
            "encounter": {"reference": enc},
            "occurrenceDateTime": "2020-01-01T10:00:00-05:00",
            "primarySource": True,
        },
        {
            "resourceType": "DocumentReference",
            "id": "doc-1",
            "status": "superseded",
            "subject": {"reference": pat},
            "content": [{"attachment": {"contentType": "text/plain", "data": "SGVsbG8="}}],
            "context": {"encounter": [{"reference": enc}]},
        },
    ]  # fmt: skip
    bundle_copy["entry"] += [
        {"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "request": {"method": "POST",
         "url": r["resourceType"]}} for r in extra
    ]  # fmt: skip
    found = {r.key: r for r in fhir.iter_bundle(bundle_copy)}
    patient_key = f"Patient/{bundle_copy['entry'][0]['resource']['id']}"
    encounter_key = f"Encounter/{bundle_copy['entry'][1]['resource']['id']}"
    for key in ("ExplanationOfBenefit/eob-1", "Immunization/imm-1", "DocumentReference/doc-1"):
        assert (found[key].patient, found[key].encounter) == (patient_key, encounter_key)


def test_directory_batch_bundle_with_if_none_exist() -> None:
    bundle = synthetic.generate_directory_bundle(1)
    assert bundle["type"] == "batch"
    assert all(e["request"].get("ifNoneExist") for e in bundle["entry"][:3])
    found = list(fhir.iter_bundle(bundle))
    assert {r.resource_type for r in found} == {
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
    }
    assert all(r.patient is None for r in found)


def test_searchset_and_batch_entries_without_resources(parsed: list) -> None:
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            {
                "fullUrl": "https://fhir.example/Patient/p1",
                "resource": {"resourceType": "Patient", "id": "p1"},
                "search": {"mode": "match"},
            },
            {
                "fullUrl": "https://fhir.example/Observation/o1",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "Patient/p1"},
                },
                "search": {"mode": "include"},
            },
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "information", "code": "informational"}],
                },
                "search": {"mode": "outcome"},
            },
        ],
    }
    found = list(fhir.iter_bundle(searchset))
    assert [r.key for r in found] == ["Patient/p1", "Observation/o1"]
    assert found[1].patient == "Patient/p1"
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": "Patient/p1"}}],
    }
    assert list(fhir.iter_bundle(batch)) == []


def test_bundle_envelope_errors(bundle_copy: dict) -> None:
    with pytest.raises(fhir.FhirError, match="unsupported Bundle type 'document'") as err:
        list(fhir.iter_bundle({**bundle_copy, "type": "document"}))
    assert err.value.path == "Bundle.type"
    bad = copy.deepcopy(bundle_copy)
    bad["entry"][2]["request"]["method"] = 7
    with pytest.raises(fhir.FhirError) as err:
        list(fhir.iter_bundle(bad))
    assert err.value.path == "Bundle.entry[2].request.method"
    dup = copy.deepcopy(bundle_copy)
    dup["entry"][2]["fullUrl"] = dup["entry"][1]["fullUrl"]
    with pytest.raises(fhir.FhirError, match=r"repeats Bundle.entry\[1\]"):
        list(fhir.iter_bundle(dup))
    with pytest.raises(fhir.FhirError, match="expected a Bundle, got Patient"):
        list(fhir.iter_bundle({"resourceType": "Patient"}))


def test_invalid_entry_names_its_path(bundle_copy: dict) -> None:
    bundle_copy["entry"][2]["resource"]["status"] = ["final"]
    with pytest.raises(fhir.FhirError) as err:
        list(fhir.iter_bundle(bundle_copy))
    assert err.value.path == "Bundle.entry[2].resource.status"


# -- single resources and errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        ({"resourceType": "Patient", "active": "maybe"}, "Patient.active", "valid boolean"),
        ({"resourceType": "Patient", "name": [{"given": "Li"}]}, "Patient.name[0].given", "array"),
        ({"resourceType": "Patient", "birthDate": "1990-13-45"}, "Patient.birthDate", "Date"),
        ({"resourceType": "Patient", "nickname": "x"}, "Patient.nickname", "Extra inputs"),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "hr"},
                "valueQuantity": {"value": "fast"},
            },
            "Observation.valueQuantity.value",
            "Decimal",
        ),
        ({"resourceType": "Observation", "status": "final"}, "Observation.code", "Field required"),
        ({"resourceType": "Nope"}, "resourceType", "unknown resourceType 'Nope'"),
        ({"resourceType": "HumanName"}, "resourceType", "unknown resourceType 'HumanName'"),
        ({"resourceType": 5}, "resourceType", "unknown resourceType 5"),
        ({"id": "x", "active": True}, "", "missing resourceType"),
        (
            {"resourceType": "Patient", "contained": [{"resourceType": "Nope"}]},
            "Patient.contained[0].resourceType",
            "unknown resourceType",
        ),
        ({"resourceType": "Patient", "multipleBirthInteger": 2**60}, "Patient", "safe integer"),
    ],
)
def test_invalid_resources_raise_fhir_error_with_path(raw: dict, path: str, message: str) -> None:
    with pytest.raises(fhir.FhirError) as err:
        fhir.parse_resource(raw)
    assert err.value.path == path
    assert message in err.value.message
    text = str(err.value)
    assert text.startswith(f"{path}: " if path else message)
    assert "Traceback" not in text and "pydantic" not in text and "\n" not in text
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_all_field_errors_are_counted() -> None:
    raw = {"resourceType": "Patient", "active": "maybe", "gender": 3, "birthDate": 5}
    with pytest.raises(fhir.FhirError, match=r"\(and 2 more\)"):
        fhir.parse_resource(raw)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"resourceType": "Patient", "id": "a", "id": "b"}', "duplicate key 'id'"),
        ('{"resourceType": "Observation", "valueQuantity": {"value": NaN}}', "NaN is not JSON"),
        ('{"resourceType": "Patient",', "invalid JSON"),
        (b'{"resourceType": "Patient", "id": "\xff"}', "not UTF-8"),
    ],
)
def test_strict_json(text: str | bytes, message: str) -> None:
    with pytest.raises(fhir.FhirError, match=message):
        fhir.parse_resource(text)


# -- NDJSON and load_any -------------------------------------------------------------------


def _ndjson_lines() -> list[str]:
    files = synthetic.generate_ndjson(3, 1, records=20, directory=False)
    return files["Patient"].splitlines() + files["Observation"].splitlines()


def test_ndjson_reports_bad_lines_and_keeps_the_rest() -> None:
    lines = _ndjson_lines()
    bad = copy.deepcopy(lines)
    bad[2] = bad[2][: len(bad[2]) // 2]  # truncated line 3
    broken = json.loads(bad[4])
    broken["status"] = 42
    bad[4] = json.dumps(broken)  # invalid resource on line 5
    bad.insert(6, "   ")  # blank line 7 is skipped
    errors: list[fhir.FhirError] = []
    found = list(fhir.iter_ndjson(bad, errors=errors, source="mixed.ndjson"))
    assert [e.line for e in errors] == [3, 5]
    assert errors[1].path == "Observation.status"
    assert str(errors[0]).startswith("mixed.ndjson line 3: invalid JSON")
    assert len(found) == len(lines) - 2
    assert found[0].location == "mixed.ndjson line 1"
    assert all(r.patient == found[0].key for r in found)
    with pytest.raises(fhir.FhirError) as err:
        list(fhir.iter_ndjson(bad))
    assert err.value.line == 3


def test_ndjson_lines_split_only_at_newlines() -> None:
    """U+2028 is legal inside a JSON string; ``str.splitlines`` would cut the line there."""
    one = {"resourceType": "Patient", "id": "p1", "name": [{"text": "Li\u2028Wei"}]}
    two = {"resourceType": "Patient", "id": "p2"}
    data = (json.dumps(one, ensure_ascii=False) + "\n" + json.dumps(two) + "\n").encode()
    loaded = fhir.load_any(data)
    assert loaded.kind == "ndjson" and not loaded.errors
    assert loaded.resources[0].original == one


def test_load_any_detects_the_kind(tmp_path: Path, bundle_json: dict) -> None:
    as_bundle = fhir.load_any(json.dumps(bundle_json, indent=2).encode())
    assert as_bundle.kind == "bundle" and as_bundle.bundle_type == "transaction"
    assert len(as_bundle.resources) == len(bundle_json["entry"])

    single = tmp_path / "patient.json"
    single.write_text(json.dumps(bundle_json["entry"][0]["resource"], indent=1), "utf-8")
    loaded = fhir.load_any(single)
    assert loaded.kind == "resource" and loaded.resources[0].resource_type == "Patient"

    lines = _ndjson_lines()
    lines[1] = "{not json"
    nd = tmp_path / "export.ndjson"
    nd.write_text("\n".join(lines) + "\n", "utf-8")
    loaded = fhir.load_any(str(nd))
    assert loaded.kind == "ndjson" and len(loaded.resources) == len(lines) - 1
    assert [(e.source, e.line) for e in loaded.errors] == [("export.ndjson", 2)]

    for garbage, message in [(b"", "empty input"), (b"[1, 2]", "expected a JSON object")]:
        with pytest.raises(fhir.FhirError, match=message):
            fhir.load_any(garbage)
    with pytest.raises(fhir.FhirError) as err:
        fhir.load_any(b'{\n  "resourceType": "Patient",\n  "active": tru\n}')
    assert err.value.line == 3
    with pytest.raises(fhir.FhirError, match="cannot read"):
        fhir.load_any(tmp_path / "missing.json")


def test_release_is_pinned_to_r4b() -> None:
    assert fhir.FHIR_RELEASE == "R4B" and fhir.FHIR_VERSION == "4.3.0"
    pattern = re.compile(r"^\s*(from|import)\s+fhir\.resources", re.MULTILINE)
    medshare = Path(fhir.__file__).parents[1]
    importers = [
        p.relative_to(medshare).as_posix()
        for p in sorted(medshare.rglob("*.py"))
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert importers == ["records/fhir.py"]
