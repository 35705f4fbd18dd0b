"""The records service: what hospitals, patients, clinicians and auditors call.

One :class:`MedShare` per data directory and process. It composes the parts built
elsewhere and owns their side effects: the SQL index (:mod:`.db`), the embedded ledger
(:mod:`medshare.ledger.embedded`), the replicated blob store, the wallets. Every state
change that matters to accountability is a ledger transaction *first*: a record is
served only after its read is committed, a grant exists once its tx is committed.

Who may do what is decided by cryptography where it can be (a reader who lacks the
attributes or the aggregate key cannot decrypt, whatever the service does) and by the
storage gate where it cannot (expiry, revocation, break-glass time limits): the gate hands
out wraps only to requests it has logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medshare.crypto import abe, hkac, kac
from medshare.crypto.errors import CryptoError, DecryptionFailed, PolicyNotSatisfied
from medshare.crypto.signing import SigningKey
from medshare.ledger.embedded import EmbeddedLedger
from medshare.ledger.types import TxKind
from medshare.records import canonical, deidentify, fhir, fhir_audit
from medshare.records.blobstore import BlobStoreError, DirectoryReplica, ReplicatedBlobStore
from medshare.records.classify import Classifier
from medshare.records.departments import Taxonomy
from medshare.service import areas, db, keyring, protect
from medshare.service.areas import Area, AreaTemplates, top_department
from medshare.service.config import ServiceConfig
from medshare.service.errors import AccessDenied, IntegrityError, InvalidInput, NotFound
from medshare.service.wallets import Wallets, check_principal, patient_principal

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def service_principal(hospital: str) -> str:
    """The identity a hospital's records service signs anchors and grants with."""
    return f"records@{hospital}"


def authority_principal(hospital: str) -> str:
    """The identity a hospital's attribute authority signs trace verdicts with."""
    return f"authority@{hospital}"


@dataclass
class IngestReport:
    patients: int = 0
    records: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    unchanged: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "records": self.records,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class ReadResult:
    """A served record: its canonical FHIR bytes and the committed access tx."""

    record_id: str
    area: Area
    resource: bytes
    txid: str


@dataclass(frozen=True)
class _Prepared:
    """A parsed, classified record waiting to be protected and anchored."""

    resource: fhir.Resource
    patient_id: str
    dept: str


