"""Which department a clinical resource belongs to — and why.

Every decision is a :class:`Decision` ``(code, reason, basis)``: the department code from
the :class:`~medshare.records.departments.Taxonomy` and a sentence the UI can show. The
order (see ``docs/classification.md``):

1. **Encounter facts** (for an Encounter): ``serviceType`` → ``type`` → ``location``
   (hospital-configured location/organisation references, or the Location's ``type``) →
   ``serviceProvider`` (configured references) → ``class`` (only ``EMER`` decides; inpatient
   or ambulatory alone says nothing about the department). Codes from our own CodeSystem
   (:data:`~medshare.records.departments.CODESYSTEM_URL`) are taken as they are; SNOMED CT
   specialties/encounter types and HL7 codes go through the rules table.
2. **Inheritance**: a resource recorded in an Encounter (``encounter``, ``context``,
   ``item.encounter``) takes that encounter's department, unless the encounter itself only
   got the default.
3. **Clinical codes**: ``code`` then ``reasonCode`` (Condition, Procedure, Encounter reasons,
   MedicationRequest reasons…) through the SNOMED CT table and ICD-10 prefixes (longest
   prefix wins: ``I63`` → ``I6`` cerebrovascular → neurology before ``I`` → cardiology).
4. **The hospital default** (``02`` general practice unless configured).

The rules are data (``data/classification.json``); a hospital overrides rows with its own
file in the same format through :meth:`Rules.merged`. Directory data — Organization,
Practitioner, PractitionerRole, Location, Medication, Device without a patient … — is not a
patient record and is never classified (:func:`is_patient_record`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from medshare.records import references as _refs
from medshare.records.departments import CODESYSTEM_URL, Taxonomy
from medshare.records.references import parse_reference

if TYPE_CHECKING:
    from medshare.records.fhir import Resource

__all__ = [
    "DIRECTORY_TYPES",
    "Classifier",
    "Decision",
    "Rule",
    "Rules",
    "RulesError",
    "is_patient_record",
    "patient_reference",
]

Basis = Literal["encounter", "inherited", "clinical-code", "default"]

# Resources that describe the care system, not a patient: shared catalogue/directory data.
DIRECTORY_TYPES = frozenset(
    {
        "Organization",
        "OrganizationAffiliation",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "HealthcareService",
        "Endpoint",
        "Medication",
        "MedicationKnowledge",
        "Substance",
        "Device",  # unless it names a patient (Synthea's implanted devices do)
        "DeviceDefinition",
        "Group",
        "Schedule",
        "Slot",
        "Bundle",
        "Binary",
        "OperationOutcome",
        "Parameters",
        "CodeSystem",
        "ValueSet",
        "ConceptMap",
        "NamingSystem",
        "StructureDefinition",
        "CapabilityStatement",
        "OperationDefinition",
        "SearchParameter",
        "ImplementationGuide",
        "Questionnaire",
        "PlanDefinition",
        "ActivityDefinition",
        "Library",
        "Measure",
        "Subscription",
    }
)
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://loinc.org": "LOINC",
    _ACT_CODE: "v3-ActCode",
    "http://terminology.hl7.org/CodeSystem/v3-RoleCode": "v3-RoleCode",
    CODESYSTEM_URL: "medshare department",
}
_CLINICAL_FIELDS = ("code", "reasonCode")


class RulesError(ValueError):
    """A classification rules file that is malformed or names an unknown department."""


@dataclass(frozen=True)
class Decision:
    """A department ``code``, a human-readable ``reason``, and which step decided."""

    code: str
    reason: str
    basis: Basis

    def __iter__(self) -> Iterator[str]:
        """``code, reason = decision`` unpacks like a pair."""
        return iter((self.code, self.reason))


@dataclass(frozen=True)
class Rule:
    """One row of a rules table: the department and the code's display (used in reasons)."""

    department: str
    display: str


def _as_json(source: Mapping[str, Any] | str | bytes) -> Mapping[str, Any]:
    doc = json.loads(source) if isinstance(source, str | bytes) else source
    if not isinstance(doc, Mapping):
        raise RulesError("rules must be a JSON object")
    return doc


