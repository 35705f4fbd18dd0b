"""Atomic file writes: a crash never leaves half a key (or half a config) behind."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write via a temporary file, fsync and rename; ``secret`` files are created 0600."""
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
