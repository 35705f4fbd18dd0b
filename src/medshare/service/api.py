"""The records service: what hospitals, patients, clinicians and auditors call.

One :class:`MedShare` per data directory and process. It composes the parts built
elsewhere and owns their side effects: the SQL index (:mod:`.db`), the consortium ledger
(any :class:`~medshare.ledger.port.LedgerPort`: CometBFT nodes or the in-process harness,
see :mod:`.ledgers`), the replicated blob store, the wallets. Every state change that
matters to accountability is a ledger transaction *first*: a record is served only after
its read is committed, a grant exists once its tx is committed.

Who signs: people sign with their own identity keys (wallets), registered on the ledger
by a node of their hospital before their first transaction (``register_identity``; the
ledger refuses transactions from unregistered keys); a hospital's records service signs
with the key of the hospital's node (anchors and trace verdicts may only come from a node).

Who may do what is decided by cryptography where it can be (a reader who lacks the
attributes or the aggregate key cannot decrypt, whatever the service does) and by the
storage gate where it cannot (expiry, revocation, break-glass time limits): the gate hands
out wraps only to requests it has logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medshare.api import staff_attestation
from medshare.api.peer_replica import PeerReplica
from medshare.crypto import abe, kac
from medshare.crypto.errors import CryptoError
from medshare.crypto.signing import SigningKey
from medshare.ledger.app import published
from medshare.ledger.group_commit import GroupCommitter
from medshare.ledger.port import CommittedTx, LedgerPort
from medshare.ledger.types import Tx, TxKind
from medshare.records.blobstore import DirectoryReplica, ReplicatedBlobStore
from medshare.records.classify import Classifier
from medshare.service import db, ledgers
from medshare.service.area_keys import AreaKeyMixin
from medshare.service.areas import AreaTemplates
from medshare.service.audit_log import AuditLogMixin
from medshare.service.common import (
    Clock,
    authority_principal,
    memoized,
    service_principal,
    wall_clock_ms,
)
from medshare.service.config import ConfigError, ServiceConfig
from medshare.service.enrolment import EnrolmentMixin
from medshare.service.errors import AccessDenied, InvalidInput, NotFound
from medshare.service.grants import GrantMixin
from medshare.service.ingest import IngestMixin, IngestReport
from medshare.service.patients import PatientKeyMixin, load_taxonomy
from medshare.service.reading import ReadingMixin, ReadResult
from medshare.service.wallets import Wallets

T = TypeVar("T")


# Cache-key tag of checked authority keys in ``MedShare._decoded`` (apart from ``decoded``,
# which only decodes).
CHECKED_AUTHORITY_KEY = "checked-authority-public-key"
# Bound of the per-process memory of keys found published on the ledger.
PUBLISHED_SEEN_ENTRIES = 65_536


def node_owner(name: str) -> str:
    """The hospital a node's name says runs it (``H001-a`` -> ``H001``; ``""`` for a name
    without a label, such as the regulator's)."""
    return name.rpartition("-")[0]


