"""Small file helpers for the CLI: secret files are written 0600, atomically."""

from __future__ import annotations

import os
from pathlib import Path

from medshare.cli.errors import fail
from medshare.ledger.store import SQLiteStore, StoreCorrupted


def write_file(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a key behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600 if secret else 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if secret:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
