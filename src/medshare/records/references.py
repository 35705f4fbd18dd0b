"""FHIR references in plain resource JSON: parse them and find a resource's patient/encounter.

Works on dicts (the original JSON), so it needs no FHIR model. The reference forms seen in
practice, all accepted:

* relative ``Patient/123`` (optionally ``/_history/2``), absolute
  ``https://server/fhir/Patient/123``;
* ``urn:uuid:…`` / ``urn:oid:…`` — resolved against ``Bundle.entry.fullUrl`` (Synthea
  writes every internal reference this way);
* *conditional* ``Organization?identifier=https://github.com/synthetichealth/synthea|abc``
  and ``Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999`` — Synthea
  points at directory data (organisations, practitioners, locations) this way; they are
  search criteria for the receiving server, not patient references;
* ``#id`` — a contained resource.

Without a bundle a ``urn:uuid:`` names no type, so :func:`patient_reference` accepts it
only from fields that (almost) always hold a patient; given the bundle's resolver it
resolves every reference first (see :mod:`medshare.records.fhir`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

ReferenceKind = Literal["relative", "absolute", "urn", "conditional", "contained", "other"]

_TYPE = r"[A-Z][A-Za-z]+"
_ID = r"[A-Za-z0-9\-.]{1,64}"
_HISTORY = rf"(?:/_history/{_ID})?"
_RELATIVE = re.compile(rf"(?P<type>{_TYPE})/(?P<id>{_ID}){_HISTORY}")
_ABSOLUTE = re.compile(rf"(?P<base>https?://\S+?)/(?P<type>{_TYPE})/(?P<id>{_ID}){_HISTORY}")
_CONDITIONAL = re.compile(rf"(?P<type>{_TYPE})\?(?P<query>\S+)")

# Fields that point at the patient, in the order they are tried. ``patient``/``beneficiary``
# hold only a patient and ``subject`` almost always does (else a Group, Device, Location);
# ``for`` (Task) and ``target`` (Provenance) hold any resource, so an untyped urn there
# needs the bundle to decide.
PATIENT_FIELDS = ("subject", "patient", "beneficiary", "for", "target")
URN_PATIENT_FIELDS = ("subject", "patient", "beneficiary")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed ``Reference.reference`` string. ``type``/``id`` are ``None`` when unknown."""

    raw: str
    kind: ReferenceKind
    type: str | None = None
    id: str | None = None
    query: str | None = None

    @property
    def is_conditional(self) -> bool:
        return self.kind == "conditional"

    @property
    def identifier(self) -> tuple[str | None, str] | None:
        """For ``Type?identifier=system|value``: ``(system, value)`` (system may be None)."""
        if self.query is None:
            return None
        params = dict(parse_qsl(self.query, keep_blank_values=True))
        token = params.get("identifier")
        if token is None:
            return None
        system, sep, value = token.partition("|")
        return (system or None, value) if sep else (None, token)

    @property
    def relative(self) -> str | None:
        """``Type/id`` for relative and absolute references."""
        return f"{self.type}/{self.id}" if self.type and self.id else None


# Maps a reference to ``(resourceType, key)`` of the resource it names, or ``None``.
Resolver = Callable[[Reference], tuple[str, str] | None]


def parse_reference(value: str) -> Reference:
    """Classify a reference string; never raises for a string (unknown forms are ``other``)."""
    if value.startswith("#"):
        return Reference(value, "contained", id=value[1:] or None)
    if value.startswith(("urn:uuid:", "urn:oid:")):
        return Reference(value, "urn")
    if m := _CONDITIONAL.fullmatch(value):
        return Reference(value, "conditional", type=m["type"], query=m["query"])
    if m := _RELATIVE.fullmatch(value):
        return Reference(value, "relative", type=m["type"], id=m["id"])
    if m := _ABSOLUTE.fullmatch(value):
        return Reference(value, "absolute", type=m["type"], id=m["id"])
    return Reference(value, "other")


