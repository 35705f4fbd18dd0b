"""Ledger events as FHIR AuditEvents, grants as FHIR Consents."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from medshare.records import fhir
from medshare.records.departments import CODESYSTEM_URL
from medshare.records.fhir_audit import (
    ACTION_SYSTEM,
    ACTIONS,
    AREAS,
    AccessEventView,
    GrantView,
    audit_bundle,
    audit_event,
    consent,
)

TXID = "9f" * 32
RECORDED_MS = 1_748_782_800_123  # 2025-06-01T13:00:00.123Z
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def view(**changes: Any) -> AccessEventView:
    base = AccessEventView(
        txid=TXID,
        height=42,
        recorded_ms=RECORDED_MS,
        action="read",
        actor="dr.wang@H001",
        patient_id="p-001",
        record_id="Observation/abc",
        area="institution",
        outcome="success",
        detail=None,
    )
    return dataclasses.replace(base, **changes)


def grant(**changes: Any) -> GrantView:
    base = GrantView(
        grant_id="g-7",
        patient_id="p-001",
        grantee="dr.li@H002",
        area="personal",
        scope={"kind": "departments", "codes": ["0304"]},
        created_ms=1_000_000,
        until_ms=2_000_000,
        revoked_ms=None,
        txid="tx-grant-7",
    )
    return dataclasses.replace(base, **changes)


def codes(concepts: list[dict[str, Any]]) -> list[str]:
    return [c["code"] for cc in concepts for c in cc["coding"]]


def details(event: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for e in event["entity"] for d in e.get("detail", [])}


# -- AuditEvent ------------------------------------------------------------------------------

COMBINATIONS = [
    (action, outcome, area)
    for action in ACTIONS
    for outcome in ("success", "denied")
    for area in (None, *AREAS)
    if not (action == "denied-read" and outcome == "success")
]


@pytest.mark.parametrize(("action", "outcome", "area"), COMBINATIONS)
def test_every_action_outcome_and_area_validates(action: str, outcome: str, area: str | None):
    event = audit_event(view(action=action, outcome=outcome, area=area, detail="why"))
    parsed = fhir.parse_resource(event)
    assert parsed.resource_type == "AuditEvent"
    assert event["action"] == ACTIONS[action].code
    assert event["outcome"] == ("0" if outcome == "success" else "4")
    assert {"system": ACTION_SYSTEM, "code": action, "display": action} in event["subtype"]
    assert event["source"]["observer"] == {"display": "medshare ledger"}
    assert event["agent"][0]["requestor"] is True
    assert event["agent"][0]["who"]["display"] == "dr.wang@H001"


def test_event_coding() -> None:
    read = audit_event(view())
    assert read["type"]["code"] == "110110" and read["action"] == "R"
    assert read["subtype"][0] == {
        "system": "http://hl7.org/fhir/restful-interaction",
        "code": "read",
        "display": "read",
    }
    ingest = audit_event(view(action="ingest", actor="hospital:H001"))
    assert ingest["action"] == "C" and ingest["agent"][0]["type"]["coding"][0]["code"] == "AUT"
    revoke = audit_event(view(action="revoke", record_id="Consent/g-7", area="personal"))
    assert revoke["type"]["code"] == "rest" and revoke["action"] == "U"
    assert audit_event(view(action="export", area="research"))["type"]["code"] == "110106"
    assert audit_event(view(action="trace", record_id=None))["action"] == "E"


def test_entities_name_patient_record_and_ledger() -> None:
    event = audit_event(view())
    whats = [e["what"] for e in event["entity"]]
    assert whats[0] == {"reference": "Patient/p-001"}
    assert event["entity"][0]["role"]["code"] == "1"
    assert whats[1] == {"reference": "Observation/abc"}
    assert whats[2]["identifier"]["value"] == TXID
    assert len(audit_event(view(record_id=None))["entity"]) == 2


def test_txid_and_height_are_findable() -> None:
    event = audit_event(view())
    assert TXID in json.dumps(event)
    assert details(event) == {
        "ledger-txid": TXID,
        "ledger-height": "42",
        "access-area": "institution",
    }


def test_recorded_is_a_utc_instant() -> None:
    recorded = audit_event(view())["recorded"]
    assert recorded == "2025-06-01T13:00:00.123Z"
    moment = dt.datetime.fromisoformat(recorded)
    assert moment.tzinfo is not None
    assert int(moment.timestamp() * 1000) == RECORDED_MS


def test_denied_events_have_minor_failure_and_a_reason() -> None:
    event = audit_event(view(action="denied-read", outcome="denied", detail="no matching grant"))
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "no matching grant"
    assert details(event)["reason"] == "no matching grant"
    assert audit_event(view(outcome="denied"))["outcomeDesc"]  # a default text
    assert "outcomeDesc" not in audit_event(view())


@pytest.mark.parametrize(
    ("action", "area", "expected"),
    [
        ("break-glass", "emergency", ["ETREAT", "BTG"]),
        ("break-glass", None, ["ETREAT", "BTG"]),
        ("read", "emergency", ["ETREAT"]),
        ("read", "research", ["HRESCH"]),
        ("export", "research", ["HRESCH"]),
        ("read", "institution", ["TREAT"]),
        ("read", "collaboration", ["TREAT"]),
        ("read", "personal", []),
        ("read", None, []),
    ],
)
def test_purpose_of_event(action: str, area: str | None, expected: list[str]) -> None:
    event = audit_event(view(action=action, area=area))
    purposes = event.get("purposeOfEvent", [])
    assert codes(purposes) == expected
    assert all(c["system"] == ACT_REASON for cc in purposes for c in cc["coding"])


def test_break_glass_keeps_its_reason() -> None:
    event = audit_event(view(action="break-glass", area="emergency", detail="unconscious, ER"))
    assert details(event)["reason"] == "unconscious, ER"
    assert event["agent"][0]["policy"] == ["https://medshare.example/fhir/policy/area/emergency"]


def test_patient_actor_is_referenced() -> None:
    who = audit_event(view(actor="patient:p-001", area="personal"))["agent"][0]["who"]
    assert who["reference"] == "Patient/p-001"
    assert who["display"] == "patient:p-001"


def test_ids_are_deterministic_per_event() -> None:
    assert audit_event(view())["id"] == audit_event(view())["id"]
    assert audit_event(view())["id"] != audit_event(view(txid="other"))["id"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "delete-all"}, "unknown action 'delete-all'"),
        ({"outcome": "maybe"}, "unknown outcome"),
        ({"area": "cloud"}, "unknown area 'cloud'"),
        ({"action": "denied-read", "outcome": "success"}, "denied-read"),
        ({"height": -1}, "height"),
        ({"height": True}, "height"),
        ({"recorded_ms": "now"}, "recorded_ms"),
        ({"recorded_ms": 10**20}, "out of range"),
        ({"txid": ""}, "txid"),
        ({"actor": "  "}, "actor"),
        ({"patient_id": "p 001"}, "patient_id"),
        ({"record_id": "abc"}, "record_id"),
        ({"record_id": "urn:uuid:1234"}, "record_id"),
        ({"detail": 5}, "detail"),
    ],
)
def test_malformed_views_raise_clear_value_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        audit_event(view(**changes))


# -- Bundle ----------------------------------------------------------------------------------


def test_bundle_has_one_entry_per_view_in_order() -> None:
    views = [
        view(action="ingest", txid="t1", height=1),
        view(action="grant", txid="t2", height=2, record_id=None, area="personal"),
        view(action="read", txid="t3", height=3),
        view(action="denied-read", outcome="denied", txid="t4", height=4),
        view(action="break-glass", area="emergency", txid="t5", height=5, detail="ER"),
    ]
    bundle = audit_bundle(iter(views), "p-001")
    assert bundle["type"] == "searchset" and bundle["total"] == len(views)
    found = list(fhir.iter_bundle(bundle))
    assert [r.resource_type for r in found] == ["AuditEvent"] * len(views)
    assert [details(r.original)["ledger-txid"] for r in found] == ["t1", "t2", "t3", "t4", "t5"]
    assert [e["fullUrl"] for e in bundle["entry"]] == [
        f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"]
    ]


def test_empty_bundle() -> None:
    bundle = audit_bundle([], "p-001")
    assert bundle == {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert list(fhir.iter_bundle(bundle)) == []


def test_bundle_refuses_other_patients_and_repeats() -> None:
    with pytest.raises(ValueError, match="about patient 'p-002'"):
        audit_bundle([view(), view(patient_id="p-002", txid="t9")], "p-001")
    with pytest.raises(ValueError, match="repeats"):
        audit_bundle([view(), view()], "p-001")
    with pytest.raises(ValueError, match="unknown action"):
        audit_bundle([view(action="peek")], "p-001")


# -- Consent ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now_ms", "changes", "status"),
    [
        (999_999, {}, "inactive"),  # not yet valid
        (1_000_000, {}, "active"),
        (1_999_999, {}, "active"),
        (2_000_000, {}, "inactive"),  # expired at until_ms
        (5_000_000, {"until_ms": None}, "active"),  # open-ended
        (1_600_000, {"revoked_ms": 1_500_000}, "inactive"),
        (1_400_000, {"revoked_ms": 1_500_000}, "active"),  # viewed before the revocation
    ],
)
def test_consent_status_follows_time_and_revocation(
    now_ms: int, changes: dict[str, Any], status: str
) -> None:
    resource = consent(grant(**changes), now_ms)
    fhir.parse_resource(resource)
    assert resource["status"] == status


def test_consent_period_and_parties() -> None:
    resource = consent(grant(), 1_500_000)
    provision = resource["provision"]
    assert provision["type"] == "permit"
    assert provision["period"] == {
        "start": "1970-01-01T00:16:40.000Z",
        "end": "1970-01-01T00:33:20.000Z",
    }
    assert provision["actor"][0]["reference"]["display"] == "dr.li@H002"
    assert codes(provision["action"]) == ["access"]
    assert resource["patient"] == {"reference": "Patient/p-001"}
    assert {i["value"] for i in resource["identifier"]} == {"g-7", "tx-grant-7"}
    assert resource["scope"]["coding"][0]["code"] == "patient-privacy"
    assert resource["policy"] and resource["policyRule"]  # ppc-1
    revoked = consent(grant(revoked_ms=1_200_000), 1_500_000)
    assert revoked["provision"]["period"]["end"] == "1970-01-01T00:20:00.000Z"
    open_ended = consent(grant(until_ms=None), 1_500_000)
    assert "end" not in open_ended["provision"]["period"]


def test_department_scope_names_the_department_codes() -> None:
    resource = consent(grant(scope={"kind": "departments", "codes": ["0304", "03"]}), 1_500_000)
    coding = [cc["coding"][0] for cc in resource["provision"]["code"]]
    assert [(c["system"], c["code"]) for c in coding] == [
        (CODESYSTEM_URL, "0304"),
        (CODESYSTEM_URL, "03"),
    ]
    assert all(c["display"] for c in coding)
    hospital_code = consent(grant(scope={"kind": "departments", "codes": ["0304A1"]}), 1_500_000)
    assert hospital_code["provision"]["code"][0]["coding"][0]["code"] == "0304A1"


def test_record_and_all_scopes() -> None:
    ids = ["Observation/abc", "Condition/def"]
    resource = consent(grant(scope={"kind": "records", "ids": ids}), 1_500_000)
    assert [d["reference"]["reference"] for d in resource["provision"]["data"]] == ids
    assert {d["meaning"] for d in resource["provision"]["data"]} == {"instance"}
    everything = consent(grant(scope={"kind": "all"}), 1_500_000)["provision"]
    assert "data" not in everything and "code" not in everything


def test_research_consent() -> None:
    resource = consent(grant(area="research", scope={"kind": "all"}), 1_500_000)
    assert resource["scope"]["coding"][0]["code"] == "research"
    assert "RSDID" in codes(resource["category"])
    assert resource["policy"] == [{"uri": "https://medshare.example/fhir/policy/area/research"}]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scope": {"kind": "everything"}}, "unknown scope kind 'everything'"),
        ({"scope": {"kind": "records", "ids": []}}, "non-empty list 'ids'"),
        ({"scope": {"kind": "records", "ids": ["not a ref"]}}, r"scope.ids\[0\]"),
        ({"scope": {"kind": "departments", "codes": ["03-04"]}}, "letters and digits"),
        ({"scope": "all"}, "scope must be a mapping"),
        ({"area": "cloud"}, "unknown area"),
        ({"until_ms": 1_000_000}, "until_ms"),
        ({"revoked_ms": 10}, "revoked_ms"),
        ({"grantee": ""}, "grantee"),
        ({"patient_id": "p/1"}, "patient_id"),
    ],
)
def test_malformed_grants_raise_clear_value_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        consent(grant(**changes), 1_500_000)
    with pytest.raises(ValueError, match="now_ms"):
        consent(grant(), -1)
