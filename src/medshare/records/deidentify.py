"""Research derivatives: de-identified FHIR R4 resources (DESIGN §5, research area).

A research study never receives a patient's record. It receives a *derivative* built by
the data custodian with the study's secret: identifiers removed, dates moved, the patient
renamed by a per-study pseudonym. :func:`deidentify` makes one; :func:`deidentify_bundle`
does a patient's bundle so that references inside it still resolve.

Reference points
================

* **HIPAA Safe Harbor** (45 CFR §164.514(b)(2)) is the checklist the rules follow: names,
  telecom, every identifier (record, account, plan, licence, device numbers), photos, URLs,
  street/city/postal code and all ages over 89 are removed or grouped.
  **One deliberate departure**: Safe Harbor keeps only the *year* of a date; we keep full
  dates moved by a secret per-patient, per-study offset, because intervals (days between
  admission and discharge, dose timing) are what research needs. A shifted date is not a
  Safe Harbor date; the offset's secrecy and the expert-determination style argument
  ("dates are shifted, the shift is unknown to the recipient") carry that part. A study that
  needs strict Safe Harbor must truncate the output dates to years.
* **PIPL "anonymised" (匿名化, Art. 73(4))** — information that cannot identify a specific
  person *and cannot be restored*. For the research recipient, who never holds
  ``Study.secret``, the derivative is meant to meet that bar. For the custodian, who can
  recompute every pseudonym and offset, it is only *de-identified* (去标识化, Art. 73(3)):
  PIPL treats it as personal information as long as the secret exists. Destroying the
  study secret when the derivative is final removes the custodian's ability to re-link.

What is done, to every resource
===============================

* **Dropped anywhere in the tree**: ``identifier`` and every ``…Identifier`` element,
  ``telecom``, ``photo``, ``contact``, ``extension`` (Synthea puts mothersMaidenName,
  birthPlace, geolocation, race/ethnicity there — we cannot tell identifying extensions
  from harmless ones, so none survive), primitive extensions (``_birthDate`` …),
  ``signature``, ``presentedForm`` and ``valueAttachment`` (documents and PDFs quote names).
* **Free text** is dropped, coded values are kept: ``text`` (the Narrative *and*
  ``CodeableConcept.text``, ``Dosage.text`` …), ``note``, ``comment``, ``description`` when
  it is a string, ``patientInstruction``, ``conclusion``, ``summary``, ``valueString``,
  ``valueMarkdown``, ``contentString``, and ``display`` of References (a subject's display
  is the patient's name; a performer's is a clinician's). ``Coding.display`` stays: it is the
  code system's label, not something a person typed. An element left with nothing but its
  free text (Synthea's ``Goal.description`` is text only; ``Claim.insurance.coverage`` is
  display only) becomes ``{"text": "[redacted]"}`` / ``{"display": "[redacted]"}`` so that
  required elements stay present.
* **Attachments** keep only ``contentType`` and ``language`` (no data, url, title, hash).
* **Addresses** keep only ``state`` (province) and ``country``.
* **Resource-level names** of people, places and groups (``name``/``alias`` on Patient,
  Practitioner, RelatedPerson, Person, Organization, Location, HealthcareService, Endpoint,
  FamilyMemberHistory, Group, CareTeam) are dropped.
* ``meta`` keeps only ``profile`` (versionId, lastUpdated, source, tags and security labels
  go: they name servers and edit times).
* **Dates**: every string value that is a FHIR ``date``, ``dateTime`` or ``instant`` —
  Periods, ``effectiveDateTime``, ``issued``, ``birthDate``, ``Timing.event`` … — moves by
  :func:`date_shift_days` whole days. Precision is kept exactly: the time of day, seconds,
  fraction and zone suffix are copied unchanged (whole days, so no DST arithmetic).
  A *year-month* value is moved by shifting the 15th of that month and keeping the
  resulting year-month (the month may change by one, like a day-precision date would).
  A *year-only* value is kept as is — Safe Harbor allows years, and a ±180-day shift of an
  unknown day cannot be expressed in a year without inventing a precision.
  Values under ``code``, ``system``, ``version``, ``url``, ``reference`` and ``id`` are never
  read as dates.
* **Ages over 89** (Safe Harbor groups them as "90 or older"): a Patient whose age at the
  reference date is ≥ 90 — by the original *or* the shifted birthDate, at the earliest
  possible birth day of a partial date — gets the year-only ``birthDate``
  ``str(reference.year - 91)``: whatever day of that year a reader assumes, the apparent age
  at the reference date is 90 or 91, i.e. the bucket "90+", and all such patients share it.
  The reference date is ``Study.as_of`` (the data-extraction date), or the patient's death
  date if earlier (age at death is what a dead person's record reveals); on the output side
  the shifted death date is used, so birth never follows death. ``Age`` quantities
  (``onsetAge``, ``abatementAge``, ``ageAge``, ``deceasedAge``) of 90 years or more become
  ``≥ 90 a``. Consequence to know: ages at old encounters of a 90+ patient, computed from the
  grouped birth year, come out younger than they were.
* **Ids and references**: the Patient's id becomes :func:`pseudonym`; references to the
  patient — ``Patient/<id>``, ``urn:uuid:<id>``, absolute ``…/Patient/<id>`` and, in a
  bundle, the Patient entry's ``fullUrl`` — become ``Patient/<pseudonym>``. Other resource
  ids become HMAC-derived UUIDs, type-independent so that ``urn:uuid:<id>`` (which names no
  type) and ``<Type>/<id>`` map to the same new id; ``urn:uuid:X`` becomes
  ``urn:uuid:<new X>``. References to *other* patients use their own pseudonyms.
  Conditional references (Synthea's ``Practitioner?identifier=…|<NPI>``) become
  ``<Type>/<HMAC of the whole query>``: the practitioner or site stays groupable inside the
  study but no longer names a directory entry (they are not resolvable in the derivative).
  ``#contained`` references and contained resources' local ids are kept.

What is NOT covered
===================

Free text in elements not listed above (e.g. ``Observation.valueString`` is dropped, but a
``Questionnaire``-specific or profile-specific string element would pass), rare or
unique clinical values (a one-of-a-kind diagnosis, extreme lab values, a rare procedure),
combinations of quasi-identifiers (sex, province, shifted dates, site) — k-anonymity is not
checked here; ``Range``-typed ages; coded values that are themselves identifying (a code
system used for employer or address codes). Resources with a ``modifierExtension`` are
refused (ValueError): it changes the meaning of its element, so it can be neither kept
(unknown content) nor silently dropped. Bundles go through :func:`deidentify_bundle`.

Everything here is a pure function of its arguments except one default: when
``Study.as_of`` is ``None`` the 90+ rule uses today's UTC date. Pass ``as_of`` for
reproducible derivatives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medshare.records import fhir
from medshare.records.references import parse_reference

__all__ = [
    "MAX_SHIFT_DAYS",
    "REDACTED",
    "Study",
    "date_shift_days",
    "deidentify",
    "deidentify_bundle",
    "pseudonym",
]

SECRET_BYTES = 32
MAX_SHIFT_DAYS = 180
GROUPED_AGE = 90  # Safe Harbor: "all ages over 89" are aggregated into one category
REDACTED = "[redacted]"
_DOMAIN = b"medshare/deidentify/v1"
_UCUM = "http://unitsofmeasure.org"

# Elements dropped wherever they occur (see the module docstring for why).
_DROPPED = frozenset(
    {
        "identifier",
        "telecom",
        "photo",
        "contact",
        "extension",
        "signature",
        "presentedForm",
        "valueAttachment",
        # free text
        "text",
        "note",
        "comment",
        "patientInstruction",
        "conclusion",
        "summary",
        "valueString",
        "valueMarkdown",
        "contentString",
        # member and authorisation numbers kept as plain strings
        "subscriberId",
        "preAuthRef",
    }
)
_NAMED_TYPES = frozenset(
    {
        "Patient",
        "Practitioner",
        "RelatedPerson",
        "Person",
        "Organization",
        "Location",
        "HealthcareService",
        "Endpoint",
        "FamilyMemberHistory",
        "Group",
        "CareTeam",
    }
)
_NOT_DATES = frozenset({"code", "system", "version", "url", "reference", "id", "div", "unit"})
_ATTACHMENT_KEYS = frozenset({"attachment", "contentAttachment"})
_AGE_KEYS = frozenset({"onsetAge", "abatementAge", "ageAge", "deceasedAge"})
_YEARS_PER_UNIT = {"a": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25}
# FHIR's date/dateTime/instant shape (month 01-12, day 01-31); the calendar is checked on use.
_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>0[1-9]|1[0-2])(?:-(?P<day>0[1-9]|[12]\d|3[01])"
    r"(?P<time>T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@dataclass(frozen=True)
class Study:
    """One research study as the data custodian sees it.

    ``secret`` (32 bytes, from ``os.urandom``) is the custodian's per-study key: every
    pseudonym and date offset is an HMAC under it, so a recipient without it can neither
    link a derivative back to a patient nor link two studies' derivatives of one patient.
    It is never written into any output and is hidden from ``repr``. ``as_of`` is the
    data-extraction date the 90+ age rule measures ages at (``None``: today, UTC).
    """

    study_id: str
    secret: bytes = field(repr=False)
    as_of: dt.date | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.study_id, str) or not self.study_id:
            raise ValueError("study_id must be a non-empty string")
        if not isinstance(self.secret, bytes):
            raise TypeError(f"secret must be bytes, got {type(self.secret).__name__}")
        if len(self.secret) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(self.secret)}")
        if self.as_of is not None and (
            not isinstance(self.as_of, dt.date) or isinstance(self.as_of, dt.datetime)
        ):
            raise TypeError("as_of must be a datetime.date (or None)")


# -- keyed derivations ---------------------------------------------------------------------


def _mac(study: Study, label: str, value: str) -> bytes:
    """HMAC-SHA256 under the study secret of (domain, label, study id, value).

    Each part is length-prefixed so that no two different inputs share a message; the
    study id is bound too, so two studies that were (wrongly) given one secret still get
    unrelated pseudonyms.
    """
    parts = (_DOMAIN, label.encode(), study.study_id.encode(), value.encode())
    message = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    return hmac.new(study.secret, message, hashlib.sha256).digest()


def _as_uuid(digest: bytes) -> str:
    """A version-4-shaped UUID from 16 HMAC bytes: valid as a FHIR id and in ``urn:uuid:``."""
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _check_patient_id(patient_id: str) -> None:
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("patient_id must be a non-empty string")


def pseudonym(study: Study, patient_id: str) -> str:
    """The patient's id in ``study``: a UUID derived by HMAC, stable within the study,
    unrelated across studies, and not invertible without ``study.secret``."""
    _check_patient_id(patient_id)
    return _as_uuid(_mac(study, "patient", patient_id))


def _pseudo_id(study: Study, original: str) -> str:
    """New id for any other resource id (or reference string), type-independent."""
    return _as_uuid(_mac(study, "resource", original))


def date_shift_days(study: Study, patient_id: str) -> int:
    """The patient's date offset in ``study``: in [-180, 180], never 0.

    One offset per patient keeps every interval inside the patient's record exact; a
    different secret per study makes offsets unrelated across studies, so two derivatives
    cannot be aligned to recover the true dates. Zero is excluded: it would publish the
    true dates of 1 patient in 361.
    """
    _check_patient_id(patient_id)
    k = int.from_bytes(_mac(study, "date-shift", patient_id)[:8], "big") % (2 * MAX_SHIFT_DAYS)
    return -(k + 1) if k < MAX_SHIFT_DAYS else k - MAX_SHIFT_DAYS + 1


# -- per-call context ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    study: Study
    patient_id: str
    pseudonym: str
    shift: int
    as_of: dt.date
    patient_refs: frozenset[str]


def _context(study: Study, patient_id: str, extra_refs: frozenset[str] = frozenset()) -> _Context:
    if not isinstance(study, Study):
        raise TypeError(f"study must be a Study, got {type(study).__name__}")
    _check_patient_id(patient_id)
    as_of = study.as_of or dt.datetime.now(dt.UTC).date()
    refs = frozenset({f"Patient/{patient_id}", f"urn:uuid:{patient_id}"}) | extra_refs
    return _Context(
        study=study,
        patient_id=patient_id,
        pseudonym=pseudonym(study, patient_id),
        shift=date_shift_days(study, patient_id),
        as_of=as_of,
        patient_refs=refs,
    )


# -- dates ---------------------------------------------------------------------------------


def _shift_day(day: dt.date, days: int, original: str) -> dt.date:
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        raise ValueError(f"date {original!r} cannot be shifted by {days} days") from None


def _parse_day(m: re.Match[str], original: str) -> dt.date:
    try:
        return dt.date(int(m["year"]), int(m["month"]), int(m["day"] or 15))
    except ValueError:
        raise ValueError(f"{original!r} is not a valid FHIR date") from None


def _shift_date(value: str, days: int) -> str:
    """``value`` moved by ``days`` if it is a FHIR date/dateTime/instant, at its precision."""
    m = _DATE.fullmatch(value)
    if m is None or m["month"] is None:
        return value  # not a date, or year-only (kept: see module docstring)
    moved = _shift_day(_parse_day(m, value), days, value)
    if m["day"] is None:
        return f"{moved.year:04d}-{moved.month:02d}"
    return f"{moved.year:04d}-{moved.month:02d}-{moved.day:02d}{m['time'] or ''}"


def _earliest_day(value: str) -> dt.date | None:
    """The earliest day a (possibly partial) FHIR date can mean: gives the *largest* age."""
    m = _DATE.fullmatch(value)
    if m is None:
        return None
    try:
        return dt.date(int(m["year"]), int(m["month"] or 1), int(m["day"] or 1))
    except ValueError:
        return None


def _day_of(value: Any) -> dt.date | None:
    return _earliest_day(value) if isinstance(value, str) else None


def _age_years(birth: dt.date, at: dt.date) -> int:
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


# -- references ----------------------------------------------------------------------------


def _rewrite_reference(raw: str, ctx: _Context) -> str:
    """The reference string in the derivative (see the module docstring)."""
    if raw in ctx.patient_refs:
        return f"Patient/{ctx.pseudonym}"
    ref = parse_reference(raw)
    study = ctx.study
    if ref.kind == "contained":
        return raw
    if ref.kind in ("relative", "absolute") and ref.type and ref.id:
        if ref.type == "Patient":
            return f"Patient/{pseudonym(study, ref.id)}"
        return f"{ref.type}/{_pseudo_id(study, ref.id)}"
    if ref.kind == "urn":
        return f"urn:uuid:{_pseudo_id(study, raw.removeprefix('urn:uuid:'))}"
    if ref.kind == "conditional" and ref.type:
        ident = ref.identifier
        if ref.type == "Patient" and ident is not None and ident[1] == ctx.patient_id:
            return f"Patient/{ctx.pseudonym}"
        return f"{ref.type}/{_pseudo_id(study, raw)}"
    return f"urn:uuid:{_pseudo_id(study, raw)}"


# -- elements ------------------------------------------------------------------------------


def _address(value: Any) -> Any:
    """Only ``state`` and ``country`` of an Address (or a list of them) survive."""
    if isinstance(value, list):
        kept = [a for a in (_address(v) for v in value) if a]
        return kept or None
    if isinstance(value, Mapping):
        kept = {k: value[k] for k in ("state", "country") if isinstance(value.get(k), str)}
        return kept or None
    return value  # Endpoint.address is a url, not an Address


def _attachment(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return None
    kept = {k: value[k] for k in ("contentType", "language") if k in value}
    return kept or {"title": REDACTED}


def _cap_age(value: Any) -> Any:
    """An ``Age`` of 90 years or more becomes ``>= 90 a`` (the Safe Harbor bucket)."""
    if not isinstance(value, Mapping) or isinstance(value.get("value"), bool):
        return value
    amount = value.get("value")
    unit = value.get("code") if value.get("system", _UCUM) == _UCUM else None
    per = _YEARS_PER_UNIT.get(unit) if isinstance(unit, str) else None
    if not isinstance(amount, int | float) or per is None or amount * per < GROUPED_AGE:
        return value
    return {"value": GROUPED_AGE, "comparator": ">=", "unit": "a", "system": _UCUM, "code": "a"}


def _value(key: str, value: Any, ctx: _Context) -> Any:
    """One element's value in the derivative, or ``None`` to leave it out."""
    if isinstance(value, list):
        kept = [v for v in (_value(key, item, ctx) for item in value) if v is not None]
        return kept or None
    if isinstance(value, Mapping):
        if key == "contained":
            return _resource(value, ctx, contained=True)
        return _element(value, ctx)
    if isinstance(value, str) and key not in _NOT_DATES:
        return _shift_date(value, ctx.shift)
    return value


