"""The service's relational state: SQLAlchemy 2 models, sessions and Alembic migrations.

What is stored here is what a hospital's records service must remember that the ledger
does not: where each encrypted blob lives, the wraps of each record's data key, the
patients' public H-KAC directories, the issued keys' public tags and the grants. Nothing
here decrypts anything: keys live in wallets (:mod:`medshare.service.wallets`). The ledger
stays the source of truth for *what happened* (ingests, grants, reads, verdicts); these
tables are the working index.

The schema is created and upgraded only through Alembic (``migrations/``), never with
``create_all``, so a deployed PostgreSQL database follows the same steps as the default
SQLite file. A test checks that the migrations and these models agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

SHORT = 64
LONG = 255


class Base(DeclarativeBase):
    pass


class Hospital(Base):
    """A member hospital: it runs a CP-ABE attribute authority and keeps blob replicas.

    ``epoch`` is the authority's key epoch: every policy it encrypts under carries
    ``epoch:<n>`` and every key it issues the same attribute, so revoking a key bumps the
    epoch and leaves the revoked key unable to satisfy any live policy.
    """

    __tablename__ = "hospitals"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(LONG))
    abe_public: Mapped[bytes] = mapped_column(LargeBinary)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class Principal(Base):
    """Someone who acts: a clinician, researcher, patient or grantee (``dr.wang@H001``).

    ``identity_public`` is their Ed25519 identity key, with which they sign ledger txs and
    their key-tag registrations. Revocation is per issued key (:class:`AbeKey`).
    """

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(LONG), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    hospital: Mapped[str | None] = mapped_column(String(16), nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    dept: Mapped[str | None] = mapped_column(String(SHORT), nullable=True)
    identity_public: Mapped[bytes] = mapped_column(LargeBinary)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class AbeKey(Base):
    """The public record of one issued CP-ABE key: who, which authority, which attributes.

    ``registration`` is the authority's audit-registry row (key tag ``g^c·R`` signed by the
    holder's identity key), what tracing a leaked key compares against.
    """

    __tablename__ = "abe_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    authority: Mapped[str] = mapped_column(ForeignKey("hospitals.code"))
    attributes: Mapped[list[str]] = mapped_column(JSON)
    registration: Mapped[bytes] = mapped_column(LargeBinary)
    issued_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Patient(Base):
    """A patient and their public H-KAC state (directory and published block keys)."""

    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(SHORT), primary_key=True)
    name: Mapped[str] = mapped_column(String(LONG))
    home_hospital: Mapped[str] = mapped_column(ForeignKey("hospitals.code"))
    directory: Mapped[bytes] = mapped_column(LargeBinary)
    block_publics: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class Record(Base):
    """One FHIR resource of one patient: where its ciphertext is and how to check it.

    ``digest`` is the salted SHA-256 of the canonical resource, the value anchored on the
    ledger; ``kac_header`` is the record's data key sealed to its H-KAC slot (the personal
    area); ``shredded_ms`` marks crypto-shredding (wraps destroyed, digest kept); ``seq`` is the
    ingest order, which exports keep.
    """

    __tablename__ = "records"

    id: Mapped[str] = mapped_column(String(LONG), primary_key=True)
    patient: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    hospital: Mapped[str] = mapped_column(ForeignKey("hospitals.code"))
    dept: Mapped[str] = mapped_column(String(SHORT))
    resource_type: Mapped[str] = mapped_column(String(SHORT))
    blob_id: Mapped[str] = mapped_column(String(SHORT))
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(SHORT))
    kac_header: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    anchor_txid: Mapped[str] = mapped_column(String(SHORT))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    shredded_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AreaKey(Base):
    """A key-encryption key of one access area, published as a CP-ABE ciphertext.

    Records' data keys are wrapped (AES-GCM) under the area key of their scope, and the
    area key is CP-ABE encrypted under the area's policy once, so a read costs one ABE
    decryption per scope, and revocation re-wraps only the records of affected scopes
    under a fresh key of the next ``epoch``.
    """

    __tablename__ = "area_keys"

    id: Mapped[str] = mapped_column(String(SHORT), primary_key=True)
    area: Mapped[str] = mapped_column(String(16))
    authority: Mapped[str] = mapped_column(ForeignKey("hospitals.code"))
    scope: Mapped[str] = mapped_column(String(LONG), index=True)
    policy: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(Integer)
    abe_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    retired_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Wrap(Base):
    """A record's data key (or its research derivative's) wrapped under an area key."""

    __tablename__ = "wraps"
    __table_args__ = (UniqueConstraint("record", "area_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record: Mapped[str] = mapped_column(ForeignKey("records.id"), index=True)
    area_key: Mapped[str] = mapped_column(ForeignKey("area_keys.id"), index=True)
    blob_id: Mapped[str] = mapped_column(String(SHORT))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)


class Grant(Base):
    """A permission a patient or an institution gave: a share, a referral, a consent, a
    study approval or a break-glass, with its ledger tx and its life span."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(LONG), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    area: Mapped[str] = mapped_column(String(16))
    patient: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), nullable=True)
    grantee: Mapped[str] = mapped_column(String(LONG))
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    until_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    txid: Mapped[str] = mapped_column(String(SHORT))


class Enrolment(Base):
    """A one-time enrolment code a hospital handed to a person (patient or staff).

    The person's wallet redeems it with the identity key it made on their device (and a
    patient's published block keys): only ``code_digest`` (SHA-256 of the code's secret)
    is kept, so a copy of this table enrols nobody.
    """

    __tablename__ = "enrolments"

    identity: Mapped[str] = mapped_column(String(LONG), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    hospital: Mapped[str] = mapped_column(ForeignKey("hospitals.code"))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    dept: Mapped[str | None] = mapped_column(String(SHORT), nullable=True)
    code_digest: Mapped[str] = mapped_column(String(SHORT))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    redeemed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


# --- engine, sessions, migrations ----------------------------------------------------------


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and full fsync."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


#: The newest migration's revision (``tests/service/test_db.py`` checks it is Alembic's head).
SCHEMA_HEAD = "0003"


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (idempotent).

    A database already at :data:`SCHEMA_HEAD` is left alone without loading Alembic, which
    would cost every CLI call a tenth of a second."""
    if revision == "head" and schema_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command
    from alembic.config import Config

    script_location = resources.files("medshare.service") / "migrations"
    config = Config()
    config.set_main_option("script_location", str(script_location))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):  # no alembic_version table yet
        return None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session
