"""Hierarchical key-aggregate sharing (H-KAC): a patient's records in lazily allocated slabs.

DESIGN §3.3. The patient's whole secret is one 32-byte :class:`PatientSeed`. Everything else
is either derived from it or public:

* **Blocks.** The KAC of :mod:`medshare.crypto.kac` offers ``n`` classes per patient key. H-KAC
  uses as many *blocks* of ``n`` classes as the patient needs, block ``b`` with its own
  ``γ_b = HKDF-SHA256(seed, info="medshare/hkac/v1/block/<b>")`` (64 bytes of output reduced
  to a non-zero scalar, bias < 2^-250) and public key ``v_b = g1^{γ_b}``. All blocks use the
  same public :class:`~medshare.crypto.kac.KacParams`, so any key is recomputable from the
  seed alone. A hospital that encrypts a record needs ``v_b``, which only the seed holder can
  compute: the patient's device publishes ``v_b`` (:func:`block_public`) when the directory
  first reserves a slab in block ``b``.
* **Slabs.** A department gets a slab of ``slab_size`` consecutive classes (default 32) of one
  block on its first record; records take the slab's slots in order; when the slab is full
  the department reserves the next free slab. Slabs never straddle blocks (``slab_size``
  divides ``n``) and slots are never reused.
* **Directory.** The allocation state (department → slabs, record id → slot, next free
  position) is an explicit, serialisable :class:`Directory`. It is *not secret* and is meant
  to be stored with the patient's public index: it reveals which departments hold how many of
  the patient's records (to the slot), though no record content. Keep it where the patient's
  record list is already visible (the service, the ledger's record anchors); if department
  counts must be hidden, encrypt it for the patient like any other record.
* **Shares.** A :class:`Share` is one KAC aggregate key (one G2 point, 96 B) per block touched
  plus metadata. A department share covers the department's *whole reserved slabs*, so records
  added later inside an already-reserved slab open with the share already given (dynamic
  addition). When the department reserves a new slab, :func:`extend_share` issues the one
  missing 96-B key (the service does this automatically for every live share and logs it as a
  grant).
* **Records.** :func:`seal_record` encrypts to the record's slot and binds the record id into
  the AEAD's associated data (``kac.encrypt(context=…)``), so storage cannot swap two records
  of the same share; :func:`open_record` picks the share's key for the ciphertext's block.

Expiry and revocation are **not** cryptographic: a key cannot expire by itself, and a key once
given cannot be taken back. ``Share.until`` is carried for the storage gate (the service
refuses to hand out wraps of an expired or revoked share and logs every access), and
:meth:`Share.is_valid_at` is the check it calls. Revocation means the service re-wraps the
affected records' DEKs under fresh slots (:func:`rewrap_plan` lists them,
:func:`move_records` allocates the slots) and deletes the old wraps, and it retires the
current slab of every department the share covered (:func:`retire_slabs`), even one holding
only deleted records, so later records land in slabs the share never held; the revoked key
then opens only wraps that no longer exist. Other live shares that covered a moved record
get its new slot through :func:`extend_share`.

Crypto must not depend on the records package: departments are plain code strings, and a
sub-tree is given as a callable (e.g. ``Taxonomy.subtree``), never imported.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medshare.crypto import encoding, kac
from medshare.crypto.errors import InvalidEncoding, PolicyNotSatisfied
from medshare.crypto.group import G2_BYTES, ORDER, g1, mul
from medshare.crypto.kac import (
    AggregateKey,
    KacCiphertext,
    KacParams,
    KacPatientPublic,
    KacPatientSecret,
)

__all__ = [
    "DEFAULT_SLAB_SIZE",
    "SEED_BYTES",
    "BlockKey",
    "Directory",
    "PatientSeed",
    "Share",
    "Slab",
    "Slot",
    "UnknownRecord",
    "assign",
    "block_gamma",
    "block_public",
    "block_publics",
    "block_secret",
    "extend_share",
    "identity_seed",
    "key_overhead",
    "move_records",
    "open_record",
    "overhead_table",
    "retire_slabs",
    "rewrap_plan",
    "scope_classes",
    "seal_record",
    "share_all",
    "share_department",
    "share_record",
    "share_records",
]

VERSION = 1
SEED_BYTES = 32
DEFAULT_SLAB_SIZE = 32
MAX_BLOCKS = 1 << 20
_GAMMA_OKM_BYTES = 64
_BLOCK_INFO = "medshare/hkac/v1/block/{}"
_IDENTITY_INFO = b"medshare/identity/v1"
_RECORD_CONTEXT = b"medshare/hkac/v1/record\x00"
_MAX_TEXT = 256
_SHARE_ID_BYTES = 16

SCOPE_RECORDS = "records"
SCOPE_DEPARTMENTS = "departments"
SCOPE_ALL = "all"
_SCOPES = (SCOPE_RECORDS, SCOPE_DEPARTMENTS, SCOPE_ALL)


class UnknownRecord(KeyError):
    """A record id that the directory does not know."""

    def __str__(self) -> str:
        return f"unknown record id {self.args[0]!r}"


# --- the seed and what derives from it ---------------------------------------------------------


class PatientSeed:
    """The patient's whole secret: 32 random bytes. Never logged; ``repr`` hides it."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) != SEED_BYTES:
            raise ValueError(f"a patient seed is exactly {SEED_BYTES} bytes")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> PatientSeed:
        """A fresh seed from the OS CSPRNG."""
        return cls(os.urandom(SEED_BYTES))

    def secret_bytes(self) -> bytes:
        """The 32 secret bytes (for backup and recovery only)."""
        return self._secret

    def __repr__(self) -> str:
        return "PatientSeed(<32 secret bytes>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatientSeed):
            return NotImplemented
        return hmac.compare_digest(self._secret, other._secret)

    __hash__ = None  # type: ignore[assignment]  # no hashing: a hash could leak via dicts/logs

    def __reduce__(self) -> Any:
        raise TypeError("a PatientSeed is not picklable; back it up with medshare.crypto.recovery")


