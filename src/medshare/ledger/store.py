"""Block storage: one protocol, an in-memory and a SQLite implementation.

Each node keeps its own SQLite database in WAL mode with ``synchronous=FULL``: a block
and its transactions' index are written in one transaction, so a crash at any point
leaves either the whole block or none of it, and a committed block is on disk before
``append`` returns. The consensus write-ahead log (own votes, lock) lives in the
``meta`` table and is durable before ``put_meta`` returns, so a restarted node can
never sign a vote that conflicts with one it sent before the crash.

Stored bytes are the canonical block encoding; reading back a row that does not decode
counts as corruption (:class:`StoreCorrupted`), never as a missing block. Everything else
in the ``blocks`` and ``txs`` tables (a block's ``hash`` and ``height`` columns, the
transaction index) is derived from those bytes, and ``ledger verify`` recomputes it:
nothing reads a block by its hash column today, but a proof or a tool that trusted a
stale column would point at the wrong block.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from medshare.ledger.types import Block, LedgerFormatError


class StoreCorrupted(Exception):
    """A stored row that no longer decodes or sits at the wrong height."""


class BlockStore(Protocol):
    def height(self) -> int: ...  # -1 when empty; genesis is height 0
    def get(self, height: int) -> Block | None: ...
    def append(self, block: Block) -> None: ...
    def blocks(self, start: int = 0) -> Iterator[Block]: ...
    def find_tx(self, txid: str) -> tuple[int, int] | None: ...
    def put_meta(self, key: str, value: bytes) -> None: ...
    def get_meta(self, key: str) -> bytes | None: ...
    def close(self) -> None: ...


def _check_next(current: int, block: Block) -> None:
    if block.height != current + 1:
        raise ValueError(f"store holds height {current}; cannot append block {block.height}")


class MemoryStore:
    """A store that forgets everything on exit: tests and the simulator."""

    def __init__(self) -> None:
        self._blocks: list[Block] = []
        self._txs: dict[str, tuple[int, int]] = {}
        self._meta: dict[str, bytes] = {}

    def height(self) -> int:
        return len(self._blocks) - 1

    def get(self, height: int) -> Block | None:
        return self._blocks[height] if 0 <= height < len(self._blocks) else None

    def append(self, block: Block) -> None:
        _check_next(self.height(), block)
        self._blocks.append(block)
        for index, tx in enumerate(block.txs):
            self._txs.setdefault(tx.txid, (block.height, index))

    def blocks(self, start: int = 0) -> Iterator[Block]:
        yield from self._blocks[start:]

    def find_tx(self, txid: str) -> tuple[int, int] | None:
        return self._txs.get(txid)

    def put_meta(self, key: str, value: bytes) -> None:
        self._meta[key] = bytes(value)

    def get_meta(self, key: str) -> bytes | None:
        return self._meta.get(key)

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash   TEXT NOT NULL UNIQUE,
    data   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    txid   TEXT PRIMARY KEY,
    height INTEGER NOT NULL,
    idx    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


class SQLiteStore:
    """One node's durable store (SQLite, WAL, synchronous=FULL)."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        """Open (creating if needed) a node's database; ``readonly`` opens an existing file
        without writing anything to it (for audits of someone else's database)."""
        self.path = Path(path)
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
            tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master")}
            if not {"blocks", "txs", "meta"} <= tables:
                raise sqlite3.DatabaseError("the blocks, txs and meta tables are missing")
            row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupted(f"{self.path} is not a medshare node database ({exc})") from None
        self._height = -1 if row[0] is None else int(row[0])

    def height(self) -> int:
        return self._height

    def _decode(self, height: int, data: bytes) -> Block:
        if not isinstance(data, bytes):  # e.g. a row rewritten as TEXT
            raise StoreCorrupted(f"block {height} is stored as {type(data).__name__}, not bytes")
        try:
            block = Block.from_json(json.loads(data))
        except (LedgerFormatError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise StoreCorrupted(f"block {height} does not decode: {exc}") from None
        if block.height != height:
            raise StoreCorrupted(
                f"the blocks.height column says {height}, but the row holds block {block.height}"
            )
        return block

    def get(self, height: int) -> Block | None:
        row = self._db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else self._decode(height, row[0])

    def raw(self, height: int) -> bytes | None:
        """The stored bytes of a block, undecoded (for ``ledger verify``)."""
        row = self._db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], bytes):
            raise StoreCorrupted(f"block {height} is stored as {type(row[0]).__name__}, not bytes")
        return row[0]

    def append(self, block: Block) -> None:
        _check_next(self._height, block)
        with self._transaction():
            self._db.execute(
                "INSERT INTO blocks (height, hash, data) VALUES (?, ?, ?)",
                (block.height, block.hash, block.encode()),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO txs (txid, height, idx) VALUES (?, ?, ?)",
                [(tx.txid, block.height, i) for i, tx in enumerate(block.txs)],
            )
        self._height = block.height

    def blocks(self, start: int = 0) -> Iterator[Block]:
        cursor = self._db.execute(
            "SELECT height, data FROM blocks WHERE height >= ? ORDER BY height", (start,)
        )
        for height, data in cursor:
            yield self._decode(height, data)

    def find_tx(self, txid: str) -> tuple[int, int] | None:
        row = self._db.execute("SELECT height, idx FROM txs WHERE txid = ?", (txid,)).fetchone()
        if row is None:
            return None
        if not all(type(value) is int for value in row):  # e.g. a column rewritten as text
            raise StoreCorrupted(
                f"the txs row of transaction {txid} holds height {row[0]!r} and idx {row[1]!r}, "
                "not integers"
            )
        return row[0], row[1]

    # -- the derived columns, as stored (for ``ledger verify``) -----------------------------

    def stored_hash(self, height: int) -> object:
        """The ``hash`` column of block ``height`` as stored (any type), or None."""
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else row[0]

    def heights_below_genesis(self) -> list[int]:
        """Heights of ``blocks`` rows below 0: outside the chain that ``blocks()`` walks."""
        rows = self._db.execute("SELECT height FROM blocks WHERE height < 0 ORDER BY height")
        return [height for (height,) in rows]

    def tx_rows_per_height(self) -> dict[object, int]:
        """How many ``txs`` rows name each height (keys as stored, any type)."""
        rows = self._db.execute("SELECT height, COUNT(*) FROM txs GROUP BY height")
        return {height: count for height, count in rows}

    def tx_rows_at(self, height: object) -> list[tuple[object, object]]:
        """The ``(txid, idx)`` of every ``txs`` row naming ``height``, as stored."""
        rows = self._db.execute(
            "SELECT txid, idx FROM txs WHERE height IS ? ORDER BY idx", (height,)
        )
        return [(txid, idx) for txid, idx in rows]

    def put_meta(self, key: str, value: bytes) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, bytes(value)),
            )

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