class MedShare(
    IngestMixin,
    AreaKeyMixin,
    GrantMixin,
    ReadingMixin,
    AuditLogMixin,
    PatientKeyMixin,
    EnrolmentMixin,
):
    """The service over one data directory; use :meth:`open` (or ``init`` in consortium)."""

    def __init__(
        self,
        config: ServiceConfig,
        ledger: LedgerPort,
        *,
        clock: Clock = wall_clock_ms,
        templates: AreaTemplates | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        # Every transaction this process signs or relays goes through one group committer:
        # concurrent reads share a block, and one key's nonces never collide.
        self.committer = GroupCommitter(ledger)
        self.clock = clock
        self.templates = templates or AreaTemplates.from_config(config.policy_templates)
        self.wallets = Wallets(config.wallet_dir)
        self.engine = db.make_engine(config.url)
        db.migrate(self.engine)
        self.sessions = db.session_factory(self.engine)
        self.taxonomy = load_taxonomy(config.data_dir)
        self.classifier = Classifier(self.taxonomy)
        self.own_replica: DirectoryReplica | None = None
        self.blobs = self._blob_store()
        self._params: kac.KacParams | None = None
        self._decoded: dict[tuple, Any] = {}
        # (published name, digest) pairs this process found on the ledger.
        self._published_seen: set[tuple[str, str]] = set()
        # Authorities' Paillier moduli whose Paillier–Blum proof this process checked:
        # (authority fingerprint, N). Checked once each (~0.7 s), then trusted.
        self.verified_moduli: set[tuple[bytes, int]] = set()
        # Identities whose issuance failed the authority's check (one bit about its
        # master secret each): refused for the rest of this process.
        self.issuance_suspended: set[str] = set()

    def _blob_store(self) -> ReplicatedBlobStore:
        """Every member's replica: folders here for the single-directory consortium; for a
        hospital's own directory, its own folder (also served to the members, see
        :attr:`own_replica`) and the others' replicas through their servers, as this
        hospital's records service."""
        config = self.config
        if config.local is None:
            replicas: list = [DirectoryReplica(config.replica_dir(h), h) for h in config.hospitals]
            return ReplicatedBlobStore(replicas, config.replication)
        self.own_replica = DirectoryReplica(config.replica_dir(config.local), config.local)
        signer = self.node_key(config.local)
        # a peer whose node the chain has not admitted (or ejected) gets no copies
        members = {node_owner(name) for name in self.ledger.chain_nodes().values()}
        replicas = [self.own_replica] + [
            PeerReplica(
                code,
                url,
                signer=signer,
                identity=service_principal(config.local),
                audience=f"{self.ledger.chain_id}/{code}",
                clock_ms=self.clock,
            )
            for code, url in sorted(config.peers.items())
            if code in members
        ]
        if len(replicas) < config.replication:
            raise ConfigError(
                f"replication {config.replication} needs {config.replication - 1} peer "
                f"hospital(s) in {config.data_dir}'s configuration; it names {len(config.peers)}"
            )
        return ReplicatedBlobStore(replicas, config.replication)

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        clock: Clock = wall_clock_ms,
        notice: Callable[[str], None] | None = None,
    ) -> MedShare:
        config = ServiceConfig.load(data_dir)
        ledger = ledgers.open_ledger(config, notice)
        try:
            return cls(config, ledger, clock=clock)
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        for replica in self.blobs.replicas:
            if isinstance(replica, PeerReplica):
                replica.close()
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
            params = kac.KacParams.from_bytes(self.config.kac_params_file.read_bytes())
            try:
                params.verify()  # a file carrying g_{n+1} would let anyone open every class
            except CryptoError as exc:
                raise InvalidInput(
                    f"the KAC parameters in {self.config.kac_params_file} are not well formed "
                    f"({exc}); refusing to use them"
                ) from None
            self._params = params
        return self._params

    def authority_public(self, hospital: str, data: bytes) -> abe.AbePublicKey:
        """Authority ``hospital``'s CP-ABE public key ``data`` (its database row), refused
        unless its digest is the one the authority published on the ledger and it is well
        formed (``AbePublicKey.check``). Every encryption to an authority and every trace
        goes through here, so a row edited to a key of the editor's own (say, with a
        ``g1^α`` they know) is refused before anything is sealed under it. Checked once
        per (hospital, bytes)."""

        def load() -> abe.AbePublicKey:
            self.check_published(published.authority_key(hospital, published.ABE_KEY), data)
            public = abe.AbePublicKey.from_bytes(data)
            try:
                public.check()
            except CryptoError as exc:
                raise InvalidInput(
                    f"an authority's public key is not well formed ({exc})"
                ) from None
            return public

        return memoized(self._decoded, (CHECKED_AUTHORITY_KEY, hospital, data), load)

    def check_published(self, name: str, data: bytes) -> None:
        """Refuse ``data`` unless it is the key its owner published under ``name`` on the
        ledger (:mod:`medshare.ledger.app.published`). A match is remembered (a published
        digest never changes); a miss asks the ledger again next time."""
        digest = published.digest(data)
        if (name, digest) in self._published_seen:
            return
        on_ledger = self.ledger.published(name)
        if on_ledger is None:
            raise InvalidInput(
                f"{name} is not published on the ledger; nothing is sealed to it (a data "
                "directory made before keys were published there? create a new one with "
                "`medshare init`)"
            )
        if on_ledger != digest:
            raise InvalidInput(
                f"{name} does not match the key its owner published on the ledger "
                "(a substituted key?); nothing is sealed to it"
            )
        if len(self._published_seen) >= PUBLISHED_SEEN_ENTRIES:
            self._published_seen.clear()
        self._published_seen.add((name, digest))

    def decoded(self, cls: type[T], data: bytes) -> T:
        """``cls.from_bytes(data)``, decoded once per distinct bytes.

        Decoding checks every group element (subgroup, canonical encoding), which costs
        milliseconds for an ABE key or ciphertext; keyed by the bytes themselves, a changed
        file or row is decoded and checked afresh. Bounded, oldest entries dropped first.
        """
        return memoized(self._decoded, (cls, data), lambda: cls.from_bytes(data))

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
        if row is None or row.kind == "service":  # a records service acts, it never reads
            raise NotFound(f"unknown person {who!r}: no identity registered in this consortium")
        return row

    def _submit(
        self, key: SigningKey, kind: TxKind, bodies: Sequence[dict[str, Any]]
    ) -> list[CommittedTx]:
        return self.committer.commit([(key, kind, bodies)])

    def _submit_batches(
        self, batches: Sequence[tuple[SigningKey, TxKind, Sequence[dict[str, Any]]]]
    ) -> list[CommittedTx]:
        """Several signers' transactions committed together, in this order (in one block,
        with whatever other callers of this process commit at the same moment)."""
        return self.committer.commit([b for b in batches if b[2]])

    def relay(self, txs: Sequence[Tx]) -> list[CommittedTx]:
        """Commit transactions their holders signed on their own devices."""
        return self.committer.commit(list(txs))

    def staff_hospital(self, who: str, role: str, what: str) -> str:
        """The hospital ``who`` works at as ``role``; AccessDenied otherwise."""
        with self.sessions() as session:
            row = session.get(db.Principal, who)
        if row is None or row.hospital is None or role not in (row.roles or []):
            raise AccessDenied(f"{who} is not {what} of a hospital")
        return row.hospital

    def node_publics(self, hospital: str) -> list[bytes]:
        """The public keys of the nodes the chain counts as ``hospital``'s now (admitted,
        not ejected; named ``<code>-a``…)."""
        return [k for k, name in self.ledger.chain_nodes().items() if node_owner(name) == hospital]

    def staff_attestation(self, who: str) -> dict[str, Any]:
        """This hospital vouches for one of its staff (:mod:`medshare.api.staff_attestation`),
        signed by its node; NotFound for anyone else."""
        with self.sessions() as session:
            row = session.get(db.Principal, who)
        if row is None or row.kind != "clinician" or row.hospital not in self.config.served:
            raise NotFound(f"{who} is not staff of this hospital")
        facts = staff_attestation.StaffFacts(
            chain_id=self.ledger.chain_id,
            identity=row.id,
            key=row.identity_public,
            hospital=row.hospital,
            roles=tuple(row.roles or ()),
            dept=row.dept,
            issued_ms=self.clock(),
        )
        return staff_attestation.attest(self.node_key(row.hospital), facts)

    def peer_staff_facts(self, who: str) -> staff_attestation.StaffFacts | None:
        """What ``who``'s own hospital, a member of this consortium, vouches for: fetched
        from it, signed by its node, for the key the ledger enrolled under that name
        (which only that hospital's nodes may enrol). None for anyone else (patients,
        unknown hospitals, a name its hospital does not vouch for). No lock is needed:
        it reads only the network and the ledger (see :meth:`add_peer_staff`)."""
        hospital = who.rpartition("@")[2]
        url = self.config.peers.get(hospital)
        if url is None:
            return None
        local = self.config.local
        if local is None:
            return None
        facts = staff_attestation.fetch(
            url,
            who,
            chain_id=self.ledger.chain_id,
            node_keys=self.node_publics(hospital),
            signer=self.node_key(local),
            asker=service_principal(local),
            audience=f"{self.ledger.chain_id}/{hospital}",
            now_ms=self.clock(),
        )
        if facts is None or self.ledger.registered(facts.key) != who:
            return None
        return facts

    def add_peer_staff(self, facts: staff_attestation.StaffFacts) -> None:
        """Remember a member hospital's staff member (:meth:`peer_staff_facts`) as a person
        of that hospital: their grants, referrals and reads then work here as anyone's."""
        with db.transaction(self.sessions) as session:
            if session.get(db.Principal, facts.identity) is None:
                session.add(
                    db.Principal(
                        id=facts.identity,
                        kind="clinician",
                        hospital=facts.hospital,
                        roles=list(facts.roles),
                        dept=facts.dept,
                        identity_public=facts.key,
                        created_ms=self.clock(),
                    )
                )

    def knows(self, who: str) -> bool:
        with self.sessions() as session:
            return session.get(db.Principal, who) is not None

    def knows_key(self, identity: str, key: bytes) -> bool:
        """Whether this consortium's records know ``identity`` by this very ``key`` (a
        registration that committed while its enrolment rolled back speaks for nobody)."""
        with self.sessions() as session:
            row = session.get(db.Principal, identity)
        return row is not None and row.identity_public == key

    def signer_for(self, who: str, hospital: str) -> SigningKey:
        """The key an action of ``who`` at ``hospital`` is logged with on the ledger: the
        person's own identity key where this process holds it (the single-directory
        consortium keeps everyone's wallet), otherwise the key of the hospital's node,
        which logs what ``who`` did through a request ``who`` signed (a device-held key
        never reaches the hospital)."""
        if self.wallets.has_identity(who):
            return self.wallets.identity(who)
        return self.node_key(hospital)

    def node_key(self, hospital: str) -> SigningKey:
        """The key of ``hospital``'s ledger node: its records service signs with it."""
        self.config.hospital_node(hospital)  # a member, or ConfigError
        names = self.ledger.node_names
        first = next((i for i, n in enumerate(names) if n.rpartition("-")[0] == hospital), None)
        # genesis labels a hospital's nodes <code>-a, <code>-b, …; a node that joined later
        # is labelled so by the members that admitted it
        return self.ledger.node_key(self.config.hospital_node(hospital) if first is None else first)

    def registrations(self, people: Sequence[tuple[str, str | None]]) -> list[tuple]:
        """``register_identity`` batches for (principal, hospital) pairs whose identity key
        the ledger does not know yet, each signed by the node of the person's hospital (the
        first hospital's for people of none). For :meth:`_submit_batches`."""
        return self._register_keys(
            [(who, hospital, self.wallets.identity(who).public) for who, hospital in people]
        )

    def _register_keys(self, people: Sequence[tuple[str, str | None, bytes]]) -> list[tuple]:
        """``register_identity`` batches for (principal, hospital, identity key) triples the
        ledger does not know yet (a device-made key comes with its holder's enrolment)."""
        bodies: dict[str, list[dict[str, Any]]] = {}
        for who, hospital, public in people:
            if self.ledger.registered(public) is None:
                sponsor = hospital or self.config.served[0]
                bodies.setdefault(sponsor, []).append({"identity": who, "key": public.hex()})
        return [(self.node_key(h), TxKind.REGISTER_IDENTITY, items) for h, items in bodies.items()]

    def register(self, people: Sequence[tuple[str, str | None]]) -> None:
        """Register these people's identity keys on the ledger (see :meth:`registrations`)."""
        self._submit_batches(self.registrations(people))

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

    def records_of_at(self, patient_id: str, hospital: str) -> list[str]:
        """The ids of the patient's live records held by ``hospital``."""
        with self.sessions() as session:
            self._patient(session, patient_id)
            return [r.id for r in self._records_at(session, patient_id, hospital)]

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


__all__ = [
    "Clock",
    "IngestReport",
    "MedShare",
    "ReadResult",
    "authority_principal",
    "service_principal",
    "wall_clock_ms",
]
