"""Small file helpers for the CLI: secret files are written 0600, atomically."""

from __future__ import annotations

from pathlib import Path

from medshare.cli.errors import fail
from medshare.fileio import write_file
from medshare.ledger.store import SQLiteStore, StoreCorrupted

__all__ = ["open_node_db", "read_file", "write_file"]


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def open_node_db(db: Path) -> SQLiteStore:
    """Open a node's database read-only for auditing, or exit with a clear message."""
    if not db.is_file():
        raise fail(f"no such database: {db}")
    try:
        return SQLiteStore(db, readonly=True)
    except StoreCorrupted as exc:
        raise fail(str(exc)) from None