def _children(obj: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    """The children of a complex element (or resource) with the rules applied to each."""
    if "modifierExtension" in obj:
        raise ValueError(
            "a modifierExtension changes the meaning of its element: it can be neither kept "
            "(unknown content) nor dropped, so this resource cannot be de-identified"
        )
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key.startswith("_") or key in _DROPPED or key.endswith("Identifier"):
            continue
        if key == "description" and isinstance(value, str):
            continue
        if key == "reference" and isinstance(value, str):
            new: Any = _rewrite_reference(value, ctx)
        elif key == "address":
            new = _address(value)
        elif key in _ATTACHMENT_KEYS:
            new = _attachment(value)
        elif key in _AGE_KEYS:
            new = _cap_age(value)
        else:
            new = _value(key, value, ctx)
        if new is not None:
            out[key] = new
    return out


def _element(obj: Mapping[str, Any], ctx: _Context) -> dict[str, Any] | None:
    """A complex element in the derivative; ``None`` if nothing of it may be kept.

    A Reference loses its ``display`` (a Coding, which has ``code``/``system``, keeps its
    label). An element that held only free text becomes a ``[redacted]`` marker rather than
    disappearing, since it may be required (``Goal.description``, ``Claim.insurance.coverage``).
    """
    out = _children(obj, ctx)
    if "display" in out and "code" not in out and "system" not in out:
        del out["display"]
    if out:
        return out
    if isinstance(obj.get("text"), str):
        return {"text": REDACTED}
    if isinstance(obj.get("display"), str):
        return {"display": REDACTED}
    return None


def _grouped_birth_date(resource: Mapping[str, Any], shifted: dict[str, Any], ctx: _Context) -> Any:
    """The Patient's output birthDate: shifted, or the 90+ bucket year."""
    birth, new_birth = _day_of(resource.get("birthDate")), _day_of(shifted.get("birthDate"))
    if birth is None or new_birth is None:
        return shifted.get("birthDate")
    death, new_death = (
        _day_of(resource.get("deceasedDateTime")),
        _day_of(shifted.get("deceasedDateTime")),
    )
    at = min(ctx.as_of, death) if death else ctx.as_of
    new_at = min(ctx.as_of, new_death) if new_death else ctx.as_of
    if _age_years(birth, at) >= GROUPED_AGE or _age_years(new_birth, new_at) >= GROUPED_AGE:
        return f"{new_at.year - GROUPED_AGE - 1:04d}"
    return shifted["birthDate"]


def _resource(obj: Mapping[str, Any], ctx: _Context, *, contained: bool = False) -> dict[str, Any]:
    rtype = obj["resourceType"]
    body = {
        k: v
        for k, v in obj.items()
        if k not in ("resourceType", "id", "meta")
        and not (rtype in _NAMED_TYPES and k in ("name", "alias"))
    }
    out: dict[str, Any] = {"resourceType": rtype}
    rid = obj.get("id")
    if isinstance(rid, str):
        if contained:
            out["id"] = rid  # a local anchor for "#id", meaningful only inside this resource
        elif rtype == "Patient":
            out["id"] = pseudonym(ctx.study, rid)
        else:
            out["id"] = _pseudo_id(ctx.study, rid)
    meta = obj.get("meta")
    if isinstance(meta, Mapping) and meta.get("profile"):
        out["meta"] = {"profile": list(meta["profile"])}
    out |= _children(body, ctx)
    if rtype == "Patient" and "birthDate" in out:
        out["birthDate"] = _grouped_birth_date(obj, out, ctx)
    return out


def _check_input(resource: Mapping[str, Any], patient_id: str) -> None:
    if not isinstance(resource, Mapping):
        raise TypeError(f"resource must be a JSON object, got {type(resource).__name__}")
    if resource.get("resourceType") == "Bundle":
        raise ValueError("a Bundle is de-identified with deidentify_bundle(), not deidentify()")
    fhir.parse_resource(resource)
    rid = resource.get("id")
    if resource.get("resourceType") == "Patient" and rid is not None and rid != patient_id:
        raise ValueError(
            f"Patient/{rid} is not patient {patient_id!r}: its dates would be shifted by "
            "another patient's offset"
        )


def _deidentify(resource: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    out = _resource(resource, ctx)
    fhir.parse_resource(out, path=f"de-identified {out['resourceType']}")
    return out


def deidentify(resource: Mapping[str, Any], study: Study, patient_id: str) -> dict[str, Any]:
    """The research derivative of one FHIR R4 resource of patient ``patient_id``.

    ``resource`` is a resource's JSON (not a Bundle; see :func:`deidentify_bundle`); it is
    validated first and never changed. The result is a new dict, validated through
    :func:`medshare.records.fhir.parse_resource`. Raises :class:`~medshare.records.fhir.FhirError`
    (a ``ValueError``) for input that is not FHIR, ``ValueError`` for a Patient other than
    ``patient_id`` or a ``modifierExtension``.
    """
    ctx = _context(study, patient_id)
    _check_input(resource, patient_id)
    return _deidentify(resource, ctx)


def _new_full_url(full_url: Any, out: Mapping[str, Any], ctx: _Context, index: int) -> str:
    if isinstance(full_url, str) and full_url in ctx.patient_refs:
        return f"urn:uuid:{ctx.pseudonym}"
    if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        return f"urn:uuid:{_pseudo_id(ctx.study, full_url.removeprefix('urn:uuid:'))}"
    if "id" in out:
        return f"urn:uuid:{out['id']}"
    return f"urn:uuid:{_pseudo_id(ctx.study, full_url or f'Bundle.entry[{index}]')}"


def deidentify_bundle(bundle: Mapping[str, Any], study: Study, patient_id: str) -> dict[str, Any]:
    """The derivative of one patient's Bundle, with its internal references still resolving.

    Every resource goes through :func:`deidentify`'s rules; the Patient entry's ``fullUrl``
    also counts as a reference to the patient. New ``fullUrl`` s follow the reference
    mapping (``urn:uuid:X`` → ``urn:uuid:<new X>``). Transaction and batch entries get
    ``PUT <Type>/<new id>`` requests, so a FHIR server keeps the ids the references use
    (a ``POST`` would renumber them; Synthea's ``ifNoneExist`` would publish identifiers).
    Bundle-level ``id``, ``meta``, ``identifier``, ``timestamp``, ``link`` and ``total`` are
    not carried over. A Bundle holding another patient's Patient resource is refused.
    """
    if not isinstance(bundle, Mapping):
        raise TypeError(f"bundle must be a JSON object, got {type(bundle).__name__}")
    _check_patient_id(patient_id)
    parsed = list(fhir.iter_bundle(bundle))
    patient_urls = set()
    for res in parsed:
        if res.resource_type == "Patient":
            if res.id != patient_id:
                raise ValueError(f"the bundle holds Patient/{res.id}, not {patient_id!r}")
            if res.full_url:
                patient_urls.add(res.full_url)
    ctx = _context(study, patient_id, frozenset(patient_urls))
    btype = bundle["type"]
    entries = []
    for index, res in enumerate(parsed):
        out = _deidentify(res.original, ctx)
        full_url = _new_full_url(res.full_url, out, ctx, index)
        out.setdefault("id", full_url.removeprefix("urn:uuid:"))
        entry: dict[str, Any] = {"fullUrl": full_url, "resource": out}
        if btype in ("transaction", "batch"):
            entry["request"] = {"method": "PUT", "url": f"{out['resourceType']}/{out['id']}"}
        entries.append(entry)
    derived: dict[str, Any] = {"resourceType": "Bundle", "type": btype}
    if entries:
        derived["entry"] = entries
    list(fhir.iter_bundle(derived))
    return derived
