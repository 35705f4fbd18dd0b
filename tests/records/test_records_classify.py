"""Department classification: encounter facts, inheritance, clinical codes, default."""

from __future__ import annotations

from typing import Any

import pytest

from medshare.records import fhir, synthetic
from medshare.records.classify import (
    Classifier,
    Decision,
    Rules,
    RulesError,
    is_patient_record,
    patient_reference,
)
from medshare.records.departments import CODESYSTEM_URL, Taxonomy

SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOC = "Location?identifier=https://github.com/synthetichealth/synthea|loc-1"


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier()


def cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def encounter(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": ACT, "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def condition(system: str, code: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"c-{code}",
        "code": cc(system, code),
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


# -- step 1: encounter facts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "why"),
    [
        (
            {"serviceType": cc(SCT, "394579002")},
            "0304",
            "Encounter.serviceType SNOMED CT 394579002",
        ),
        ({"type": [cc(SCT, "50849002")]}, "20", "Encounter.type SNOMED CT 50849002"),
        ({"type": [cc(SCT, "424619006")]}, "0502", "Prenatal visit"),
        ({"class": {"system": ACT, "code": "EMER"}}, "20", "Encounter.class v3-ActCode EMER"),
        ({"serviceType": cc(CODESYSTEM_URL, "040101")}, "040101", "medshare department 040101"),
        (
            {"serviceType": cc(SCT, "394579002"), "class": {"system": ACT, "code": "EMER"}},
            "0304",
            "serviceType",
        ),
    ],
)
def test_encounter_facts(clf: Classifier, fields: dict, code: str, why: str) -> None:
    decision = clf.classify(encounter(**fields))
    assert (decision.code, decision.basis) == (code, "encounter")
    assert why in decision.reason
    assert decision.reason.endswith(f"→ {code} {clf.taxonomy.get(code).name_en}")


@pytest.mark.parametrize("klass", ["AMB", "IMP", "VR", "HH"])
def test_inpatient_or_outpatient_alone_does_not_decide(clf: Classifier, klass: str) -> None:
    decision = clf.classify(encounter(**{"class": {"system": ACT, "code": klass}}))
    assert decision == Decision(
        "02", "no department-specific code; hospital default → 02 General practice", "default"
    )


def test_encounter_reason_code_decides_before_default(clf: Classifier) -> None:
    enc = encounter(type=[cc(SCT, "185347001")], reasonCode=[cc(SCT, "44054006")])
    assert clf.classify(enc).code == "0307"
    assert clf.classify(enc).basis == "clinical-code"


def test_location_by_configured_reference_or_location_type() -> None:
    rules = Rules.default_rules().merged({"references": [{"reference": LOC, "department": "0304"}]})
    enc = encounter(location=[{"location": {"reference": LOC}}])
    decision = Classifier(rules=rules).classify(enc)
    assert decision.code == "0304" and "Encounter.location configured reference" in decision.reason
    by_identifier = encounter(location=[{"location": {"reference": "Location/9"}}])
    rules2 = Rules.default_rules().merged(
        {"references": [{"reference": "Location/9", "department": "28"}]}
    )
    assert Classifier(rules=rules2).classify(by_identifier).code == "28"
    icu = {
        "resourceType": "Location",
        "type": [cc("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "ICU")],
    }
    decision = Classifier().classify(enc, locations={LOC: icu})
    assert decision.code == "28" and "Encounter.location type v3-RoleCode ICU" in decision.reason


# -- step 3: clinical codes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code", "dept", "why"),
    [
        (ICD10, "I10", "0304", "ICD-10 I10 in I*"),
        (ICD10, "I21.9", "0304", "in I*"),
        (ICD10, "I63.9", "0303", "in I6* (Cerebrovascular"),
        (ICD10, "J18.9", "0301", "in J*"),
        (ICD10, "J02.9", "1103", "in J02*"),
        (ICD10, "C34.1", "19", "in C*"),
        (ICD10, "O80", "0502", "in O*"),
        (ICD10, "A15.0", "17", "in A15* (Tuberculosis"),
        (ICD10, "K02.1", "12", "in K0*"),
        ("http://hl7.org/fhir/sid/icd-10-cm", "E11.9", "0307", "ICD-10 E11.9 in E*"),
        (SCT, "38341003", "0304", "SNOMED CT 38341003 (Hypertension (disorder))"),
        (SCT, "44054006", "0307", "SNOMED CT 44054006"),
        (SCT, "195662009", "1103", "Acute viral pharyngitis"),
        (SCT, "72892002", "0502", "Normal pregnancy"),
    ],
)
def test_condition_codes(clf: Classifier, system: str, code: str, dept: str, why: str) -> None:
    decision = clf.classify(condition(system, code))
    assert (decision.code, decision.basis) == (dept, "clinical-code")
    assert decision.reason.startswith("Condition.code ") and why in decision.reason


def test_procedure_code_and_reason_code(clf: Classifier) -> None:
    colonoscopy = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": cc(SCT, "73761001"),
        "subject": {"reference": "Patient/p1"},
    }
    assert clf.classify(colonoscopy).code == "0302"
    med = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm", "314076"),
        "reasonCode": [cc(ICD10, "I10")],
        "subject": {"reference": "Patient/p1"},
    }
    decision = clf.classify(med)
    assert decision.code == "0304" and decision.reason.startswith("MedicationRequest.reasonCode")


