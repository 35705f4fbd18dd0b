"""Research derivatives: nothing identifying survives, dates move together, ids stay linkable."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medshare.records import fhir, synthetic
from medshare.records.deidentify import (
    MAX_SHIFT_DAYS,
    REDACTED,
    Study,
    date_shift_days,
    deidentify,
    deidentify_bundle,
    pseudonym,
)
from medshare.records.references import parse_reference

AS_OF = dt.date(2025, 6, 1)
STUDY_A = Study("S-2026-001", bytes(range(32)), as_of=AS_OF)
STUDY_B = Study("S-2026-002", bytes(range(100, 132)), as_of=AS_OF)
DIRECTORY_TYPES = {"Organization", "Location", "Practitioner", "PractitionerRole"}


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def patient_of(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in resources(bundle) if r["resourceType"] == "Patient")


def walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON tree, lists flattened under their key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def references(node: Any) -> list[str]:
    return [v for k, v in walk(node) if k == "reference" and isinstance(v, str)]


def leaked(values: set[str], text: str) -> set[str]:
    """Values found in ``text``: digit/hex-only values as whole JSON strings (they may occur
    by chance inside a pseudonymous UUID), everything else as a substring."""
    out = set()
    for value in values:
        probe = f'"{value}"' if re.fullmatch(r"[0-9a-fA-F\-]+", value) else value
        if probe in text:
            out.add(value)
    return out


@pytest.fixture(scope="module")
def pid(bundle_json: dict[str, Any]) -> str:
    return patient_of(bundle_json)["id"]


@pytest.fixture(scope="module")
def derived(bundle_json: dict[str, Any], pid: str) -> dict[str, Any]:
    return deidentify_bundle(bundle_json, STUDY_A, pid)


# -- the study key ---------------------------------------------------------------------------


def test_study_checks_its_secret_and_hides_it() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Study("S-1", b"short")
    with pytest.raises(TypeError, match="bytes"):
        Study("S-1", "x" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="study_id"):
        Study("", bytes(32))
    assert bytes(range(32)).hex() not in repr(STUDY_A)
    assert "secret" not in repr(STUDY_A)


# -- nothing identifying survives ------------------------------------------------------------


def identifying_strings(bundle: dict[str, Any]) -> set[str]:
    patient = patient_of(bundle)
    found = {patient["id"]}
    for name in patient["name"]:
        found |= {name["family"], *name["given"], *name.get("prefix", [])}
    found |= {t["value"] for t in patient["telecom"]}
    found |= {i["value"] for i in patient["identifier"]}
    for addr in patient["address"]:
        found |= {*addr["line"], addr["city"], addr["postalCode"]}
        for geo in addr["extension"][0]["extension"]:
            found.add(repr(geo["valueDecimal"]))
    found |= {e["valueString"] for e in patient["extension"] if "valueString" in e}
    found.add(patient["text"]["div"])
    # The subject display is the patient's name; directory displays name clinicians.
    found |= {v for k, v in walk(bundle) if k == "display" and v.startswith(("Mr.", "Ms.", "Dr."))}
    # Every original id and conditional reference (NPIs, organisation ids).
    found |= {r["id"] for r in resources(bundle)}
    found |= {r for r in references(bundle) if parse_reference(r).kind == "conditional"}
    return found


def test_no_identifying_string_survives(bundle_json: dict, derived: dict) -> None:
    secrets = identifying_strings(bundle_json)
    assert len(secrets) > 20
    text = json.dumps(derived, ensure_ascii=False)
    assert leaked(secrets, text) == set()


def test_dropped_elements_are_gone_everywhere(derived: dict) -> None:
    keys = {k for k, _ in walk(derived)}
    assert not keys & {"name", "telecom", "identifier", "photo", "contact", "text", "note"}
    assert not keys & {"extension", "line", "city", "postalCode", "div", "valueString"}
    assert not any(k.startswith("_") for k in keys)
    for k, v in walk(derived):
        if k == "address":
            assert all(set(a) <= {"state", "country"} for a in v)
        if k == "meta":
            assert set(v) == {"profile"}
    patient = patient_of(derived)
    assert patient["address"] == [{"state": "MA", "country": "US"}]
    assert patient["gender"] in ("male", "female")
    # Coded values survive, Coding displays included.
    assert any(k == "coding" for k, _ in walk(patient))


def test_free_text_is_dropped_but_codes_and_required_elements_stay(bundle_json: dict, pid: str):
    obs = copy.deepcopy(
        next(r for r in resources(bundle_json) if r["resourceType"] == "Observation")
    )
    obs["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
    }
    obs["note"] = [{"text": "Patient Wang said his neighbour Li called"}]
    obs.pop("valueQuantity", None)
    obs["valueString"] = "call Mr Wang at 555-0100"
    obs["interpretation"] = [{"text": "seen by Dr. Zhou at home"}]
    obs["code"]["text"] = "typed by Dr. Zhou"
    out = deidentify(obs, STUDY_A, pid)
    text = json.dumps(out)
    for phrase in ("Wang", "Zhou", "555-0100", "neighbour", "xhtml"):
        assert phrase not in text
    assert out["code"]["coding"] == obs["code"]["coding"]
    assert out["interpretation"] == [{"text": REDACTED}]
    goal = {
        "resourceType": "Goal",
        "id": "g1",
        "lifecycleStatus": "active",
        "description": {"text": "Mr Wang to lose 5 kg before his daughter's wedding"},
        "subject": {"reference": f"Patient/{pid}", "display": "Mr. Wang"},
    }
    out = deidentify(goal, STUDY_A, pid)
    assert out["description"] == {"text": REDACTED}  # required 1..1: kept, emptied
    assert out["subject"] == {"reference": f"Patient/{pseudonym(STUDY_A, pid)}"}


def test_attachments_keep_only_their_type(pid: str) -> None:
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "masterIdentifier": {"value": "DOC-123-secret"},
        "subject": {"reference": f"urn:uuid:{pid}"},
        "date": "2024-02-03T04:05:06.789+08:00",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": "TXIuIFdhbmc=",
                    "url": "https://h001.example/notes/Wang.txt",
                    "title": "Wang note",
                }
            }
        ],
    }
    out = deidentify(doc, STUDY_A, pid)
    assert out["content"] == [{"attachment": {"contentType": "text/plain"}}]
    assert "masterIdentifier" not in out
    assert "Wang" not in json.dumps(out)


def test_modifier_extensions_and_bundles_are_refused(bundle_json: dict, pid: str) -> None:
    obs = copy.deepcopy(resources(bundle_json)[2])
    obs["modifierExtension"] = [{"url": "https://x.example/negated", "valueBoolean": True}]
    with pytest.raises(ValueError, match="modifierExtension"):
        deidentify(obs, STUDY_A, pid)
    with pytest.raises(ValueError, match="deidentify_bundle"):
        deidentify(bundle_json, STUDY_A, pid)
    with pytest.raises(ValueError, match="another patient's offset"):
        deidentify(patient_of(bundle_json), STUDY_A, "someone-else")
    with pytest.raises(fhir.FhirError):
        deidentify({"resourceType": "Observation", "status": 3}, STUDY_A, pid)


def test_input_is_not_changed(bundle_copy: dict, pid: str) -> None:
    before = copy.deepcopy(bundle_copy)
    deidentify_bundle(bundle_copy, STUDY_A, pid)
    assert bundle_copy == before


# -- dates -----------------------------------------------------------------------------------

DATE_FIELDS = (
    ("Encounter", ("period", "start")),
    ("Encounter", ("period", "end")),
    ("Condition", ("onsetDateTime",)),
    ("Condition", ("recordedDate",)),
    ("Observation", ("effectiveDateTime",)),
    ("Observation", ("issued",)),
    ("DiagnosticReport", ("issued",)),
    ("MedicationRequest", ("authoredOn",)),
    ("Claim", ("created",)),
    ("Claim", ("billablePeriod", "end")),
    ("Provenance", ("recorded",)),
    ("Patient", ("birthDate",)),
)


def at(resource: dict[str, Any], path: tuple[str, ...]) -> Any:
    for step in path:
        resource = resource.get(step) if isinstance(resource, dict) else None
    return resource


def test_every_date_moves_by_the_patient_offset_at_its_precision(
    bundle_json: dict, derived: dict, pid: str
) -> None:
    shift = date_shift_days(STUDY_A, pid)
    checked = 0
    for before, after in zip(resources(bundle_json), resources(derived), strict=True):
        for rtype, path in DATE_FIELDS:
            if before["resourceType"] != rtype or at(before, path) is None:
                continue
            old, new = at(before, path), at(after, path)
            moved = dt.date.fromisoformat(new[:10]) - dt.date.fromisoformat(old[:10])
            assert moved.days == shift, (rtype, path)
            assert new[10:] == old[10:]  # time, fraction and zone copied as written
            checked += 1
    assert checked > 50


def test_partial_dates(bundle_json: dict, pid: str) -> None:
    shift = date_shift_days(STUDY_A, pid)
    obs = copy.deepcopy(
        next(r for r in resources(bundle_json) if r["resourceType"] == "Observation")
    )
    obs["effectiveDateTime"] = "2020-03"
    obs["issued"] = "2020-03-01T00:00:00Z"
    out = deidentify(obs, STUDY_A, pid)
    expected = dt.date(2020, 3, 15) + dt.timedelta(days=shift)
    assert out["effectiveDateTime"] == f"{expected.year:04d}-{expected.month:02d}"
    assert (
        out["issued"] == (dt.date(2020, 3, 1) + dt.timedelta(days=shift)).isoformat() + "T00:00:00Z"
    )
    patient = copy.deepcopy(patient_of(bundle_json))
    patient["birthDate"] = "1980"
    assert deidentify(patient, STUDY_A, pid)["birthDate"] == "1980"


def test_offsets_are_per_patient_and_per_study() -> None:
    ids = [f"patient-{i}" for i in range(2000)]
    a = [date_shift_days(STUDY_A, p) for p in ids]
    b = [date_shift_days(STUDY_B, p) for p in ids]
    assert all(1 <= abs(x) <= MAX_SHIFT_DAYS for x in a + b)
    assert min(a) < 0 < max(a)
    assert len(set(a)) > 300  # spread over the range, not a handful of values
    assert sum(x == y for x, y in zip(a, b, strict=True)) < 30  # unrelated across studies
    assert date_shift_days(STUDY_A, "patient-1") == date_shift_days(STUDY_A, "patient-1")


def test_dates_differ_across_studies(bundle_json: dict, pid: str) -> None:
    assert date_shift_days(STUDY_A, pid) != date_shift_days(STUDY_B, pid)
    enc = next(r for r in resources(bundle_json) if r["resourceType"] == "Encounter")
    a, b = deidentify(enc, STUDY_A, pid), deidentify(enc, STUDY_B, pid)
    assert a["period"]["start"] != b["period"]["start"]


# -- pseudonyms and ids ----------------------------------------------------------------------


def test_pseudonyms_are_stable_within_a_study_and_differ_across(pid: str) -> None:
    p = pseudonym(STUDY_A, pid)
    assert p == pseudonym(Study(STUDY_A.study_id, STUDY_A.secret), pid)
    assert p != pseudonym(STUDY_B, pid)
    assert p != pseudonym(STUDY_A, pid + "x")
    # Same secret, another study id: still unrelated.
    assert p != pseudonym(Study("S-other", STUDY_A.secret), pid)
    assert pid not in p and re.fullmatch(r"[0-9a-f\-]{36}", p)


def test_ids_are_consistent_between_bundle_and_single_resources(
    bundle_json: dict, derived: dict, pid: str
) -> None:
    for before, after in zip(resources(bundle_json), resources(derived), strict=True):
        alone = deidentify(before, STUDY_A, pid)
        assert alone["id"] == after["id"]
        assert alone["id"] != before["id"]
    assert patient_of(derived)["id"] == pseudonym(STUDY_A, pid)
    again = deidentify_bundle(bundle_json, STUDY_A, pid)
    assert again == derived
    other = deidentify_bundle(bundle_json, STUDY_B, pid)
    assert not {r["id"] for r in resources(other)} & {r["id"] for r in resources(derived)}


def test_references_resolve_inside_the_derivative(bundle_json: dict, derived: dict, pid: str):
    pseudo = f"Patient/{pseudonym(STUDY_A, pid)}"
    full_urls = {e["fullUrl"] for e in derived["entry"]}
    keys = {f"{r['resourceType']}/{r['id']}" for r in resources(derived)}
    refs = references(derived)
    assert refs
    for ref in refs:
        parsed = parse_reference(ref)
        if parsed.kind == "urn":
            assert ref in full_urls
        elif parsed.type in DIRECTORY_TYPES:
            continue  # conditional directory references: pseudonymous, resolved elsewhere
        else:
            assert ref in keys, ref
    # The loader sees the same patient and encounter links as in the original.
    originals = list(fhir.iter_bundle(bundle_json))
    found = list(fhir.iter_bundle(derived))
    encounter_keys = {r.key for r in found if r.resource_type == "Encounter"}
    for before, after in zip(originals, found, strict=True):
        if before.patient is not None:
            assert after.patient == pseudo
        if before.encounter is not None:
            assert after.encounter in encounter_keys
    patient_refs = sum(
        parse_reference(r).kind == "urn" and r == f"urn:uuid:{pid}" for r in references(bundle_json)
    )
    assert refs.count(pseudo) == patient_refs
    # Entries PUT to the ids the references use.
    for entry in derived["entry"]:
        res = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}
        assert entry["fullUrl"] == f"urn:uuid:{res['id']}"


def test_output_validates_and_has_no_empty_elements(derived: dict) -> None:
    for res in resources(derived):
        fhir.parse_resource(res)
    for _, value in walk(derived):
        assert value not in ({}, [], ""), "FHIR forbids empty elements"


def test_other_patients_and_absolute_references(pid: str) -> None:
    rp = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        "subject": {"reference": f"https://h001.example/fhir/Patient/{pid}/_history/3"},
        "focus": [{"reference": "Patient/mother-1"}, {"reference": "#contained-1"}],
        "performer": [{"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9"}],
    }
    out = deidentify(rp, STUDY_A, pid)
    assert out["subject"] == {"reference": f"Patient/{pseudonym(STUDY_A, pid)}"}
    assert out["focus"][0] == {"reference": f"Patient/{pseudonym(STUDY_A, 'mother-1')}"}
    assert out["focus"][1] == {"reference": "#contained-1"}
    assert out["performer"][0]["reference"].startswith("Practitioner/")
    assert "us-npi" not in json.dumps(out)


# -- ages over 89 ----------------------------------------------------------------------------


def patient_born(bundle: dict, birth: str, **extra: Any) -> dict[str, Any]:
    patient = copy.deepcopy(patient_of(bundle))
    patient["birthDate"] = birth
    patient.update(extra)
    return patient


@pytest.mark.parametrize(
    ("birth", "grouped"),
    [
        ("1920-05-05", True),  # 105
        ("1935-06-01", True),  # 90th birthday on the reference date
        ("1930", True),  # year-only, 95
        ("1936-03-01", False),  # 89, and ±180 days cannot make it 90
        ("1990-01-01", False),
    ],
)
def test_ages_over_89_are_grouped(bundle_json: dict, pid: str, birth: str, grouped: bool):
    out = deidentify(patient_born(bundle_json, birth), STUDY_A, pid)
    if grouped:
        assert out["birthDate"] == str(AS_OF.year - 91)
        # Whatever day of that year a reader assumes, the age is 90 or 91: the "90+" bucket.
        earliest, latest = dt.date(AS_OF.year - 91, 1, 1), dt.date(AS_OF.year - 91, 12, 31)
        for day in (earliest, latest):
            age = AS_OF.year - day.year - ((AS_OF.month, AS_OF.day) < (day.month, day.day))
            assert 90 <= age <= 91
    else:
        assert len(out["birthDate"]) == 10 and out["birthDate"] != birth


def test_age_at_death_decides_for_the_deceased(bundle_json: dict, pid: str) -> None:
    shift = date_shift_days(STUDY_A, pid)
    died_old = patient_born(bundle_json, "1900-01-01", deceasedDateTime="1995-07-01T10:00:00Z")
    out = deidentify(died_old, STUDY_A, pid)
    death = dt.date(1995, 7, 1) + dt.timedelta(days=shift)
    assert out["birthDate"] == str(death.year - 91)
    died_young = patient_born(bundle_json, "1900-01-01", deceasedDateTime="1950-07-01T10:00:00Z")
    assert len(deidentify(died_young, STUDY_A, pid)["birthDate"]) == 10


def test_age_quantities_over_89_are_capped(pid: str) -> None:
    def condition(age: float, code: str = "a") -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "59621000"}]},
            "onsetAge": {
                "value": age,
                "unit": code,
                "system": "http://unitsofmeasure.org",
                "code": code,
            },
        }

    capped = {
        "value": 90,
        "comparator": ">=",
        "unit": "a",
        "system": "http://unitsofmeasure.org",
        "code": "a",
    }
    assert deidentify(condition(93), STUDY_A, pid)["onsetAge"] == capped
    assert deidentify(condition(1100, "mo"), STUDY_A, pid)["onsetAge"] == capped
    assert deidentify(condition(45), STUDY_A, pid)["onsetAge"]["value"] == 45


# -- property: every synthetic resource ------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    index=st.integers(0, 50),
    records=st.integers(1, 12),
    secret=st.binary(min_size=32, max_size=32),
    study_id=st.text(min_size=1, max_size=20),
)
def test_never_raises_and_never_leaks_the_patient_id(
    seed: int, index: int, records: int, secret: bytes, study_id: str
) -> None:
    study = Study(study_id, secret, as_of=AS_OF)
    bundle = synthetic.generate_bundle(seed, index, records)
    pid = patient_of(bundle)["id"]
    for resource in [*resources(bundle), *synthetic.directory_resources(seed)]:
        out = deidentify(resource, study, pid)
        assert pid not in json.dumps(out)
    whole = deidentify_bundle(bundle, study, pid)
    assert pid not in json.dumps(whole)
