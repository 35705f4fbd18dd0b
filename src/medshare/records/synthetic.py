"""Seeded, Synthea-style synthetic FHIR R4 data for tests and demos (no network, no files).

The shapes follow what Synthea's R4 exporter writes, so code that ingests these bundles is
exercised on the same features as real Synthea output:

* a ``transaction`` Bundle; every entry has ``fullUrl: urn:uuid:<id>`` (the resource ``id``
  is the same UUID) and ``request: {method: POST, url: <Type>}``; resources reference
  each other by those ``urn:uuid:`` URLs;
* directory data is *not* in the patient bundle: organisations, locations and
  practitioners are referenced conditionally —
  ``Organization?identifier=https://github.com/synthetichealth/synthea|<id>``,
  ``Location?identifier=…``, ``Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|<npi>``
  — and live in a separate ``batch`` bundle (:func:`generate_directory_bundle`) whose
  entries carry ``request.ifNoneExist``, as Synthea's ``hospitalInformation`` and
  ``practitionerInformation`` files do;
* US Core ``meta.profile``, race/ethnicity/birth-sex extensions, Synthea's identifier
  systems (medical record number, SSN, driver's licence, passport), a generated ``text``
  narrative on the Patient, Encounter ``class`` from v3-ActCode and SNOMED ``type`` codes,
  LOINC vital signs and lab panels in DiagnosticReports, RxNorm MedicationRequests,
  a Claim per encounter and a closing Provenance that targets every entry.

One liberty: some visits carry ``Encounter.serviceType`` (a SNOMED specialty such as
394579002 Cardiology). Synthea never sets it; hospital systems do, and the classifier uses it.

Everything is a function of ``(seed, patient_index)`` through its own ``random.Random``;
dates are counted back from :data:`REFERENCE_DATE`, never from the clock.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

SYNTHEA = "https://github.com/synthetichealth/synthea"
NPI = "http://hl7.org/fhir/sid/us-npi"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
REFERENCE_DATE = dt.datetime(2025, 6, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
XHTML = "http://www.w3.org/1999/xhtml"

Code = tuple[str, str]  # (code, display)


def _cc(system: str, code: str, display: str, *, text: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = display
    return out


def _qty(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}


def _ts(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _instant(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


# -- clinical content ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Visit:
    name: str
    klass: str  # v3-ActCode: AMB, EMER, IMP
    type: Code  # SNOMED encounter type, as Synthea writes it
    service_type: Code | None = None
    conditions: tuple[Code, ...] = ()  # SNOMED; one is picked
    chronic: bool = False
    procedures: tuple[Code, ...] = ()
    medications: tuple[Code, ...] = ()  # RxNorm
    labs: tuple[str, ...] = ()  # keys of _PANELS
    sex: str | None = None
    ages: tuple[int, int] = (0, 100)
    weight: int = 1


_VISITS: tuple[_Visit, ...] = (
    _Visit(
        "wellness",
        "AMB",
        ("162673000", "General examination of patient (procedure)"),
        procedures=(("430193006", "Medication reconciliation (procedure)"),),
        labs=("lipid",),
        ages=(18, 100),
        weight=4,
    ),
    _Visit(
        "well-child",
        "AMB",
        ("410620009", "Well child visit (procedure)"),
        ages=(0, 17),
        weight=4,
    ),
    _Visit(
        "hypertension",
        "AMB",
        ("390906007", "Follow-up encounter (procedure)"),
        conditions=(("59621000", "Essential hypertension (disorder)"),),
        chronic=True,
        medications=(
            ("314076", "lisinopril 10 MG Oral Tablet"),
            ("308136", "amLODIPine 2.5 MG Oral Tablet"),
            ("310798", "Hydrochlorothiazide 25 MG Oral Tablet"),
        ),
        ages=(30, 100),
        weight=3,
    ),
    _Visit(
        "diabetes",
        "AMB",
        ("185347001", "Encounter for problem (procedure)"),
        conditions=(("44054006", "Diabetes mellitus type 2 (disorder)"),),
        chronic=True,
        medications=(
            ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
        ),
        labs=("bmp", "a1c"),
        ages=(30, 100),
        weight=2,
    ),
    _Visit(
        "pharyngitis",
        "AMB",
        ("185345009", "Encounter for symptom (procedure)"),
        conditions=(
            ("195662009", "Acute viral pharyngitis (disorder)"),
            ("43878008", "Streptococcal sore throat (disorder)"),
        ),
        medications=(("313782", "Acetaminophen 325 MG Oral Tablet"),),
        weight=3,
    ),
    _Visit(
        "sinusitis",
        "AMB",
        ("185345009", "Encounter for symptom (procedure)"),
        conditions=(("444814009", "Viral sinusitis (disorder)"),),
        medications=(("308192", "Amoxicillin 500 MG Oral Tablet"),),
        weight=2,
    ),
    _Visit(
        "bronchitis",
        "AMB",
        ("185345009", "Encounter for symptom (procedure)"),
        conditions=(("10509002", "Acute bronchitis (disorder)"),),
        procedures=(("23426006", "Measurement of respiratory function (procedure)"),),
        weight=2,
    ),
    _Visit(
        "emergency",
        "EMER",
        ("50849002", "Emergency room admission (procedure)"),
        conditions=(
            ("44465007", "Sprain of ankle (disorder)"),
            ("22298006", "Myocardial infarction (disorder)"),
        ),
        procedures=(("29303009", "Electrocardiographic procedure (procedure)"),),
        medications=(("198405", "Ibuprofen 100 MG Oral Tablet"),),
        weight=2,
    ),
    _Visit(
        "prenatal",
        "AMB",
        ("424619006", "Prenatal visit (regime/therapy)"),
        conditions=(("72892002", "Normal pregnancy (finding)"),),
        procedures=(
            ("274804006", "Evaluation of uterine fundal height (procedure)"),
            ("225158009", "Auscultation of the fetal heart (procedure)"),
        ),
        sex="female",
        ages=(18, 44),
        weight=2,
    ),
    _Visit(
        "cardiology",
        "AMB",
        ("185347001", "Encounter for problem (procedure)"),
        service_type=("394579002", "Cardiology"),
        conditions=(
            ("49436004", "Atrial fibrillation (disorder)"),
            ("53741008", "Coronary heart disease (disorder)"),
        ),
        chronic=True,
        procedures=(("40701008", "Echocardiography (procedure)"),),
        ages=(40, 100),
        weight=1,
    ),
    _Visit(
        "inpatient",
        "IMP",
        ("32485007", "Hospital admission (procedure)"),
        conditions=(("233604007", "Pneumonia (disorder)"),),
        labs=("cbc",),
        medications=(("308192", "Amoxicillin 500 MG Oral Tablet"),),
        weight=1,
    ),
)

# Lab panels: a header line "key|report LOINC|report display" (report "-" = no report), then
# one line per analyte "LOINC|display|low|high|UCUM unit|decimals".
_PANEL_TABLE = """
bmp|51990-0|Basic metabolic panel - Blood
2339-0|Glucose [Mass/volume] in Blood|70|180|mg/dL|1
6299-2|Urea nitrogen [Mass/volume] in Blood|7|20|mg/dL|1
38483-4|Creatinine [Mass/volume] in Blood|0.6|1.4|mg/dL|2
49765-1|Calcium [Mass/volume] in Blood|8.5|10.2|mg/dL|1
2947-0|Sodium [Moles/volume] in Blood|136|145|mmol/L|1
6298-4|Potassium [Moles/volume] in Blood|3.5|5.1|mmol/L|1