@dataclass(frozen=True)
class Rules:
    """Classification tables (immutable). Build with :meth:`default` / :meth:`from_json`."""

    default: str = "02"
    system_aliases: Mapping[str, str] = field(default_factory=dict)
    encounter_classes: Mapping[tuple[str, str], Rule] = field(default_factory=dict)
    encounter_codes: Mapping[tuple[str, str], Rule] = field(default_factory=dict)
    clinical_codes: Mapping[tuple[str, str], Rule] = field(default_factory=dict)
    clinical_prefixes: Mapping[str, Mapping[str, Rule]] = field(default_factory=dict)
    references: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def default_rules(cls) -> Rules:
        """The packaged ``data/classification.json``."""
        return _default_rules()

    @classmethod
    def from_json(cls, source: Mapping[str, Any] | str | bytes) -> Rules:
        """Rules from a document in the ``medshare-classification/1`` format."""
        return cls().merged(source)

    def merged(self, source: Mapping[str, Any] | str | bytes) -> Rules:
        """These rules with a hospital's overrides on top (same format, every key optional).

        A row for an existing ``(system, code)``, prefix or reference replaces it;
        ``default`` replaces the default department.
        """
        doc = _as_json(source)
        fmt = doc.get("format", "medshare-classification/1")
        if fmt != "medshare-classification/1":
            raise RulesError(f"unknown rules format {fmt!r}")
        try:
            aliases = {**self.system_aliases, **doc.get("system_aliases", {})}
            tables = {}
            for name in ("encounter_classes", "encounter_codes", "clinical_codes"):
                table = dict(getattr(self, name))
                for row in doc.get(name, ()):
                    key = (aliases.get(row["system"], row["system"]), row["code"])
                    table[key] = Rule(row["department"], row.get("display", row["code"]))
                tables[name] = table
            prefixes = {s: dict(t) for s, t in self.clinical_prefixes.items()}
            for row in doc.get("clinical_prefixes", ()):
                system = aliases.get(row["system"], row["system"])
                prefix = _normalise(row["prefix"])
                prefixes.setdefault(system, {})[prefix] = Rule(
                    row["department"], row.get("display", prefix)
                )
            references = dict(self.references)
            for row in doc.get("references", ()):
                references[row["reference"]] = row["department"]
            default = doc.get("default", self.default)
        except (KeyError, TypeError, AttributeError) as exc:
            raise RulesError(f"malformed rules row ({type(exc).__name__}: {exc})") from None
        return Rules(
            default=default,
            system_aliases=aliases,
            encounter_classes=tables["encounter_classes"],
            encounter_codes=tables["encounter_codes"],
            clinical_codes=tables["clinical_codes"],
            clinical_prefixes=prefixes,
            references=references,
        )

    def departments(self) -> set[str]:
        """Every department code the rules can return."""
        rows = [
            *self.encounter_classes.values(),
            *self.encounter_codes.values(),
            *self.clinical_codes.values(),
            *(r for t in self.clinical_prefixes.values() for r in t.values()),
        ]
        return {self.default, *self.references.values(), *(r.department for r in rows)}

    def check(self, taxonomy: Taxonomy) -> None:
        """Raise :class:`RulesError` if any rule names a department not in ``taxonomy``."""
        unknown = sorted(c for c in self.departments() if c not in taxonomy)
        if unknown:
            raise RulesError(f"rules name unknown department code(s): {', '.join(unknown)}")


@cache
def _default_rules() -> Rules:
    text = resources.files("medshare.records").joinpath("data", "classification.json")
    return Rules.from_json(text.read_text(encoding="utf-8"))


def _normalise(code: str) -> str:
    return code.replace(".", "").replace(" ", "").upper()


def _codings(value: Any) -> Iterator[Mapping[str, Any]]:
    """Codings of a CodeableConcept, a list of them, or a bare Coding."""
    for concept in value if isinstance(value, list) else [value]:
        if not isinstance(concept, Mapping):
            continue
        if "coding" in concept:
            for coding in concept.get("coding") or ():
                if isinstance(coding, Mapping):
                    yield coding
        elif "code" in concept:
            yield concept


def _resource_json(resource: Resource | Mapping[str, Any]) -> Mapping[str, Any]:
    return resource if isinstance(resource, Mapping) else resource.original