def _check_block(block: object) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < MAX_BLOCKS:
        raise ValueError(f"a block number is an int in 0..{MAX_BLOCKS - 1}, got {block!r}")
    return block


def block_gamma(seed: PatientSeed, block: int) -> int:
    """``γ_b``: HKDF-SHA256(seed, info=medshare/hkac/v1/block/<b>), 64 bytes → ``[1, p)``."""
    if not isinstance(seed, PatientSeed):
        raise TypeError(f"expected a PatientSeed, not {type(seed).__name__}")
    info = _BLOCK_INFO.format(_check_block(block)).encode("ascii")
    okm = HKDF(algorithm=hashes.SHA256(), length=_GAMMA_OKM_BYTES, salt=None, info=info).derive(
        seed.secret_bytes()
    )
    return 1 + int.from_bytes(okm, "big") % (ORDER - 1)


def identity_seed(seed: PatientSeed) -> bytes:
    """The 32-byte Ed25519 seed of the patient's identity key: HKDF-SHA256(seed,
    info=medshare/identity/v1). Derived, not drawn, so that the one 32-byte seed (and its
    SLIP-39 shares) restores the patient's whole wallet: the key the ledger enrolled under
    their name as well as every block key; the info string keeps it apart from every γ_b."""
    if not isinstance(seed, PatientSeed):
        raise TypeError(f"expected a PatientSeed, not {type(seed).__name__}")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_IDENTITY_INFO).derive(
        seed.secret_bytes()
    )


def block_secret(seed: PatientSeed, block: int) -> KacPatientSecret:
    """The KAC secret of block ``b`` (γ_b and ``v_b = g1^{γ_b}``); recomputed, never stored."""
    gamma = block_gamma(seed, block)
    return KacPatientSecret(gamma, KacPatientPublic(mul(g1(), gamma)))


def block_public(seed: PatientSeed, block: int) -> KacPatientPublic:
    """``v_b``: what the patient publishes so that hospitals can encrypt to block ``b``."""
    return block_secret(seed, block).public


def block_publics(seed: PatientSeed, directory: Directory) -> dict[int, KacPatientPublic]:
    """The public keys of every block the directory uses."""
    return {b: block_public(seed, b) for b in directory.blocks}


# --- slots, slabs, the directory --------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Slot:
    """One KAC class of one block: ``index`` in ``1..n``."""

    block: int
    index: int


@dataclass(frozen=True)
class Slab:
    """Classes ``first..last`` of ``block``; ``used`` of them have been handed out (or retired)."""

    block: int
    first: int
    last: int
    used: int = 0

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def is_full(self) -> bool:
        return self.used >= self.size

    def classes(self) -> range:
        return range(self.first, self.last + 1)

    def __contains__(self, slot: object) -> bool:
        return (
            isinstance(slot, Slot)
            and slot.block == self.block
            and self.first <= slot.index <= self.last
        )


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise ValueError(f"a {what} is a non-empty string of at most {_MAX_TEXT} characters")
    return value


