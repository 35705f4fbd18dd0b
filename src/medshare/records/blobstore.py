"""Off-chain storage for encrypted record blobs, with no single point of failure.

The ledger carries only digests; the AES-256-GCM ciphertext of each record lives here,
copied to at least two institution nodes (:class:`BlobReplica`), so that losing one node
loses neither availability nor data.

Blobs are *content-addressed*: a blob's id is the lower-case hex SHA-256 of its (already
encrypted) bytes, the same hash the ledger records. Every copy can therefore be checked
by whoever reads it, and a replica never has to be trusted — a copy that does not hash to
its id is corrupt (bit rot, a truncated write, a tampering node), whatever the replica
claims. :class:`ReplicatedBlobStore` uses that to

* place each blob deterministically on ``replication`` replicas by rendezvous hashing
  (HRW: highest SHA-256(blob id ‖ 0x00 ‖ replica name) first), so every node computes the
  same placement without a directory service, and adding or removing a replica only moves
  the blobs that ranked it first;
* serve reads from the first good copy in HRW order, verifying it against the id and the
  caller's ledger digest, falling back past missing, corrupt or unreachable copies, and
  repairing the bad ones from the good copy (read-repair);
* :meth:`~ReplicatedBlobStore.scrub` every copy in the background: verify, re-replicate
  up to ``replication`` good copies, remove corrupt ones.

A replica that raises (node down, disk unreadable) is *unavailable* for that operation,
never fatal: the operation goes on with the others.

Deletion of a record is crypto-shredding at the service layer — destroying the key wraps
(and so the DEK) makes every copy of the ciphertext, including copies on backups and on
replicas that were down, unreadable. :meth:`~ReplicatedBlobStore.delete` here removes the
ciphertext only as hygiene; the ledger keeps the digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "BlobReplica",
    "BlobStoreError",
    "BlobUnavailable",
    "DirectoryReplica",
    "InsufficientReplicas",
    "ReadReport",
    "ReplicatedBlobStore",
    "SQLiteReplica",
    "ScrubReport",
    "blob_id_of",
    "check_blob_id",
]

log = logging.getLogger(__name__)

_BLOB_ID = re.compile(r"[0-9a-f]{64}")
PUT_WORKERS = 8  # blobs ReplicatedBlobStore.put_many stores at once
_FAN = re.compile(r"[0-9a-f]{2}")


def blob_id_of(data: bytes) -> str:
    """The content address of a blob: lower-case hex SHA-256 of its bytes (64 characters)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
    return hashlib.sha256(data).hexdigest()


def check_blob_id(blob_id: str) -> str:
    """Return ``blob_id`` if it is 64 lower-case hex characters, else raise ``ValueError``.

    Ids become file names and SQL keys, so nothing else (``../``, upper case, a salted
    digest with a prefix) is accepted.
    """
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise ValueError(f"not a blob id (64 lower-case hex characters): {blob_id!r}")
    return blob_id


def _matches(data: bytes, digest: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest)


class BlobStoreError(Exception):
    """Base class of the blob store's errors."""


class BlobUnavailable(BlobStoreError):
    """No reachable replica holds a copy that verifies against the blob id / ledger digest."""


class InsufficientReplicas(BlobStoreError):
    """A put reached fewer than ``replication`` replicas; the blob is *not* stored.

    ``stored_on`` names the replicas that did take a copy: those copies are unacknowledged
    ciphertext (harmless without the keys); retry the put, or delete them.
    """

    def __init__(self, message: str, blob_id: str, stored_on: list[str]) -> None:
        super().__init__(message)
        self.blob_id = blob_id
        self.stored_on = stored_on


@runtime_checkable
class BlobReplica(Protocol):
    """One institution node's blob storage. It stores bytes under an id and is not trusted.

    ``get`` returns ``None`` for an id it does not hold; any exception means the replica is
    unavailable. A replica need not verify content: the store does.
    """

    name: str

    def put(self, blob_id: str, data: bytes) -> None: ...

    def get(self, blob_id: str) -> bytes | None: ...

    def delete(self, blob_id: str) -> None: ...

    def ids(self) -> Iterator[str]: ...


