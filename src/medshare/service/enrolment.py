"""Enrolment: a person's keys are made on their own device, a hospital vouches for them.

Why this shape: a hospital must never see a patient's seed or a clinician's identity key,
yet the ledger accepts transactions only from keys some hospital's node registered. So a
hospital enrols a person by issuing a **one-time code** (``hospital enrol``); the person's
wallet makes its identity key — and, for a patient, the 32-byte H-KAC seed — on the
device, and redeems the code with public values only (``wallet new``):

* the identity's public key, which the hospital's node registers on the ledger;
* for a patient, the public keys ``v_b`` of the first H-KAC blocks, with the
  ``publish_key`` transactions the wallet signed for them (nonces 0, 1, …), which the
  hospital relays after the registration. The hospital keeps the keys to seal records to
  and checks each against its published digest before use (:meth:`_block_public`).

The code is ``<identity>/<secret>``; only the secret's SHA-256 is stored, it expires, and
it is redeemed once. A patient's records ingested before their wallet exists are kept
(institution wraps as usual) with their personal-area seal *pending*; they are sealed to
the patient's slots as soon as the patient's block keys arrive (:meth:`_seal_pending`).
A patient's device publishes more blocks when its slabs run out (``publish_blocks``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medshare.crypto import hkac, kac, signing
from medshare.crypto.errors import CryptoError
from medshare.ledger.app import published
from medshare.ledger.app.rules import IDENTITY_NAME
from medshare.ledger.types import Tx, TxKind
from medshare.service import db
from medshare.service.errors import AccessDenied, InvalidInput
from medshare.service.wallets import check_principal, patient_principal

DEFAULT_CODE_TTL_MS = 7 * 24 * 3600 * 1000
MAX_CODE_TTL_MS = 90 * 24 * 3600 * 1000
SECRET_BYTES = 20  # 160 bits: not guessable within any rate a server allows
# Blocks a wallet publishes in one call: 64 blocks of 8 slabs are 512 departments' worth
MAX_BLOCKS_PER_CALL = 64
# Clinical roles get CP-ABE keys (areas.staff_entitlement); a records officer ingests the
# hospital's records over HTTP and an auditor submits leaked keys for tracing: neither
# gets a key (the hospital encrypts what it creates; tracing needs no decryption). An
# ethics officer approves studies (no key); a researcher gets a key per approved study.
STAFF_ROLES = ("physician", "nurse", "emergency", "records", "auditor", "ethics", "researcher")
_SECRET = re.compile(r"[A-Za-z2-7]{1,64}")  # base32, either case
_REFUSED = "this enrolment code is not valid (unknown, already used, or expired)"


@dataclass(frozen=True)
class EnrolmentCode:
    """What the hospital hands the person (on paper, by SMS): shown once, stored hashed."""

    identity: str
    code: str
    expires_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "code": self.code, "expires_ms": self.expires_ms}


def code_identity(code: str) -> tuple[str, str]:
    """(identity, secret) of an enrolment code; InvalidInput if it is not one."""
    if not isinstance(code, str) or len(code) > 400:
        raise InvalidInput("an enrolment code is <identity>/<secret>")
    identity, sep, secret = code.rpartition("/")
    if not sep or not IDENTITY_NAME.fullmatch(identity) or not _SECRET.fullmatch(secret):
        raise InvalidInput("an enrolment code is <identity>/<secret>")
    return identity, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.upper().encode("ascii")).hexdigest()


class EnrolmentMixin:
    """Enrolment codes and device-made keys (a part of :class:`~.api.MedShare`)."""

    def enrol(
        self,
        hospital: str,
        identity: str,
        *,
        kind: str,
        role: str | None = None,
        dept: str | None = None,
        name: str | None = None,
        ttl_ms: int = DEFAULT_CODE_TTL_MS,
    ) -> EnrolmentCode:
        """A one-time code for ``identity`` (``patient:<id>`` or a staff member's name) to
        make their wallet with. A new code replaces an unredeemed one; a redeemed one is
        final (a lost device is seed recovery, not a second enrolment)."""
        check_principal(identity)
        if not 0 < ttl_ms <= MAX_CODE_TTL_MS:
            raise InvalidInput("a code lives between 1 ms and 90 days")
        now = self.clock()
        with db.transaction(self.sessions) as session:
            self._hospital(session, hospital)
            if session.get(db.Principal, identity) is not None:
                raise InvalidInput(f"{identity} already has an identity; nothing to enrol")
            if kind == "patient":
                roles: list[str] = ["patient"]
                self._enrol_patient_row(session, identity, hospital, name)
            elif kind == "clinician":
                roles = [self._staff_role(identity, hospital, role, dept)]
            else:
                raise InvalidInput("enrol a patient or a staff member")
            secret = base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
            row = session.get(db.Enrolment, identity)
            if row is not None and row.redeemed_ms is not None:
                raise InvalidInput(f"{identity}'s enrolment was redeemed already")
            if row is not None and row.hospital != hospital:
                # only the hospital that issued a code may replace it (a lost code)
                raise AccessDenied(f"{identity} is being enrolled by {row.hospital}")
            if row is not None:
                session.delete(row)
                session.flush()
            session.add(
                db.Enrolment(
                    identity=identity,
                    kind=kind,
                    hospital=hospital,
                    roles=roles,
                    dept=dept if kind == "clinician" else None,
                    code_digest=_digest(secret),
                    created_ms=now,
                    expires_ms=now + ttl_ms,
                )
            )
        return EnrolmentCode(identity, f"{identity}/{secret}", now + ttl_ms)

    def _enrol_patient_row(
        self, session: Session, identity: str, hospital: str, name: str | None
    ) -> None:
        prefix = patient_principal("")
        if not identity.startswith(prefix) or len(identity) == len(prefix):
            raise InvalidInput(f"a patient enrols as {prefix}<id>")
        patient_id = identity[len(prefix) :]
        if len(patient_id) > db.SHORT:
            raise InvalidInput(f"a patient id has at most {db.SHORT} characters")
        if self.wallets.has_seed(patient_id):
            raise InvalidInput(f"patient {patient_id}'s keys are held by this data directory")
        existing = session.get(db.Patient, patient_id)
        if existing is not None and existing.home_hospital != hospital:
            # a patient's wallet is vouched for by their own hospital, nobody else
            raise AccessDenied(
                f"patient {patient_id} is enrolled by {existing.home_hospital}, not {hospital}"
            )
        if existing is None:
            directory = hkac.Directory.for_params(self.params, self.config.slab_size)
            session.add(
                db.Patient(
                    id=patient_id,
                    name=(name or "").strip()[:200] or "(no name)",
                    home_hospital=hospital,
                    directory=directory.to_bytes(),
                    block_publics={},
                    created_ms=self.clock(),
                )
            )

    def _staff_role(self, identity: str, hospital: str, role: str | None, dept: str | None) -> str:
        if role not in STAFF_ROLES:
            raise InvalidInput(f"a staff member's role is one of {', '.join(STAFF_ROLES)}")
        if dept is None or dept not in self.taxonomy:
            raise InvalidInput(f"unknown department code {dept!r}")
        _, at, org = identity.rpartition("@")
        if not at or org.casefold() != hospital.casefold():
            raise InvalidInput(f"a staff member of {hospital} is named <name>@{hospital}")
        return role

    def redeem(
        self,
        code: str,
        identity_key: bytes,
        *,
        publications: Sequence[Tx] = (),
        block_publics: Mapping[int, bytes] | None = None,
    ) -> dict[str, Any]:
        """Enrol the key a wallet made: the code's hospital registers ``identity_key`` on
        the ledger under the code's identity; a patient's block keys are then published
        (by the transactions the wallet signed) and the records waiting for them sealed.
        A refused code changes nothing."""
        identity, secret = code_identity(code)
        if not isinstance(identity_key, bytes) or len(identity_key) != signing.PUBLIC_KEY_BYTES:
            raise InvalidInput("identity_key must be a 32-byte Ed25519 public key")
        if not signing.is_sound_public_key(identity_key):
            raise InvalidInput("identity_key is not a sound Ed25519 public key")
        now = self.clock()
        with db.transaction(self.sessions) as session:
            row = session.get(db.Enrolment, identity)
            if (
                row is None
                or not hmac.compare_digest(row.code_digest, _digest(secret))
                or row.redeemed_ms is not None
                or row.expires_ms <= now
            ):
                raise AccessDenied(_REFUSED)
            # A retry after a registration that committed (and a publication that did not)
            # finds the key registered under this very identity: that is fine.
            if self.ledger.registered(identity_key) not in (None, identity):
                raise InvalidInput("this identity key is registered already; make a new one")
            patient = None
            if row.kind == "patient":
                patient = self._patient(session, identity[len(patient_principal("")) :])
                checked = self._checked_blocks(patient, identity_key, publications, block_publics)
            elif publications or block_publics:
                raise InvalidInput("only a patient's wallet publishes block keys")
            session.add(
                db.Principal(
                    id=identity,
                    kind=row.kind,
                    hospital=None if row.kind == "patient" else row.hospital,
                    roles=list(row.roles),
                    dept=row.dept,
                    identity_public=identity_key,
                    created_ms=now,
                )
            )
            row.redeemed_ms = now
            # Ledger first, inside the transaction: the registration, then the patient's
            # own publications (the chain takes them only from a registered key).
            self._submit_batches(self._register_keys([(identity, row.hospital, identity_key)]))
            out: dict[str, Any] = {"identity": identity, "hospital": row.hospital, "kind": row.kind}
            if patient is not None:
                out.update(self._accept_blocks(session, patient, publications, checked))
        return out

    def directory_of(self, patient_id: str) -> dict[str, Any]:
        """The patient's H-KAC directory (not secret, but it shows how many records each
        department holds: the patient's own business) and which blocks wait for a key."""
        with self.sessions() as session:
            patient = self._patient(session, patient_id)
            directory = hkac.Directory.from_bytes(patient.directory)
            return {
                "patient": patient_id,
                "directory": base64.b64encode(patient.directory).decode("ascii"),
                "published": sorted(int(b) for b in patient.block_publics),
                "pending": pending_blocks(directory, patient.block_publics),
            }

    def publish_blocks(
        self,
        patient_id: str,
        publications: Sequence[Tx],
        block_publics: Mapping[int, bytes],
    ) -> dict[str, Any]:
        """More block keys from the patient's device (its slabs ran out, or records wait
        for a block): relayed to the ledger, kept, and the waiting records sealed."""
        with db.transaction(self.sessions) as session:
            patient = self._patient(session, patient_id)
            principal = session.get(db.Principal, patient_principal(patient_id))
            if principal is None or self.wallets.has_seed(patient_id):
                raise InvalidInput(f"patient {patient_id} has no device wallet")
            key = principal.identity_public
            checked = self._checked_blocks(patient, key, publications, block_publics)
            return self._accept_blocks(session, patient, publications, checked)

    def _checked_blocks(
        self,
        patient: db.Patient,
        identity_key: bytes,
        publications: Sequence[Tx],
        block_publics: Mapping[int, bytes] | None,
    ) -> dict[int, bytes]:
        """The new block keys, each well formed and with its own ``publish_key`` tx signed
        by the patient's key for this chain; InvalidInput otherwise."""
        publics = dict(block_publics or {})
        if not 0 < len(publics) <= MAX_BLOCKS_PER_CALL:
            raise InvalidInput(f"publish between 1 and {MAX_BLOCKS_PER_CALL} block keys")
        if len(publications) != len(publics):
            raise InvalidInput("one publish_key transaction per block key")
        wanted: dict[str, str] = {}
        for block, raw in publics.items():
            if not isinstance(block, int) or not 0 <= block <= published.MAX_BLOCK:
                raise InvalidInput(f"block {block!r} is out of range")
            if str(block) in patient.block_publics:
                raise InvalidInput(f"block {block} of patient {patient.id} is published already")
            try:
                kac.KacPatientPublic.from_bytes(raw)
            except (CryptoError, ValueError, TypeError) as exc:
                raise InvalidInput(f"block {block}'s key is not a G1 point: {exc}") from None
            name = published.block_key(patient.id, block)
            if self.ledger.published(name) is not None:
                raise InvalidInput(f"{name} is on the ledger already (keys are never replaced)")
            wanted[name] = published.digest(raw)
        # The nonces the chain will expect: checked here so that a registration never
        # commits with publications the chain then refuses (which would leave the name
        # bound to a key this hospital never enrolled).
        first = self.ledger.next_nonce(identity_key)
        expected = set(range(first, first + len(publications)))
        if {tx.nonce for tx in publications} != expected:
            raise InvalidInput(
                f"the publications' nonces must be {first}..{first + len(expected) - 1}"
            )
        for tx in publications:
            name = tx.body.get("key") if isinstance(tx.body, Mapping) else None
            if (
                not isinstance(name, str)
                or name not in wanted
                or tx.kind is not TxKind.PUBLISH_KEY
                or tx.sender != identity_key
                or tx.chain != self.ledger.chain_id
                or dict(tx.body) != {"key": name, "digest": wanted.get(name)}
            ):
                raise InvalidInput("a publication is not the patient's own, of these keys")
            try:
                tx.verify()
            except signing.InvalidSignature:
                raise InvalidInput("a publication's signature does not verify") from None
            del wanted[name]
        return publics

    def _accept_blocks(
        self,
        session: Session,
        patient: db.Patient,
        publications: Sequence[Tx],
        publics: Mapping[int, bytes],
    ) -> dict[str, Any]:
        self.relay(publications)
        patient.block_publics = {
            **patient.block_publics,
            **{str(b): raw.hex() for b, raw in publics.items()},
        }
        sealed = self._seal_pending(session, patient)
        return {"blocks": sorted(int(b) for b in patient.block_publics), "sealed": sealed}

    def _seal_pending(self, session: Session, patient: db.Patient) -> int:
        """Seal the DEKs of the patient's records that wait for a block key (the holding
        hospital recovers each DEK through its own institution wrap); returns how many."""
        waiting = session.execute(
            select(db.Record).where(
                db.Record.patient == patient.id,
                db.Record.kac_header.is_(None),
                db.Record.shredded_ms.is_(None),
            )
        ).scalars()
        directory = hkac.Directory.from_bytes(patient.directory)
        sealed = 0
        for record in list(waiting):
            slot = directory.slot_of(record.id)
            public = self._block_public(patient, slot.block, {})
            if public is None:
                continue
            dek = self._custodian_dek(session, record)
            header = hkac.seal_record(self.params, {slot.block: public}, slot, dek, record.id)
            record.kac_header = header.to_bytes()
            sealed += 1
        return sealed


def pending_blocks(directory: hkac.Directory, publics: Mapping[str, str]) -> list[int]:
    """The blocks the directory uses whose keys the patient has not published yet."""
    return sorted(b for b in directory.blocks if str(b) not in publics)