def _references(value: Any) -> Iterator[Reference]:
    """The parsed references in a Reference or a list of them; a ``Reference.type`` types an
    otherwise untyped reference (``{"reference": "urn:uuid:…", "type": "Patient"}``)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Mapping) and isinstance(item.get("reference"), str):
            ref = parse_reference(item["reference"])
            declared = item.get("type")
            if ref.type is None and isinstance(declared, str):
                ref = Reference(ref.raw, ref.kind, type=declared, id=ref.id, query=ref.query)
            yield ref


def _get_path(resource: Mapping[str, Any], path: tuple[str, ...]) -> Iterator[Any]:
    """Values at a dotted path, flattening lists at every step."""
    current: list[Any] = [resource]
    for step in path:
        nxt: list[Any] = []
        for node in current:
            if isinstance(node, Mapping) and step in node:
                value = node[step]
                nxt.extend(value if isinstance(value, list) else [value])
        current = nxt
    return iter(current)


def patient_candidates(resource: Mapping[str, Any]) -> list[tuple[str, Reference]]:
    """Every reference in a patient field as ``(field, parsed)``, in field order."""
    return [(field, ref) for field in PATIENT_FIELDS for ref in _references(resource.get(field))]


def patient_reference(resource: Mapping[str, Any], resolve: Resolver | None = None) -> str | None:
    """The key or reference naming this resource's patient, or ``None``.

    A Patient names itself (``Patient/<id>``). Otherwise the patient fields are tried in
    order; with ``resolve`` (a bundle's resolver) a reference that resolves gives the
    target's key if the target is a Patient and is passed over if it is not (a Group
    subject). An unresolved reference counts if it is typed ``Patient`` (relative,
    absolute, or conditional ``Patient?…``) or is an untyped ``urn:`` in ``subject``,
    ``patient`` or ``beneficiary``. Conditional references to other types
    (``Practitioner?identifier=…``) never count.
    """
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and rid else None
    for field, ref in patient_candidates(resource):
        target = resolve(ref) if resolve is not None else None
        if target is not None:
            if target[0] == "Patient":
                return target[1]
            continue
        if ref.type == "Patient":
            return ref.raw
        if ref.type is None and ref.kind == "urn" and field in URN_PATIENT_FIELDS:
            return ref.raw
    return None


ENCOUNTER_PATHS: tuple[tuple[str, ...], ...] = (
    ("encounter",),  # Condition, Observation, Procedure, MedicationRequest, DiagnosticReport…
    ("context",),  # MedicationAdministration, MedicationDispense (R4: Reference)
    ("context", "encounter"),  # DocumentReference.context.encounter[]
    ("item", "encounter"),  # Claim.item[].encounter[], ExplanationOfBenefit.item[].encounter[]
)


def encounter_candidates(resource: Mapping[str, Any]) -> list[Reference]:
    """References that may name the encounter a resource was recorded in."""
    return [
        ref
        for path in ENCOUNTER_PATHS
        for value in _get_path(resource, path)
        for ref in _references(value)
        if ref.type in (None, "Encounter") and ref.kind != "contained"
    ]


def encounter_reference(resource: Mapping[str, Any], resolve: Resolver | None = None) -> str | None:
    """The key or reference naming the Encounter a resource was recorded in, or ``None``.

    Same rules as :func:`patient_reference`: a resolved target must be an Encounter; an
    unresolved reference counts if typed ``Encounter`` or an untyped ``urn:``.
    """
    for ref in encounter_candidates(resource):
        target = resolve(ref) if resolve is not None else None
        if target is not None:
            if target[0] == "Encounter":
                return target[1]
            continue
        if ref.type == "Encounter" or ref.kind == "urn":
            return ref.raw
    return None


def unresolved_urns(resource: Mapping[str, Any], resolve: Resolver) -> list[tuple[str, str]]:
    """``(field, urn)`` for each ``urn:`` in a patient or encounter field that ``resolve``
    cannot find (Provenance ``target`` lists are exempt: they may point outside)."""
    refs = [(f, r) for f, r in patient_candidates(resource) if f != "target"]
    refs += [("encounter", r) for r in encounter_candidates(resource)]
    return [(f, r.raw) for f, r in refs if r.kind == "urn" and resolve(r) is None]