lipid|57698-3|Lipid panel with direct LDL - Serum or Plasma
2093-3|Cholesterol [Mass/volume] in Serum or Plasma|150|260|mg/dL|1
2571-8|Triglycerides|80|220|mg/dL|1
18262-6|Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay|70|170|mg/dL|1
2085-9|Cholesterol in HDL [Mass/volume] in Serum or Plasma|35|80|mg/dL|1

cbc|58410-2|CBC panel - Blood by Automated count
6690-2|Leukocytes [#/volume] in Blood by Automated count|4|11|10*3/uL|1
718-7|Hemoglobin [Mass/volume] in Blood|11.5|17|g/dL|1
4544-3|Hematocrit [Volume Fraction] of Blood by Automated count|35|50|%|1
777-3|Platelets [#/volume] in Blood by Automated count|150|400|10*3/uL|0

a1c|-|-
4548-4|Hemoglobin A1c/Hemoglobin.total in Blood|5.5|9.5|%|1
"""


@dataclass(frozen=True)
class _Analyte:
    code: Code
    low: float
    high: float
    unit: str
    decimals: int


def _parse_panels(table: str) -> dict[str, tuple[Code | None, tuple[_Analyte, ...]]]:
    panels: dict[str, tuple[Code | None, tuple[_Analyte, ...]]] = {}
    for block in table.strip().split("\n\n"):
        head, *rows = block.splitlines()
        key, report, report_name = head.split("|")
        analytes = []
        for row in rows:
            loinc, name, low, high, unit, decimals = row.split("|")
            analytes.append(_Analyte((loinc, name), float(low), float(high), unit, int(decimals)))
        panels[key] = (None if report == "-" else (report, report_name), tuple(analytes))
    return panels


_PANELS = _parse_panels(_PANEL_TABLE)

_FIRST = {
    "male": ("Jacinto", "Wilbur", "Desmond", "Hong", "Rafael", "Wei", "Elroy", "Tomas"),
    "female": ("Shanelle", "Marisol", "Ling", "Beatrice", "Kandi", "Yuki", "Odette", "Alva"),
}
_FAMILY = ("Kris", "Zhang", "Hermiston", "Li", "Bode", "Wang", "Oberbrunner", "Chen", "Wuckert")
_CITIES = (("Boston", "02118"), ("Worcester", "01602"), ("Springfield", "01103"))
_RACES = (("2106-3", "White"), ("2054-5", "Black or African American"), ("2028-9", "Asian"))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# -- directory (organisations, locations, practitioners) ----------------------------------


@dataclass(frozen=True)
class _Provider:
    org_id: str
    org_name: str
    loc_id: str
    loc_name: str
    npi: str
    doctor: str


@cache
def _providers(seed: int) -> tuple[_Provider, ...]:
    rng = random.Random(f"medshare-synthetic:{seed}:directory")
    names = ("Harbor Community Hospital", "Riverside Medical Center", "Hillcrest Family Clinic")
    out = []
    for name in names:
        first = rng.choice(_FIRST["female"] + _FIRST["male"])
        out.append(
            _Provider(
                org_id=_uuid(rng),
                org_name=name,
                loc_id=_uuid(rng),
                loc_name=name.upper(),
                npi=f"999999{rng.randrange(10_000):04d}",
                doctor=f"Dr. {first}{rng.randrange(1000)} "
                f"{rng.choice(_FAMILY)}{rng.randrange(1000)}",
            )
        )
    return tuple(out)


def _org_ref(p: _Provider) -> dict[str, str]:
    return {"reference": f"Organization?identifier={SYNTHEA}|{p.org_id}", "display": p.org_name}


def _loc_ref(p: _Provider) -> dict[str, str]:
    return {"reference": f"Location?identifier={SYNTHEA}|{p.loc_id}", "display": p.loc_name}


def _doc_ref(p: _Provider) -> dict[str, str]:
    return {"reference": f"Practitioner?identifier={NPI}|{p.npi}", "display": p.doctor}


def directory_resources(seed: int) -> list[dict[str, Any]]:
    """The Organization, Location, Practitioner and PractitionerRole resources of ``seed``."""
    out: list[dict[str, Any]] = []
    for p in _providers(seed):
        out.append(
            {
                "resourceType": "Organization",
                "id": p.org_id,
                "meta": {"profile": [US_CORE + "us-core-organization"]},
                "identifier": [{"system": SYNTHEA, "value": p.org_id}],
                "active": True,
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                "code": "prov",
                                "display": "Healthcare Provider",
                            }
                        ],
                        "text": "Healthcare Provider",
                    }
                ],
                "name": p.org_name,
                "telecom": [{"system": "phone", "value": "555-010-0100"}],
                "address": [{"line": ["1 Main St"], "city": "Boston", "state": "MA"}],
            }
        )
        out.append(
            {
                "resourceType": "Location",
                "id": p.loc_id,
                "meta": {"profile": [US_CORE + "us-core-location"]},
                "identifier": [{"system": SYNTHEA, "value": p.loc_id}],
                "status": "active",
                "name": p.loc_name,
                "managingOrganization": _org_ref(p),
            }
        )
        prac_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NPI}|{p.npi}"))
        out.append(
            {
                "resourceType": "Practitioner",
                "id": prac_id,
                "meta": {"profile": [US_CORE + "us-core-practitioner"]},
                "identifier": [{"system": NPI, "value": p.npi}],
                "active": True,
                "name": [{"family": p.doctor.split()[-1], "given": [p.doctor.split()[1]]}],
                "gender": "female",
            }
        )
        out.append(
            {
                "resourceType": "PractitionerRole",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"role|{p.npi}")),
                "meta": {"profile": [US_CORE + "us-core-practitionerrole"]},
                "practitioner": _doc_ref(p),
                "organization": _org_ref(p),
                "code": [
                    _cc("http://nucc.org/provider-taxonomy", "208D00000X", "General Practice")
                ],
                "location": [_loc_ref(p)],
            }
        )
    return out


def generate_directory_bundle(seed: int) -> dict[str, Any]:
    """A ``batch`` Bundle of the directory, POSTed with ``ifNoneExist`` like Synthea's."""
    entries = []
    for res in directory_resources(seed):
        entry: dict[str, Any] = {
            "fullUrl": f"urn:uuid:{res['id']}",
            "resource": res,
            "request": {"method": "POST", "url": res["resourceType"]},
        }
        if res.get("identifier"):
            ident = res["identifier"][0]
            entry["request"]["ifNoneExist"] = f"identifier={ident['system']}|{ident['value']}"
        entries.append(entry)
    return _fresh({"resourceType": "Bundle", "type": "batch", "entry": entries})


# -- one patient --------------------------------------------------------------------------


class _Builder:
    """Collects the entries of one patient's bundle."""

    def __init__(self, seed: int, patient_index: int) -> None:
        self.rng = random.Random(f"medshare-synthetic:{seed}:{patient_index}")
        self.providers = _providers(seed)
        self.seed = seed
        self.index = patient_index
        self.entries: list[dict[str, Any]] = []

    def add(self, resource: dict[str, Any], rid: str | None = None) -> str:
        """Append an entry (``urn:uuid:`` fullUrl = id, POST request); return its fullUrl."""
        rid = rid or _uuid(self.rng)
        resource = {"resourceType": resource["resourceType"], "id": rid} | resource
        self.entries.append(
            {
                "fullUrl": f"urn:uuid:{rid}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
        return f"urn:uuid:{rid}"

    # The Patient ----------------------------------------------------------------------

    def patient(self) -> tuple[str, str, int, str]:
        rng = self.rng
        sex = rng.choice(("male", "female"))
        age = rng.randrange(1, 90)
        birth = (REFERENCE_DATE - dt.timedelta(days=age * 365 + rng.randrange(365))).date()
        given = f"{rng.choice(_FIRST[sex])}{rng.randrange(1000)}"
        family = f"{rng.choice(_FAMILY)}{rng.randrange(1000)}"
        prefix = "Mr." if sex == "male" else "Ms."
        race = rng.choice(_RACES)
        city, postal = rng.choice(_CITIES)
        pid = _uuid(rng)
        display = f"{prefix} {given} {family}"
        ref = self.add(
            {
                "resourceType": "Patient",
                "meta": {"profile": [US_CORE + "us-core-patient"]},
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="{XHTML}">Generated by <a href="{SYNTHEA}">Synthea</a>'
                    f"-style generator (medshare). Seed: {self.seed}, patient: {self.index}.</div>",
                },
                "extension": [
                    {
                        "url": US_CORE + "us-core-race",
                        "extension": [
                            {
                                "url": "ombCategory",
                                "valueCoding": {
                                    "system": "urn:oid:2.16.840.1.113883.6.238",
                                    "code": race[0],
                                    "display": race[1],
                                },
                            },
                            {"url": "text", "valueString": race[1]},
                        ],
                    },
                    {
                        "url": US_CORE + "us-core-ethnicity",
                        "extension": [
                            {
                                "url": "ombCategory",
                                "valueCoding": {
                                    "system": "urn:oid:2.16.840.1.113883.6.238",
                                    "code": "2186-5",
                                    "display": "Not Hispanic or Latino",
                                },
                            },
                            {"url": "text", "valueString": "Not Hispanic or Latino"},
                        ],
                    },
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                        "valueString": f"{rng.choice(_FIRST['female'])}{rng.randrange(1000)} "
                        f"{rng.choice(_FAMILY)}{rng.randrange(1000)}",
                    },
                    {"url": US_CORE + "us-core-birthsex", "valueCode": sex[0].upper()},
                    {
                        "url": "http://synthetichealth.github.io/synthea/"
                        "disability-adjusted-life-years",
                        "valueDecimal": round(rng.uniform(0, 3), 6),
                    },
                ],
                "identifier": [
                    {"system": SYNTHEA, "value": pid},
                    {
                        "type": _cc(
                            "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "MR",
                            "Medical Record Number",
                        ),
                        "system": "http://hospital.smarthealthit.org",
                        "value": pid,
                    },
                    {
                        "type": _cc(
                            "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "SS",
                            "Social Security Number",
                        ),
                        "system": "http://hl7.org/fhir/sid/us-ssn",
                        "value": f"999-{rng.randrange(10, 100)}-{rng.randrange(1000, 10000)}",
                    },
                ],
                "name": [
                    {"use": "official", "family": family, "given": [given], "prefix": [prefix]}
                ],
                "telecom": [
                    {
                        "system": "phone",
                        "value": f"555-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}",
                        "use": "home",
                    }
                ],
                "gender": sex,
                "birthDate": birth.isoformat(),
                "address": [
                    {
                        "extension": [
                            {
                                "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                                "extension": [
                                    {
                                        "url": "latitude",
                                        "valueDecimal": round(42 + rng.random(), 6),
                                    },
                                    {
                                        "url": "longitude",
                                        "valueDecimal": round(-71 - rng.random(), 6),
                                    },
                                ],
                            }
                        ],
                        "line": [f"{rng.randrange(1, 999)} Synthetic Ave"],
                        "city": city,
                        "state": "MA",
                        "postalCode": postal,
                        "country": "US",
                    }
                ],
                "maritalStatus": _cc(
                    "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"
                )
                if age >= 25
                else _cc(
                    "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "S", "Never Married"
                ),
                "multipleBirthBoolean": False,
                "communication": [
                    {"language": _cc("urn:ietf:bcp:47", "en-US", "English (United States)")}
                ],
            },
            rid=pid,
        )
        return ref, sex, age, display

    # One visit ------------------------------------------------------------------------

    def visit(
        self, visit: _Visit, when: dt.datetime, patient: str, who: str, age: int, budget: int
    ) -> None:
        """Add one encounter and what happened in it, using at most ``budget`` entries
        beyond the encounter, its claim and its diagnosis (vitals are dropped first)."""
        rng = self.rng
        prov = rng.choice(self.providers)
        end = when + dt.timedelta(minutes=rng.choice((15, 30, 45)))
        if visit.klass == "IMP":
            end = when + dt.timedelta(days=rng.randrange(2, 6))
        period = {"start": _ts(when), "end": _ts(end)}
        subject = {"reference": patient, "display": who}
        condition_code = rng.choice(visit.conditions) if visit.conditions else None
        eid = _uuid(rng)

        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "meta": {"profile": [US_CORE + "us-core-encounter"]},
            "identifier": [{"use": "official", "system": SYNTHEA, "value": eid}],
            "status": "finished",
            "class": {"system": ACT_CODE, "code": visit.klass},
            "type": [_cc(SNOMED, *visit.type)],
        }
        if visit.service_type:
            encounter["serviceType"] = _cc(SNOMED, *visit.service_type)
        encounter |= {
            "subject": subject,
            "participant": [
                {
                    "type": [
                        _cc(
                            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "PPRF",
                            "primary performer",
                        )
                    ],
                    "period": period,
                    "individual": _doc_ref(prov),
                }
            ],
            "period": period,
        }
        if condition_code:
            encounter["reasonCode"] = [_cc(SNOMED, *condition_code, text=False)]
        encounter |= {"location": [{"location": _loc_ref(prov)}], "serviceProvider": _org_ref(prov)}
        enc = self.add(encounter, rid=eid)
        context = {"subject": {"reference": patient}, "encounter": {"reference": enc}}

        reason: list[dict[str, str]] = []
        if condition_code:
            resolved = not visit.chronic
            cond: dict[str, Any] = {
                "resourceType": "Condition",
                "meta": {"profile": [US_CORE + "us-core-condition-encounter-diagnosis"]},
                "clinicalStatus": _cc(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "resolved" if resolved else "active",
                    "Resolved" if resolved else "Active",
                    text=False,
                ),
                "verificationStatus": _cc(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "confirmed",
                    "Confirmed",
                    text=False,
                ),
                "category": [
                    _cc(
                        "http://terminology.hl7.org/CodeSystem/condition-category",
                        "encounter-diagnosis",
                        "Encounter Diagnosis",
                        text=False,
                    )
                ],
                "code": _cc(SNOMED, *condition_code),
                **context,
                "onsetDateTime": _ts(when),
            }
            if resolved:
                cond["abatementDateTime"] = _ts(when + dt.timedelta(days=rng.randrange(7, 30)))
            cond["recordedDate"] = _ts(when)
            reason = [{"reference": self.add(cond)}]

        # Optional groups, added in this order while they fit in the budget.
        groups: list[list[dict[str, Any]]] = []
        for code in visit.procedures:
            proc: dict[str, Any] = {
                "resourceType": "Procedure",
                "meta": {"profile": [US_CORE + "us-core-procedure"]},
                "status": "completed",
                "code": _cc(SNOMED, *code),
                **context,
                "performedPeriod": {"start": _ts(when), "end": _ts(end)},
                "location": _loc_ref(prov),
            }
            if reason:
                proc["reasonReference"] = reason
            groups.append([proc])
        if visit.medications:
            groups.append([self._medication(visit, when, context, prov, reason)])
        groups += [self._panel(key, when, context, prov) for key in visit.labs]
        groups += [[v] for v in self._vitals(when, context, age)]
        room = budget
        for group in groups:
            if len(group) <= room:
                self._add_group(group)
                room -= len(group)

        self.add(
            {
                "resourceType": "Claim",
                "status": "active",
                "type": _cc(
                    "http://terminology.hl7.org/CodeSystem/claim-type",
                    "professional",
                    "Professional",
                    text=False,
                ),
                "use": "claim",
                "patient": subject,
                "billablePeriod": period,
                "created": _ts(end),
                "provider": _org_ref(prov),
                "priority": _cc(
                    "http://terminology.hl7.org/CodeSystem/processpriority",
                    "normal",
                    "Normal",
                    text=False,
                ),
                "facility": _loc_ref(prov),
                "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Medicaid"}}],
                "item": [
                    {
                        "sequence": 1,
                        "productOrService": _cc(SNOMED, *visit.type),
                        "encounter": [{"reference": enc}],
                    }
                ],
                "total": {"value": round(rng.uniform(80, 900), 2), "currency": "USD"},
            }
        )

    def _add_group(self, group: list[dict[str, Any]]) -> None:
        """Add resources in order; a DiagnosticReport gets the group's earlier ones as results."""
        added: list[dict[str, str]] = []
        for res in group:
            if res["resourceType"] == "DiagnosticReport":
                res["result"] = added
            ref = self.add(res)
            if res["resourceType"] == "Observation":
                added = [*added, {"reference": ref, "display": res["code"]["text"]}]

    def _medication(
        self,
        visit: _Visit,
        when: dt.datetime,
        context: dict[str, Any],
        prov: _Provider,
        reason: list[dict[str, str]],
    ) -> dict[str, Any]:
        med = self.rng.choice(visit.medications)
        out: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "meta": {"profile": [US_CORE + "us-core-medicationrequest"]},
            "status": "active" if visit.chronic else "stopped",
            "intent": "order",
            "category": [
                _cc(
                    "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "community",
                    "Community",
                )
            ],
            "medicationCodeableConcept": _cc(RXNORM, *med),
            **context,
            "authoredOn": _ts(when),
            "requester": _doc_ref(prov),
        }
        if reason:
            out["reasonReference"] = reason
        out["dosageInstruction"] = [
            {
                "sequence": 1,
                "timing": {"repeat": {"frequency": 1, "period": 1.0, "periodUnit": "d"}},
                "asNeededBoolean": False,
                "doseAndRate": [
                    {
                        "type": _cc(
                            "http://terminology.hl7.org/CodeSystem/dose-rate-type",
                            "ordered",
                            "Ordered",
                            text=False,
                        ),
                        "doseQuantity": {"value": 1.0},
                    }
                ],
            }
        ]
        return out

    def _observation(
        self,
        when: dt.datetime,
        context: dict[str, Any],
        category: str,
        code: Code,
        profile: str | None = None,
        **value: Any,
    ) -> dict[str, Any]:
        display = {"vital-signs": "Vital signs", "laboratory": "Laboratory"}[category]
        return {
            "resourceType": "Observation",
            "meta": {"profile": [US_CORE + (profile or "us-core-observation-lab")]},
            "status": "final",
            "category": [_cc(OBS_CATEGORY, category, display, text=False)],
            "code": _cc(LOINC, *code),
            **context,
            "effectiveDateTime": _ts(when),
            "issued": _instant(when + dt.timedelta(minutes=5)),
            **value,
        }

    def _vitals(self, when: dt.datetime, context: dict[str, Any], age: int) -> list[dict[str, Any]]:
        rng = self.rng
        height = round(rng.uniform(150, 190) if age >= 18 else 55 + age * 6.5, 1)
        weight = round(rng.uniform(50, 110) if age >= 18 else 4 + age * 3.2, 1)
        bmi = round(weight / (height / 100) ** 2, 2)
        vs = "vital-signs"
        out = [
            self._observation(
                when, context, vs, ("8302-2", "Body Height"), "us-core-body-height",
                valueQuantity=_qty(height, "cm"),
            ),
            self._observation(
                when, context, vs, ("29463-7", "Body Weight"), "us-core-body-weight",
                valueQuantity=_qty(weight, "kg"),
            ),
            self._observation(
                when, context, vs, ("39156-5", "Body mass index (BMI) [Ratio]"), "us-core-bmi",
                valueQuantity=_qty(bmi, "kg/m2"),
            ),
            self._observation(
                when, context, vs, ("8867-4", "Heart rate"), "us-core-heart-rate",
                valueQuantity=_qty(float(rng.randrange(55, 100)), "/min"),
            ),
            self._observation(
                when, context, vs, ("9279-1", "Respiratory rate"), "us-core-respiratory-rate",
                valueQuantity=_qty(float(rng.randrange(12, 20)), "/min"),
            ),
        ]  # fmt: skip
        if age >= 3:
            components = [
                {
                    "code": _cc(LOINC, "8462-4", "Diastolic Blood Pressure"),
                    "valueQuantity": _qty(float(rng.randrange(65, 95)), "mm[Hg]"),
                },
                {
                    "code": _cc(LOINC, "8480-6", "Systolic Blood Pressure"),
                    "valueQuantity": _qty(float(rng.randrange(105, 160)), "mm[Hg]"),
                },
            ]
            out.append(
                self._observation(
                    when, context, vs,
                    ("85354-9", "Blood pressure panel with all children optional"),
                    "us-core-blood-pressure", component=components,
                )
            )  # fmt: skip
        return out

    def _panel(
        self, key: str, when: dt.datetime, context: dict[str, Any], prov: _Provider
    ) -> list[dict[str, Any]]:
        report_code, analytes = _PANELS[key]
        observations = []
        for a in analytes:
            value = round(self.rng.uniform(a.low, a.high), a.decimals)
            observations.append(
                self._observation(
                    when, context, "laboratory", a.code, valueQuantity=_qty(float(value), a.unit)
                )
            )
        if report_code is None:
            return observations
        report = {
            "resourceType": "DiagnosticReport",
            "meta": {"profile": [US_CORE + "us-core-diagnosticreport-lab"]},
            "status": "final",
            "category": [
                _cc(
                    "http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory", text=False
                )
            ],
            "code": _cc(LOINC, *report_code),
            **context,
            "effectiveDateTime": _ts(when),
            "issued": _instant(when + dt.timedelta(hours=2)),
            "performer": [_org_ref(prov)],
        }
        return [*observations, report]