class DirectoryReplica:
    """Blobs as files ``root/ab/cd/<blob id>`` (two-level fan-out keeps directories small).

    Writes go to a temporary file in the target directory, are fsync'ed, then renamed over
    the final name (and the directory fsync'ed), so a crash leaves either the old file or
    the complete new one, never a torn blob. A missing ``root`` (a wiped node) reads as an
    empty replica and is re-created by the next write.
    """

    def __init__(self, root: Path | str, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryReplica({str(self.root)!r}, name={self.name!r})"

    def path_of(self, blob_id: str) -> Path:
        """Where the blob with this id is (or would be) stored."""
        check_blob_id(blob_id)
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    def put(self, blob_id: str, data: bytes) -> None:
        target = self.path_of(blob_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def get(self, blob_id: str) -> bytes | None:
        try:
            return self.path_of(blob_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, blob_id: str) -> None:
        target = self.path_of(blob_id)
        target.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        for d in (target.parent, target.parent.parent):  # prune empty fan-out dirs
            try:
                d.rmdir()
            except OSError:
                break

    def ids(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for d1 in sorted(self.root.iterdir()):
            if not (_FAN.fullmatch(d1.name) and d1.is_dir()):
                continue
            for d2 in sorted(d1.iterdir()):
                if not (_FAN.fullmatch(d2.name) and d2.is_dir()):
                    continue
                for f in sorted(d2.iterdir()):
                    n = f.name
                    if _BLOB_ID.fullmatch(n) and n[:2] == d1.name and n[2:4] == d2.name:
                        yield n


def _fsync_dir(path: Path) -> None:
    """Make a rename/unlink in ``path`` durable (POSIX; a no-op where dirs cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SQLiteReplica:
    """Blobs as rows of ``blobs(id TEXT PRIMARY KEY, data BLOB)`` in one SQLite file.

    WAL mode with ``synchronous=FULL``: readers do not block the writer, and a committed
    put survives power loss. One connection, serialised by a lock; call :meth:`close`.
    """

    def __init__(self, path: Path | str, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, data BLOB NOT NULL)"
        )

    def __repr__(self) -> str:
        return f"SQLiteReplica({str(self.path)!r}, name={self.name!r})"

    def __enter__(self) -> SQLiteReplica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def put(self, blob_id: str, data: bytes) -> None:
        check_blob_id(blob_id)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO blobs (id, data) VALUES (?, ?)", (blob_id, bytes(data))
            )

    def get(self, blob_id: str) -> bytes | None:
        check_blob_id(blob_id)
        with self._lock:
            row = self._conn.execute("SELECT data FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, blob_id: str) -> None:
        check_blob_id(blob_id)
        with self._lock:
            self._conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))

    def ids(self) -> Iterator[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM blobs ORDER BY id").fetchall()
        for (blob_id,) in rows:
            if isinstance(blob_id, str) and _BLOB_ID.fullmatch(blob_id):
                yield blob_id


@dataclass
class ReadReport:
    """What a read found: which replica served it, and which copies were bad or absent.

    ``repaired`` lists replicas rewritten from the good copy (and verified by reading back);
    ``unavailable`` lists replicas that raised.
    """

    blob_id: str
    served_by: str
    repaired: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)


@dataclass
class ScrubReport:
    """Result of :meth:`ReplicatedBlobStore.scrub`. Pairs are ``(blob_id, replica name)``.

    ``lost`` blobs have no good copy on any reachable replica (their corrupt copies are
    kept as the only remaining evidence); ``under_replicated`` blobs still have fewer than
    ``replication`` good copies because too few replicas could take one.
    """

    blobs_checked: int = 0
    copies_checked: int = 0
    repaired: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    under_replicated: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing was wrong: no repair, removal, loss, shortfall or unreachable replica."""
        return not (
            self.repaired or self.removed or self.lost or self.under_replicated or self.unavailable
        )


# Result of probing one copy: ("good"|"corrupt"|"missing"|"unavailable", data or None).
_GOOD, _CORRUPT, _MISSING, _UNAVAILABLE = "good", "corrupt", "missing", "unavailable"


class ReplicatedBlobStore:
    """Content-addressed blobs replicated on ``replication`` of several untrusted replicas.

    No replica is special: placement is computed (HRW), any copy is verifiable by its
    hash, and any good copy can restore the others, so the store survives the loss or
    corruption of up to ``replication - 1`` copies of each blob. It keeps no state of its
    own beyond its replicas, so threads may share it where the replicas are thread-safe
    (those of this module and :class:`~medshare.api.peer_replica.PeerReplica` are).
    """

    def __init__(self, replicas: Sequence[BlobReplica], replication: int = 2) -> None:
        replicas = list(replicas)
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique (they drive placement): {names}")
        if replication < 1:
            raise ValueError(f"replication must be at least 1, got {replication}")
        if len(replicas) < replication:
            raise ValueError(
                f"replication {replication} needs at least {replication} replicas, "
                f"got {len(replicas)}"
            )
        self.replicas = replicas
        self.replication = replication

    # -- placement ---------------------------------------------------------------------

    def ranked(self, blob_id: str) -> list[BlobReplica]:
        """All replicas in rendezvous (HRW) order for ``blob_id``: preferred holders first.

        Score = SHA-256(blob id ‖ 0x00 ‖ replica name), highest first (ties by name). The
        first ``replication`` reachable replicas hold the blob.
        """
        check_blob_id(blob_id)
        prefix = blob_id.encode("ascii") + b"\x00"

        def score(r: BlobReplica) -> tuple[bytes, str]:
            return hashlib.sha256(prefix + r.name.encode("utf-8")).digest(), r.name

        return sorted(self.replicas, key=score, reverse=True)

    def placement(self, blob_id: str) -> list[str]:
        """Names of the ``replication`` replicas a blob goes to when all are healthy."""
        return [r.name for r in self.ranked(blob_id)[: self.replication]]

    # -- operations --------------------------------------------------------------------

    def put(self, data: bytes) -> str:
        """Store ``data`` (ciphertext) and return its blob id (SHA-256 hex).

        Writes go to replicas in HRW order, skipping any that raise, until ``replication``
        have a copy. If fewer succeed, raises :class:`InsufficientReplicas` and returns no
        id: the blob must not be referenced from the ledger. Idempotent for equal bytes.
        """
        data = bytes(data)
        blob_id = blob_id_of(data)
        stored: list[str] = []
        failed: list[str] = []
        for replica in self.ranked(blob_id):
            if len(stored) == self.replication:
                break
            try:
                replica.put(blob_id, data)
            except Exception as exc:
                log.warning("blob put %s on %s failed: %r", blob_id, replica.name, exc)
                failed.append(f"{replica.name} ({type(exc).__name__}: {exc})")
                continue
            stored.append(replica.name)
        if len(stored) < self.replication:
            raise InsufficientReplicas(
                f"blob {blob_id} stored on only {len(stored)} of the {self.replication} "
                f"required replicas ({', '.join(stored) or 'none'}); failed: "
                f"{'; '.join(failed)}. The blob is NOT stored; do not reference it.",
                blob_id,
                stored,
            )
        return blob_id

    def put_many(self, blobs: Sequence[bytes], *, workers: int = PUT_WORKERS) -> list[str]:
        """:meth:`put` of each blob, up to ``workers`` at a time; their ids, in order.

        Why: a copy on another hospital's replica is a network round trip, and one after
        the other they were half of an ingest's time. If any blob fails, the first
        failure (in order) is raised once all have finished; the others may be stored,
        content-addressed and unreferenced until the ledger names them, like a ``put``
        whose caller failed later."""
        if len(blobs) <= 1 or workers <= 1:
            return [self.put(blob) for blob in blobs]
        with ThreadPoolExecutor(max_workers=min(workers, len(blobs))) as pool:
            futures = [pool.submit(self.put, blob) for blob in blobs]
        return [future.result() for future in futures]

    def get(self, blob_id: str, expected_digest: str | None = None) -> bytes:
        """The verified bytes of a blob; see :meth:`get_with_report`."""
        return self.get_with_report(blob_id, expected_digest)[0]

    def get_with_report(
        self, blob_id: str, expected_digest: str | None = None
    ) -> tuple[bytes, ReadReport]:
        """Read a blob from the first replica (HRW order) whose copy verifies, and repair.

        A copy is good only if its SHA-256 equals ``blob_id`` and, when given,
        ``expected_digest`` (the blob hash recorded on the ledger). Missing, corrupt and
        unreachable copies are skipped. Once a good copy is found, corrupt copies seen on
        the way are overwritten with it, and missing copies on replicas among the first
        ``replication`` in HRW order are re-created; each repair is read back and verified
        before it is reported.

        If ``expected_digest`` differs from ``blob_id`` no copy can satisfy both, so the
        read is refused before any replica is touched (nothing is "repaired" to match a
        wrong id). Raises :class:`BlobUnavailable` if no replica has a good copy.
        """
        check_blob_id(blob_id)
        if expected_digest is not None:
            expected = expected_digest.lower() if isinstance(expected_digest, str) else ""
            if not hmac.compare_digest(expected, blob_id):
                raise BlobUnavailable(
                    f"blob {blob_id} does not match the expected (ledger) digest "
                    f"{expected_digest!r}; refusing to serve or repair it"
                )

        corrupt: list[BlobReplica] = []
        missing: list[BlobReplica] = []
        to_fill: list[BlobReplica] = []  # missing where placement wants a copy
        unavailable: list[str] = []
        for rank, replica in enumerate(self.ranked(blob_id)):
            state, data = self._probe(replica, blob_id)
            if state == _UNAVAILABLE:
                unavailable.append(replica.name)
            elif state == _MISSING:
                missing.append(replica)
                if rank < self.replication:
                    to_fill.append(replica)
            elif state == _CORRUPT:
                corrupt.append(replica)
            else:
                assert data is not None
                repaired = [
                    r.name for r in corrupt + to_fill if self._write_verified(r, blob_id, data)
                ]
                report = ReadReport(
                    blob_id=blob_id,
                    served_by=replica.name,
                    repaired=repaired,
                    corrupt=[r.name for r in corrupt],
                    missing=[m.name for m in missing],
                    unavailable=unavailable,
                )
                if corrupt or missing or unavailable:
                    log.warning("blob read %s: %s", blob_id, report)
                return data, report

        raise BlobUnavailable(
            f"no good copy of blob {blob_id} on any replica: "
            f"corrupt={[r.name for r in corrupt]}, missing={[m.name for m in missing]}, "
            f"unavailable={unavailable}"
        )

    def scrub(self, only: Iterable[str] | None = None) -> ScrubReport:
        """Verify every copy of every blob any reachable replica holds (or only of the
        blobs ``only`` names), and heal.

        For each blob: corrupt copies are overwritten with a good copy while fewer than
        ``replication`` good copies exist, and deleted otherwise; missing copies are added
        in HRW order until ``replication`` good copies exist. Blobs with no good copy are
        reported as ``lost`` and left as they are. Replicas that raise are skipped.

        Note: a blob deleted while one of its replicas was down reappears here when that
        replica returns (its copy is good); the ciphertext is useless once its key wraps
        are shredded, and :meth:`delete` can be repeated.
        """
        report = ScrubReport()
        all_ids: set[str] = {check_blob_id(b) for b in only} if only is not None else set()
        for replica in self.replicas if only is None else ():
            try:
                all_ids.update(replica.ids())
            except Exception as exc:
                log.warning("scrub: listing %s failed: %r", replica.name, exc)
                report.unavailable.append(replica.name)

        for blob_id in sorted(all_ids):
            report.blobs_checked += 1
            probes = []
            for replica in self.ranked(blob_id):
                state, data = self._probe(replica, blob_id)
                if state == _UNAVAILABLE:
                    if replica.name not in report.unavailable:
                        report.unavailable.append(replica.name)
                    continue
                if state != _MISSING:
                    report.copies_checked += 1
                probes.append((replica, state, data))

            good = next((d for _, s, d in probes if s == _GOOD), None)
            if good is None:
                report.lost.append(blob_id)
                log.error("scrub: blob %s has no good copy on any reachable replica", blob_id)
                continue
            n_good = sum(1 for _, s, _ in probes if s == _GOOD)
            for replica, state, _ in probes:
                if state == _GOOD:
                    continue
                if n_good < self.replication and self._write_verified(replica, blob_id, good):
                    n_good += 1
                    report.repaired.append((blob_id, replica.name))
                    continue
                if state == _CORRUPT:
                    try:
                        replica.delete(blob_id)
                    except Exception as exc:
                        log.warning("scrub: removing %s from %s: %r", blob_id, replica.name, exc)
                    else:
                        report.removed.append((blob_id, replica.name))
            if n_good < self.replication:
                report.under_replicated.append(blob_id)
        return report

    def delete(self, blob_id: str) -> list[str]:
        """Remove every copy of a blob; return the names of replicas that could not be reached.

        This is hygiene, not the deletion of a record: real deletion is crypto-shredding of
        the key wraps / DEK at the service layer, which makes every copy unreadable,
        including copies on unreachable replicas and backups. The ledger keeps the digest.
        Repeat the call for the replicas returned.
        """
        check_blob_id(blob_id)
        unreached: list[str] = []
        for replica in self.replicas:
            try:
                replica.delete(blob_id)
            except Exception as exc:
                log.warning("blob delete %s on %s failed: %r", blob_id, replica.name, exc)
                unreached.append(replica.name)
        return unreached

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _probe(replica: BlobReplica, blob_id: str) -> tuple[str, bytes | None]:
        try:
            data = replica.get(blob_id)
        except Exception as exc:
            log.warning("blob get %s on %s failed: %r", blob_id, replica.name, exc)
            return _UNAVAILABLE, None
        if data is None:
            return _MISSING, None
        data = bytes(data)
        return (_GOOD, data) if _matches(data, blob_id) else (_CORRUPT, None)

    @staticmethod
    def _write_verified(replica: BlobReplica, blob_id: str, data: bytes) -> bool:
        """Write a (verified) copy and read it back; True only if the replica now has it."""
        try:
            replica.put(blob_id, data)
            back = replica.get(blob_id)
        except Exception as exc:
            log.warning("blob repair %s on %s failed: %r", blob_id, replica.name, exc)
            return False
        return back is not None and _matches(bytes(back), blob_id)
