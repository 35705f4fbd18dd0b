"""Grants: patient shares (H-KAC), referrals, studies and consents, break-glass, revocation.

A mixin of :class:`medshare.service.api.MedShare`: it uses the service's state (``sessions``,
``ledger``, ``wallets``, ``blobs``, ``params``, ``clock``) and its lookups.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medshare.api import consent_grants, share_grants
from medshare.crypto import hkac
from medshare.crypto.signing import InvalidSignature, SigningKey
from medshare.ledger.port import sign
from medshare.ledger.types import Tx, TxKind
from medshare.records import canonical, deidentify
from medshare.records.departments import Taxonomy
from medshare.service import areas, db, keyring, protect
from medshare.service.areas import Area
from medshare.service.common import (
    utc,
    valid_at,
)
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.ingest import BlockPublications
from medshare.service.wallets import check_principal, patient_principal


def referral_covers(scope: dict[str, Any], record: db.Record, taxonomy: Taxonomy) -> bool:
    """A referral covers its hospital's records, within its department sub-tree if any."""
    if scope.get("hospital") != record.hospital:
        return False
    dept = scope.get("dept")
    return dept is None or taxonomy.is_within(record.dept, dept)


class GrantMixin:
    """Grants (a part of :class:`~medshare.service.api.MedShare`)."""

    def share(
        self,
        patient_id: str,
        to: str,
        *,
        records: Sequence[str] = (),
        dept: str | None = None,
        everything: bool = False,
        until_ms: int | None = None,
    ) -> hkac.Share:
        """The patient shares records, a department (with its sub-tree) or everything.

        Signed by the patient's identity and committed as a GRANT before the share exists.
        """
        check_principal(to)
        if sum([bool(records), dept is not None, everything]) != 1:
            raise InvalidInput("choose exactly one of --record, --dept or --all")
        now = self.clock()
        if until_ms is not None and until_ms <= now:
            raise InvalidInput("--until must be in the future")
        with db.transaction(self.sessions) as session:
            patient = self._patient(session, patient_id)
            self._enroll_grantee(session, to, patient.home_hospital)
            for rid in records:
                if self._record(session, rid).patient != patient_id:
                    raise NotFound(f"record {rid} is not a record of patient {patient_id}")
            if dept is not None and dept not in self.taxonomy:
                raise InvalidInput(f"unknown department code {dept!r}")
            # The patient's device: the share from the seed, the grant signed with the
            # patient's key. The hospital's gate: the same check as over HTTP.
            share = self._make_share(patient, to, records, dept, now, until_ms)
            key = self.wallets.identity(patient_principal(patient_id))
            body = share_grants.grant_body(share, patient_id, until_ms)
            tx = sign(self.ledger, key, TxKind.GRANT, [body])[0]
            self._accept_share(session, patient, tx, share.classes())
        return share

    def accept_share(
        self, patient_id: str, tx: Tx, classes: Mapping[int, frozenset[int]]
    ) -> dict[str, Any]:
        """A share the patient's device made: the GRANT ``tx`` the patient signed and the
        share's class map (the key itself went to the grantee, never here). Checked, put on
        the ledger, then kept for the gate."""
        with db.transaction(self.sessions) as session:
            patient = self._patient(session, patient_id)
            grant = self._accept_share(session, patient, tx, classes)
            return {"grant": grant.id, "txid": grant.txid, "grantee": grant.grantee}

    def _accept_share(
        self,
        session: Session,
        patient: db.Patient,
        tx: Tx,
        classes: Mapping[int, frozenset[int]],
    ) -> db.Grant:
        self._check_patients_grant(session, patient.id, tx, "share")
        try:
            share_id, grantee, kind, items, until_ms = share_grants.parse_body(tx.body)
        except share_grants.ShareGrantError as exc:
            raise InvalidInput(f"not a share grant: {exc}") from None
        if tx.body["patient"] != patient.id:
            raise InvalidInput(f"the grant names patient {tx.body['patient']!r}, not {patient.id}")
        if session.get(db.Grant, share_id) is not None:
            raise InvalidInput(f"grant {share_id} exists already")
        self._principal(session, grantee)
        now = self.clock()
        if until_ms is not None and until_ms <= now:
            raise InvalidInput("--until must be in the future")
        directory = hkac.Directory.from_bytes(patient.directory)
        try:
            if kind == hkac.SCOPE_RECORDS:
                for rid in items:
                    if self._record(session, rid).patient != patient.id:
                        raise NotFound(f"record {rid} is not a record of patient {patient.id}")
            elif kind == hkac.SCOPE_DEPARTMENTS and not all(d in self.taxonomy for d in items):
                raise InvalidInput("a department share names catalogue departments only")
            needed = hkac.scope_classes(directory, kind, items)
        except (ValueError, hkac.UnknownRecord) as exc:
            raise InvalidInput(f"the share's scope does not fit the directory: {exc}") from None
        for block, chosen in classes.items():
            if not chosen <= needed.get(block, set()):
                raise InvalidInput(f"the share claims classes of block {block} outside its scope")
        committed = self.relay([tx])[0]
        grant = db.Grant(
            id=share_id,
            kind="share",
            area=Area.PERSONAL.value,
            patient=patient.id,
            grantee=grantee,
            scope={
                "kind": kind,
                "items": list(items),
                "classes": {str(b): sorted(c) for b, c in classes.items() if c},
            },
            created_ms=now,
            until_ms=until_ms,
            txid=committed.tx.txid,
        )
        session.add(grant)
        return grant

    def _check_patients_grant(self, session: Session, patient_id: str, tx: Tx, what: str) -> None:
        """``tx`` is a GRANT of this chain signed by the patient's own enrolled key (a share
        or a consent their device made); AccessDenied otherwise."""
        principal = session.get(db.Principal, patient_principal(patient_id))
        if (
            principal is None
            or tx.kind is not TxKind.GRANT
            or tx.sender != principal.identity_public
            or tx.chain != self.ledger.chain_id
        ):
            raise AccessDenied(f"a {what} of patient {patient_id} is signed by the patient")
        try:
            tx.verify()
        except InvalidSignature:
            raise AccessDenied(f"the {what}'s signature does not verify") from None

    def _commit_grant(self, session: Session, signer: SigningKey, grant: db.Grant) -> None:
        """Commit a GRANT tx for ``grant`` (signed by ``signer``), then store the row.

        The ledger body carries what an auditor needs to read the grant; the H-KAC class
        map in a share's scope stays in the database (it is for re-wrapping only).
        """
        scope = {k: v for k, v in grant.scope.items() if k != "classes"}
        body = {
            "grant": grant.id,
            "patient": grant.patient or "*",
            "grantee": grant.grantee,
            "area": grant.area,
            "scope": scope,
        }
        if grant.until_ms is not None or grant.kind in ("share", "referral"):
            body["until"] = grant.until_ms
        committed = self._submit(signer, TxKind.GRANT, [body])[0]
        grant.txid = committed.tx.txid
        session.add(grant)

    def _enroll_grantee(self, session: Session, who: str, hospital: str) -> None:
        """A person the patient shares with gets an identity on first share (their wallet
        is where the share file goes), registered on the ledger by the node of the
        patient's hospital, so their reads can be signed and logged."""
        if session.get(db.Principal, who) is not None:
            return
        if not self.wallets.has_identity(who):
            self.wallets.create_identity(who)
        identity = self.wallets.identity(who)
        self.register([(who, hospital)])
        session.add(
            db.Principal(
                id=who,
                kind="person",
                hospital=None,
                roles=["grantee"],
                dept=None,
                identity_public=identity.public,
                created_ms=self.clock(),
            )
        )

    def _make_share(self, patient, to, records, dept, now_ms, until_ms) -> hkac.Share:
        seed = self.wallets.seed(patient.id)
        directory = hkac.Directory.from_bytes(patient.directory)
        times = {"now": utc(now_ms), "until": None if until_ms is None else utc(until_ms)}
        if records:
            return hkac.share_records(seed, self.params, directory, records, grantee=to, **times)
        if dept is not None:
            return hkac.share_department(
                seed, self.params, directory, dept, self.taxonomy.subtree, grantee=to, **times
            )
        return hkac.share_all(seed, self.params, directory, grantee=to, **times)

    def _patient_signs(self, patient_id: str, kind: TxKind, body: dict[str, Any]):
        key = self.wallets.identity(patient_principal(patient_id))
        return self._submit(key, kind, [body])[0]

    def revoke(
        self,
        grant_id: str,
        *,
        reason: str = "revoked by the grantor",
        signed: Tx | None = None,
    ) -> dict[str, Any]:
        """End a grant. An H-KAC share's records move to fresh slots and the current slab of
        every department it covered is retired (so the revoked key opens no stored wrap and
        no later record, and the other live shares get the new slots' keys); a referral's
        or consent's wraps are destroyed; a study approval loses its research scope, its
        wraps and the researcher's study key; then the REVOKE tx is committed.

        ``signed`` is the REVOKE tx as the patient's own wallet signed it (a patient whose
        key is on their device; :meth:`check_revocation`); without it the grantor's key
        held here signs."""
        with self.sessions() as session:
            kind = _revocable(session, grant_id).kind
            if signed is not None:
                self.check_revocation(session, grant_id, signed)
                reason = signed.body["reason"]
            study_keys = self._study_keys(session, grant_id) if kind == "study" else []
        # A study's key is revoked first, in revoke_key's own all-or-nothing transaction (it
        # bumps the epoch and re-issues the authority's other keys): if what follows fails,
        # the researcher holds nothing live and revoking again finishes the job.
        for who, authority, tag in study_keys:
            self.revoke_key(
                who,
                authority,
                tag,
                retired=f"study {grant_id.removeprefix('study/')} ended, key of {who}",
            )
        with db.transaction(self.sessions) as session:
            grant = _revocable(session, grant_id)
            if signed is not None:
                signer = None  # the patient's wallet signed already
            elif _patients_grant(grant):
                signer = self.wallets.identity(patient_principal(grant.patient))
            else:
                signer = self.node_key(grant.scope.get("hospital", ""))
            grant.revoked_ms = self.clock()
            moved = shredded = retired = 0
            if grant.kind == "share":
                moved, retired = self._reseal_shared(session, grant)
            elif grant.kind in ("referral", "consent", "study"):
                shredded = self._shred_grant_wraps(session, grant)
            # Logged last, inside the transaction: if anything above fails, neither the
            # database nor the ledger says the grant was revoked.
            if signed is not None:
                tx = self.relay([signed])[0]
            else:
                tx = self._submit(signer, TxKind.REVOKE, [{"grant": grant_id, "reason": reason}])[0]
        out = {
            "grant": grant_id,
            "txid": tx.tx.txid,
            "records_resealed": moved,
            "wraps_destroyed": shredded,
        }
        if kind == "share":
            out["slabs_retired"] = retired
        if kind == "study":
            out["keys_revoked"] = len(study_keys)
        return out

    def check_revocation(self, session: Session, grant_id: str, tx: Tx) -> None:
        """``tx`` must be the REVOKE of this live grant of the patient's, signed by the
        patient's own key for this chain: ``{"grant": id, "reason": text}``."""
        grant = _revocable(session, grant_id)
        principal = (
            session.get(db.Principal, patient_principal(grant.patient))
            if _patients_grant(grant)
            else None
        )
        if (
            principal is None
            or grant.kind not in ("share", "consent")
            or tx.kind is not TxKind.REVOKE
            or tx.sender != principal.identity_public
            or tx.chain != self.ledger.chain_id
        ):
            raise AccessDenied(f"grant {grant_id} is revoked by its patient, with their key")
        body = tx.body
        reason = body.get("reason") if isinstance(body, Mapping) else None
        if (
            set(body) != {"grant", "reason"}
            or body["grant"] != grant_id
            or not isinstance(reason, str)
            or not 0 < len(reason) <= 500
        ):
            raise InvalidInput('a revocation is {"grant": id, "reason": text of ≤ 500}')
        try:
            tx.verify()
        except InvalidSignature:
            raise AccessDenied("the revocation's signature does not verify") from None

    def _study_keys(self, session: Session, grant_id: str) -> list[tuple[str, str, bytes]]:
        """(holder, authority, tag) of each live key carrying the study's ``ethics:`` attribute
        (the researcher's study key, at whatever epoch it was last re-issued)."""
        grant = session.get(db.Grant, grant_id)
        hospital, attribute = grant.scope["hospital"], f"ethics:{grant.scope['study']}"
        return [
            (row.principal, hospital, keyring.registration_tag(row.registration))
            for row in self._live_keys(session, hospital, grant.grantee)
            if attribute in (row.attributes or [])
        ]

    def _shred_grant_wraps(self, session: Session, grant: db.Grant) -> int:
        """A referral's, a study approval's or a research consent's wraps are destroyed with
        the grant. A referral's or a study's area keys are retired too (no later consent or
        record can be wrapped for them, and what their old keys decrypt wraps nothing); a
        consent only takes this patient's de-identified copies out of the study."""
        if grant.kind == "referral":
            scope = f"referral/{grant.id}"
        else:
            scope = f"research/{grant.scope['study']}/{grant.scope['hospital']}"
        keys = session.execute(select(db.AreaKey).where(db.AreaKey.scope == scope)).scalars()
        destroyed = 0
        for area_key in list(keys):
            wraps = session.execute(select(db.Wrap).where(db.Wrap.area_key == area_key.id))
            for wrap in list(wraps.scalars()):
                record = session.get(db.Record, wrap.record)
                if grant.kind == "consent" and record.patient != grant.patient:
                    continue
                session.delete(wrap)
                destroyed += 1
            if grant.kind != "consent" and area_key.retired_ms is None:
                area_key.retired_ms = self.clock()
        return destroyed

    def _extend_shares(self, session: Session, patient_id: str, *, record_shares: bool) -> None:
        """Bring the patient's live shares up to date with the directory: after an ingest
        reserved new slabs, department and whole-record shares get the missing keys
        (DESIGN §3.3's dynamic addition beyond one slab); after a revocation moved records
        to fresh slots, the other shares covering them (``record_shares`` too) get the new
        slots' keys. Delivered to each grantee and logged as a grant."""
        if not self.wallets.has_seed(patient_id):
            return  # a device-held seed: the patient's wallet extends its shares
        patient = session.get(db.Patient, patient_id)
        directory = hkac.Directory.from_bytes(patient.directory)
        now = self.clock()
        shares = session.execute(
            select(db.Grant).where(
                db.Grant.patient == patient_id,
                db.Grant.kind == "share",
                db.Grant.revoked_ms.is_(None),
            )
        ).scalars()
        for grant in list(shares):
            if not valid_at(grant.until_ms, now):
                continue
            if grant.scope["kind"] == "records" and not record_shares:
                continue
            held = {int(b): frozenset(c) for b, c in grant.scope["classes"].items()}
            stub = hkac.Share(
                grant.id,
                grant.grantee,
                grant.scope["kind"],
                tuple(grant.scope["items"]),
                utc(grant.created_ms),
                None if grant.until_ms is None else utc(grant.until_ms),
                (),
            )
            full, _ = hkac.extend_share(self.wallets.seed(patient_id), self.params, directory, stub)
            if full.classes() == held:
                continue
            self.wallets.deliver_share(grant.grantee, full)
            classes = {str(b): sorted(c) for b, c in full.classes().items()}
            grant.scope = {**grant.scope, "classes": classes}
            body = {
                "grant": grant.id,
                "patient": patient_id,
                "grantee": grant.grantee,
                "area": grant.area,
                "scope": {"kind": grant.scope["kind"], "items": grant.scope["items"]},
                "until": grant.until_ms,
                "extension": len(full.keys),
            }
            self._patient_signs(patient_id, TxKind.GRANT, body)

    def _reseal_shared(self, session: Session, grant: db.Grant) -> tuple[int, int]:
        """Move the records a revoked share opened to fresh H-KAC slots and retire the
        current slab of every department it covered (patient side); returns (records
        moved, slabs retired).

        The retirement does not depend on what is moved: a department whose current slab
        holds only deleted records has nothing to move, yet the revoked key still holds
        that slab's unused slots, so without it every later record of the department would
        open with the revoked key (issue 12, finding 4)."""
        patient = self._patient(session, grant.patient)
        classes = {int(b): frozenset(c) for b, c in grant.scope.get("classes", {}).items()}
        directory = hkac.Directory.from_bytes(patient.directory)
        directory, retired = hkac.retire_slabs(directory, classes)
        # Every live record the share covered moves, sealed or not: one whose seal waits
        # for a block key would otherwise be sealed into the revoked slots later.
        plan = [
            rid
            for rid in directory.records_in(classes)
            if self._record(session, rid).shredded_ms is None  # shredded: nothing to move
        ]
        if not plan:
            if retired:
                patient.directory = directory.to_bytes()
            return 0, len(retired)
        # The holding hospital recovers each DEK through its own institution wrap: the
        # patient's seed is not needed (and, on the patient's device, not available).
        deks = {rid: self._custodian_dek(session, self._record(session, rid)) for rid in plan}
        directory = hkac.move_records(directory, plan)
        patient.directory = directory.to_bytes()
        publications: BlockPublications = {}
        for rid, dek in deks.items():
            slot = directory.slot_of(rid)
            public = self._block_public(patient, slot.block, publications)
            if public is None:  # waits for the patient's device to publish the block
                self._record(session, rid).kac_header = None
                continue
            sealed = hkac.seal_record(self.params, {slot.block: public}, slot, dek, rid)
            self._record(session, rid).kac_header = sealed.to_bytes()
        self._submit_batches(self._publication_batches(publications))
        self._extend_shares(session, patient.id, record_shares=True)
        return len(plan), len(retired)

    def _break_glass(self, session, who, record, reason, now) -> None:
        """Reuse ``who``'s live break-glass for this patient at this record's hospital, or
        commit a new one (reason required): the tx is on the ledger, and so in the
        patient's log, before any read.

        A break-glass is scoped to the hospital whose records it opened (``scope.hospital``):
        emergency staff hold an emergency key of every authority, so a window opened for
        an emergency at one hospital must not also release the patient's records held at
        another without a break-glass (and reason) of its own there.

        Only emergency staff may break the glass; anyone else is refused here (and the
        refusal logged by the caller), so no break-glass window is opened in their name.
        CP-ABE is still what enforces it: the emergency area key needs the emergency role.
        """
        principal = session.get(db.Principal, who)
        if principal is None or "emergency" not in (principal.roles or []):
            raise AccessDenied(f"{who} is not emergency staff and cannot break the glass")
        rows = session.execute(
            select(db.Grant).where(
                db.Grant.kind == "break-glass",
                db.Grant.patient == record.patient,
                db.Grant.grantee == who,
                db.Grant.revoked_ms.is_(None),
            )
        ).scalars()
        if any(
            valid_at(g.until_ms, now) and (g.scope or {}).get("hospital") == record.hospital
            for g in rows
        ):
            return
        if not reason or not reason.strip():
            raise InvalidInput("break-glass needs a reason (--reason)")
        until = now + self.config.break_glass_minutes * 60_000
        body = {
            "record": record.id,
            "patient": record.patient,
            "actor": who,
            "reason": reason.strip()[:500],
            "until": until,
        }
        tx = self._submit(self.signer_for(who, record.hospital), TxKind.BREAK_GLASS, [body])[0]
        session.add(
            db.Grant(
                id=secrets.token_hex(16),
                kind="break-glass",
                area=Area.EMERGENCY.value,
                patient=record.patient,
                grantee=who,
                scope={"hospital": record.hospital, "reason": body["reason"]},
                created_ms=now,
                until_ms=until,
                txid=tx.tx.txid,
            )
        )
        session.commit()

    def refer(
        self,
        patient_id: str,
        hospital: str,
        to: str,
        *,
        dept: str | None = None,
        until_ms: int | None = None,
    ) -> str:
        """``hospital`` refers the patient to a partner physician ``to``: a key with the
        referral attribute from ``hospital``'s authority, a referral area key, and wraps
        of the patient's records at ``hospital`` (within ``dept`` if given)."""
        now = self.clock()
        until = until_ms or now + self.config.referral_days * 86_400_000
        if until <= now:
            raise InvalidInput("the referral's end must be in the future")
        referral = "R" + secrets.token_hex(6)
        with db.transaction(self.sessions) as session:
            self._patient(session, patient_id)
            partner = self._principal(session, to)
            if partner.hospital is None or partner.hospital == hospital:
                raise InvalidInput(f"{to} is not a clinician of a partner hospital")
            if "physician" not in (partner.roles or []):
                raise InvalidInput(f"{to} is not a physician; referrals go to physicians")
            hosp = self._hospital(session, hospital)
            if dept is not None and dept not in self.taxonomy:
                raise InvalidInput(f"unknown department code {dept!r}")
            scope = {"hospital": hospital, "partner": partner.hospital, "dept": dept}
            self._commit_grant(
                session,
                self.node_key(hospital),
                db.Grant(
                    id=referral,
                    kind="referral",
                    area=Area.COLLABORATION.value,
                    patient=patient_id,
                    grantee=to,
                    scope=scope,
                    created_ms=now,
                    until_ms=until,
                ),
            )
            area_key = self._area_key(
                session,
                Area.COLLABORATION,
                hospital,
                f"referral/{referral}",
                referral=referral,
                partner=partner.hospital,
            )
            records = self._records_at(session, patient_id, hospital)
            for record in records:
                if referral_covers(scope, record, self.taxonomy):
                    self._add_wrap(session, record, area_key, self._custodian_dek(session, record))
            epoch = hosp.epoch
        if self.wallets.has_identity(to):  # the partner's wallet is kept here: issue now
            attrs = areas.partner_attributes(referral, partner.hospital, epoch)
            self.issue_key(to, hospital, attrs)
        # otherwise the partner's own wallet asks the authority for it (`wallet issue`)
        return referral

    def _records_at(self, session, patient_id: str, hospital: str) -> list[db.Record]:
        return list(
            session.execute(
                select(db.Record).where(
                    db.Record.patient == patient_id,
                    db.Record.hospital == hospital,
                    db.Record.shredded_ms.is_(None),
                )
            ).scalars()
        )

    def approve_study(
        self, study: str, hospital: str, researcher: str, *, approver: str | None = None
    ) -> dict[str, Any]:
        """An ethics approval at ``hospital``: ``researcher`` may ask its authority for an
        ``ethics:<study>`` key, and patients may consent to the study. ``approver`` (the
        ethics officer who asked, over HTTP) is named in the grant on the ledger. A
        researcher whose wallet this data directory keeps (the test harness) gets the key
        at once."""
        if not isinstance(study, str) or not _STUDY_NAME.fullmatch(study):
            raise InvalidInput(
                "a study's name is 1 to 64 letters, digits, '.', '_' or '-' (it becomes a "
                "policy attribute)"
            )
        check_principal(study)
        with db.transaction(self.sessions) as session:
            person = self._principal(session, researcher)
            if "researcher" not in (person.roles or []):
                raise InvalidInput(f"{researcher} is not a researcher; studies go to researchers")
            hosp = self._hospital(session, hospital)
            if session.get(db.Grant, f"study/{study}") is not None:
                raise InvalidInput(f"study {study} already exists")
            grant = db.Grant(
                id=f"study/{study}",
                kind="study",
                area=Area.RESEARCH.value,
                patient=None,
                grantee=researcher,
                scope={"hospital": hospital, "study": study}
                | ({"approved_by": approver} if approver else {}),
                created_ms=self.clock(),
            )
            self._commit_grant(session, self.node_key(hospital), grant)
            epoch, txid = hosp.epoch, grant.txid
        self.wallets.save_study_secret(study, secrets.token_bytes(32))
        if self.wallets.has_identity(researcher):
            self.issue_key(researcher, hospital, areas.researcher_attributes(study, epoch))
        # otherwise the researcher's own wallet asks the authority for it (`wallet issue`)
        return {"study": study, "hospital": hospital, "researcher": researcher, "txid": txid}

    def study(self, study: str) -> dict[str, str]:
        """A live study's public facts (its hospital), for a patient about to consent."""
        with self.sessions() as session:
            approval = self._live_study(session, study)
            return {"study": study, "hospital": approval.scope["hospital"]}

    def _live_study(self, session: Session, study: object) -> db.Grant:
        approval = session.get(db.Grant, f"study/{study}") if isinstance(study, str) else None
        if approval is None or approval.kind != "study" or approval.revoked_ms is not None:
            raise NotFound(f"unknown study {study!r}")
        return approval

    def _studies_of(self, session, who: str, hospital: str) -> list[str]:
        """``who``'s live study approvals at ``hospital``, oldest first."""
        rows = session.execute(
            select(db.Grant)
            .where(
                db.Grant.kind == "study",
                db.Grant.grantee == who,
                db.Grant.revoked_ms.is_(None),
            )
            .order_by(db.Grant.created_ms, db.Grant.id)
        ).scalars()
        return [g.scope["study"] for g in rows if g.scope.get("hospital") == hospital]

    def consent_research(self, patient_id: str, study: str) -> int:
        """The patient consents to ``study`` with the key this data directory keeps for them
        (the test harness; a patient's own wallet signs the consent and the server takes it
        with :meth:`accept_consent`). Returns how many de-identified copies were made."""
        with db.transaction(self.sessions) as session:
            self._patient(session, patient_id)
            hospital, grant_id = self._consent_target(session, patient_id, study)
            made = self._research_copies(session, patient_id, study, hospital)
            # Logged last: a failure above (e.g. a blob with no intact copy) leaves neither
            # a consent in the ledger nor derivatives behind.
            self._commit_grant(
                session,
                self.wallets.identity(patient_principal(patient_id)),
                _consent_grant(grant_id, patient_id, study, hospital, self.clock()),
            )
        return made

    def accept_consent(self, patient_id: str, tx: Tx) -> dict[str, Any]:
        """A research consent the patient's device signed: the GRANT ``tx`` must be the
        patient's, of this chain, and exactly the consent this hospital would write
        (:func:`consent_grants.consent_body`). The study's de-identified copies of the
        patient's records are made, then the consent is put on the ledger."""
        with db.transaction(self.sessions) as session:
            self._patient(session, patient_id)
            self._check_patients_grant(session, patient_id, tx, "consent")
            study = tx.body.get("grantee") if isinstance(tx.body, dict) else None
            hospital, grant_id = self._consent_target(session, patient_id, study)
            if tx.body != consent_grants.consent_body(grant_id, patient_id, study, hospital):
                raise InvalidInput(
                    f"not the consent grant {grant_id} of patient {patient_id} to {study} at "
                    f"{hospital} (consent_grants.consent_body)"
                )
            expected = self.ledger.next_nonce(tx.sender)
            if tx.nonce != expected:
                # checked before any copy is made: a consent the chain would refuse must
                # not leave de-identified copies behind in the replicas
                raise InvalidInput(f"the consent's nonce must be {expected}, not {tx.nonce}")
            made = self._research_copies(session, patient_id, study, hospital)
            committed = self.relay([tx])[0]  # last: a failure above leaves nothing behind
            grant = _consent_grant(grant_id, patient_id, study, hospital, self.clock())
            grant.txid = committed.tx.txid
            session.add(grant)
            return {"grant": grant_id, "txid": grant.txid, "study": study, "copies": made}

    def _consent_target(self, session: Session, patient_id: str, study: object) -> tuple[str, str]:
        """(the study's hospital, the id the patient's consent to it gets); NotFound for no
        live study, InvalidInput while a consent of the patient to it is live."""
        approval = self._live_study(session, study)
        grant_id = _fresh_grant_id(session, consent_grants.consent_base(str(study), patient_id))
        if grant_id is None:
            raise InvalidInput(f"patient {patient_id} already consented to {study}")
        return approval.scope["hospital"], grant_id

    def _research_copies(self, session: Session, patient_id: str, study: str, hospital: str) -> int:
        """De-identified copies of the patient's records at ``hospital``, each under a new
        DEK wrapped for the study's research area key; how many were made."""
        area_key = self._area_key(
            session, Area.RESEARCH, hospital, f"research/{study}/{hospital}", study=study
        )
        target = deidentify.Study(study, self.wallets.study_secret(study))
        made = 0
        for record in self._records_at(session, patient_id, hospital):
            dek = self._custodian_dek(session, record)
            plain = self._fetch(record, record.blob_id, dek)
            try:
                copy = deidentify.deidentify(json.loads(plain), target, patient_id)
            except ValueError as exc:
                raise InvalidInput(
                    f"record {record.id} cannot be de-identified for a study ({exc}); no "
                    "consent is taken while it is there"
                ) from None
            copy_dek = protect.new_dek()
            data = canonical.canonical_bytes(copy)
            blob_id = self.blobs.put(protect.seal_blob(copy_dek, data, record.id))
            self._add_wrap(session, record, area_key, copy_dek, blob_id)
            made += 1
        return made