def generate_bundle(seed: int, patient_index: int, records: int = 40) -> dict[str, Any]:
    """One patient's Synthea-style transaction Bundle (a JSON dict).

    Holds the Patient, at least ``records`` clinical resources (Encounter, Condition,
    Observation, MedicationRequest, Procedure, DiagnosticReport, Claim) — at most two more,
    since every visit keeps its encounter, claim and diagnosis — and a closing Provenance.
    The same arguments always give the same bundle.
    """
    if records < 1:
        raise ValueError("records must be at least 1")
    b = _Builder(seed, patient_index)
    rng = b.rng
    patient, sex, age, who = b.patient()
    eligible = [
        v for v in _VISITS if (v.sex is None or v.sex == sex) and v.ages[0] <= age <= v.ages[1]
    ]
    weights = [v.weight for v in eligible]
    span_days = max(30, min(age, 10) * 365)
    when = REFERENCE_DATE - dt.timedelta(days=span_days)
    step = span_days / max(records / 4, 1)
    while len(b.entries) - 1 < records:
        visit = rng.choices(eligible, weights)[0]
        when += dt.timedelta(days=rng.uniform(0.5, 1.5) * step, minutes=rng.randrange(600))
        fixed = 2 + (1 if visit.conditions else 0)
        budget = records - (len(b.entries) - 1) - fixed
        b.visit(visit, when, patient, who, age, budget)
    prov = b.providers[0]
    b.add(
        {
            "resourceType": "Provenance",
            "meta": {"profile": [US_CORE + "us-core-provenance"]},
            "target": [{"reference": e["fullUrl"]} for e in b.entries],
            "recorded": _instant(REFERENCE_DATE),
            "agent": [
                {
                    "type": _cc(
                        "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "author",
                        "Author",
                    ),
                    "who": _doc_ref(prov),
                    "onBehalfOf": _org_ref(prov),
                }
            ],
        }
    )
    # A JSON round trip so that no two places in the result share a dict (the builder reuses
    # reference objects): callers may edit one resource without changing another.
    return _fresh({"resourceType": "Bundle", "type": "transaction", "entry": b.entries})


