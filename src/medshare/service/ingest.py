"""Ingest: FHIR in, records protected, anchored on the ledger; crypto-shredding out.

A mixin of :class:`medshare.service.api.MedShare`: it uses the service's state (``sessions``,
``ledger``, ``wallets``, ``blobs``, ``params``, ``clock``) and its lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medshare.crypto import hkac, kac
from medshare.ledger.app import published
from medshare.ledger.types import TxKind
from medshare.records import canonical, fhir
from medshare.service import db, protect
from medshare.service.common import service_principal
from medshare.service.errors import AccessDenied, InvalidInput
from medshare.service.wallets import patient_principal

# Block keys a patient's device computed in this transaction, to publish on the ledger:
# published name -> (patient id, SHA-256 hex of the key).
BlockPublications = dict[str, tuple[str, str]]

MAX_REASON = 500  # characters of a deletion's reason (it goes on the ledger)


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
class _Prepared:
    """A parsed, classified record waiting to be protected and anchored."""

    resource: fhir.Resource
    patient_id: str
    dept: str


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


class IngestMixin:
    """Ingest (a part of :class:`~medshare.service.api.MedShare`)."""

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
            enrolled: list[str] = []
            for res in patients.values():
                if res.id and session.get(db.Patient, res.id) is None:
                    if self._enroll(session, res, hospital):
                        enrolled.append(patient_principal(res.id))
                    report.patients += 1
            added: list[db.Record] = []
            publications: BlockPublications = {}
            seq = session.execute(select(func.max(db.Record.seq))).scalar() or 0
            to_store: dict[str, _Prepared] = {}
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
                key = item.resource.key
                existing = session.get(db.Record, key)
                earlier = to_store.get(key)  # the same id twice in this call
                if existing is not None or earlier is not None:
                    if (
                        _same_content(existing, item.resource.canonical)
                        if existing is not None
                        else earlier.resource.canonical == item.resource.canonical
                    ):
                        report.unchanged += 1
                    else:
                        report.rejected.append(
                            {
                                "item": key,
                                "reason": "a different resource with this id is already "
                                "stored; records are never overwritten",
                            }
                        )
                    continue
                to_store[key] = item
            # The blobs first, all at once (their copies go to peers over the network),
            # then the rows that name them.
            deks = [protect.new_dek() for _ in to_store]
            blob_ids = self.blobs.put_many(
                [
                    protect.seal_blob(dek, item.resource.submitted, key)
                    for dek, (key, item) in zip(deks, to_store.items(), strict=True)
                ]
            )
            for item, dek, blob_id in zip(to_store.values(), deks, blob_ids, strict=True):
                seq += 1
                added.append(
                    self._protect(session, hospital, item, seq, publications, dek, blob_id)
                )
                report.records += 1
            self._anchor(session, hospital, added, enrolled, publications)
            for patient_id in sorted({r.patient for r in added}):
                self._extend_shares(session, patient_id, record_shares=False)

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

    def _enroll(self, session: Session, res: fhir.Resource, hospital: str) -> bool:
        """A new patient: an empty public directory, and — where this directory keeps
        patients' keys (``patient_keys = custodial``) — a fresh seed and identity key in
        their wallet here (registered on the ledger by the enrolling hospital's node, in
        the ingest's anchoring block); returns whether it made that identity. Otherwise
        the patient's own wallet makes both (``hospital enrol``, ``wallet new``)."""
        directory = hkac.Directory.for_params(self.params, self.config.slab_size)
        session.add(
            db.Patient(
                id=res.id,
                name=_display_name(res.original),
                home_hospital=hospital,
                directory=directory.to_bytes(),
                block_publics={},
                created_ms=self.clock(),
            )
        )
        if self.config.patient_keys != "custodial":
            return False
        if not self.wallets.has_seed(res.id):  # kept from an ingest rolled back after
            # its ledger writes (registration, block keys): the published keys stay valid
            self.wallets.save_seed(res.id, hkac.PatientSeed.generate())
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
        return True

    def _protect(
        self,
        session: Session,
        hospital: str,
        item: _Prepared,
        seq: int,
        publications: BlockPublications,
        dek: bytes,
        blob_id: str,
    ) -> db.Record:
        """The record's row, personal seal and area-key wraps of ``dek``, which sealed
        its blob ``blob_id`` (stored already). The text as submitted is what is kept and
        given back (a decimal 0.0 stays 0.0); the ledger digest covers its canonical form."""
        res = item.resource
        salt = canonical.new_salt()
        patient = session.get(db.Patient, item.patient_id)
        header = self._seal_personal(patient, item.dept, res.key, dek, publications)
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

    def _seal_personal(
        self,
        patient: db.Patient,
        dept: str,
        record_id: str,
        dek: bytes,
        publications: BlockPublications,
    ) -> bytes | None:
        """Give the record an H-KAC slot and seal its DEK there (the personal area); None
        (the seal pending) when the slot's block key is not published yet by the
        patient's device (:meth:`~.enrolment.EnrolmentMixin._seal_pending` seals it then)."""
        directory = hkac.Directory.from_bytes(patient.directory)
        directory, slot = hkac.assign(directory, dept, record_id)
        public = self._block_public(patient, slot.block, publications)
        patient.directory = directory.to_bytes()
        if public is None:
            return None
        return hkac.seal_record(self.params, {slot.block: public}, slot, dek, record_id).to_bytes()

    def _anchor(
        self,
        session: Session,
        hospital: str,
        pending: list[db.Record],
        enrolled: list[str],
        publications: BlockPublications,
    ) -> None:
        """Register the newly enrolled patients' identity keys, publish their new block
        keys and anchor these new records on the ledger before the SQL transaction
        commits: a failed anchor rolls the ingest back (a registration or publication that
        committed stays; the patient's keys are kept in their wallet and reused when the
        patient is ingested again). A patient's publication is signed by their own
        identity key, which the chain accepts only once its registration is committed, so
        registrations go first when both are due."""
        batches = self.registrations([(who, hospital) for who in enrolled])
        if batches and publications:
            self._submit_batches(batches)
            batches = []
        batches += self._publication_batches(publications)
        if not pending:
            self._submit_batches(batches)
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
        batches.append((self.node_key(hospital), TxKind.ANCHOR_RECORD, bodies))
        committed = self._submit_batches(batches)[-len(pending) :]
        for record, tx in zip(pending, committed, strict=True):
            record.anchor_txid = tx.tx.txid

    def _publication_batches(self, publications: BlockPublications) -> list[tuple]:
        """``publish_key`` batches, one per patient, each signed by the patient's identity."""
        bodies: dict[str, list[dict[str, str]]] = {}
        for name, (patient_id, digest) in publications.items():
            bodies.setdefault(patient_id, []).append({"key": name, "digest": digest})
        return [
            (self.wallets.identity(patient_principal(p)), TxKind.PUBLISH_KEY, items)
            for p, items in bodies.items()
        ]

    def _block_public(
        self, patient: db.Patient, block: int, publications: BlockPublications
    ) -> kac.KacPatientPublic | None:
        """``v_b`` for a block, as its patient published it on the ledger; None if the
        patient's own device has not published it yet. A patient whose seed this data
        directory keeps (the single-directory consortium) has it computed here on the
        block's first use, its digest queued in ``publications`` (to be published with the
        patient's identity key). A stored key must match the published digest, so a row
        edited to a key of someone else's is refused before a DEK is sealed to it."""
        publics = dict(patient.block_publics)
        name = published.block_key(patient.id, block)
        if str(block) in publics:
            raw = bytes.fromhex(publics[str(block)])
            if publications.get(name) != (patient.id, published.digest(raw)):
                self.check_published(name, raw)
            return self.decoded(kac.KacPatientPublic, raw)
        if not self.wallets.has_seed(patient.id):
            return None
        raw = hkac.block_public(self.wallets.seed(patient.id), block).to_bytes()
        digest = published.digest(raw)
        on_ledger = self.ledger.published(name)
        if on_ledger is None:
            publications[name] = (patient.id, digest)
        elif on_ledger != digest:
            raise InvalidInput(
                f"{name} on the ledger is not the key of patient {patient.id}'s seed; "
                "nothing is sealed to it"
            )
        publics[str(block)] = raw.hex()
        patient.block_publics = publics
        return self.decoded(kac.KacPatientPublic, raw)

    def shred(
        self, record_id: str, *, reason: str = "deletion requested", by: str | None = None
    ) -> str:
        """Crypto-shredding: destroy every wrap of the record's DEK; the digest stays.

        The holding hospital's records service logs it on the ledger (an ``access`` tx
        with action ``delete``), so the patient's log shows who deleted what, and when.
        ``by`` is the hospital whose records officer asks (over HTTP): only a record of
        that hospital is theirs to delete. Returns the txid.
        """
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise InvalidInput(f"a deletion has a reason of 1 to {MAX_REASON} characters")
        with db.transaction(self.sessions) as session:
            record = self._record(session, record_id)
            if by is not None and record.hospital != by:
                raise AccessDenied(f"record {record_id} is {record.hospital}'s, not {by}'s")
            if record.shredded_ms is not None:
                raise InvalidInput(f"record {record_id} is already deleted")
            wraps = session.execute(select(db.Wrap).where(db.Wrap.record == record_id))
            for wrap in wraps.scalars():
                session.delete(wrap)
            record.kac_header = None
            record.shredded_ms = self.clock()
            body = {
                "record": record_id,
                "patient": record.patient,
                "actor": service_principal(record.hospital),
                "area": "institution",
                "outcome": "success",
                "action": "delete",
                "reason": reason,
            }
            key = self.node_key(record.hospital)
            return self._submit(key, TxKind.ACCESS, [body])[0].tx.txid
