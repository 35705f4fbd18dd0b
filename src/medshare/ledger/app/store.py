"""The application's state on disk: one SQLite file per node, one transaction per block.

CometBFT keeps the blocks; the app keeps only what it needs to answer ``Info`` after a
restart (the last committed height and app hash) and to go on from there. State is written
only in ``Commit``, so a node killed between ``FinalizeBlock`` and ``Commit`` restarts one
block behind and CometBFT replays that block to it (the ABCI handshake).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medshare.ledger import election
from medshare.ledger.app.genesis import Genesis
from medshare.ledger.app.state import BlockChanges, LedgerState
from medshare.ledger.types import LedgerFormatError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (sender TEXT PRIMARY KEY, nonce INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identities (key TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS published (name TEXT PRIMARY KEY, digest TEXT NOT NULL);
"""


class StateCorrupted(RuntimeError):
    """The state file cannot be read back; the node must be resynced, not trusted."""


class StateStore:
    def __init__(self, path: Path) -> None:
        # One thread at a time (see InProcessLedger), not always the opening one.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def load(self) -> LedgerState | None:
        """The last committed state, or None before ``InitChain``."""
        rows = dict(self._db.execute("SELECT key, value FROM meta"))
        if "genesis" not in rows:
            return None
        try:
            genesis = Genesis.from_json(json.loads(rows["genesis"]))
            validators = election.from_state_json(json.loads(rows["validators"]))
            committee = tuple(bytes.fromhex(m) for m in json.loads(rows["committee"]))
            state = LedgerState(
                genesis,
                int(rows["height"]),
                bytes.fromhex(rows["app_hash"]),
                validators,
                committee,
                dict(self._db.execute("SELECT sender, nonce FROM nonces")),
                dict(self._db.execute("SELECT key, name FROM identities")),
                LedgerState.candidates_from_json(json.loads(rows.get("candidates", "{}"))),
                dict(self._db.execute("SELECT name, digest FROM published")),
            )
        except (KeyError, TypeError, ValueError, LedgerFormatError) as exc:
            raise StateCorrupted(f"application state unreadable: {exc}") from None
        return state

    def reset(self, state: LedgerState) -> None:
        """Write ``state`` as the whole state (``InitChain``)."""
        with self._transaction():
            self._db.execute("DELETE FROM meta")
            self._db.execute("DELETE FROM nonces")
            self._db.execute("DELETE FROM identities")
            self._db.execute("DELETE FROM published")
            self._db.execute(
                "INSERT INTO meta VALUES ('genesis', ?)", (json.dumps(state.genesis.to_json()),)
            )
            everything = BlockChanges(
                state.nonces, state.identities, state.published, True, True, True
            )
            self._write(state, everything)

    def save(self, state: LedgerState, changes: BlockChanges) -> None:
        """Persist one committed block's changes and the new height and app hash."""
        with self._transaction():
            self._write(state, changes)

    def _write(self, state: LedgerState, changes: BlockChanges) -> None:
        self._db.executemany("INSERT OR REPLACE INTO nonces VALUES (?, ?)", changes.nonces.items())
        self._db.executemany(
            "INSERT OR REPLACE INTO identities VALUES (?, ?)", changes.identities.items()
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO published VALUES (?, ?)", changes.published.items()
        )
        meta = {"height": str(state.height), "app_hash": state.app_hash.hex()}
        if changes.validators or changes.reputation:
            meta["validators"] = json.dumps(election.state_json(state.validators))
        if changes.committee:
            meta["committee"] = json.dumps([m.hex() for m in state.committee])
        if changes.candidates:
            meta["candidates"] = json.dumps(state.candidates_json())
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