def patient_id(bundle: Mapping[str, Any]) -> str:
    """The id of the Patient a generated bundle is about (its one Patient entry)."""
    return next(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )


def _fresh(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(doc))


def generate_bundles(seed: int, patients: int, records: int = 40) -> Iterator[dict[str, Any]]:
    """``patients`` bundles: ``generate_bundle(seed, i, records)`` for i in 0..patients-1."""
    for i in range(patients):
        yield generate_bundle(seed, i, records)


def _relative_references(node: Any, urls: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _relative_references(v, urls) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in urls:
            out["reference"] = urls[ref]
        return out
    if isinstance(node, list):
        return [_relative_references(v, urls) for v in node]
    return node


def generate_ndjson(
    seed: int, patients: int, records: int = 40, *, directory: bool = True
) -> dict[str, str]:
    """Bulk-export style NDJSON: ``{resourceType: text}``, one resource per line.

    References are relative (``Patient/<id>``), as in a FHIR Bulk Data export (and in
    Synthea's ``bulk_data`` mode); directory resources keep Synthea's conditional
    references. With ``directory``, Organization/Location/Practitioner/PractitionerRole
    files are included.
    """
    files: dict[str, list[str]] = {}

    def emit(resource: dict[str, Any]) -> None:
        line = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        files.setdefault(resource["resourceType"], []).append(line)

    if directory:
        for res in directory_resources(seed):
            emit(res)
    for bundle in generate_bundles(seed, patients, records):
        urls = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle["entry"]
        }
        for entry in bundle["entry"]:
            emit(_relative_references(entry["resource"], urls))
    return {rtype: "\n".join(lines) + "\n" for rtype, lines in files.items()}