_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _consent_grant(
    grant_id: str, patient_id: str, study: str, hospital: str, now_ms: int
) -> db.Grant:
    return db.Grant(
        id=grant_id,
        kind="consent",
        area=Area.RESEARCH.value,
        patient=patient_id,
        grantee=study,
        scope={"study": study, "hospital": hospital},
        created_ms=now_ms,
    )


def _patients_grant(grant: db.Grant) -> bool:
    """A grant the patient gave (a share or a research consent): the patient revokes it."""
    return grant.area in (Area.PERSONAL.value, Area.RESEARCH.value) and bool(grant.patient)


def _revocable(session: Session, grant_id: str) -> db.Grant:
    """The grant ``grant_id``, if it exists and is still live (a clear error otherwise)."""
    grant = session.get(db.Grant, grant_id) if isinstance(grant_id, str) and grant_id else None
    if grant is None:
        raise NotFound(f"unknown grant {grant_id!r}")
    if grant.revoked_ms is not None:
        raise InvalidInput(f"grant {grant_id} is already revoked")
    return grant


def _fresh_grant_id(session: Session, base: str) -> str | None:
    """``base`` if unused, or ``base/<n>`` after revoked grants (a patient may consent again
    after withdrawing); None while a grant under ``base`` is still live."""
    n = 1
    while True:
        grant_id = base if n == 1 else f"{base}/{n}"
        existing = session.get(db.Grant, grant_id)
        if existing is None:
            return grant_id
        if existing.revoked_ms is None:
            return None
        n += 1