class MedShare:
    """The service over one data directory; use :meth:`open` (or ``init`` in consortium)."""

    def __init__(
        self,
        config: ServiceConfig,
        ledger: EmbeddedLedger,
        *,
        clock: Clock = wall_clock_ms,
        templates: AreaTemplates | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.templates = templates or AreaTemplates()
        self.wallets = Wallets(config.wallet_dir)
        self.engine = db.make_engine(config.url)
        db.migrate(self.engine)
        self.sessions = db.session_factory(self.engine)
        self.taxonomy = Taxonomy.default()
        self.classifier = Classifier(self.taxonomy)
        self.blobs = ReplicatedBlobStore(
            [DirectoryReplica(config.replica_dir(h), h) for h in config.hospitals],
            config.replication,
        )
        self._params: kac.KacParams | None = None

    @classmethod
    def open(cls, data_dir: Path, *, clock: Clock = wall_clock_ms) -> MedShare:
        config = ServiceConfig.load(data_dir)
        return cls(config, EmbeddedLedger.open(config.ledger_dir), clock=clock)

    def close(self) -> None:
        self.ledger.close()
        self.engine.dispose()

    def __enter__(self) -> MedShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def params(self) -> kac.KacParams:
        """The consortium's public KAC parameters (loaded, and point-checked, on first use)."""
        if self._params is None:
            self._params = kac.KacParams.from_bytes(self.config.kac_params_file.read_bytes())
        return self._params

    # -- small lookups -------------------------------------------------------------------

    def _hospital(self, session: Session, code: str) -> db.Hospital:
        row = session.get(db.Hospital, code)
        if row is None:
            known = ", ".join(self.config.hospitals)
            raise NotFound(f"unknown hospital {code!r}; the consortium has {known}")
        return row

    def _patient(self, session: Session, patient_id: str) -> db.Patient:
        row = session.get(db.Patient, patient_id)
        if row is None:
            raise NotFound(f"unknown patient {patient_id!r} (see `medshare patients`)")
        return row

    def _record(self, session: Session, record_id: str) -> db.Record:
        row = session.get(db.Record, record_id)
        if row is None:
            raise NotFound(f"unknown record {record_id!r}")
        return row

    def _principal(self, session: Session, who: str) -> db.Principal:
        row = session.get(db.Principal, who)
        if row is None or not self.wallets.has_identity(who):
            raise NotFound(f"unknown person {who!r}: no identity registered in this consortium")
        return row

    def _submit(self, key: SigningKey, kind: TxKind, bodies: Sequence[dict[str, Any]]) -> list:
        return self.ledger.sign_and_submit(key, kind, bodies)

    # -- patients and people ---------------------------------------------------------------

    def people(self) -> list[dict[str, Any]]:
        """Staff, researchers and services (not patients): who can act, and as what."""
        with self.sessions() as session:
            rows = session.execute(
                select(db.Principal).where(db.Principal.kind != "patient").order_by(db.Principal.id)
            ).scalars()
            return [
                {
                    "id": p.id,
                    "kind": p.kind,
                    "hospital": p.hospital,
                    "roles": p.roles,
                    "dept": p.dept,
                }
                for p in rows
            ]

    def patients(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.execute(select(db.Patient).order_by(db.Patient.id)).scalars().all()
            counts = dict(
                session.execute(
                    select(db.Record.patient, func.count())
                    .where(db.Record.shredded_ms.is_(None))
                    .group_by(db.Record.patient)
                ).all()
            )
        return [{"id": p.id, "name": p.name, "records": counts.get(p.id, 0)} for p in rows]

    def records_of(self, patient_id: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            self._patient(session, patient_id)
            rows = session.execute(
                select(db.Record).where(db.Record.patient == patient_id).order_by(db.Record.id)
            ).scalars()
            return [
                {
                    "id": r.id,
                    "type": r.resource_type,
                    "dept": r.dept,
                    "hospital": r.hospital,
                    "shredded": r.shredded_ms is not None,
                }
                for r in rows
            ]

    # -- ingest ----------------------------------------------------------------------------

    def ingest(self, hospital: str, sources: Iterable[Path | bytes]) -> IngestReport:
        """Load FHIR (Bundles, NDJSON, single resources), protect and anchor every record.

        A source that does not load is rejected whole with its reason; a resource that
        cannot be attributed to a patient is rejected alone. Re-ingesting an identical
        resource changes nothing; a different resource under an existing id is rejected
        (records are never silently overwritten).
        """
        report = IngestReport()
        with self.sessions() as session:
            self._hospital(session, hospital)
        resources: list[fhir.Resource] = []
        origin: dict[int, str] = {}
        for source in sources:
            name = source.name if isinstance(source, Path) else "<input>"
            try:
                loaded = fhir.load_any(source)
            except fhir.FhirError as exc:
                report.rejected.append({"item": name, "reason": str(exc)})
                continue
            for err in loaded.errors:
                report.rejected.append({"item": name, "reason": str(err)})
            resources += loaded.resources
            origin.update((id(res), name) for res in loaded.resources)
        self._ingest_resources(hospital, resources, origin, report)
        return report

    def _ingest_resources(
        self,
        hospital: str,
        resources: list[fhir.Resource],
        origin: dict[int, str],
        report: IngestReport,
    ) -> None:
        """All sources of one call are classified together, so an NDJSON export's
        Observations find their Encounters and Patients in the other files."""
        patients = {r.key: r for r in resources if r.resource_type == "Patient"}
        prepared: list[_Prepared] = []
        for res, decision in self.classifier.classify_all(resources):
            where = f"{origin.get(id(res), '')} {res.location}".strip()
            pid = _patient_id(res)
            if pid is None or res.key is None:
                report.rejected.append({"item": where, "reason": "no patient reference"})
                continue
            if res.id is None:
                report.rejected.append({"item": where, "reason": "resource has no id"})
                continue
            prepared.append(_Prepared(res, pid, decision.code))
        with db.transaction(self.sessions) as session:
            for res in patients.values():
                if res.id and session.get(db.Patient, res.id) is None:
                    self._enroll(session, res, hospital)
                    report.patients += 1
            added: list[db.Record] = []
            seq = session.execute(select(func.max(db.Record.seq))).scalar() or 0
            for item in prepared:
                if session.get(db.Patient, item.patient_id) is None:
                    report.rejected.append(
                        {
                            "item": f"{origin.get(id(item.resource), '')} "
                            f"{item.resource.location}".strip(),
                            "reason": f"patient {item.patient_id} is not enrolled "
                            "(ingest their Patient resource first)",
                        }
                    )
                    continue
                item = self._inherit_stored_encounter(session, item)
                existing = session.get(db.Record, item.resource.key)
                if existing is not None:
                    if _same_content(existing, item.resource.canonical):
                        report.unchanged += 1
                    else:
                        report.rejected.append(
                            {
                                "item": item.resource.key,
                                "reason": "a different resource with this id is already "
                                "stored; records are never overwritten",
                            }
                        )
                    continue
                seq += 1
                added.append(self._protect(session, hospital, item, seq))
                report.records += 1
            self._anchor(session, hospital, added)

    @staticmethod
    def _inherit_stored_encounter(session: Session, item: _Prepared) -> _Prepared:
        """A record added later to an Encounter ingested earlier goes to that Encounter's
        department (the classifier only sees the Encounters of the current input)."""
        res = item.resource
        if res.resource_type == "Encounter" or not res.encounter:
            return item
        stored = session.get(db.Record, res.encounter)
        if stored is None or stored.patient != item.patient_id:
            return item
        return _Prepared(res, item.patient_id, stored.dept)

    def _enroll(self, session: Session, res: fhir.Resource, hospital: str) -> None:
        """A new patient: a fresh seed in their wallet, an empty public directory."""
        seed = hkac.PatientSeed.generate()
        self.wallets.save_seed(res.id, seed)
        if not self.wallets.has_identity(patient_principal(res.id)):
            self.wallets.create_identity(patient_principal(res.id))
        identity = self.wallets.identity(patient_principal(res.id))
        session.add(
            db.Principal(
                id=patient_principal(res.id),
                kind="patient",
                hospital=None,
                roles=["patient"],
                dept=None,
                identity_public=identity.public,
                created_ms=self.clock(),
            )
        )
        directory = hkac.Directory.for_params(self.params, self.config.slab_size)
        session.add(
            db.Patient(
                id=res.id,
                name=_display_name(res.original),
                home_hospital=hospital,
                directory=directory.to_bytes(),
                block_publics={},
                research_consent=False,
                created_ms=self.clock(),
            )
        )

    def _protect(self, session: Session, hospital: str, item: _Prepared, seq: int) -> db.Record:
        res = item.resource
        dek = protect.new_dek()
        blob_id = self.blobs.put(protect.seal_blob(dek, res.canonical, res.key))
        salt = canonical.new_salt()
        patient = session.get(db.Patient, item.patient_id)
        header = self._seal_personal(patient, item.dept, res.key, dek)
        record = db.Record(
            id=res.key,
            patient=item.patient_id,
            hospital=hospital,
            dept=item.dept,
            resource_type=res.resource_type,
            blob_id=blob_id,
            salt=salt,
            digest=canonical.salted_digest(res.canonical, salt),
            kac_header=header,
            seq=seq,
            anchor_txid="",
            created_ms=self.clock(),
        )
        session.add(record)
        for area_key in self._write_keys(session, hospital, item.dept):
            kek = self._kek(hospital, area_key.id)
            session.add(
                db.Wrap(
                    record=res.key,
                    area_key=area_key.id,
                    blob_id=blob_id,
                    wrapped=protect.wrap_dek(kek, dek, res.key, area_key.id),
                )
            )
        return record

    def _seal_personal(self, patient: db.Patient, dept: str, record_id: str, dek: bytes) -> bytes:
        """Give the record an H-KAC slot and seal its DEK there (the personal area)."""
        directory = hkac.Directory.from_bytes(patient.directory)
        directory, slot = hkac.assign(directory, dept, record_id)
        public = self._block_public(patient, slot.block)
        patient.directory = directory.to_bytes()
        return hkac.seal_record(self.params, {slot.block: public}, slot, dek, record_id).to_bytes()

    def _anchor(self, session: Session, hospital: str, pending: list[db.Record]) -> None:
        """Anchor these new records on the ledger, in one batch of txs, before the SQL
        transaction commits: a failed anchor rolls the ingest back."""
        if not pending:
            return
        bodies = [
            {
                "record": r.id,
                "patient": r.patient,
                "dept": r.dept,
                "digest": r.digest,
                "blob": r.blob_id,
                "hospital": hospital,
            }
            for r in pending
        ]
        key = self.wallets.identity(service_principal(hospital))
        committed = self._submit(key, TxKind.ANCHOR_RECORD, bodies)
        for record, tx in zip(pending, committed, strict=True):
            record.anchor_txid = tx.tx.txid

    # -- area keys -------------------------------------------------------------------------

    def _kek(self, hospital: str, area_key_id: str) -> bytes:
        return protect.derive_kek(self.wallets.kek_seed(hospital), area_key_id)

    def _area_key(
        self, session: Session, area: Area, authority: str, scope: str, **values: Any
    ) -> db.AreaKey:
        """The live area key of a scope, created (and CP-ABE published) on first use."""
        row = session.execute(
            select(db.AreaKey).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one_or_none()
        if row is not None:
            return row
        hosp = self._hospital(session, authority)
        text = self.templates.policy(area, epoch=hosp.epoch, **values)
        return self._new_area_key(session, hosp, area, scope, text)

    def _new_area_key(
        self, session: Session, hosp: db.Hospital, area: Area, scope: str, text: str
    ) -> db.AreaKey:
        """A fresh KEK for ``scope``, published as a CP-ABE ciphertext under ``text``."""
        key_id = secrets.token_hex(16)
        public = abe.AbePublicKey.from_bytes(hosp.abe_public)
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
        top = top_department(dept)
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

    # -- keys: issuance and revocation ---------------------------------------------------

    def issue_key(self, who: str, authority: str, attributes: tuple[str, ...]) -> None:
        """Issue ``who`` a key of ``authority`` (accountable protocol) and register its tag
        on the ledger, signed by ``who``'s own identity key: what tracing later trusts."""
        identity = self.wallets.identity(who)
        issued = keyring.issue(self.wallets.authority(authority), who, identity, attributes)
        body = {
            "identity": who,
            "tag": issued.registration.tag().hex(),
            "R": issued.registration.R_hex(),
            "authority": authority,
            "attributes": list(attributes),
        }
        self._submit(identity, TxKind.REGISTER_KEY_TAG, [body])
        self.wallets.save_abe_key(who, authority, issued.key)
        with db.transaction(self.sessions) as session:
            session.add(
                db.AbeKey(
                    principal=who,
                    authority=authority,
                    attributes=list(attributes),
                    registration=abe.registry_to_bytes([issued.registration]),
                    issued_ms=self.clock(),
                )
            )

    def revoke_key(self, who: str, authority: str) -> dict[str, Any]:
        """Revoke ``who``'s key of ``authority``: bump the epoch, re-wrap what it opened.

        Area keys whose policy the revoked key satisfied get a fresh KEK and their records'
        DEK wraps are re-wrapped (only those); the others keep their KEK, re-published under
        the new epoch. Every other live key of the authority is re-issued at the new epoch.
        """
        with db.transaction(self.sessions) as session:
            rows = self._live_keys(session, authority, who)
            if not rows:
                raise NotFound(f"{who} holds no live key of {authority}")
            revoked_attrs = set().union(*(r.attributes for r in rows))
            for row in rows:
                row.revoked_ms = self.clock()
            hosp = self._hospital(session, authority)
            hosp.epoch += 1
            rewrapped, republished = self._rekey_areas(session, hosp, revoked_attrs)
            others = self._live_keys(session, authority, None)
            reissue = [(r.principal, tuple(r.attributes)) for r in others]
            for r in others:
                r.revoked_ms = self.clock()
            epoch = hosp.epoch
        self.wallets.drop_abe_key(who, authority)
        for holder, attrs in reissue:
            self.issue_key(holder, authority, areas.with_epoch(attrs, epoch))
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
        self, session: Session, hosp: db.Hospital, revoked_attrs: set[str]
    ) -> tuple[int, int]:
        rewrapped = republished = 0
        public = abe.AbePublicKey.from_bytes(hosp.abe_public)
        live = session.execute(
            select(db.AreaKey).where(
                db.AreaKey.authority == hosp.code, db.AreaKey.retired_ms.is_(None)
            )
        ).scalars()
        for old in list(live):
            text = areas.set_epoch(old.policy, hosp.epoch)
            if not areas.satisfied_by(old.policy, tuple(revoked_attrs)):
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

    # -- personal area: H-KAC shares --------------------------------------------------------

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
            self._enroll_grantee(session, to)
            for rid in records:
                if self._record(session, rid).patient != patient_id:
                    raise NotFound(f"record {rid} is not a record of patient {patient_id}")
            if dept is not None and dept not in self.taxonomy:
                raise InvalidInput(f"unknown department code {dept!r}")
            share = self._make_share(patient, to, records, dept, now, until_ms)
            scope = {"kind": share.scope_kind, "items": list(share.scope)}
            body = {
                "grant": share.share_id,
                "patient": patient_id,
                "grantee": to,
                "area": Area.PERSONAL.value,
                "scope": scope,
                "until": until_ms,
            }
            tx = self._patient_signs(patient_id, TxKind.GRANT, body)
            classes = {str(b): sorted(c) for b, c in share.classes().items()}
            session.add(
                db.Grant(
                    id=share.share_id,
                    kind="share",
                    area=Area.PERSONAL.value,
                    patient=patient_id,
                    grantee=to,
                    scope={**scope, "classes": classes},
                    created_ms=now,
                    until_ms=until_ms,
                    txid=tx.tx.txid,
                )
            )
        return share

    def _enroll_grantee(self, session: Session, who: str) -> None:
        """A person the patient shares with gets an identity on first share (their wallet
        is where the share file goes), so their reads can be signed and logged."""
        if session.get(db.Principal, who) is not None:
            return
        identity = self.wallets.create_identity(who)
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
        times = {"now": _utc(now_ms), "until": None if until_ms is None else _utc(until_ms)}
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

    def revoke(self, grant_id: str, *, reason: str = "revoked by the grantor") -> dict[str, Any]:
        """End a grant: a REVOKE tx, then (for an H-KAC share) move the records it opened to
        fresh slots so the revoked key opens no stored wrap."""
        with db.transaction(self.sessions) as session:
            grant = session.get(db.Grant, grant_id)
            if grant is None:
                raise NotFound(f"unknown grant {grant_id!r}")
            if grant.revoked_ms is not None:
                raise InvalidInput(f"grant {grant_id} is already revoked")
            signer = (
                self.wallets.identity(patient_principal(grant.patient))
                if grant.area in (Area.PERSONAL.value, Area.RESEARCH.value) and grant.patient
                else self.wallets.identity(service_principal(grant.scope.get("hospital", "")))
            )
            tx = self._submit(signer, TxKind.REVOKE, [{"grant": grant_id, "reason": reason}])[0]
            grant.revoked_ms = self.clock()
            moved = 0
            if grant.kind == "share":
                moved = self._reseal_shared(session, grant)
        return {"grant": grant_id, "txid": tx.tx.txid, "records_resealed": moved}

    def _reseal_shared(self, session: Session, grant: db.Grant) -> int:
        """Move the records a revoked share opened to fresh H-KAC slots (patient side)."""
        patient = self._patient(session, grant.patient)
        classes = {int(b): frozenset(c) for b, c in grant.scope.get("classes", {}).items()}
        directory = hkac.Directory.from_bytes(patient.directory)
        plan = directory.records_in(classes)
        if not plan:
            return 0
        seed = self.wallets.seed(patient.id)
        own = hkac.share_all(seed, self.params, directory, grantee=patient_principal(patient.id))
        deks = {}
        for rid in plan:
            row = self._record(session, rid)
            ct = kac.KacCiphertext.from_bytes(row.kac_header)
            deks[rid] = hkac.open_record(self.params, own, ct, rid)
        directory = hkac.move_records(directory, plan)
        patient.directory = directory.to_bytes()
        for rid, dek in deks.items():
            slot = directory.slot_of(rid)
            public = self._block_public(patient, slot.block)
            sealed = hkac.seal_record(self.params, {slot.block: public}, slot, dek, rid)
            self._record(session, rid).kac_header = sealed.to_bytes()
        return len(plan)

    # -- reading -------------------------------------------------------------------------

    def read(
        self,
        who: str,
        record_id: str,
        *,
        area: Area,
        share: hkac.Share | None = None,
        reason: str | None = None,
    ) -> ReadResult:
        """Serve one record to ``who`` through ``area``, logging the attempt on the ledger.

        Refusals (no grant, expired, revoked, wrong attributes, wrong key) raise
        :class:`AccessDenied` after a committed ``access`` tx with outcome ``denied``.
        """
        with self.sessions() as session:
            self._principal(session, who)
            record = self._record(session, record_id)
        if record.shredded_ms is not None:
            raise NotFound(f"record {record_id} was deleted (crypto-shredded)")
        identity = self.wallets.identity(who)
        try:
            dek, blob_id = self._gate(who, record, area, share, reason)
            data = self._fetch(record, blob_id, dek)
        except AccessDenied as exc:
            self._log_access(identity, record, area, "denied", str(exc))
            raise
        committed = self._log_access(identity, record, area, "success", reason)
        return ReadResult(record_id, area, data, committed.tx.txid)

    def _log_access(self, identity, record: db.Record, area: Area, outcome: str, why):
        body = {
            "record": record.id,
            "patient": record.patient,
            "actor": self._who(identity),
            "area": area.value,
            "outcome": outcome,
        }
        if why:
            body["reason"] = why
        return self._submit(identity, TxKind.ACCESS, [body])[0]

    def _who(self, identity: SigningKey) -> str:
        with self.sessions() as session:
            row = session.execute(
                select(db.Principal).where(db.Principal.identity_public == identity.public)
            ).scalar_one()
            return row.id

    def _gate(self, who, record, area, share, reason) -> tuple[bytes, str]:
        """(DEK, blob id) for an allowed read; raises AccessDenied with the reason."""
        if area is Area.PERSONAL:
            return self._open_personal(who, record, share), record.blob_id
        if share is not None:
            raise InvalidInput("--key is for the personal area; drop --area or use --area personal")
        with self.sessions() as session:
            scope = self._scope_for(session, who, record, area, reason)
            return self._open_area(session, who, record, scope)

    def _open_personal(self, who: str, record: db.Record, share: hkac.Share | None) -> bytes:
        if share is None:
            raise InvalidInput("the personal area needs --key SHARE.json")
        if share.grantee != who:
            raise AccessDenied(f"this share was given to {share.grantee}, not to {who}")
        with self.sessions() as session:
            grant = session.get(db.Grant, share.share_id)
        if grant is None or grant.patient != record.patient:
            raise AccessDenied("this share was not granted by the record's patient")
        if grant.revoked_ms is not None:
            raise AccessDenied(f"share {share.share_id} was revoked")
        if not _valid_at(grant.until_ms, self.clock()):
            raise AccessDenied(f"share {share.share_id} expired at {_iso(grant.until_ms)}")
        if record.kac_header is None:
            raise AccessDenied("the record has no personal-area wrap")
        ct = kac.KacCiphertext.from_bytes(record.kac_header)
        try:
            return hkac.open_record(self.params, share, ct, record.id)
        except PolicyNotSatisfied as exc:
            raise AccessDenied(f"the share does not cover this record ({exc})") from None
        except DecryptionFailed:
            raise AccessDenied("the share's key does not open this record") from None

    def _scope_for(self, session, who, record, area, reason) -> str:
        """Which area key a reader goes through, after the area's gate conditions."""
        now = self.clock()
        if area is Area.INSTITUTION:
            return f"institution/{record.hospital}/{top_department(record.dept)}"
        if area is Area.EMERGENCY:
            self._break_glass(session, who, record, reason, now)
            return f"emergency/{record.hospital}"
        if area is Area.COLLABORATION:
            grant = self._live_grant(session, "referral", record.patient, who, now)
            if not _covers_dept(grant.scope, record, self.taxonomy):
                raise AccessDenied(f"referral {grant.id} does not cover this record")
            return f"referral/{grant.id}"
        if area is Area.RESEARCH:
            study = self._study_of(session, who)
            self._live_grant(session, "consent", record.patient, study, now)
            return f"research/{study}/{record.hospital}"
        raise InvalidInput(f"unknown area {area}")

    def _live_grant(self, session, kind, patient, grantee, now) -> db.Grant:
        rows = session.execute(
            select(db.Grant).where(
                db.Grant.kind == kind, db.Grant.patient == patient, db.Grant.grantee == grantee
            )
        ).scalars()
        rows = list(rows)
        live = [g for g in rows if g.revoked_ms is None and _valid_at(g.until_ms, now)]
        if live:
            return live[-1]
        if any(g.revoked_ms is not None for g in rows):
            raise AccessDenied(f"the {kind} for {grantee} was revoked")
        if rows:
            raise AccessDenied(f"the {kind} for {grantee} expired at {_iso(rows[-1].until_ms)}")
        raise AccessDenied(f"no {kind} of patient {patient} for {grantee}")

    def _open_area(self, session, who, record, scope) -> tuple[bytes, str]:
        area_key = session.execute(
            select(db.AreaKey).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one_or_none()
        wrap = None
        if area_key is not None:
            wrap = session.execute(
                select(db.Wrap).where(db.Wrap.record == record.id, db.Wrap.area_key == area_key.id)
            ).scalar_one_or_none()
        if wrap is None:
            raise AccessDenied(f"no wrap of this record in {scope}")
        hosp = self._hospital(session, area_key.authority)
        try:
            key = self.wallets.abe_key(who, area_key.authority)
        except LookupError:
            raise AccessDenied(f"{who} holds no key of {area_key.authority}") from None
        public = abe.AbePublicKey.from_bytes(hosp.abe_public)
        ct = abe.AbeCiphertext.from_bytes(area_key.abe_ciphertext)
        try:
            kek = abe.decrypt(public, key, ct, context=area_key.id.encode())
        except PolicyNotSatisfied:
            raise AccessDenied(
                f"{who}'s attributes do not satisfy the policy {area_key.policy}"
            ) from None
        except DecryptionFailed:
            raise AccessDenied(f"{who}'s key does not decrypt the {scope} key") from None
        return protect.unwrap_dek(kek, wrap.wrapped, record.id, area_key.id), wrap.blob_id

    def _fetch(self, record: db.Record, blob_id: str, dek: bytes) -> bytes:
        """The verified plaintext: anchor on the ledger, blob hash, AEAD, salted digest."""
        self._check_anchor(record)
        try:
            blob = self.blobs.get(blob_id)
        except BlobStoreError as exc:
            raise IntegrityError(f"no intact copy of record {record.id}: {exc}") from None
        try:
            data = protect.open_blob(dek, blob, record.id)
        except DecryptionFailed:
            raise IntegrityError(f"record {record.id}: blob fails authentication") from None
        if blob_id == record.blob_id and not canonical.verify_salted_digest(
            data, record.salt, record.digest
        ):
            raise IntegrityError(f"record {record.id} does not match its ledger digest")
        return data

    def _check_anchor(self, record: db.Record) -> None:
        anchored = self.ledger.find(record.anchor_txid)
        body = anchored.tx.body if anchored is not None else {}
        if (
            anchored is None
            or anchored.tx.kind != TxKind.ANCHOR_RECORD
            or body.get("record") != record.id
            or body.get("digest") != record.digest
            or body.get("blob") != record.blob_id
        ):
            raise IntegrityError(f"record {record.id} does not match its ledger anchor")

    # -- emergency -------------------------------------------------------------------------

    def _break_glass(self, session, who, record, reason, now) -> None:
        """Reuse ``who``'s live break-glass for this patient, or commit a new one (reason
        required): the tx is on the ledger, and so in the patient's log, before any read."""
        rows = session.execute(
            select(db.Grant).where(
                db.Grant.kind == "break-glass",
                db.Grant.patient == record.patient,
                db.Grant.grantee == who,
                db.Grant.revoked_ms.is_(None),
            )
        ).scalars()
        if any(_valid_at(g.until_ms, now) for g in rows):
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
        tx = self._submit(self.wallets.identity(who), TxKind.BREAK_GLASS, [body])[0]
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

    # -- collaboration (referrals) -------------------------------------------------------

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
            hosp = self._hospital(session, hospital)
            if dept is not None and dept not in self.taxonomy:
                raise InvalidInput(f"unknown department code {dept!r}")
            scope = {"hospital": hospital, "partner": partner.hospital, "dept": dept}
            body = {
                "grant": referral,
                "patient": patient_id,
                "grantee": to,
                "area": Area.COLLABORATION.value,
                "scope": scope,
                "until": until,
            }
            signer = self.wallets.identity(service_principal(hospital))
            tx = self._submit(signer, TxKind.GRANT, [body])[0]
            session.add(
                db.Grant(
                    id=referral,
                    kind="referral",
                    area=Area.COLLABORATION.value,
                    patient=patient_id,
                    grantee=to,
                    scope=scope,
                    created_ms=now,
                    until_ms=until,
                    txid=tx.tx.txid,
                )
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
                if _covers_dept(scope, record, self.taxonomy):
                    self._add_wrap(session, record, area_key, self._custodian_dek(session, record))
            epoch = hosp.epoch
        attrs = areas.partner_attributes(referral, partner.hospital, epoch)
        self.issue_key(to, hospital, attrs)
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

    def _custodian_dek(self, session, record: db.Record) -> bytes:
        """The holding hospital recovers a record's DEK through its own institution wrap."""
        scope = f"institution/{record.hospital}/{top_department(record.dept)}"
        area_key = session.execute(
            select(db.AreaKey).where(db.AreaKey.scope == scope, db.AreaKey.retired_ms.is_(None))
        ).scalar_one()
        wrap = session.execute(
            select(db.Wrap).where(db.Wrap.record == record.id, db.Wrap.area_key == area_key.id)
        ).scalar_one()
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

    # -- research --------------------------------------------------------------------------

    def approve_study(self, study: str, hospital: str, researcher: str) -> None:
        """An ethics approval at ``hospital``: the researcher gets ``ethics:<study>``."""
        check_principal(study)
        with db.transaction(self.sessions) as session:
            self._principal(session, researcher)
            hosp = self._hospital(session, hospital)
            if session.get(db.Grant, f"study/{study}") is not None:
                raise InvalidInput(f"study {study} already exists")
            body = {
                "grant": f"study/{study}",
                "patient": "*",
                "grantee": researcher,
                "area": Area.RESEARCH.value,
                "scope": {"hospital": hospital, "study": study},
            }
            signer = self.wallets.identity(service_principal(hospital))
            tx = self._submit(signer, TxKind.GRANT, [body])[0]
            session.add(
                db.Grant(
                    id=f"study/{study}",
                    kind="study",
                    area=Area.RESEARCH.value,
                    patient=None,
                    grantee=researcher,
                    scope=body["scope"],
                    created_ms=self.clock(),
                    txid=tx.tx.txid,
                )
            )
            epoch = hosp.epoch
        self.wallets.save_study_secret(study, secrets.token_bytes(32))
        self.issue_key(researcher, hospital, areas.researcher_attributes(study, epoch))

    def _study_of(self, session, who: str) -> str:
        rows = session.execute(
            select(db.Grant).where(
                db.Grant.kind == "study",
                db.Grant.grantee == who,
                db.Grant.revoked_ms.is_(None),
            )
        ).scalars()
        studies = [g.scope["study"] for g in rows]
        if not studies:
            raise AccessDenied(f"{who} has no approved study")
        return studies[-1]

    def consent_research(self, patient_id: str, study: str) -> int:
        """The patient consents to ``study``: de-identified copies of their records at the
        study's hospital are made and wrapped for it. Returns how many."""
        with db.transaction(self.sessions) as session:
            self._patient(session, patient_id)
            approval = session.get(db.Grant, f"study/{study}")
            if approval is None or approval.revoked_ms is not None:
                raise NotFound(f"unknown study {study!r}")
            hospital = approval.scope["hospital"]
            grant_id = f"consent/{study}/{patient_id}"
            if session.get(db.Grant, grant_id) is not None:
                raise InvalidInput(f"patient {patient_id} already consented to {study}")
            body = {
                "grant": grant_id,
                "patient": patient_id,
                "grantee": study,
                "area": Area.RESEARCH.value,
                "scope": {"study": study, "hospital": hospital},
            }
            tx = self._patient_signs(patient_id, TxKind.GRANT, body)
            session.add(
                db.Grant(
                    id=grant_id,
                    kind="consent",
                    area=Area.RESEARCH.value,
                    patient=patient_id,
                    grantee=study,
                    scope=body["scope"],
                    created_ms=self.clock(),
                    txid=tx.tx.txid,
                )
            )
            area_key = self._area_key(
                session, Area.RESEARCH, hospital, f"research/{study}/{hospital}", study=study
            )
            target = deidentify.Study(study, self.wallets.study_secret(study))
            made = 0
            for record in self._records_at(session, patient_id, hospital):
                dek = self._custodian_dek(session, record)
                plain = self._fetch(record, record.blob_id, dek)
                copy = deidentify.deidentify(json.loads(plain), target, patient_id)
                copy_dek = protect.new_dek()
                data = canonical.canonical_bytes(copy)
                blob_id = self.blobs.put(protect.seal_blob(copy_dek, data, record.id))
                self._add_wrap(session, record, area_key, copy_dek, blob_id)
                made += 1
        return made

    # -- export, log, consents ---------------------------------------------------------------

    def export(self, patient_id: str) -> bytes:
        """The patient's records as NDJSON, opened with keys derived from the patient's own
        seed (not the hospitals'), in ingest order; logged as one access."""
        with self.sessions() as session:
            patient = self._patient(session, patient_id)
            rows = list(
                session.execute(
                    select(db.Record)
                    .where(db.Record.patient == patient_id, db.Record.shredded_ms.is_(None))
                    .order_by(db.Record.seq)
                ).scalars()
            )
        seed = self.wallets.seed(patient_id)
        directory = hkac.Directory.from_bytes(patient.directory)
        own = hkac.share_all(seed, self.params, directory, grantee=patient_principal(patient_id))
        lines = []
        for record in rows:
            ct = kac.KacCiphertext.from_bytes(record.kac_header)
            dek = hkac.open_record(self.params, own, ct, record.id)
            lines.append(self._fetch(record, record.blob_id, dek) + b"\n")
        identity = self.wallets.identity(patient_principal(patient_id))
        body = {
            "record": "*",
            "patient": patient_id,
            "actor": patient_principal(patient_id),
            "area": Area.PERSONAL.value,
            "outcome": "success",
            "action": "export",
        }
        self._submit(identity, TxKind.ACCESS, [body])
        return b"".join(lines)

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
        views = [v for c in self.ledger.txs() if (v := _event_view(c, patient_id, grants))]
        return fhir_audit.audit_bundle(views, patient_id)

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

    # -- integrity -------------------------------------------------------------------------

    def verify(self, record_id: str | None = None) -> dict[str, Any]:
        """Check the ledger on every node and each record end to end (anchor, every blob
        copy, AEAD, salted digest via the holding hospital's own wrap); repair bad copies."""
        nodes = [dataclasses.asdict(c) for c in self.ledger.verify()]
        problems: list[dict[str, str]] = []
        repaired: list[str] = []
        with self.sessions() as session:
            query = select(db.Record).where(db.Record.shredded_ms.is_(None))
            if record_id is not None:
                self._record(session, record_id)
                query = query.where(db.Record.id == record_id)
            rows = list(session.execute(query.order_by(db.Record.seq)).scalars())
            for record in rows:
                try:
                    self._check_anchor(record)
                    blob, report = self.blobs.get_with_report(record.blob_id)
                    repaired += [f"{record.id} on {name}" for name in report.repaired]
                    dek = self._custodian_dek(session, record)
                    data = protect.open_blob(dek, blob, record.id)
                    if not canonical.verify_salted_digest(data, record.salt, record.digest):
                        raise IntegrityError("content does not match its ledger digest")
                except (IntegrityError, BlobStoreError, DecryptionFailed) as exc:
                    problems.append({"record": record.id, "problem": str(exc)})
        return {
            "ok": not problems and all(n["ok"] for n in nodes),
            "ledger": nodes,
            "records_checked": len(rows),
            "problems": problems,
            "repaired": repaired,
        }

    # -- tracing ---------------------------------------------------------------------------

    def trace(self, key_bytes: bytes) -> dict[str, Any]:
        """Audit a leaked key file, record the verdict on the ledger, revoke a guilty key."""
        try:
            key = abe.AbeUserKey.from_bytes(key_bytes)
        except (CryptoError, ValueError) as exc:
            raise InvalidInput(f"not a CP-ABE key file: {exc}") from None
        with self.sessions() as session:
            hospitals = list(session.execute(select(db.Hospital)).scalars())
            publics = {h.code: abe.AbePublicKey.from_bytes(h.abe_public) for h in hospitals}
            registries: dict[str, list[abe.Registration]] = {}
            for row in session.execute(select(db.AbeKey)).scalars():
                registries.setdefault(row.authority, []).extend(
                    abe.registry_from_bytes(row.registration)
                )
        trusted = {
            c.tx.body["identity"]: c.tx.sender for c in self.ledger.txs(TxKind.REGISTER_KEY_TAG)
        }
        result = keyring.trace(key, publics, registries, trusted)
        signer_hospital = result.authority or self.config.hospitals[0]
        evidence = {
            "key_sha256": hashlib.sha256(key_bytes).hexdigest(),
            "authority": result.authority,
            "identity": result.identity,
            "reason": result.reason,
        }
        signer = self.wallets.identity(authority_principal(signer_hospital))
        body = {"verdict": result.verdict.value, "evidence": evidence}
        tx = self._submit(signer, TxKind.TRACE_VERDICT, [body])[0]
        out: dict[str, Any] = {**result.as_dict(), "txid": tx.tx.txid, "height": tx.height}
        if result.verdict == abe.Verdict.USER and result.identity and result.authority:
            out["revocation"] = self.revoke_key(result.identity, result.authority)
        return out

    # -- deletion --------------------------------------------------------------------------

    def shred(self, record_id: str) -> None:
        """Crypto-shredding: destroy every wrap of the record's DEK; the digest stays."""
        with db.transaction(self.sessions) as session:
            record = self._record(session, record_id)
            for wrap in session.execute(
                select(db.Wrap).where(db.Wrap.record == record_id)
            ).scalars():
                session.delete(wrap)
            record.kac_header = None
            record.shredded_ms = self.clock()

    def _block_public(self, patient: db.Patient, block: int) -> kac.KacPatientPublic:
        """``v_b`` for a block; the patient's device publishes it on first use."""
        publics = dict(patient.block_publics)
        if str(block) not in publics:
            seed = self.wallets.seed(patient.id)
            publics[str(block)] = hkac.block_public(seed, block).to_bytes().hex()
            patient.block_publics = publics
        return kac.KacPatientPublic.from_bytes(bytes.fromhex(publics[str(block)]))


# --- pure helpers ---------------------------------------------------------------------------


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _iso(ms: int | None) -> str:
    return "never" if ms is None else _utc(ms).isoformat(timespec="seconds")


def _valid_at(until_ms: int | None, now_ms: int) -> bool:
    return until_ms is None or now_ms < until_ms


def _covers_dept(scope: dict[str, Any], record: db.Record, taxonomy: Taxonomy) -> bool:
    """A referral covers its hospital's records, within its department sub-tree if any."""
    if scope.get("hospital") != record.hospital:
        return False
    dept = scope.get("dept")
    return dept is None or taxonomy.is_within(record.dept, dept)


_ACTIONS = {
    TxKind.ANCHOR_RECORD: "ingest",
    TxKind.GRANT: "grant",
    TxKind.REVOKE: "revoke",
    TxKind.BREAK_GLASS: "break-glass",
}


def _event_view(
    committed, patient_id: str, grants: dict[str, db.Grant]
) -> fhir_audit.AccessEventView | None:
    """One ledger tx as an AuditEvent view, if it concerns this patient."""
    tx, body = committed.tx, committed.tx.body
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
    actor = body.get("actor") or body.get("hospital") or body.get("grantee") or tx.sender.hex()
    if tx.kind == TxKind.GRANT:
        actor = body.get("grantee", actor)
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


def _patient_id(res: fhir.Resource) -> str | None:
    if res.resource_type == "Patient":
        return res.id
    ref = res.patient
    if ref and ref.startswith("Patient/"):
        return ref.split("/", 1)[1]
    return None


def _same_content(row: db.Record, data: bytes) -> bool:
    return canonical.verify_salted_digest(data, row.salt, row.digest)


def _display_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or ():
        if isinstance(name, dict):
            given = " ".join(g for g in name.get("given") or () if isinstance(g, str))
            family = name.get("family") if isinstance(name.get("family"), str) else ""
            text = f"{given} {family}".strip() or name.get("text")
            if text:
                return str(text)
    return "(no name)"
