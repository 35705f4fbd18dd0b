"""Reading: the storage gate of each area, verified fetch, access logging, export, verify.

A mixin of :class:`medshare.service.api.MedShare`: it uses the service's state (``sessions``,
``ledger``, ``wallets``, ``blobs``, ``params``, ``clock``) and its lookups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import NoResultFound

from medshare.api.sealed_record import AreaSeal, SealedRecord, open_sealed
from medshare.crypto import abe, hkac
from medshare.crypto.errors import DecryptionFailed
from medshare.ledger.types import TxKind
from medshare.records import canonical
from medshare.records.blobstore import BlobStoreError
from medshare.service import areas, db, protect
from medshare.service.areas import Area, top_department
from medshare.service.common import (
    iso,
    service_principal,
    valid_at,
)
from medshare.service.errors import AccessDenied, IntegrityError, InvalidInput, NotFound
from medshare.service.grants import referral_covers
from medshare.service.wallets import patient_principal

MAX_LOGGED_REASON = 500  # characters of a reason or refusal kept in the patient's log
_PENDING = (
    "the record has no personal-area seal yet: the patient's wallet has not published "
    "the key of its block (it does so at enrolment and when its slabs run out)"
)


def is_patient(who: str) -> bool:
    return who.startswith(patient_principal(""))


@dataclass(frozen=True)
class ReadResult:
    """A served record: its canonical FHIR bytes and the committed access tx."""

    record_id: str
    area: Area
    resource: bytes
    txid: str


@dataclass(frozen=True)
class ReadGate:
    """A read the gate allowed: who, which record and area, and what to release."""

    who: str
    record: db.Record
    area: Area
    reason: str | None
    header: bytes | None
    seal: AreaSeal | None
    blob_id: str
    share_id: str | None = None


class ReadingMixin:
    """Reading (a part of :class:`~medshare.service.api.MedShare`)."""

    def read(
        self,
        who: str,
        record_id: str,
        *,
        area: Area,
        share: hkac.Share | None = None,
        reason: str | None = None,
    ) -> ReadResult:
        """Serve one record to ``who`` through ``area``: the hospital's side
        (:meth:`seal_for`: the gate, the access tx, ciphertext only) and then the reader's
        device (:meth:`open_on_device`, with the reader's own key from their wallet) — the
        same two steps as over HTTP, run in one process.

        Refusals at the gate (no grant, expired, revoked, wrong attributes) raise
        :class:`AccessDenied` after a committed ``access`` tx with outcome ``denied``.
        """
        share_id = share.share_id if share is not None else None
        sealed = self.seal_for(who, record_id, area=area, share_id=share_id, reason=reason)
        data = self.open_on_device(who, sealed, share)
        return ReadResult(record_id, area, data, sealed.txid)

    def seal_for(
        self,
        who: str,
        record_id: str,
        *,
        area: Area,
        share_id: str | None = None,
        reason: str | None = None,
    ) -> SealedRecord:
        """The hospital's side of a read: decide whether ``who`` may read the record
        through ``area`` from public facts only (:meth:`read_gate`), then commit the
        ``access`` tx and release the record sealed for the reader's own key
        (:meth:`release`). Nothing of the reader's is needed or seen: the hospital cannot
        open what it releases for another area than its own."""
        gate = self.read_gate(who, record_id, area=area, share_id=share_id, reason=reason)
        return self.release(gate)

    def read_gate(
        self,
        who: str,
        record_id: str,
        *,
        area: Area,
        share_id: str | None = None,
        reason: str | None = None,
    ) -> ReadGate:
        """The gate of a read, from public facts only (grants, the reader's issued keys'
        attributes, break-glass windows). A refusal is logged (an ``access`` tx with
        outcome ``denied``) and raised as :class:`AccessDenied`."""
        # The request's own form first, before anything about the record is looked up:
        # a malformed request tells nothing about which records exist.
        if area is Area.PERSONAL and share_id is None and not is_patient(who):
            # only a patient reads without a share (their own records, with their seed)
            raise InvalidInput("the personal area needs --key SHARE.json")
        if area is not Area.PERSONAL and share_id is not None:
            raise InvalidInput("--key is for the personal area; drop --area or use --area personal")
        if reason is not None and area is not Area.EMERGENCY:
            # the reason goes into the patient's log: only a break-glass has one to give
            raise InvalidInput("--reason is for the emergency area (break-glass) only")
        with self.sessions() as session:
            self._principal(session, who)
            record = self._record(session, record_id)
        if record.shredded_ms is not None:
            raise NotFound(f"record {record_id} was deleted (crypto-shredded)")
        try:
            with self.sessions() as session:
                if area is Area.PERSONAL:
                    header = self._release_personal(session, who, record, share_id)
                    seal, blob_id = None, record.blob_id
                else:
                    header = None
                    scope = self._scope_for(session, who, record, area, reason)
                    seal, blob_id = self._release_area(session, who, record, scope)
        except AccessDenied as exc:
            self._log_access(who, record, area, "denied", str(exc))
            raise
        return ReadGate(who, record, area, reason, header, seal, blob_id, share_id)

    def release(self, gate: ReadGate) -> SealedRecord:
        """What the gate let through: the record's anchor and blob checked, the ``access``
        tx committed (with whatever other reads commit at the same moment: the service's
        group committer), then the sealed record. Safe to run outside the lock that
        orders the service's other work."""
        record = gate.record
        try:
            self._still_releasable(gate)
        except AccessDenied as exc:
            self._log_access(gate.who, record, gate.area, "denied", str(exc))
            raise
        self._check_anchor(record)
        blob = self._blob(record, gate.blob_id)
        committed = self._log_access(gate.who, record, gate.area, "success", gate.reason)
        original = gate.blob_id == record.blob_id
        # A research copy goes without the original's salt and digest: they would let
        # its reader confirm a guess of the identified original.
        return SealedRecord(
            record.id,
            gate.area,
            committed.tx.txid,
            blob,
            record.salt if original else b"",
            record.digest if original else "",
            original,
            kac_header=gate.header,
            seal=gate.seal,
        )

    def _still_releasable(self, gate: ReadGate) -> None:
        """What the gate decided to release must still be there when it is released: the
        record not deleted, its personal seal unchanged and the share live (a revocation
        moves records to fresh slots), or the area key's wrap of its DEK still stored (a
        revoked referral, study or consent destroys its wraps, a key rotation moves them).
        A change that slipped in between refuses the read; the reader may ask again."""
        with self.sessions() as session:
            record = session.get(db.Record, gate.record.id)
            if record is None or record.shredded_ms is not None:
                raise NotFound(f"record {gate.record.id} was deleted (crypto-shredded)")
            if gate.area is Area.PERSONAL:
                # the gate's own check again (share live, its classes cover the slot), and
                # the header it released must still be the record's
                header = self._release_personal(session, gate.who, record, gate.share_id)
                if header != gate.header:
                    raise AccessDenied("the record's seal changed meanwhile (a share revoked)")
                return
            wrap = session.execute(
                select(db.Wrap).where(
                    db.Wrap.record == record.id, db.Wrap.area_key == gate.seal.area_key_id
                )
            ).first()
            if wrap is None:
                raise AccessDenied("the grant of this read was revoked meanwhile")

    def open_on_device(
        self, who: str, sealed: SealedRecord, share: hkac.Share | None = None
    ) -> bytes:
        """The reader's device: open a released record with the reader's own key from
        their wallet (their latest delivered copy of ``share``, or their attribute keys of
        the sealing authority)."""
        if sealed.area is Area.PERSONAL:
            if share is not None:
                share = self.wallets.delivered_share(who, share.share_id) or share
            return open_sealed(sealed, params=self.params, share=share)
        seal = sealed.seal
        if seal is None:
            raise InvalidInput(f"the {sealed.area.value} release carries no area seal")
        keys = [
            self.decoded(abe.AbeUserKey, path.read_bytes())
            for path in self.wallets.abe_key_files(who, seal.authority)
        ]
        with self.sessions() as session:
            hosp = self._hospital(session, seal.authority)
        public = self.authority_public(hosp.code, hosp.abe_public)
        return open_sealed(sealed, abe_keys=keys, authority_public=public)

    def _log_access(self, who: str, record: db.Record, area: Area, outcome: str, why):
        """The ``access`` tx of one read attempt, signed by the reader's identity key."""
        body = {
            "record": record.id,
            "patient": record.patient,
            "actor": who,
            "area": area.value,
            "outcome": outcome,
        }
        if why and why.strip():
            body["reason"] = why.strip()[:MAX_LOGGED_REASON]
        return self._submit(self.signer_for(who, record.hospital), TxKind.ACCESS, [body])[0]

    def _release_personal(self, session, who: str, record: db.Record, share_id: str | None):
        """The gate of the personal area: ``share_id`` must name a live share of this
        record's patient to ``who`` whose issued classes cover the record's slot; then the
        record's H-KAC header is released (the reader's share opens it on their device).
        Without a share only the record's own patient is served: their seed opens it."""
        if share_id is None:
            if who != patient_principal(record.patient):
                raise AccessDenied("without a share, the personal area serves only the patient")
            if record.kac_header is None:
                raise AccessDenied(_PENDING)
            return record.kac_header
        grant = session.get(db.Grant, share_id)
        if grant is None or grant.kind != "share" or grant.patient != record.patient:
            raise AccessDenied("this is not a share of the record's patient")
        if grant.grantee != who:
            raise AccessDenied(f"share {share_id} was not given to {who}")
        if grant.revoked_ms is not None:
            raise AccessDenied(f"share {share_id} was revoked")
        if not valid_at(grant.until_ms, self.clock()):
            raise AccessDenied(f"share {share_id} expired at {iso(grant.until_ms)}")
        if record.kac_header is None:
            raise AccessDenied(_PENDING)
        patient = self._patient(session, record.patient)
        slot = hkac.Directory.from_bytes(patient.directory).slot_of(record.id)
        issued = grant.scope.get("classes", {}).get(str(slot.block), [])
        if slot.index not in issued:
            raise AccessDenied(f"share {share_id} does not cover this record")
        return record.kac_header

    def _scope_for(self, session, who, record, area, reason) -> str:
        """Which area key a reader goes through, after the area's gate conditions."""
        now = self.clock()
        if area is Area.INSTITUTION:
            return f"institution/{record.hospital}/{top_department(record.dept, self.taxonomy)}"
        if area is Area.EMERGENCY:
            self._break_glass(session, who, record, reason, now)
            return f"emergency/{record.hospital}"
        if area is Area.COLLABORATION:
            grant = self._live_grant(
                session,
                "referral",
                record.patient,
                who,
                now,
                covers=lambda g: referral_covers(g.scope, record, self.taxonomy),
            )
            return f"referral/{grant.id}"
        if area is Area.RESEARCH:
            study = self._consented_study(session, who, record, now)
            return f"research/{study}/{record.hospital}"
        raise InvalidInput(f"unknown area {area}")

    def _consented_study(self, session, who: str, record: db.Record, now: int) -> str:
        """The newest of ``who``'s approved studies at the record's hospital that this
        patient consented to."""
        refusal = None
        for study in reversed(self._studies_of(session, who, record.hospital)):
            try:
                self._live_grant(session, "consent", record.patient, study, now)
            except AccessDenied as exc:
                refusal = refusal or exc
                continue
            return study
        raise refusal or AccessDenied(f"{who} has no approved study at {record.hospital}")

    def _live_grant(self, session, kind, patient, grantee, now, covers=None) -> db.Grant:
        """The newest live grant of ``kind`` from ``patient`` to ``grantee`` that ``covers``
        the request; otherwise AccessDenied saying why (none, revoked, expired, elsewhere)."""
        rows = list(
            session.execute(
                select(db.Grant)
                .where(
                    db.Grant.kind == kind,
                    db.Grant.patient == patient,
                    db.Grant.grantee == grantee,
                )
                .order_by(db.Grant.created_ms, db.Grant.id)
            ).scalars()
        )
        live = [g for g in rows if g.revoked_ms is None and valid_at(g.until_ms, now)]
        fitting = [g for g in live if covers is None or covers(g)]
        if fitting:
            return fitting[-1]
        if live:
            raise AccessDenied(f"no live {kind} for {grantee} covers this record")
        if any(g.revoked_ms is not None for g in rows):
            raise AccessDenied(f"the {kind} for {grantee} was revoked")
        if rows:
            raise AccessDenied(f"the {kind} for {grantee} expired at {iso(rows[-1].until_ms)}")
        raise AccessDenied(f"no {kind} of this record's patient for {grantee}")

    def _release_area(self, session, who, record, scope) -> tuple[AreaSeal, str]:
        """The record's seal in ``scope``'s live area key, if ``who`` holds a live key of
        its authority whose (public) attributes satisfy the key's policy: the hospital
        checks what the reader's key could open from the issued keys' records, not from
        the key itself, and refuses (and logs) a read the key could not make anyway."""
        found = self._wrap_in(session, record.id, scope)
        if found is None:
            raise AccessDenied(f"no wrap of this record in {scope}")
        area_key, wrap = found
        authority = area_key.authority
        live = list(self._live_keys(session, authority, who))
        if not live:
            raise AccessDenied(f"{who} holds no key of {authority} (none issued, or all revoked)")
        if not any(areas.satisfied_by(area_key.policy, tuple(k.attributes)) for k in live):
            raise AccessDenied(f"{who}'s attributes do not satisfy the policy {area_key.policy}")
        seal = AreaSeal(
            authority, area_key.id, area_key.policy, area_key.abe_ciphertext, wrap.wrapped
        )
        return seal, wrap.blob_id

    def _blob(self, record: db.Record, blob_id: str) -> bytes:
        """An intact copy of the record's encrypted blob (replicas repair each other)."""
        try:
            return self.blobs.get(blob_id)
        except BlobStoreError as exc:
            raise IntegrityError(f"no intact copy of record {record.id}: {exc}") from None

    def _fetch(self, record: db.Record, blob_id: str, dek: bytes) -> bytes:
        """The verified plaintext, for the hospital's own uses (export, verify): anchor on
        the ledger, blob hash, AEAD, salted digest."""
        self._check_anchor(record)
        blob = self._blob(record, blob_id)
        try:
            data = protect.open_blob(dek, blob, record.id)
        except DecryptionFailed:
            raise IntegrityError(f"record {record.id}: blob fails authentication") from None
        if blob_id == record.blob_id and not canonical.verify_record(
            data, record.salt, record.digest
        ):
            raise IntegrityError(f"record {record.id} does not match its ledger digest")
        return data

    def _check_anchor(self, record: db.Record) -> None:
        """The record's anchor on the ledger: signed by its hospital's records service and
        naming exactly this record, digest and blob."""
        anchored = self.ledger.find(record.anchor_txid)
        body = anchored.tx.body if anchored is not None else {}
        with self.sessions() as session:
            anchorer = session.get(db.Principal, service_principal(record.hospital))
        anchorer = anchorer.identity_public if anchorer is not None else None
        if (
            anchored is None
            or anchored.tx.kind != TxKind.ANCHOR_RECORD
            or anchored.tx.sender != anchorer
            or body.get("record") != record.id
            or body.get("digest") != record.digest
            or body.get("blob") != record.blob_id
        ):
            raise IntegrityError(f"record {record.id} does not match its ledger anchor")

    def export(self, patient_id: str) -> bytes:
        """The patient's records as NDJSON, in ingest order, logged as one access: the
        hospital's side (:meth:`seal_export`) and then the patient's device, which opens
        them with keys derived from the patient's own seed (not the hospitals')."""
        who = patient_principal(patient_id)
        sealed, pending = self.seal_export(who, patient_id)
        if pending:
            raise IntegrityError(f"records wait for a block key: {', '.join(pending[:5])}")
        with self.sessions() as session:
            directory = hkac.Directory.from_bytes(self._patient(session, patient_id).directory)
        seed = self.wallets.seed(patient_id)
        own = hkac.share_all(seed, self.params, directory, grantee=who)
        lines = (
            canonical.on_one_line(open_sealed(s, params=self.params, share=own)) for s in sealed
        )
        return b"".join(line + b"\n" for line in lines)

    def seal_export(self, who: str, patient_id: str) -> tuple[list[SealedRecord], list[str]]:
        """The hospital's side of an export, for the patient alone: every live record
        sealed to the patient's own H-KAC slots (their seed opens them, on their device),
        in ingest order, after one committed ``access`` tx (action ``export``). Records
        whose seal waits for a block key the patient has not published are named in the
        second list, never left out silently."""
        if who != patient_principal(patient_id):
            raise AccessDenied(f"only patient {patient_id} exports their records")
        with self.sessions() as session:
            patient = self._patient(session, patient_id)
            rows = list(
                session.execute(
                    select(db.Record)
                    .where(db.Record.patient == patient_id, db.Record.shredded_ms.is_(None))
                    .order_by(db.Record.seq)
                ).scalars()
            )
        ready = [r for r in rows if r.kac_header is not None]
        pending = [r.id for r in rows if r.kac_header is None]
        blobs = []
        for record in ready:
            self._check_anchor(record)
            blobs.append(self._blob(record, record.blob_id))
        body = {
            "record": "*",
            "patient": patient_id,
            "actor": who,
            "area": Area.PERSONAL.value,
            "outcome": "success",
            "action": "export",
        }
        signer = self.signer_for(who, patient.home_hospital)
        txid = self._submit(signer, TxKind.ACCESS, [body])[0].tx.txid
        sealed = [
            SealedRecord(
                r.id, Area.PERSONAL, txid, blob, r.salt, r.digest, True, kac_header=r.kac_header
            )
            for r, blob in zip(ready, blobs, strict=True)
        ]
        return sealed, pending

    def verify(self, record_id: str | None = None) -> dict[str, Any]:
        """Check the ledger (every running node's chain re-verified from genesis) and each
        record end to end: its anchor, every copy of its blob (bad copies repaired from a
        good one), then AEAD and salted digest through the holding hospital's own wrap."""
        nodes = [dataclasses.asdict(c) for c in self.ledger.verify()]
        problems: list[dict[str, str]] = []
        with self.sessions() as session:
            query = select(db.Record).where(db.Record.shredded_ms.is_(None))
            if record_id is not None:
                if self._record(session, record_id).shredded_ms is not None:
                    raise InvalidInput(f"record {record_id} was deleted (crypto-shredded)")
                query = query.where(db.Record.id == record_id)
            rows = list(session.execute(query.order_by(db.Record.seq)).scalars())
            scrub = self.blobs.scrub(only=None if record_id is None else [rows[0].blob_id])
            lost = set(scrub.lost)
            for record in rows:
                if record.blob_id in lost:
                    problem = f"no intact copy of blob {record.blob_id} on any replica"
                    problems.append({"record": record.id, "problem": problem})
                    continue
                try:
                    self._check_record(session, record)
                except (IntegrityError, BlobStoreError, DecryptionFailed) as exc:
                    problems.append({"record": record.id, "problem": str(exc)})
                except NoResultFound:
                    problem = "its hospital's institution wrap is missing"
                    problems.append({"record": record.id, "problem": problem})
        # A stopped node is listed (``running`` false) but is not an integrity failure; every
        # node that runs must verify, and at least one must.
        checked = [n for n in nodes if n["running"]]
        return {
            "ok": not problems and bool(checked) and all(n["ok"] for n in checked),
            "ledger": nodes,
            "records_checked": len(rows),
            "problems": problems,
            "repaired": [f"{blob} on {name}" for blob, name in scrub.repaired],
            "removed_corrupt_copies": [f"{blob} on {name}" for blob, name in scrub.removed],
        }

    def _check_record(self, session, record: db.Record) -> None:
        self._check_anchor(record)
        blob = self.blobs.get(record.blob_id)
        data = protect.open_blob(self._custodian_dek(session, record), blob, record.id)
        if not canonical.verify_record(data, record.salt, record.digest):
            raise IntegrityError("content does not match its ledger digest")