def is_patient_record(resource: Resource | Mapping[str, Any]) -> bool:
    """True for a resource in a patient's compartment: the Patient, or anything naming one.

    Directory and catalogue types (:data:`DIRECTORY_TYPES`) are never patient records,
    except a Device with a ``patient``. For a parsed :class:`~medshare.records.fhir.Resource`
    the bundle-resolved :attr:`~medshare.records.fhir.Resource.patient` is used.
    """
    doc = _resource_json(resource)
    rtype = doc.get("resourceType")
    if rtype == "Device":
        return isinstance(doc.get("patient"), Mapping)
    if rtype in DIRECTORY_TYPES:
        return False
    if rtype == "Patient":
        return True
    return patient_reference(resource) is not None


def patient_reference(resource: Resource | Mapping[str, Any]) -> str | None:
    """The patient a resource belongs to (``Patient/<id>``, or the reference as written).

    Reads ``subject``, ``patient``, ``beneficiary``, ``for`` and Provenance ``target``; a
    Patient names itself. For a parsed :class:`~medshare.records.fhir.Resource` this is its
    bundle-resolved :attr:`~medshare.records.fhir.Resource.patient`. Conditional references
    to directory data (``Practitioner?identifier=…``) are never patient references.
    """
    if isinstance(resource, Mapping):
        return _refs.patient_reference(resource)
    return resource.patient