class Directory:
    """A patient's slot allocation: department → slabs, record id → slot, next free position.

    Immutable; :func:`assign` and :func:`move_records` return new directories. Position ``p``
    (counted in slots from 0) is class ``p mod n + 1`` of block ``p div n``. Not secret: it
    reveals per-department record counts (see the module docstring).
    """

    __slots__ = ("_departments", "_owner", "_records", "n", "next_free", "slab_size")

    def __init__(
        self,
        n: int,
        slab_size: int = DEFAULT_SLAB_SIZE,
        *,
        departments: Mapping[str, Sequence[Slab]] | None = None,
        records: Mapping[str, Slot] | None = None,
        next_free: int = 0,
    ) -> None:
        for name, value in (("n", n), ("slab_size", slab_size), ("next_free", next_free)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not 1 <= n <= kac.MAX_CLASSES:
            raise ValueError(f"n must be in 1..{kac.MAX_CLASSES}, got {n}")
        if not 1 <= slab_size <= n or n % slab_size:
            raise ValueError(f"slab_size must divide n = {n} (slabs never straddle blocks)")
        if next_free % slab_size or next_free > MAX_BLOCKS * n:
            raise ValueError(f"next_free {next_free} is not a slab boundary in range")
        self.n = n
        self.slab_size = slab_size
        self.next_free = next_free
        depts = {
            _check_text(code, "department code"): tuple(slabs)
            for code, slabs in (departments or {}).items()
        }
        recs = {_check_text(rid, "record id"): slot for rid, slot in (records or {}).items()}
        self._departments: Mapping[str, tuple[Slab, ...]] = MappingProxyType(depts)
        self._records: Mapping[str, Slot] = MappingProxyType(recs)
        self._owner: dict[Slot, str] = self._validate()

    def _validate(self) -> dict[Slot, str]:
        """Check every invariant; return the index of live slots → department."""
        n, size = self.n, self.slab_size
        positions: set[int] = set()
        live: dict[Slot, str] = {}  # every handed-out slot → its department
        for code, slabs in self._departments.items():
            if not slabs:
                raise ValueError(f"department {code!r} has an empty slab list")
            for k, slab in enumerate(slabs):
                if not isinstance(slab, Slab):
                    raise ValueError(f"department {code!r}: slab {k} is not a Slab")
                _check_block(slab.block)
                if slab.size != size or (slab.first - 1) % size or not 1 <= slab.first <= n:
                    raise ValueError(f"department {code!r}: slab {k} is not an aligned slab")
                pos = slab.block * n + slab.first - 1
                if pos >= self.next_free or pos in positions:
                    raise ValueError(f"department {code!r}: slab {k} overlaps or is unreserved")
                positions.add(pos)
                if not 0 <= slab.used <= size or (k < len(slabs) - 1 and not slab.is_full):
                    raise ValueError(f"department {code!r}: slab {k} has a bad fill count")
                for index in range(slab.first, slab.first + slab.used):
                    live[Slot(slab.block, index)] = code
        owner: dict[Slot, str] = {}
        for rid, slot in self._records.items():
            if not isinstance(slot, Slot) or slot not in live:
                raise ValueError(f"record {rid!r} has a slot outside every handed-out slab slot")
            if slot in owner:
                raise ValueError(f"record {rid!r} shares slot {slot} with another record")
            owner[slot] = live[slot]
        return owner

    @classmethod
    def _trusted(
        cls,
        template: Directory,
        departments: Mapping[str, Sequence[Slab]],
        records: Mapping[str, Slot],
        owner: dict[Slot, str],
        next_free: int,
    ) -> Directory:
        """A directory built by this module's own pure functions: skip re-validation.

        :func:`assign` and :func:`move_records` keep every invariant by construction; full
        validation on each of them would make bulk allocation quadratic.
        """
        new = object.__new__(cls)
        new.n = template.n
        new.slab_size = template.slab_size
        new.next_free = next_free
        new._departments = MappingProxyType({c: tuple(v) for c, v in departments.items()})
        new._records = MappingProxyType(dict(records))
        new._owner = owner
        return new

    def without_records(self) -> Directory:
        """The allocation state alone (slabs and next free position), without the record map."""
        return Directory._trusted(self, self._departments, {}, {}, self.next_free)

    # -- queries --

    @classmethod
    def for_params(cls, params: KacParams, slab_size: int = DEFAULT_SLAB_SIZE) -> Directory:
        """An empty directory for KAC parameters with ``params.n`` classes per block."""
        return cls(params.n, slab_size)

    @property
    def departments(self) -> tuple[str, ...]:
        """Departments with at least one slab, in order of their first reservation."""
        return tuple(self._departments)

    @property
    def records(self) -> Mapping[str, Slot]:
        """Record id → slot (read-only)."""
        return self._records

    @property
    def blocks(self) -> tuple[int, ...]:
        """Blocks holding at least one reserved slab."""
        return tuple(sorted({s.block for slabs in self._departments.values() for s in slabs}))

    def slabs_of(self, dept: str) -> tuple[Slab, ...]:
        """The department's slabs, oldest first (empty if it has no record yet)."""
        return self._departments.get(dept, ())

    def slot_of(self, record_id: str) -> Slot:
        try:
            return self._records[record_id]
        except KeyError:
            raise UnknownRecord(record_id) from None

    def department_of(self, record_id: str) -> str:
        return self._owner[self.slot_of(record_id)]

    def records_in(self, classes: Mapping[int, Iterable[int]]) -> list[str]:
        """Record ids whose slot is among ``classes`` (block → class indices), in slot order."""
        wanted = {Slot(b, i) for b, idx in classes.items() for i in idx}
        return [rid for rid, slot in sorted(self._records.items(), key=_by_slot) if slot in wanted]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def _canonical(self) -> tuple:
        return (
            self.n,
            self.slab_size,
            self.next_free,
            tuple(self._departments.items()),
            tuple(sorted(self._records.items())),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Directory):
            return NotImplemented
        return self._canonical() == other._canonical()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        slabs = sum(len(s) for s in self._departments.values())
        return (
            f"Directory(n={self.n}, slab_size={self.slab_size}, "
            f"departments={len(self._departments)}, slabs={slabs}, records={len(self)})"
        )

    # -- encoding --

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "hkac-directory",
            VERSION,
            {
                "n": self.n,
                "slab_size": self.slab_size,
                "next_free": self.next_free,
                "departments": [
                    [code, [[s.block, s.first, s.last, s.used] for s in slabs]]
                    for code, slabs in self._departments.items()
                ],
                "records": {rid: [s.block, s.index] for rid, s in self._records.items()},
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Directory:
        doc = encoding.loads(data, "hkac-directory")
        n = encoding.field(doc, "n", lambda v: encoding.int_field(v, low=1, high=kac.MAX_CLASSES))
        size = encoding.field(doc, "slab_size", lambda v: encoding.int_field(v, low=1, high=n))
        nxt = encoding.field(
            doc, "next_free", lambda v: encoding.int_field(v, low=0, high=MAX_BLOCKS * n)
        )
        depts = encoding.field(doc, "departments", _departments_field)
        recs = encoding.field(doc, "records", _records_field)
        try:
            return cls(n, size, departments=depts, records=recs, next_free=nxt)
        except ValueError as exc:
            raise InvalidEncoding(f"inconsistent hkac-directory: {exc}") from None


def _by_slot(item: tuple[str, Slot]) -> Slot:
    return item[1]


def _int(value: object) -> int:
    return encoding.int_field(value, low=0, high=MAX_BLOCKS * kac.MAX_CLASSES)


def _departments_field(value: object) -> dict[str, list[Slab]]:
    if not isinstance(value, list):
        raise InvalidEncoding("expected a list of [code, slabs] pairs")
    out: dict[str, list[Slab]] = {}
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
            raise InvalidEncoding("each department entry is [code, [[block, first, last, used]]]")
        code = encoding.identity_text(item[0])
        if code in out:
            raise InvalidEncoding(f"department {code!r} appears twice")
        slabs = []
        for raw in item[1]:
            if not isinstance(raw, list) or len(raw) != 4:
                raise InvalidEncoding("a slab is [block, first, last, used]")
            slabs.append(Slab(*(_int(x) for x in raw)))
        out[code] = slabs
    return out


def _records_field(value: object) -> dict[str, Slot]:
    if not isinstance(value, dict):
        raise InvalidEncoding("expected an object of record id → [block, index]")
    out = {}
    for rid, raw in value.items():
        if not isinstance(raw, list) or len(raw) != 2:
            raise InvalidEncoding(f"record {rid!r}: a slot is [block, index]")
        out[encoding.identity_text(rid)] = Slot(*(_int(x) for x in raw))
    return out


def _reserve(directory: Directory, next_free: int) -> tuple[Slab, int]:
    block, offset = divmod(next_free, directory.n)
    _check_block(block)
    slab = Slab(block, offset + 1, offset + directory.slab_size)
    return slab, next_free + directory.slab_size


def _place(
    directory: Directory,
    departments: dict[str, list[Slab]],
    records: dict[str, Slot],
    next_free: int,
    dept: str,
    record_id: str,
) -> tuple[Slot, int]:
    slabs = departments.setdefault(dept, [])
    if not slabs or slabs[-1].is_full:
        slab, next_free = _reserve(directory, next_free)
        slabs.append(slab)
    current = slabs[-1]
    slot = Slot(current.block, current.first + current.used)
    slabs[-1] = replace(current, used=current.used + 1)
    records[record_id] = slot
    return slot, next_free


def _mutable(directory: Directory) -> tuple[dict[str, list[Slab]], dict[str, Slot]]:
    return {c: list(s) for c, s in directory._departments.items()}, dict(directory._records)


def assign(directory: Directory, dept: str, record_id: str) -> tuple[Directory, Slot]:
    """Give ``record_id`` the next slot of ``dept``, reserving a new slab if needed (pure).

    A department's first record reserves its first slab; a record that finds the current
    slab full reserves the next free slab (possibly in a new block: publish its ``v_b``, and
    call :func:`extend_share` on the department's live shares).
    """
    _check_text(dept, "department code")
    _check_text(record_id, "record id")
    if record_id in directory.records:
        raise ValueError(f"record {record_id!r} already has slot {directory.records[record_id]}")
    departments, records = _mutable(directory)
    slot, next_free = _place(directory, departments, records, directory.next_free, dept, record_id)
    owner = {**directory._owner, slot: dept}
    return Directory._trusted(directory, departments, records, owner, next_free), slot


def move_records(directory: Directory, record_ids: Iterable[str]) -> Directory:
    """Fresh slots for ``record_ids`` (after a revocation), in fresh slabs of their departments.

    Conservatively, the current slab of every affected department is retired (its unused
    slots are never handed out: a revoked department share holds keys for them), so moved
    records and all later records of those departments land in newly reserved slabs that no
    earlier share covers. Old slots are never reused. The caller re-wraps each moved record's
    DEK to its new slot with :func:`seal_record`, deletes the old wraps, and extends the
    department's remaining live shares with :func:`extend_share`.
    """
    ids = list(dict.fromkeys(record_ids))
    depts = [directory.department_of(rid) for rid in ids]  # raises UnknownRecord
    departments, records = _mutable(directory)
    for dept in dict.fromkeys(depts):
        last = departments[dept][-1]
        departments[dept][-1] = replace(last, used=last.size)
    owner = dict(directory._owner)
    for rid in ids:
        del owner[records.pop(rid)]
    next_free = directory.next_free
    for rid, dept in zip(ids, depts, strict=True):
        slot, next_free = _place(directory, departments, records, next_free, dept, rid)
        owner[slot] = dept
    return Directory._trusted(directory, departments, records, owner, next_free)


def retire_slabs(
    directory: Directory, classes: Mapping[int, Iterable[int]]
) -> tuple[Directory, tuple[str, ...]]:
    """Retire the current slab of every department whose unused slots are among ``classes``.

    A revoked department (or ``all``) share holds keys for its departments' whole slabs,
    including slots not yet handed out: while such a slab stays current, every later record
    of the department lands in a class the revoked key opens. :func:`move_records` retires
    the slabs of the departments it moves records of, but a department whose current slab
    holds only deleted records has nothing to move, so revocation must retire its slab here,
    whatever the slab holds. A record share holds only handed-out slots and retires nothing.
    Returns the new directory (pure) and the departments whose slab was retired.
    """
    wanted = {b: frozenset(c) for b, c in classes.items()}
    departments, records = _mutable(directory)
    retired = []
    for dept, slabs in departments.items():
        last = slabs[-1]
        unused = range(last.first + last.used, last.last + 1)
        if not wanted.get(last.block, frozenset()).isdisjoint(unused):
            slabs[-1] = replace(last, used=last.size)
            retired.append(dept)
    if not retired:
        return directory, ()
    owner = dict(directory._owner)
    new = Directory._trusted(directory, departments, records, owner, directory.next_free)
    return new, tuple(retired)


# --- shares ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockKey:
    """The aggregate key of one block of one share."""

    block: int
    key: AggregateKey

    def key_bytes(self) -> bytes:
        """96 bytes, whatever the number of classes."""
        return self.key.key_bytes()


def _utc(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Share:
    """One grant: per-block aggregate keys plus metadata.

    ``scope_kind`` is ``"records"`` (``scope`` = record ids), ``"departments"`` (``scope`` =
    department codes, a sub-tree already expanded) or ``"all"`` (``scope`` empty). ``until``
    (exclusive) is enforced by the storage gate, not by the keys: a key cannot expire by
    itself, and revoking means re-wrapping (module docstring).
    """

    share_id: str
    grantee: str
    scope_kind: str
    scope: tuple[str, ...]
    created: datetime
    until: datetime | None
    keys: tuple[BlockKey, ...] = field(repr=False)

    def is_valid_at(self, now: datetime) -> bool:
        """True while ``now < until`` (always, without ``until``); ``now`` must be tz-aware."""
        now = _utc(now, "now")
        return self.until is None or now < self.until

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted({k.block for k in self.keys}))

    @property
    def size_bytes(self) -> int:
        """Key material sent to the grantee: 96 B per key."""
        return G2_BYTES * len(self.keys)

    def classes(self) -> dict[int, frozenset[int]]:
        """Block → every class some key of this share opens."""
        out: dict[int, set[int]] = {}
        for k in self.keys:
            out.setdefault(k.block, set()).update(k.key.classes)
        return {b: frozenset(c) for b, c in out.items()}

    def covers(self, slot: Slot) -> bool:
        return any(k.block == slot.block and slot.index in k.key.classes for k in self.keys)

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "hkac-share",
            VERSION,
            {
                "share_id": self.share_id,
                "grantee": self.grantee,
                "scope_kind": self.scope_kind,
                "scope": list(self.scope),
                "created": self.created.isoformat(),
                "until": None if self.until is None else self.until.isoformat(),
                "keys": [
                    {"block": k.block, "key": json.loads(k.key.to_bytes())} for k in self.keys
                ],
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        doc = encoding.loads(data, "hkac-share")
        share_id = encoding.field(doc, "share_id", _share_id_field)
        grantee = encoding.field(doc, "grantee", encoding.identity_text)
        kind = encoding.field(doc, "scope_kind", _scope_kind_field)
        scope = encoding.field(doc, "scope", _scope_field)
        created = encoding.field(doc, "created", _time_field)
        until = encoding.field(doc, "until", lambda v: None if v is None else _time_field(v))
        keys = encoding.field(doc, "keys", _keys_field)
        if (kind == SCOPE_ALL) != (not scope):
            raise InvalidEncoding("an 'all' share has an empty scope, any other a non-empty one")
        if kind == SCOPE_RECORDS and not keys:
            raise InvalidEncoding("a record share holds at least one key")
        return cls(share_id, grantee, kind, scope, created, until, keys)


def _share_id_field(value: object) -> str:
    if not isinstance(value, str) or len(value) != 2 * _SHARE_ID_BYTES:
        raise InvalidEncoding(f"a share id is {2 * _SHARE_ID_BYTES} hex digits")
    bytes.fromhex(value)
    return value


def _scope_kind_field(value: object) -> str:
    if value not in _SCOPES:
        raise InvalidEncoding(f"scope_kind must be one of {', '.join(_SCOPES)}")
    return str(value)


def _scope_field(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidEncoding("scope must be a list of strings")
    out = tuple(encoding.identity_text(v) for v in value)
    if len(set(out)) != len(out):
        raise InvalidEncoding("scope has duplicates")
    return out


def _time_field(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidEncoding("a time is an ISO 8601 string")
    return _utc(datetime.fromisoformat(value), "a time")


def _keys_field(value: object) -> tuple[BlockKey, ...]:
    if not isinstance(value, list):
        raise InvalidEncoding("keys must be a list")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"block", "key"}:
            raise InvalidEncoding("each key is {block, key}")
        block = encoding.int_field(item["block"], low=0, high=MAX_BLOCKS - 1)
        key = AggregateKey.from_bytes(json.dumps(item["key"]).encode())
        out.append(BlockKey(block, key))
    if len({k.key.params_fingerprint for k in out}) > 1:
        raise InvalidEncoding("the keys of one share come from different KAC parameters")
    return tuple(out)


def _check_params(params: KacParams, directory: Directory) -> None:
    if directory.n != params.n:
        raise ValueError(f"the directory has {directory.n} classes per block, params {params.n}")


def scope_classes(directory: Directory, kind: str, scope: Sequence[str]) -> dict[int, set[int]]:
    """Block → classes a share of this scope needs under the directory as it is now (what
    a storage gate compares a share's declared classes against)."""
    if kind not in _SCOPES:
        raise ValueError(f"a share's scope is one of {_SCOPES}, not {kind!r}")
    return _required(directory, kind, scope)


def _required(directory: Directory, kind: str, scope: Sequence[str]) -> dict[int, set[int]]:
    """Block → classes the scope needs under the directory as it is now."""
    out: dict[int, set[int]] = {}
    if kind == SCOPE_RECORDS:
        for rid in scope:
            slot = directory.slot_of(rid)
            out.setdefault(slot.block, set()).add(slot.index)
        return out
    codes = directory.departments if kind == SCOPE_ALL else scope
    for code in codes:
        for slab in directory.slabs_of(code):
            out.setdefault(slab.block, set()).update(slab.classes())
    return out


def _issue(
    seed: PatientSeed, params: KacParams, classes: Mapping[int, Iterable[int]]
) -> tuple[BlockKey, ...]:
    """One aggregate key per block (blocks with an empty class set are skipped)."""
    keys = []
    for block in sorted(classes):
        chosen = frozenset(classes[block])
        if chosen:
            keys.append(BlockKey(block, kac.extract(params, block_secret(seed, block), chosen)))
    return tuple(keys)


def _make(
    seed: PatientSeed,
    params: KacParams,
    directory: Directory,
    kind: str,
    scope: tuple[str, ...],
    grantee: str,
    until: datetime | None,
    now: datetime | None,
) -> Share:
    _check_params(params, directory)
    _check_text(grantee, "grantee")
    created = _utc(now, "now") if now is not None else datetime.now(UTC)
    expiry = None if until is None else _utc(until, "until")
    if expiry is not None and expiry <= created:
        raise ValueError("until must be later than the share's creation time")
    keys = _issue(seed, params, _required(directory, kind, scope))
    share_id = secrets.token_hex(_SHARE_ID_BYTES)
    return Share(share_id, grantee, kind, scope, created, expiry, keys)


def share_records(
    seed: PatientSeed,
    params: KacParams,
    directory: Directory,
    record_ids: Iterable[str],
    *,
    grantee: str,
    until: datetime | None = None,
    now: datetime | None = None,
) -> Share:
    """A share of exactly these records: one key per block their slots lie in."""
    ids = tuple(dict.fromkeys(record_ids))
    if not ids:
        raise ValueError("a record share needs at least one record id")
    for rid in ids:
        directory.slot_of(rid)
    return _make(seed, params, directory, SCOPE_RECORDS, ids, grantee, until, now)


def share_record(
    seed: PatientSeed,
    params: KacParams,
    directory: Directory,
    record_id: str,
    *,
    grantee: str,
    until: datetime | None = None,
    now: datetime | None = None,
) -> Share:
    """A share of one record (one 96-B key for its single class)."""
    return share_records(
        seed, params, directory, [record_id], grantee=grantee, until=until, now=now
    )


def share_department(
    seed: PatientSeed,
    params: KacParams,
    directory: Directory,
    dept: str,
    include_subtree: Callable[[str], Iterable[Any]] | None = None,
    *,
    grantee: str,
    until: datetime | None = None,
    now: datetime | None = None,
) -> Share:
    """A share of every reserved slab of ``dept`` (and of its descendants).

    ``include_subtree(dept)`` returns the department and its descendants, as codes or as
    objects with a ``code`` attribute (so ``Taxonomy.subtree`` works as is). Departments
    without records yet are kept in the scope, so :func:`extend_share` covers their first
    slab when it is reserved; a share may therefore start with no key at all.
    """
    _check_text(dept, "department code")
    codes = [dept]
    if include_subtree is not None:
        for item in include_subtree(dept):
            code = getattr(item, "code", item)
            codes.append(_check_text(code, "department code"))
    scope = tuple(dict.fromkeys(codes))
    return _make(seed, params, directory, SCOPE_DEPARTMENTS, scope, grantee, until, now)


def share_all(
    seed: PatientSeed,
    params: KacParams,
    directory: Directory,
    *,
    grantee: str,
    until: datetime | None = None,
    now: datetime | None = None,
) -> Share:
    """A share of every reserved slab of every department (the whole record)."""
    return _make(seed, params, directory, SCOPE_ALL, (), grantee, until, now)


def extend_share(
    seed: PatientSeed, params: KacParams, directory: Directory, share: Share
) -> tuple[Share, tuple[BlockKey, ...]]:
    """Keys for what ``share``'s scope needs now but its keys do not open yet.

    For a department or ``all`` share these are the slabs reserved since it was issued (one
    96-B key per block touched by the new slabs); for a record share, the new slots of moved
    records. Returns the extended share (same id and metadata) and the added keys, which the
    service sends to the grantee and logs as a grant. Nothing to add gives ``(share, ())``.
    """
    _check_params(params, directory)
    have = share.classes()
    needed = _required(directory, share.scope_kind, share.scope)
    missing = {b: c - have.get(b, frozenset()) for b, c in needed.items()}
    added = _issue(seed, params, missing)
    if not added:
        return share, ()
    return replace(share, keys=share.keys + added), added


# --- records -----------------------------------------------------------------------------------


def _record_context(record_id: str) -> bytes:
    return _RECORD_CONTEXT + _check_text(record_id, "record id").encode("utf-8")


def seal_record(
    params: KacParams,
    public_of_block: Callable[[int], KacPatientPublic] | Mapping[int, KacPatientPublic],
    slot: Slot,
    plaintext: bytes,
    record_id: str,
) -> KacCiphertext:
    """Encrypt ``plaintext`` (typically a record's 32-byte DEK) to ``slot``, bound to the id.

    ``public_of_block`` gives ``v_b`` for a block (a callable or a mapping, e.g. the result
    of :func:`block_publics`). The record id goes into the AEAD's associated data.
    """
    if callable(public_of_block):
        public = public_of_block(slot.block)
    else:
        public = public_of_block[slot.block]
    return kac.encrypt(params, public, slot.index, plaintext, context=_record_context(record_id))


def open_record(
    params: KacParams, share: Share, ciphertext: KacCiphertext, record_id: str
) -> bytes:
    """Decrypt a sealed record with the share's key for its block.

    ``record_id`` is the id the reader asked for: a ciphertext of another record (even one
    the share covers) fails with :class:`DecryptionFailed`. A share holding no key for the
    ciphertext's block, or not for its class, raises :class:`PolicyNotSatisfied` before any
    pairing. Expiry is *not* checked here: the storage gate does that.
    """
    context = _record_context(record_id)
    same_block = [k for k in share.keys if k.key.patient_id == ciphertext.patient_id]
    if not same_block:
        raise PolicyNotSatisfied("the share holds no key for this ciphertext's block")
    for k in same_block:
        if ciphertext.class_index in k.key.classes:
            return kac.decrypt(params, k.key, ciphertext, context=context)
    raise PolicyNotSatisfied(
        f"class {ciphertext.class_index} of block {same_block[0].block} is not in this share"
    )


# --- revocation --------------------------------------------------------------------------------


def rewrap_plan(directory: Directory, revoked_share: Share) -> list[str]:
    """The records a revocation of ``revoked_share`` must move to fresh slots (slot order).

    These are exactly the records whose current slot some key of the share opens.
    """
    return directory.records_in(revoked_share.classes())


# --- overhead ----------------------------------------------------------------------------------

DEFAULT_SHARE_PATTERNS: Mapping[str, tuple[str, int]] = MappingProxyType(
    {
        "one record": (SCOPE_RECORDS, 1),
        "10 records (set)": (SCOPE_RECORDS, 10),
        "one department": (SCOPE_DEPARTMENTS, 1),
        "every department, one share each": ("each-department", 0),
        "whole record (all)": (SCOPE_ALL, 0),
    }
)


def key_overhead(
    n_records: int | Iterable[int] = (10, 100, 1000),
    share_patterns: Mapping[str, tuple[str, int]] | None = None,
    *,
    departments: int = 10,
    n: int = 1024,
    slab_size: int = DEFAULT_SLAB_SIZE,
) -> dict[str, Any]:
    """Key-management overhead of H-KAC against one key per record (no cryptography run).

    Records (36-character UUID ids) are spread round-robin over ``departments`` departments
    and allocated with :func:`assign`. The patient's *secret* state is the 32-B seed; the
    directory is a public index (JSON size reported, and separately its allocation part
    without the record map, which the service and the ledger's anchors already hold). A share
    sends 96 B per key, i.e. per block it touches. The baselines are one 32-B symmetric key or
    one 96-B KAC key per record, both for storage and for each share (one key per record
    covered). ``share_patterns`` maps a label to ``(kind, count)`` with kind ``records``
    (a set of ``count`` records, spread over departments), ``departments`` (``count``
    departments in one share), ``each-department`` (one share per department, summed) or
    ``all``.
    """
    sizes = [n_records] if isinstance(n_records, int) else list(n_records)
    patterns = dict(DEFAULT_SHARE_PATTERNS if share_patterns is None else share_patterns)
    rows = []
    for total in sizes:
        directory = Directory(n, slab_size)
        codes = [f"{k + 1:02d}" for k in range(departments)]
        for i in range(total):
            directory, _ = assign(directory, codes[i % departments], str(uuid.UUID(int=i + 1)))
        record_ids = list(directory.records)
        shares: dict[str, dict[str, int]] = {}
        for label, (kind, count) in patterns.items():
            if kind == SCOPE_RECORDS:
                needs = [_required(directory, kind, record_ids[: min(count, total)])]
            elif kind == SCOPE_DEPARTMENTS:
                needs = [_required(directory, kind, codes[:count])]
            elif kind == "each-department":
                needs = [_required(directory, SCOPE_DEPARTMENTS, [c]) for c in codes]
            elif kind == SCOPE_ALL:
                needs = [_required(directory, kind, ())]
            else:
                raise ValueError(f"unknown share pattern kind {kind!r}")
            keys = sum(len(need) for need in needs)
            covered = sum(len(directory.records_in(need)) for need in needs)
            shares[label] = {
                "shares": len(needs),
                "keys": keys,
                "bytes": G2_BYTES * keys,
                "records_covered": covered,
                "per_record_32B_bytes": 32 * covered,
                "per_record_96B_bytes": G2_BYTES * covered,
            }
        dir_bytes = len(directory.to_bytes())
        alloc_bytes = len(directory.without_records().to_bytes())
        rows.append(
            {
                "n_records": total,
                "departments": departments,
                "slabs": sum(len(directory.slabs_of(c)) for c in directory.departments),
                "blocks": len(directory.blocks),
                "patient_seed_bytes": SEED_BYTES,
                "directory_bytes": dir_bytes,
                "allocation_bytes": alloc_bytes,
                "patient_total_bytes": SEED_BYTES + dir_bytes,
                "per_record_32B_bytes": 32 * total,
                "per_record_96B_bytes": G2_BYTES * total,
                "shares": shares,
            }
        )
    return {"n": n, "slab_size": slab_size, "key_bytes": G2_BYTES, "rows": rows}


def overhead_table(result: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`key_overhead`'s result."""
    lines = [
        "| records | slabs / blocks | patient secret | public directory: allocation / "
        "with record map | per-record keys stored (32 B / 96 B) | share pattern | "
        "H-KAC keys sent | per-record keys sent (32 B / 96 B) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        first = True
        for label, s in row["shares"].items():
            head = (
                f"| {row['n_records']:,} | {row['slabs']} / {row['blocks']} | "
                f"{row['patient_seed_bytes']} B | "
                f"{row['allocation_bytes']:,} / {row['directory_bytes']:,} B | "
                f"{row['per_record_32B_bytes']:,} / {row['per_record_96B_bytes']:,} B"
                if first
                else "| | | | |"
            )
            lines.append(
                f"{head} | {label} | {s['keys']} × 96 B = {s['bytes']:,} B | "
                f"{s['records_covered']} keys = {s['per_record_32B_bytes']:,} / "
                f"{s['per_record_96B_bytes']:,} B |"
            )
            first = False
    return "\n".join(lines)
