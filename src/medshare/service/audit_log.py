"""The patient's view of the ledger: AuditEvents and Consents.

A mixin of :class:`medshare.service.api.MedShare`: it uses the service's state (``sessions``,
``ledger``, ``wallets``, ``blobs``, ``params``, ``clock``) and its lookups.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from medshare.ledger.types import TxKind
from medshare.records import fhir_audit
from medshare.service import db
from medshare.service.areas import Area
from medshare.service.common import iso, service_principal

_ACTIONS = {
    TxKind.ANCHOR_RECORD: "ingest",
    TxKind.GRANT: "grant",
    TxKind.REVOKE: "revoke",
    TxKind.BREAK_GLASS: "break-glass",
}


def _event_view(
    committed,
    patient_id: str,
    grants: dict[str, db.Grant],
    names: dict[bytes, str],
    vouching: frozenset[str] = frozenset(),
) -> fhir_audit.AccessEventView | None:
    """One ledger tx as an AuditEvent view, if it concerns this patient.

    Anyone may submit a tx to the ledger, so only txs signed by a known principal count,
    and who acted is the *signer* (``names``), never a name written in the body.
    """
    tx, body = committed.tx, committed.tx.body
    signer = names.get(tx.sender)
    if signer is None:
        return None
    if tx.kind == TxKind.REVOKE:
        grant = grants.get(body.get("grant"))
        if grant is None:
            return None
        patient, record, area = patient_id, None, grant.area
    elif tx.kind in _ACTIONS or tx.kind == TxKind.ACCESS:
        if body.get("patient") != patient_id:
            return None
        patient, area = patient_id, body.get("area")
        record = body.get("record") if body.get("record") not in (None, "*") else None
    else:
        return None
    if tx.kind == TxKind.ACCESS:
        action = body.get("action", "read")
        outcome = body.get("outcome", "success")
        if outcome == "denied":
            action = "denied-read"
    else:
        action, outcome = _ACTIONS[tx.kind], "success"
    actor = signer
    if tx.kind == TxKind.GRANT:
        actor = str(body.get("grantee", signer))
    elif signer in vouching and isinstance(body.get("actor"), str):
        # this hospital's node logs what a person holding their keys on their own device
        # did through a request that person signed: the node vouches for the name (no
        # other member's node is believed about who acted here)
        actor = body["actor"]
    if tx.kind == TxKind.BREAK_GLASS:
        area = Area.EMERGENCY.value
    return fhir_audit.AccessEventView(
        txid=tx.txid,
        height=committed.height,
        recorded_ms=committed.timestamp_ms,
        action=action,
        actor=str(actor),
        patient_id=patient,
        record_id=record,
        area=area,
        outcome=outcome,
        detail=body.get("reason"),
    )


def _renders(view: fhir_audit.AccessEventView) -> bool:
    """False for an event no AuditEvent can express (unknown area or action): such a tx,
    whoever submitted it, must not make the whole log unreadable."""
    try:
        fhir_audit.audit_event(view)
    except ValueError:
        return False
    return True


def _consent_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """A grant's scope in the terms of a FHIR Consent provision."""
    kind = scope.get("kind")
    if kind == "records":
        return {"kind": "records", "ids": list(scope["items"])}
    if kind == "departments":
        return {"kind": "departments", "codes": list(scope["items"])}
    if kind is None and scope.get("dept"):  # a referral limited to a department sub-tree
        return {"kind": "departments", "codes": [scope["dept"]]}
    return {"kind": "all"}


def _grant_view(grant: db.Grant) -> fhir_audit.GrantView:
    return fhir_audit.GrantView(
        grant_id=grant.id,
        patient_id=grant.patient or "",
        grantee=grant.grantee,
        area=grant.area,
        scope=_consent_scope(grant.scope),
        created_ms=grant.created_ms,
        until_ms=grant.until_ms,
        revoked_ms=grant.revoked_ms,
        txid=grant.txid,
    )


class AuditLogMixin:
    """The patient's view of the ledger (a part of :class:`~medshare.service.api.MedShare`)."""

    def log(self, patient_id: str) -> dict[str, Any]:
        """The patient's access log as a FHIR R4 Bundle of AuditEvents, from the ledger."""
        with self.sessions() as session:
            self._patient(session, patient_id)
            grants = {
                g.id: g
                for g in session.execute(
                    select(db.Grant).where(db.Grant.patient == patient_id)
                ).scalars()
            }
            names = {
                p.identity_public: p.id for p in session.execute(select(db.Principal)).scalars()
            }
        vouching = frozenset(service_principal(h) for h in self.config.served)
        views = []
        for committed in self.ledger.txs():
            view = _event_view(committed, patient_id, grants, names, vouching)
            if view is not None and _renders(view):
                views.append(view)
        return fhir_audit.audit_bundle(views, patient_id)

    def alerts(self, patient_id: str) -> list[dict[str, Any]]:
        """Every break-glass on the patient's records, newest first: what the patient is
        alerted to (who, when, why, until when), straight from the ledger."""
        with self.sessions() as session:
            self._patient(session, patient_id)
            names = {
                p.identity_public: p.id for p in session.execute(select(db.Principal)).scalars()
            }
        vouching = frozenset(service_principal(h) for h in self.config.served)
        out = []
        for committed in self.ledger.txs(TxKind.BREAK_GLASS):
            body = committed.tx.body
            if body.get("patient") != patient_id or committed.tx.sender not in names:
                continue
            actor = names[committed.tx.sender]
            if actor in vouching and isinstance(body.get("actor"), str):
                actor = body["actor"]  # logged by this hospital's node for the holder
            out.append(
                {
                    "time": iso(committed.timestamp_ms),
                    "actor": actor,
                    "reason": body.get("reason"),
                    "record": body.get("record"),
                    "until": iso(body.get("until")) if isinstance(body.get("until"), int) else None,
                    "txid": committed.tx.txid,
                }
            )
        return out[::-1]

    def consents(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's grants as FHIR R4 Consent resources (active or inactive now)."""
        now = self.clock()
        with self.sessions() as session:
            self._patient(session, patient_id)
            rows = list(
                session.execute(
                    select(db.Grant)
                    .where(db.Grant.patient == patient_id)
                    .order_by(db.Grant.created_ms)
                ).scalars()
            )
        return [fhir_audit.consent(_grant_view(g), now) for g in rows]
