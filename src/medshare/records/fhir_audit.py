"""Accountability as FHIR R4: ledger events → ``AuditEvent``, grants → ``Consent`` (DESIGN §5).

Every access, grant, revoke and break-glass is a ledger transaction; the patient sees them
through a FHIR client, so they are exported as standard resources rather than a private
JSON shape. The functions here are pure translations of what the service knows
(:class:`AccessEventView`, :class:`GrantView`) — no ledger, clock or database access —
and every resource they build is validated through :mod:`medshare.records.fhir` (release
R4B, wire-compatible with R4 for both resources).

AuditEvent (IHE BALP style)
===========================

IHE *Basic Audit Log Patterns* shapes a FHIR-native audit record: a coded event ``type``
and ``subtype``, an ``action`` (C/R/U/D/E), an ``outcome``, the requesting ``agent``, a
``source`` and the ``entity`` objects touched, with the Patient as an entity of its own so
that a patient-centric query finds the event. We follow that pattern without claiming a
BALP profile (its agents for client/server network endpoints do not apply to a ledger).

==============  ==================================  ======  ====================  =======
ledger action   ``type``                            action  subtype (REST)        agent
==============  ==================================  ======  ====================  =======
ingest          DCM 110110 Patient Record           C       create                AUT
read            DCM 110110 Patient Record           R       read                  IRCP
denied-read     DCM 110110 Patient Record           R       read                  IRCP
break-glass     DCM 110110 Patient Record           R       read                  IRCP
export          DCM 110106 Export                   R       —                     IRCP
grant           audit-event-type rest               C       create (a Consent)    AUT
revoke          audit-event-type rest               U       update (a Consent)    AUT
trace           DCM 110113 Security Alert           E       —                     VRF
==============  ==================================  ======  ====================  =======

DICOM gives Export the action R (data leaves by being read); revoking sets a Consent
inactive, an update, not a deletion; a traitor trace executes an audit of a leaked key.
Every event also carries our own subtype (:data:`ACTION_SYSTEM` ``#<action>``) so the
ledger action round-trips exactly. Outcome: ``0`` success, ``4`` minor failure for a denied
access (the request was refused, the system worked as designed — ``8``/``12`` mean the
system failed). ``purposeOfEvent`` (v3-ActReason): ``ETREAT`` (plus ``BTG``, break the
glass) for break-glass or the emergency area, ``HRESCH`` for research, ``TREAT`` for the
institution and collaboration areas, none for the personal area (the patient's own
sharing needs no purpose).

The ledger coordinates need no extension: an entity for the ledger transaction
(``what.identifier`` = the txid) carries ``detail`` entries — R4's
``AuditEvent.entity.detail`` is ``type`` (string) + ``valueString`` — named
``ledger-txid``, ``ledger-height``, ``access-area`` and ``reason``. ``recorded`` is the
ledger's time in UTC with millisecond precision and an explicit ``Z``. The AuditEvent id is
a UUID derived from the whole view, so re-exporting the same event gives the same id.

Consent
=======

A grant is a ``Consent`` of ``scope`` ``patient-privacy`` (``research`` for the research
area) with LOINC 59284-0 "Patient Consent" plus a v3-ActCode category for the area
(``INFA`` access, ``IDSCL`` disclosure to a partner, ``RSDID`` de-identified research
access), ``policy`` = the area's policy URI and ``policyRule`` v3-ActCode ``OPTIN``.
``provision`` permits ``access`` to the grantee for ``period`` created → until, and names
what: the records (``data``, meaning ``instance``), the department codes (``code`` from
:data:`~medshare.records.departments.CODESYSTEM_URL`; a department code covers its subtree,
as the catalogue's prefix codes do), or nothing for "all". ``status`` is computed for a
given ``now_ms``: ``active`` while created ≤ now < until and not revoked by now, otherwise
``inactive`` — the same grant renders differently over time, so the caller states the time.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medshare.records import fhir
from medshare.records.departments import CODESYSTEM_URL, Taxonomy
from medshare.records.references import parse_reference

__all__ = [
    "ACTIONS",
    "ACTION_SYSTEM",
    "AREAS",
    "AccessEventView",
    "GrantView",
    "audit_bundle",
    "audit_event",
    "consent",
]

# Our own identifier systems and policies. Placeholders under the reserved ``.example``
# domain, like records.departments.CODESYSTEM_URL: they name our systems, never resolve.
BASE_URL = "https://medshare.example/fhir"
ACTION_SYSTEM = f"{BASE_URL}/CodeSystem/ledger-action"
ACTOR_SYSTEM = f"{BASE_URL}/sid/actor"
LEDGER_TX_SYSTEM = f"{BASE_URL}/sid/ledger-tx"
GRANT_SYSTEM = f"{BASE_URL}/sid/grant"
AREA_POLICY_BASE = f"{BASE_URL}/policy/area"
OBSERVER = "medshare ledger"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
LOINC = "http://loinc.org"

AREAS = ("personal", "institution", "collaboration", "research", "emergency")
OUTCOMES = {"success": ("0", "Success"), "denied": ("4", "Minor failure")}

_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, BASE_URL)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Coding = Mapping[str, str]


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


@dataclass(frozen=True)
class _Action:
    """How one ledger action is coded (see the table in the module docstring)."""

    type: Coding
    code: str  # AuditEvent.action
    interaction: str | None  # restful-interaction subtype
    agent: Coding  # v3-ParticipationType of the requesting agent


_PATIENT_RECORD = _coding(DCM, "110110", "Patient Record")
_REST = _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation")
_AUTHOR = _coding(PARTICIPATION, "AUT", "author (originator)")
_RECIPIENT = _coding(PARTICIPATION, "IRCP", "information recipient")

ACTIONS: Mapping[str, _Action] = {
    "ingest": _Action(_PATIENT_RECORD, "C", "create", _AUTHOR),
    "read": _Action(_PATIENT_RECORD, "R", "read", _RECIPIENT),
    "denied-read": _Action(_PATIENT_RECORD, "R", "read", _RECIPIENT),
    "break-glass": _Action(_PATIENT_RECORD, "R", "read", _RECIPIENT),
    "export": _Action(_coding(DCM, "110106", "Export"), "R", None, _RECIPIENT),
    "grant": _Action(_REST, "C", "create", _AUTHOR),
    "revoke": _Action(_REST, "U", "update", _AUTHOR),
    "delete": _Action(_PATIENT_RECORD, "D", "delete", _AUTHOR),
    "trace": _Action(
        _coding(DCM, "110113", "Security Alert"),
        "E",
        None,
        _coding(PARTICIPATION, "VRF", "verifier"),
    ),
}

_ETREAT = _coding(ACT_REASON, "ETREAT", "Emergency Treatment")
_BTG = _coding(ACT_REASON, "BTG", "Break the glass")
_HRESCH = _coding(ACT_REASON, "HRESCH", "healthcare research")
_TREAT = _coding(ACT_REASON, "TREAT", "treatment")
_AREA_PURPOSE = {
    "emergency": _ETREAT,
    "research": _HRESCH,
    "institution": _TREAT,
    "collaboration": _TREAT,
}


@dataclass(frozen=True)
class AccessEventView:
    """What the service knows of one ledger event, as shown to the patient.

    ``action`` is one of :data:`ACTIONS`; ``actor`` the principal that acted
    (``dr.wang@H001``, ``patient:p-001``); ``record_id`` the record touched as ``Type/id``;
    ``area`` one of :data:`AREAS`; ``outcome`` ``success`` or ``denied``; ``detail`` a
    break-glass reason, a denial reason or a trace verdict.
    """

    txid: str
    height: int
    recorded_ms: int
    action: str
    actor: str
    patient_id: str
    record_id: str | None
    area: str | None
    outcome: str
    detail: str | None


@dataclass(frozen=True)
class GrantView:
    """One grant as recorded on the ledger.

    ``scope`` is ``{"kind": "all"}``, ``{"kind": "records", "ids": ["Observation/abc", …]}``
    or ``{"kind": "departments", "codes": ["0304", …]}``. Times are Unix milliseconds;
    ``until_ms``/``revoked_ms`` are ``None`` when open-ended / not revoked.
    """

    grant_id: str
    patient_id: str
    grantee: str
    area: str
    scope: Mapping[str, Any]
    created_ms: int
    until_ms: int | None
    revoked_ms: int | None
    txid: str


# -- checks --------------------------------------------------------------------------------


def _text(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _count(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _fhir_id(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"{name} must be a FHIR id ([A-Za-z0-9-.], 1-64 chars), got {value!r}")


def _record_ref(name: str, value: Any) -> None:
    ref = parse_reference(value) if isinstance(value, str) else None
    if ref is None or ref.kind != "relative" or value != ref.relative:
        raise ValueError(f"{name} must be a relative reference Type/id, got {value!r}")


def _area(value: Any, *, optional: bool) -> None:
    if optional and value is None:
        return
    if value not in AREAS:
        raise ValueError(f"unknown area {value!r}; expected one of {', '.join(AREAS)}")


def _check_view(view: AccessEventView) -> None:
    if not isinstance(view, AccessEventView):
        raise TypeError(f"expected an AccessEventView, got {type(view).__name__}")
    if view.action not in ACTIONS:
        raise ValueError(f"unknown action {view.action!r}; expected one of {', '.join(ACTIONS)}")
    if view.outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {view.outcome!r}; expected one of {', '.join(OUTCOMES)}")
    if view.action == "denied-read" and view.outcome != "denied":
        raise ValueError("a denied-read event must have outcome 'denied'")
    _text("txid", view.txid)
    _count("height", view.height)
    _count("recorded_ms", view.recorded_ms)
    _text("actor", view.actor)
    _fhir_id("patient_id", view.patient_id)
    if view.record_id is not None:
        _record_ref("record_id", view.record_id)
    _area(view.area, optional=True)
    _text("detail", view.detail, optional=True)


def _instant(ms: int) -> str:
    """Unix milliseconds → FHIR instant in UTC (``2025-06-01T13:00:00.000Z``)."""
    try:
        moment = _EPOCH + dt.timedelta(milliseconds=ms)
    except OverflowError:
        raise ValueError(f"time {ms} ms is out of range") from None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _validated(resource: dict[str, Any]) -> dict[str, Any]:
    fhir.parse_resource(resource)
    return resource


# -- AuditEvent ----------------------------------------------------------------------------


def _purposes(view: AccessEventView) -> list[dict[str, Any]]:
    """v3-ActReason purposes of use; ``BTG`` marks how emergency access was obtained."""
    if view.action == "break-glass":
        return [{"coding": [_ETREAT]}, {"coding": [_BTG]}]
    chosen = _AREA_PURPOSE.get(view.area) if view.area else None
    return [{"coding": [chosen]}] if chosen else []


def _actor_reference(actor: str) -> dict[str, Any]:
    """The agent as a Reference: our actor identifier; a patient actor also as Patient/<id>."""
    ref: dict[str, Any] = {"identifier": {"system": ACTOR_SYSTEM, "value": actor}, "display": actor}
    kind, _, rest = actor.partition(":")
    if kind == "patient" and _ID_RE.fullmatch(rest):
        ref = {"reference": f"Patient/{rest}", "type": "Patient", **ref}
    return ref


def _ledger_entity(view: AccessEventView) -> dict[str, Any]:
    details = [
        {"type": "ledger-txid", "valueString": view.txid},
        {"type": "ledger-height", "valueString": str(view.height)},
    ]
    if view.area:
        details.append({"type": "access-area", "valueString": view.area})
    if view.detail:
        details.append({"type": "reason", "valueString": view.detail})
    return {
        "what": {"identifier": {"system": LEDGER_TX_SYSTEM, "value": view.txid}},
        "type": _coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "name": "medshare ledger transaction",
        "detail": details,
    }


def _entities(view: AccessEventView) -> list[dict[str, Any]]:
    out = [
        {
            "what": {"reference": f"Patient/{view.patient_id}"},
            "type": _coding(AUDIT_ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        }
    ]
    if view.record_id:
        out.append(
            {
                "what": {"reference": view.record_id},
                "type": _coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    out.append(_ledger_entity(view))
    return out


def _event_id(view: AccessEventView) -> str:
    """A UUID derived from the whole view: the same ledger event always gets the same id."""
    fields = [
        view.txid, view.height, view.recorded_ms, view.action, view.actor, view.patient_id,
        view.record_id, view.area, view.outcome, view.detail,
    ]  # fmt: skip
    return str(uuid.uuid5(_NAMESPACE, "AuditEvent:" + json.dumps(fields)))


def audit_event(view: AccessEventView) -> dict[str, Any]:
    """One FHIR R4 ``AuditEvent`` (JSON dict) for a ledger event, validated.

    Raises ``ValueError`` naming the field for an unknown action, outcome or area, a
    ``denied-read`` that succeeded, or malformed ids, times and references.
    """
    _check_view(view)
    spec = ACTIONS[view.action]
    subtype = [_coding(ACTION_SYSTEM, view.action, view.action)]
    if spec.interaction:
        subtype.insert(0, _coding(RESTFUL_INTERACTION, spec.interaction, spec.interaction))
    code, display = OUTCOMES[view.outcome]
    agent: dict[str, Any] = {
        "type": {"coding": [dict(spec.agent)]},
        "who": _actor_reference(view.actor),
        "requestor": True,
    }
    if view.area:
        agent["policy"] = [f"{AREA_POLICY_BASE}/{view.area}"]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": _event_id(view),
        "type": dict(spec.type),
        "subtype": subtype,
        "action": spec.code,
        "recorded": _instant(view.recorded_ms),
        "outcome": code,
    }
    if view.outcome == "denied":
        event["outcomeDesc"] = view.detail or f"{display}: access denied"
    if purposes := _purposes(view):
        event["purposeOfEvent"] = purposes
    event |= {
        "agent": [agent],
        "source": {
            "site": "medshare",
            "observer": {"display": OBSERVER},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": _entities(view),
    }
    return _validated(event)


def audit_bundle(views: Iterable[AccessEventView], patient_id: str) -> dict[str, Any]:
    """A ``searchset`` Bundle of the patient's AuditEvents, one entry per view, in order.

    Every view must be about ``patient_id``: a patient's audit trail that showed another
    patient's events would itself be a disclosure. The same event twice is refused (it
    would give two entries one ``fullUrl``).
    """
    _fhir_id("patient_id", patient_id)
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, view in enumerate(views):
        event = audit_event(view)
        if view.patient_id != patient_id:
            raise ValueError(f"views[{i}] is about patient {view.patient_id!r}, not {patient_id!r}")
        if event["id"] in seen:
            raise ValueError(f"views[{i}] repeats an earlier event (txid {view.txid!r})")
        seen.add(event["id"])
        entries.append(
            {"fullUrl": f"urn:uuid:{event['id']}", "resource": event, "search": {"mode": "match"}}
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        bundle["entry"] = entries
    list(fhir.iter_bundle(bundle))
    return bundle


# -- Consent -------------------------------------------------------------------------------

_AREA_CATEGORY = {
    "personal": _coding(ACT_CODE, "INFA", "information access"),
    "institution": _coding(ACT_CODE, "INFA", "information access"),
    "collaboration": _coding(ACT_CODE, "IDSCL", "information disclosure"),
    "research": _coding(ACT_CODE, "RSDID", "de-identified information access"),
    "emergency": _coding(ACT_CODE, "INFA", "information access"),
}


def _check_grant(grant: GrantView, now_ms: int) -> None:
    if not isinstance(grant, GrantView):
        raise TypeError(f"expected a GrantView, got {type(grant).__name__}")
    _text("grant_id", grant.grant_id)
    _fhir_id("patient_id", grant.patient_id)
    _text("grantee", grant.grantee)
    _area(grant.area, optional=False)
    _text("txid", grant.txid)
    _count("created_ms", grant.created_ms)
    _count("until_ms", grant.until_ms, optional=True)
    _count("revoked_ms", grant.revoked_ms, optional=True)
    _count("now_ms", now_ms)
    if grant.until_ms is not None and grant.until_ms <= grant.created_ms:
        raise ValueError(f"until_ms ({grant.until_ms}) must be after created_ms")
    if grant.revoked_ms is not None and grant.revoked_ms < grant.created_ms:
        raise ValueError(f"revoked_ms ({grant.revoked_ms}) is before created_ms")


def _scope_provision(scope: Mapping[str, Any]) -> dict[str, Any]:
    """What the grant covers, as Consent.provision elements."""
    if not isinstance(scope, Mapping):
        raise ValueError(f"scope must be a mapping with a 'kind', got {scope!r}")
    kind = scope.get("kind")
    if kind == "all":
        return {}
    if kind == "records":
        ids = scope.get("ids")
        if not isinstance(ids, list | tuple) or not ids:
            raise ValueError("a 'records' scope needs a non-empty list 'ids'")
        for i, rid in enumerate(ids):
            _record_ref(f"scope.ids[{i}]", rid)
        return {"data": [{"meaning": "instance", "reference": {"reference": r}} for r in ids]}
    if kind == "departments":
        codes = scope.get("codes")
        if not isinstance(codes, list | tuple) or not codes:
            raise ValueError("a 'departments' scope needs a non-empty list 'codes'")
        return {"code": [{"coding": [_department(code)]} for code in codes]}
    raise ValueError(f"unknown scope kind {kind!r}; expected 'all', 'records' or 'departments'")


def _department(code: Any) -> dict[str, str]:
    """A department Coding; catalogue codes get their English label, hospital codes none."""
    if not isinstance(code, str) or not re.fullmatch(r"[0-9A-Za-z]+", code):
        raise ValueError(f"department codes are letters and digits, got {code!r}")
    taxonomy = Taxonomy.default()
    if code in taxonomy:
        return _coding(CODESYSTEM_URL, code, taxonomy.get(code).name_en)
    return {"system": CODESYSTEM_URL, "code": code}


def _is_active(grant: GrantView, now_ms: int) -> bool:
    revoked = grant.revoked_ms is not None and grant.revoked_ms <= now_ms
    expired = grant.until_ms is not None and now_ms >= grant.until_ms
    return grant.created_ms <= now_ms and not revoked and not expired


def _grant_id(grant_id: str) -> str:
    return grant_id if _ID_RE.fullmatch(grant_id) else str(uuid.uuid5(_NAMESPACE, grant_id))


def consent(grant: GrantView, now_ms: int) -> dict[str, Any]:
    """The FHIR R4 ``Consent`` for a grant as of ``now_ms``, validated.

    ``provision.period`` runs from ``created_ms`` to ``until_ms``, or to ``revoked_ms`` if
    the grant was revoked earlier by ``now_ms`` — the period shows when access really
    ended. Raises ``ValueError`` for an unknown area or scope kind, malformed record ids or
    department codes, and inconsistent times.
    """
    _check_grant(grant, now_ms)
    provision_scope = _scope_provision(grant.scope)
    end = grant.until_ms
    if grant.revoked_ms is not None and grant.revoked_ms <= now_ms:
        end = grant.revoked_ms if end is None else min(end, grant.revoked_ms)
    period = {"start": _instant(grant.created_ms)}
    if end is not None:
        period["end"] = _instant(end)
    research = grant.area == "research"
    scope = (
        _coding(CONSENT_SCOPE, "research", "Research")
        if research
        else _coding(CONSENT_SCOPE, "patient-privacy", "Privacy Consent")
    )
    patient = {"reference": f"Patient/{grant.patient_id}"}
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": _grant_id(grant.grant_id),
        "identifier": [
            {"system": GRANT_SYSTEM, "value": grant.grant_id},
            {"system": LEDGER_TX_SYSTEM, "value": grant.txid},
        ],
        "status": "active" if _is_active(grant, now_ms) else "inactive",
        "scope": {"coding": [scope]},
        "category": [
            {"coding": [_coding(LOINC, "59284-0", "Patient Consent")]},
            {"coding": [_AREA_CATEGORY[grant.area]]},
        ],
        "patient": patient,
        "dateTime": _instant(grant.created_ms),
        "policy": [{"uri": f"{AREA_POLICY_BASE}/{grant.area}"}],
        "policyRule": {"coding": [_coding(ACT_CODE, "OPTIN", "opt-in")]},
        "provision": {
            "type": "permit",
            "period": period,
            "actor": [
                {
                    "role": {"coding": [_RECIPIENT]},
                    "reference": {
                        "identifier": {"system": ACTOR_SYSTEM, "value": grant.grantee},
                        "display": grant.grantee,
                    },
                }
            ],
            "action": [{"coding": [_coding(CONSENT_ACTION, "access", "Access")]}],
            **provision_scope,
        },
    }
    return _validated(resource)