def test_unmapped_codes_fall_back_to_the_default(clf: Classifier) -> None:
    for system, code in [(ICD10, "R51"), (ICD10, "Z00.0"), (SCT, "1234567"), ("urn:x", "I10")]:
        assert clf.classify(condition(system, code)).basis == "default"


def test_shipped_rules_cover_common_synthea_codes(clf: Classifier) -> None:
    rules = Rules.default_rules()
    rules.check(Taxonomy.default())
    assert len(rules.clinical_codes) >= 40
    assert rules.encounter_codes[(SCT, "394579002")].department == "0304"
    assert rules.encounter_classes[(ACT, "EMER")].department == "20"


# -- step 2: inheritance --------------------------------------------------------------------


def _bundle(enc: dict, *others: dict) -> dict:
    patient = {"resourceType": "Patient", "id": "p1"}
    resources = [patient, enc, *others]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)],
    }


def test_resources_inherit_the_encounters_department(clf: Classifier) -> None:
    er = encounter(type=[cc(SCT, "50849002")])
    hypertension = condition(SCT, "38341003", encounter={"reference": "urn:uuid:1"})
    vitals = {
        "resourceType": "Observation",
        "status": "final",
        "code": cc("http://loinc.org", "8867-4"),
        "subject": {"reference": "urn:uuid:0"},
        "encounter": {"reference": "Encounter/e1"},
    }
    loaded = fhir.iter_bundle(_bundle(er, hypertension, vitals))
    found = {r.resource_type: d for r, d in clf.classify_all(loaded)}
    assert found["Encounter"].code == "20"
    for rtype in ("Condition", "Observation"):
        assert (found[rtype].code, found[rtype].basis) == ("20", "inherited")
        assert found[rtype].reason.startswith("inherited from Encounter/e1: Encounter.type")
    assert found["Patient"].basis == "default"


def test_no_inheritance_from_an_encounter_that_only_got_the_default(clf: Classifier) -> None:
    checkup = encounter(type=[cc(SCT, "162673000")])
    hypertension = condition(SCT, "38341003", encounter={"reference": "urn:uuid:1"})
    bp = {
        "resourceType": "Observation",
        "status": "final",
        "code": cc("http://loinc.org", "85354-9"),
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "urn:uuid:1"},
    }
    loaded = fhir.iter_bundle(_bundle(checkup, hypertension, bp))
    decisions = [d for _, d in clf.classify_all(loaded)]
    assert [(d.code, d.basis) for d in decisions] == [
        ("02", "default"),
        ("02", "default"),
        ("0304", "clinical-code"),
        ("02", "default"),
    ]


def test_synthetic_bundle_classification(clf: Classifier, parsed: list) -> None:
    decided = clf.classify_all(parsed)
    assert len(decided) == len(parsed)  # a patient bundle holds only patient records
    by_key = {r.key: d for r, d in decided}
    for res, decision in decided:
        code, reason = decision  # unpacks like a (code, reason) pair
        assert code in clf.taxonomy and reason
        enc = by_key.get(res.encounter) if res.encounter else None
        if res.resource_type != "Encounter" and enc is not None and enc.basis != "default":
            assert (code, decision.basis) == (enc.code, "inherited")