class Classifier:
    """Assigns departments with a hospital's :class:`Rules` over its :class:`Taxonomy`."""

    def __init__(
        self,
        taxonomy: Taxonomy | None = None,
        rules: Rules | None = None,
        *,
        default: str | None = None,
    ) -> None:
        self.taxonomy = taxonomy if taxonomy is not None else Taxonomy.default()
        self.rules = rules if rules is not None else Rules.default_rules()
        self.default = default if default is not None else self.rules.default
        if self.default not in self.taxonomy:
            raise RulesError(f"default department {self.default} is not in the taxonomy")
        self.rules.check(self.taxonomy)

    # -- helpers -------------------------------------------------------------------------

    def _label(self, code: str) -> str:
        return f"{code} {self.taxonomy.get(code).name_en}"

    def _system(self, system: str) -> str:
        return self.rules.system_aliases.get(system, system)

    def _lookup(
        self, codings: Iterable[Mapping[str, Any]], table: Mapping[tuple[str, str], Rule]
    ) -> tuple[str, str] | None:
        """(department, description) for the first coding our CodeSystem or ``table`` knows."""
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            if system == CODESYSTEM_URL and code in self.taxonomy:
                return code, f"medshare department {code}"
            row = table.get((self._system(system), code))
            if row is not None:
                name = _SYSTEM_NAMES.get(self._system(system), system)
                return row.department, f"{name} {code} ({row.display})"
        return None

    def _prefix_lookup(self, codings: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            system = self._system(system)
            table = self.rules.clinical_prefixes.get(system)
            if not table:
                continue
            norm = _normalise(code)
            for n in range(len(norm), 0, -1):
                row = table.get(norm[:n])
                if row is not None:
                    name = _SYSTEM_NAMES.get(system, system)
                    return row.department, f"{name} {code} in {norm[:n]}* ({row.display})"
        return None

    def _decide(self, code: str, why: str, basis: Basis) -> Decision:
        if code not in self.taxonomy:
            raise RulesError(f"rule maps to unknown department {code}: {why}")
        return Decision(code, f"{why} → {self._label(code)}", basis)

    def _reference_department(self, ref: Mapping[str, Any]) -> tuple[str, str] | None:
        raw = ref.get("reference")
        if not isinstance(raw, str):
            return None
        parsed = parse_reference(raw)
        keys = [raw, parsed.relative]
        if ident := parsed.identifier:
            keys.append(f"{ident[0] or ''}|{ident[1]}")
        for key in keys:
            if key and key in self.rules.references:
                return self.rules.references[key], f"configured reference {key}"
        return None

    # -- steps ---------------------------------------------------------------------------

    def encounter_decision(
        self,
        encounter: Mapping[str, Any],
        locations: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Decision | None:
        """Step 1 for an Encounter's own facts, or ``None`` if they don't decide.

        ``locations`` maps a reference string (``Location/1``, ``urn:uuid:…``, a
        conditional reference) to the Location resource, whose ``type`` is then consulted.
        """
        table = self.rules.encounter_codes
        for fld in ("serviceType", "type"):
            hit = self._lookup(_codings(encounter.get(fld)), table)
            if hit:
                return self._decide(hit[0], f"Encounter.{fld} {hit[1]}", "encounter")
        for entry in encounter.get("location") or ():
            ref = entry.get("location") if isinstance(entry, Mapping) else None
            if not isinstance(ref, Mapping):
                continue
            hit = self._reference_department(ref)
            if hit:
                return self._decide(hit[0], f"Encounter.location {hit[1]}", "encounter")
            loc = (locations or {}).get(ref.get("reference", ""))
            if loc is not None:
                hit = self._lookup(_codings(loc.get("type")), table)
                if hit:
                    return self._decide(hit[0], f"Encounter.location type {hit[1]}", "encounter")
        provider = encounter.get("serviceProvider")
        if isinstance(provider, Mapping) and (hit := self._reference_department(provider)):
            return self._decide(hit[0], f"Encounter.serviceProvider {hit[1]}", "encounter")
        hit = self._lookup(_codings(encounter.get("class")), self.rules.encounter_classes)
        if hit:
            return self._decide(hit[0], f"Encounter.class {hit[1]}", "encounter")
        return None

    def clinical_decision(self, resource: Mapping[str, Any]) -> Decision | None:
        """Step 3: the resource's ``code``, then ``reasonCode``, through the code tables."""
        rtype = resource.get("resourceType", "Resource")
        for fld in _CLINICAL_FIELDS:
            codings = list(_codings(resource.get(fld)))
            hit = self._lookup(codings, self.rules.clinical_codes) or self._prefix_lookup(codings)
            if hit:
                return self._decide(hit[0], f"{rtype}.{fld} {hit[1]}", "clinical-code")
        return None

    def default_decision(self) -> Decision:
        return self._decide(
            self.default, "no department-specific code; hospital default", "default"
        )

    # -- entry points ----------------------------------------------------------------------

    def classify(
        self,
        resource: Resource | Mapping[str, Any],
        *,
        encounter: Decision | None = None,
        locations: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Decision:
        """The department of one patient record.

        ``encounter`` is the decision already made for the Encounter this resource was
        recorded in (see :meth:`classify_all`, which wires it up). Raises ``ValueError`` for
        directory data.
        """
        doc = _resource_json(resource)
        if not is_patient_record(resource):
            raise ValueError(f"{doc.get('resourceType')} is directory data, not a patient record")
        if doc.get("resourceType") == "Encounter":
            decided = self.encounter_decision(doc, locations)
            if decided:
                return decided
        elif encounter is not None and encounter.basis != "default":
            if isinstance(resource, Mapping):
                enc_ref = _refs.encounter_reference(doc)
            else:
                enc_ref = resource.encounter
            why = f"inherited from {enc_ref or 'its Encounter'}: {encounter.reason}"
            return Decision(encounter.code, why, "inherited")
        return self.clinical_decision(doc) or self.default_decision()

    def classify_all(self, resources: Iterable[Resource]) -> list[tuple[Resource, Decision]]:
        """Classify the patient records among ``resources`` (a bundle or NDJSON load).

        Encounters are decided first so that what was recorded in them can inherit;
        Location resources in the input are used for ``Encounter.location`` types. Directory
        data is skipped. The result keeps input order.
        """
        items = list(resources)
        locations: dict[str, Mapping[str, Any]] = {}
        for res in items:
            if res.resource_type == "Location":
                for key in _location_keys(res):
                    locations[key] = res.original
        decided: dict[str, Decision] = {}
        for res in items:
            if res.resource_type == "Encounter" and res.key and is_patient_record(res):
                decided[res.key] = self.classify(res, locations=locations)
        out: list[tuple[Resource, Decision]] = []
        for res in items:
            if not is_patient_record(res):
                continue
            if res.resource_type == "Encounter" and res.key in decided:
                out.append((res, decided[res.key]))
                continue
            enc = decided.get(res.encounter) if res.encounter else None
            out.append((res, self.classify(res, encounter=enc, locations=locations)))
        return out


def _location_keys(res: Resource) -> Iterator[str]:
    """Reference strings under which an Encounter may point at this Location."""
    if res.key:
        yield res.key
    if res.full_url:
        yield res.full_url
    for ident in res.original.get("identifier") or ():
        if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
            system = ident.get("system")
            token = f"{system}|{ident['value']}" if isinstance(system, str) else ident["value"]
            yield f"Location?identifier={token}"
