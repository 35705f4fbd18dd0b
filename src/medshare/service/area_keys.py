"""CP-ABE area keys and the users' keys: issue, wrap, revoke with an epoch bump, trace.

A mixin of :class:`medshare.service.api.MedShare`: it uses the service's state (``sessions``,
``ledger``, ``wallets``, ``blobs``, ``params``, ``clock``) and its lookups.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from medshare.crypto import abe, issuance
from medshare.crypto.errors import CryptoError
from medshare.ledger.app import published
from medshare.ledger.types import TxKind
from medshare.service import areas, db, keyring, protect
from medshare.service.areas import Area, top_department
from medshare.service.common import (
    authority_principal,
    valid_at,
)
from medshare.service.errors import AccessDenied, InvalidInput, NotFound

# Principals an authority may issue keys to: staff enrolled by a hospital ("clinician",
# whatever their role) and the harness's researcher.
STAFF_KINDS = ("clinician", "researcher")
# The reason of a key revocation its holder gave no cause for (the authority signs it).
RETIRED = "retired: "


class AreaKeyMixin:
    """CP-ABE area keys and the users' keys (a part of :class:`~medshare.service.api.MedShare`)."""

    def _kek(self, hospital: str, area_key_id: str) -> bytes:
        return protect.derive_kek(self.wallets.kek_seed(hospital), area_key_id)

    def _area_key(
        self, session: Session, area: Area, authority: str, scope: str, **values: Any
    ) -> db.AreaKey:
        """The live area key of a scope, created (and CP-ABE published) on first use."""
        row = self._live_area_key(session, scope)
        if row is not None:
            return row
        hosp = self._hospital(session, authority)
        text = self.templates.policy(area, epoch=hosp.epoch, **values)
        return self._new_area_key(session, hosp, area, scope, text)

    @staticmethod
    def _live_area_key(session: Session, scope: str) -> db.AreaKey | None:
        return session.execute(
            select(db.AreaKey).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one_or_none()

    def _wrap_in(
        self, session: Session, record_id: str, scope: str
    ) -> tuple[db.AreaKey, db.Wrap] | None:
        """The live area key of ``scope`` and the record's wrap under it, if both exist."""
        area_key = self._live_area_key(session, scope)
        if area_key is None:
            return None
        wrap = session.execute(
            select(db.Wrap).where(db.Wrap.record == record_id, db.Wrap.area_key == area_key.id)
        ).scalar_one_or_none()
        return None if wrap is None else (area_key, wrap)

    def _new_area_key(
        self, session: Session, hosp: db.Hospital, area: Area, scope: str, text: str
    ) -> db.AreaKey:
        """A fresh KEK for ``scope``, published as a CP-ABE ciphertext under ``text``."""
        key_id = secrets.token_hex(16)
        public = self.authority_public(hosp.code, hosp.abe_public)
        ct = abe.encrypt(public, text, self._kek(hosp.code, key_id), context=key_id.encode())
        row = db.AreaKey(
            id=key_id,
            area=area.value,
            authority=hosp.code,
            scope=scope,
            policy=text,
            epoch=hosp.epoch,
            abe_ciphertext=ct.to_bytes(),
            created_ms=self.clock(),
        )
        session.add(row)
        session.flush()
        return row

    def _write_keys(self, session: Session, hospital: str, dept: str) -> list[db.AreaKey]:
        """The area keys a new record of ``hospital``/``dept`` is wrapped under at ingest."""
        top = top_department(dept, self.taxonomy)
        return [
            self._area_key(
                session,
                Area.INSTITUTION,
                hospital,
                f"institution/{hospital}/{top}",
                hospital=hospital,
                dept=top,
            ),
            self._area_key(session, Area.EMERGENCY, hospital, f"emergency/{hospital}"),
        ]

    def _custodian_dek(self, session, record: db.Record) -> bytes:
        """The holding hospital recovers a record's DEK through its own institution wrap."""
        scope = f"institution/{record.hospital}/{top_department(record.dept, self.taxonomy)}"
        found = self._wrap_in(session, record.id, scope)
        if found is None:
            raise NoResultFound(f"record {record.id} has no wrap in {scope}")
        area_key, wrap = found
        kek = self._kek(record.hospital, area_key.id)
        return protect.unwrap_dek(kek, wrap.wrapped, record.id, area_key.id)

    def _add_wrap(self, session, record, area_key, dek, blob_id=None) -> None:
        kek = self._kek(area_key.authority, area_key.id)
        session.add(
            db.Wrap(
                record=record.id,
                area_key=area_key.id,
                blob_id=blob_id or record.blob_id,
                wrapped=protect.wrap_dek(kek, dek, record.id, area_key.id),
            )
        )

    def publish_authority_keys(self, hospitals: Sequence[str]) -> None:
        """Each authority publishes the digests of its CP-ABE public key and of its
        Paillier modulus with the modulus's proof on the ledger, signed by its own
        enrolled identity (``authority@<hospital>``, registered first): encryptors and
        users check those keys against the ledger, never against a database row alone."""
        batches = []
        for code in hospitals:
            keys = self.wallets.authority(code)
            proof = keys.modulus_proof
            if proof is None:
                raise InvalidInput(f"authority {code} has no Paillier modulus proof")
            modulus = issuance.modulus_digest(keys.paillier_p * keys.paillier_q, proof)
            bodies = [
                {
                    "key": published.authority_key(code, published.ABE_KEY),
                    "digest": published.digest(keys.master.public.to_bytes()),
                },
                {
                    "key": published.authority_key(code, published.PAILLIER_KEY),
                    "digest": modulus.hex(),
                },
            ]
            identity = self.wallets.identity(authority_principal(code))
            batches.append((identity, TxKind.PUBLISH_KEY, bodies))
        self._submit_batches(batches)

    def _enrolled_on_ledger(self, identity: str, key: bytes) -> bool:
        """The authority offers keys only to identity keys the ledger enrolled as named."""
        return self.ledger.registered(key) == identity

    def _published_authority(self, session: Session, authority: str) -> keyring.Published:
        """What a user takes from the ledger before issuance: the authority's public key
        (its row, checked against the published digest) and its modulus digest."""
        hosp = self._hospital(session, authority)
        public = self.authority_public(authority, hosp.abe_public)
        name = published.authority_key(authority, published.PAILLIER_KEY)
        modulus = self.ledger.published(name)
        if modulus is None:
            raise InvalidInput(f"{name} is not published on the ledger; no key is issued")
        return keyring.Published(public, bytes.fromhex(modulus))

    def entitled_attributes(self, who: str, authority: str) -> tuple[str, ...]:
        """The attributes ``authority`` issues to ``who`` on request (the authority decides,
        never the requester): its own clinicians get their department's institution key,
        emergency staff of the consortium an emergency key of every authority, a partner
        physician a referral key, a researcher the key of a study it approved."""
        with self.sessions() as session:
            principal = session.get(db.Principal, who)
            hosp = self._hospital(session, authority)
            roles = list(principal.roles or []) if principal is not None else []
            if principal is None or principal.kind not in STAFF_KINDS or not roles:
                raise AccessDenied(f"{who} is not staff: {authority} issues them no key")
            if self._revoked_holder(who, authority):
                raise AccessDenied(
                    f"a key of {who} at {authority} was revoked: {authority} issues them "
                    "no key until it re-admits them"
                )
            role = "emergency" if "emergency" in roles else roles[0]
            attributes = areas.staff_entitlement(
                role, principal.hospital, principal.dept, authority, hosp.epoch, self.taxonomy
            ) or (
                self._study_entitlement(session, who, authority, hosp.epoch)
                if "researcher" in roles
                else self._referral_entitlement(session, who, authority, hosp.epoch)
            )
            if attributes is None:
                raise AccessDenied(f"{who} is not staff of {authority}: it issues them no key")
            return attributes

    def _referral_entitlement(
        self, session: Session, who: str, authority: str, epoch: int
    ) -> tuple[str, ...] | None:
        """A partner physician's referral key: for the first live referral of ``authority``
        to ``who`` whose key they do not hold yet (a referral made while their keys are on
        their own device waits for them to ask)."""
        now = self.clock()
        held = {a for row in self._live_keys(session, authority, who) for a in row.attributes}
        referrals = session.execute(
            select(db.Grant)
            .where(
                db.Grant.kind == "referral",
                db.Grant.grantee == who,
                db.Grant.revoked_ms.is_(None),
            )
            .order_by(db.Grant.created_ms)
        ).scalars()
        for grant in referrals:
            if grant.scope.get("hospital") != authority or not valid_at(grant.until_ms, now):
                continue
            if f"referral:{grant.id}" not in held:
                return areas.partner_attributes(grant.id, grant.scope["partner"], epoch)
        return None

    def _study_entitlement(
        self, session: Session, who: str, authority: str, epoch: int
    ) -> tuple[str, ...] | None:
        """A researcher's study key: for the oldest live study ``authority`` approved for
        ``who`` whose key they do not hold yet (a researcher's wallet asks after each
        approval)."""
        held = {a for row in self._live_keys(session, authority, who) for a in row.attributes}
        for study in self._studies_of(session, who, authority):
            if f"ethics:{study}" not in held:
                return areas.researcher_attributes(study, epoch)
        return None

    def _revoked_holder(self, who: str, authority: str) -> bool:
        """Whether ``authority`` revoked (on the ledger) a key whose tag ``who`` registered,
        for cause (a key retired with its study does not count)."""
        tags = self.registered_tags().get(authority, {})
        return any(
            self._revoked_on_ledger(authority, tag, for_cause=True)
            for tag, body in tags.items()
            if body.get("identity") == who
        )

    def record_issued_key(self, registration: abe.Registration, authority: str) -> None:
        """Keep the public record of a key issued over the network (its holder keeps the
        key): the gate reads what keys a reader holds from these rows."""
        with db.transaction(self.sessions) as session:
            session.add(
                db.AbeKey(
                    principal=registration.identity,
                    authority=authority,
                    attributes=list(registration.attributes),
                    registration=abe.registry_to_bytes([registration]),
                    issued_ms=self.clock(),
                )
            )

    def issue_key(self, who: str, authority: str, attributes: tuple[str, ...]) -> bytes:
        """Issue ``who`` a key of ``authority`` (accountable protocol) and register its tag
        on the ledger, signed by ``who``'s own identity key: what tracing later trusts."""
        return self.issue_keys([(who, authority, attributes)])[0]

    def issue_keys(self, requests: Sequence[tuple[str, str, tuple[str, ...]]]) -> list[bytes]:
        """:meth:`issue_key` for each (who, authority, attributes), the tags registered on
        the ledger together (one block); returns the keys' tags in order."""
        with db.transaction(self.sessions) as session:
            return self._issue_in(session, requests)

    def _issue_in(
        self,
        session: Session,
        requests: Sequence[tuple[str, str, tuple[str, ...]]],
        saved: list[tuple[str, bytes]] | None = None,
    ) -> list[bytes]:
        """:meth:`issue_keys` inside the caller's transaction: the tags are registered on
        the ledger and the keys are in their holders' wallets before the rows can commit,
        so a crash leaves at worst unused keys, never a recorded key its holder does not
        have. Each (holder, tag) written to a wallet is appended to ``saved``."""
        pending = []
        batches = []
        trusted: dict[str, keyring.Published] = {}
        for who, authority, attributes in requests:
            identity = self.wallets.identity(who)
            if authority not in trusted:
                trusted[authority] = self._published_authority(session, authority)
            one = keyring.issue(
                self.wallets.authority(authority),
                trusted[authority],
                who,
                identity,
                attributes,
                verified_moduli=self.verified_moduli,
                suspended=self.issuance_suspended,
                enrolled=self._enrolled_on_ledger,
            )
            context = issuance.key_tag_context(self.ledger.chain_id, who, identity.public)
            body = {
                "identity": who,
                "tag": one.registration.tag().hex(),
                "R": one.registration.R_hex(),
                "authority": authority,
                "attributes": list(attributes),
                "proof": issuance.prove_key_tag(one.key.k_prime, context),
            }
            batches.append((identity, TxKind.REGISTER_KEY_TAG, [body]))
            pending.append((who, authority, attributes, one))
        self._submit_batches(batches)
        tags = []
        for who, authority, attributes, one in pending:
            self.wallets.save_abe_key(who, authority, one.key)
            if saved is not None:
                saved.append((who, one.key.tag()))
            session.add(
                db.AbeKey(
                    principal=who,
                    authority=authority,
                    attributes=list(attributes),
                    registration=abe.registry_to_bytes([one.registration]),
                    issued_ms=self.clock(),
                )
            )
            tags.append(one.key.tag())
        return tags

    def revoke_key(
        self,
        who: str,
        authority: str,
        tag: bytes | None = None,
        *,
        attributes: tuple[str, ...] | None = None,
        retired: str | None = None,
    ) -> dict[str, Any]:
        """Revoke ``who``'s key of ``authority`` with public tag ``tag`` (every key of
        ``who`` there if ``tag`` is None): bump the epoch, re-wrap what it opened.

        ``retired`` says why a key is revoked that its holder did nothing wrong with (a
        study ended): the revocation then does not bar them from the authority's other
        keys (:meth:`entitled_attributes`), as a revocation for cause does.

        Area keys whose policy the revoked key satisfied get a fresh KEK and their records'
        DEK wraps are re-wrapped (only those); the others keep their KEK, re-published under
        the new epoch. Every other live key of the authority is re-issued at the new epoch,
        in the same transaction: if the process dies before it commits, nothing changed (the
        old keys stay live; new key files and ledger registrations are left unused); once it
        commits, every other holder already has its new key.

        ``attributes``: the key's attributes (read from the leaked key by tracing), which
        revoke a key whose database row is missing or superseded.
        """
        issued: list[tuple[str, bytes]] = []  # (holder, tag) of keys written by this attempt
        try:
            return self._revoke_key(who, authority, tag, issued, attributes, retired)
        except BaseException:
            # Rolled back: the keys this attempt wrote to wallets must not stay usable (their
            # ledger registrations stay, naming their holders, and open nothing).
            for holder, new_tag in issued:
                self.wallets.drop_abe_key(holder, authority, new_tag)
            raise

    def _revoke_key(
        self,
        who: str,
        authority: str,
        tag: bytes | None,
        issued: list[tuple[str, bytes]],
        attributes: tuple[str, ...] | None,
        retired: str | None = None,
    ) -> dict[str, Any]:
        with db.transaction(self.sessions) as session:
            rows = [
                r
                for r in self._live_keys(session, authority, who)
                if tag is None or _row_tag(r) == tag
            ]
            revoked = [(set(r.attributes), _row_tag(r)) for r in rows]
            if not rows and tag is not None and attributes is not None:
                revoked = [(set(attributes), tag)]  # known to the ledger, not to this database
            if not revoked:
                raise NotFound(f"{who} holds no such live key of {authority}")
            for row in rows:
                row.revoked_ms = self.clock()
            hosp = self._hospital(session, authority)
            hosp.epoch += 1
            rewrapped, republished = self._rekey_areas(session, hosp, [a for a, _ in revoked])
            others = self._live_keys(session, authority, None)
            # A key held in a wallet elsewhere (issued over HTTP) is not re-made here with
            # a k of the hospital's choosing: its row is superseded and its holder asks
            # again (entitled_attributes gives the new epoch).
            reissue = [
                (r.principal, tuple(r.attributes), _row_tag(r))
                for r in others
                if self.wallets.holds_abe_key(r.principal, authority, _row_tag(r))
            ]
            for r in others:
                r.revoked_ms = self.clock()
            epoch = hosp.epoch
            self._issue_in(
                session,
                [(h, authority, areas.with_epoch(attrs, epoch)) for h, attrs, _ in reissue],
                issued,
            )
            # On the ledger before the database commits: the revocation is public record.
            signer = self.wallets.identity(authority_principal(authority))
            reason = f"{RETIRED}{retired}" if retired else f"key of {who} revoked"
            bodies = [{"grant": f"key/{authority}/{tag.hex()}", "reason": reason}
                      for _, tag in revoked]  # fmt: skip
            self._submit(signer, TxKind.REVOKE, bodies)
        for _, old_tag in revoked:
            self.wallets.drop_abe_key(who, authority, old_tag)
        for holder, _, old_tag in reissue:
            self.wallets.drop_abe_key(holder, authority, old_tag)
        return {
            "revoked": who,
            "authority": authority,
            "epoch": epoch,
            "records_rewrapped": rewrapped,
            "area_keys_republished": republished,
            "keys_reissued": len(reissue),
        }

    def _live_keys(self, session: Session, authority: str, who: str | None) -> list[db.AbeKey]:
        query = select(db.AbeKey).where(
            db.AbeKey.authority == authority, db.AbeKey.revoked_ms.is_(None)
        )
        if who is not None:
            query = query.where(db.AbeKey.principal == who)
        return list(session.execute(query).scalars())

    def _rekey_areas(
        self, session: Session, hosp: db.Hospital, revoked: list[set[str]]
    ) -> tuple[int, int]:
        rewrapped = republished = 0
        public = self.authority_public(hosp.code, hosp.abe_public)
        live = session.execute(
            select(db.AreaKey).where(
                db.AreaKey.authority == hosp.code, db.AreaKey.retired_ms.is_(None)
            )
        ).scalars()
        for old in list(live):
            text = areas.set_epoch(old.policy, hosp.epoch)
            # Every scope a revoked key opens at its own epoch gets a fresh KEK, the key's
            # epoch current or not (areas.could_open); the others keep theirs.
            if not any(areas.could_open(old.policy, tuple(attrs)) for attrs in revoked):
                kek = self._kek(hosp.code, old.id)
                ct = abe.encrypt(public, text, kek, context=old.id.encode())
                old.policy, old.epoch, old.abe_ciphertext = text, hosp.epoch, ct.to_bytes()
                republished += 1
                continue
            new = self._new_area_key(session, hosp, Area(old.area), old.scope, text)
            old.retired_ms = self.clock()
            rewrapped += self._move_wraps(session, hosp.code, old.id, new.id)
        return rewrapped, republished

    def _move_wraps(self, session: Session, hospital: str, old_id: str, new_id: str) -> int:
        old_kek, new_kek = self._kek(hospital, old_id), self._kek(hospital, new_id)
        wraps = session.execute(select(db.Wrap).where(db.Wrap.area_key == old_id)).scalars()
        count = 0
        for wrap in list(wraps):
            dek = protect.unwrap_dek(old_kek, wrap.wrapped, wrap.record, old_id)
            wrap.wrapped = protect.wrap_dek(new_kek, dek, wrap.record, new_id)
            wrap.area_key = new_id
            count += 1
        return count

    def registered_tags(self) -> dict[str, dict[bytes, dict[str, Any]]]:
        """Per authority, every key tag on the ledger → the body that registered it
        (holder identity, attributes). The chain accepts a ``register_key_tag`` only from
        the key enrolled under the identity it names, so each tag here was registered by
        its holder; SQL rows play no part (a row lost in a crash or a restore from backup
        changes nothing)."""
        tags: dict[str, dict[bytes, dict[str, Any]]] = {}
        for committed in self.ledger.txs(TxKind.REGISTER_KEY_TAG):
            body = committed.tx.body
            try:
                tag = bytes.fromhex(str(body["tag"]))
            except ValueError:
                continue
            tags.setdefault(str(body.get("authority")), {}).setdefault(tag, dict(body))
        return tags

    def _revoked_on_ledger(self, authority: str, tag: bytes, *, for_cause: bool = False) -> bool:
        """Whether ``authority`` itself revoked the key with ``tag`` on the ledger (a
        revocation filed by anyone else — say, the key's guilty holder, to have tracing
        answer "already revoked" — does not count); with ``for_cause``, not as a key
        retired with its study (its reason starts with :data:`RETIRED`)."""
        grant = f"key/{authority}/{tag.hex()}"
        signer = self.wallets.identity(authority_principal(authority)).public
        return any(
            c.tx.body.get("grant") == grant
            and c.tx.sender == signer
            and not (for_cause and str(c.tx.body.get("reason", "")).startswith(RETIRED))
            for c in self.ledger.txs(TxKind.REVOKE)
        )

    def trace(self, key_bytes: bytes) -> dict[str, Any]:
        """Audit a leaked key file, record the verdict on the ledger, revoke a guilty key."""
        try:
            key = abe.AbeUserKey.from_bytes(key_bytes)
        except (CryptoError, ValueError) as exc:
            raise InvalidInput(f"not a CP-ABE key file: {exc}") from None
        with self.sessions() as session:
            hospitals = list(session.execute(select(db.Hospital)).scalars())
            publics = {h.code: self.authority_public(h.code, h.abe_public) for h in hospitals}
        registered = self.registered_tags()
        holders = {
            code: {tag: str(body["identity"]) for tag, body in bodies.items()}
            for code, bodies in registered.items()
        }
        result = keyring.trace(key, publics, holders)
        signer_hospital = result.authority or self.config.hospitals[0]
        evidence = {
            "key_sha256": hashlib.sha256(key_bytes).hexdigest(),
            "authority": result.authority,
            "identity": result.identity,
            "reason": result.reason,
        }
        # A verdict is recorded by the authority's hospital's node (only nodes may send it).
        signer = self.node_key(signer_hospital)
        body = {"verdict": result.verdict.value, "evidence": evidence}
        tx = self._submit(signer, TxKind.TRACE_VERDICT, [body])[0]
        out: dict[str, Any] = {**result.as_dict(), "txid": tx.tx.txid, "height": tx.height}
        if result.verdict == abe.Verdict.USER and result.identity and result.authority:
            tag = key.tag()
            # a key retired with its study and leaked later is revoked again, for cause
            if self._revoked_on_ledger(result.authority, tag, for_cause=True):
                out["revocation"] = {"already_revoked": True}
            else:
                # What the leaked key opens is read from the key itself, not from what
                # its holder declared when registering its tag.
                attributes = tuple(sorted(key.attributes))
                out["revocation"] = self.revoke_key(
                    result.identity, result.authority, tag, attributes=attributes
                )
        return out


def _row_tag(row: db.AbeKey) -> bytes:
    """The public tag of an issued key, from its registry row."""
    return keyring.registration_tag(row.registration)