def test_ndjson_resources_inherit_across_files(clf: Classifier) -> None:
    files = synthetic.generate_ndjson(11, 2, records=30)
    found = [r for text in files.values() for r in fhir.iter_ndjson(text.splitlines())]
    decided = clf.classify_all(found)
    assert {r.resource_type for r, _ in decided}.isdisjoint(
        {"Organization", "Practitioner", "PractitionerRole", "Location"}
    )
    assert any(d.basis == "inherited" for _, d in decided)


# -- configuration --------------------------------------------------------------------------


def test_hospital_default_and_overrides() -> None:
    assert Classifier(default="03").classify(condition(ICD10, "R51")).code == "03"
    rules = Rules.default_rules().merged(
        {
            "default": "0311",
            "clinical_codes": [{"system": SCT, "code": "38341003", "department": "0310"}],
        }
    )
    clf = Classifier(rules=rules)
    assert clf.classify(condition(SCT, "38341003")).code == "0310"
    assert clf.classify(condition(ICD10, "R51")).code == "0311"
    assert Rules.default_rules().clinical_codes[(SCT, "38341003")].department == "0304"


def test_rules_must_name_known_departments() -> None:
    ext = Taxonomy.default().add("030401", "0304", "心律失常亚专科", "Arrhythmia service")
    rules = Rules.default_rules().merged(
        {"clinical_codes": [{"system": SCT, "code": "49436004", "department": "030401"}]}
    )
    with pytest.raises(RulesError, match="unknown department code"):
        Classifier(rules=rules)
    assert Classifier(ext, rules).classify(condition(SCT, "49436004")).code == "030401"
    with pytest.raises(RulesError, match="default department 99"):
        Classifier(default="99")
    with pytest.raises(RulesError, match="malformed rules row"):
        Rules.default_rules().merged({"clinical_codes": [{"code": "x"}]})
    with pytest.raises(RulesError, match="unknown rules format"):
        Rules.from_json('{"format": "other/2"}')


# -- patient records vs directory data --------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Organization", "name": "Harbor"},
        {"resourceType": "Practitioner", "name": [{"family": "Li"}]},
        {"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/1"}},
        {"resourceType": "Location", "name": "Ward 3"},
        {"resourceType": "Medication", "code": {"text": "lisinopril"}},
        {"resourceType": "Device", "status": "active"},
    ],
)
def test_directory_data_is_not_a_patient_record(clf: Classifier, resource: dict) -> None:
    assert not is_patient_record(resource)
    assert patient_reference(resource) is None
    with pytest.raises(ValueError, match="directory data, not a patient record"):
        clf.classify(resource)


@pytest.mark.parametrize(
    ("resource", "ref"),
    [
        ({"resourceType": "Patient", "id": "p1"}, "Patient/p1"),
        ({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}, "Patient/p1"),
        ({"resourceType": "Claim", "patient": {"reference": "urn:uuid:9"}}, "urn:uuid:9"),
        ({"resourceType": "Coverage", "beneficiary": {"reference": "Patient/p2"}}, "Patient/p2"),
        ({"resourceType": "Device", "patient": {"reference": "Patient/p3"}}, "Patient/p3"),
        (
            {"resourceType": "Task", "for": {"reference": "https://x.example/fhir/Patient/p4"}},
            "https://x.example/fhir/Patient/p4",
        ),
        ({"resourceType": "Observation", "subject": {"reference": "Group/g1"}}, None),
        (
            {
                "resourceType": "Encounter",
                "participant": [
                    {"individual": {"reference": "Practitioner?identifier=http://x|1"}}
                ],
            },
            None,
        ),
    ],
)
def test_patient_reference(resource: dict, ref: str | None) -> None:
    assert patient_reference(resource) == ref
    assert is_patient_record(resource) is (ref is not None)


def test_directory_in_a_mixed_load_is_skipped(clf: Classifier, bundle_json: dict) -> None:
    directory = synthetic.generate_directory_bundle(1)
    mixed = {**bundle_json, "entry": directory["entry"] + bundle_json["entry"]}
    mixed["type"] = "batch"
    found = list(fhir.iter_bundle(mixed))
    decided = clf.classify_all(found)
    assert len(decided) == len(bundle_json["entry"])
    assert len(found) == len(decided) + len(directory["entry"])
