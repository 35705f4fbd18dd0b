"""Atomic file writes: a crash never leaves half a key (or half a config) behind.

The temporary file is a fresh, unpredictable name created with ``O_CREAT | O_EXCL |
O_NOFOLLOW``: with a fixed name (the old ``.<name>.tmp``) anyone who can write to the
folder could plant a symlink there, and the key would be written through it to a file of
their choosing (and the link then renamed over the key). ``O_EXCL`` refuses any existing
entry, link or not, so the write either lands in a file this call created or fails.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: How many fresh temporary names to try before giving up (a clash needs someone who
#: predicts 64 random bits, or keeps planting entries; either way, stop and say so).
_ATTEMPTS = 8


class UnsafeFileError(OSError):
    """A file that could not be written without following or reusing someone's entry."""


def _temp_path(path: Path) -> Path:
    """A fresh hidden name next to ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents 0700 (``Path.mkdir(parents=True)``
    gives the parents the umask's default, usually 0755, whatever ``mode`` says)."""
    missing = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made by a concurrent writer: not ours to change
        os.chmod(folder, 0o700)  # exactly 0700 whatever the umask


def _create_exclusive(path: Path, mode: int) -> tuple[int, Path]:
    """Open a new temporary file next to ``path``: never an existing entry, never a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_ATTEMPTS):
        tmp = _temp_path(path)
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.filename is None:
                exc.filename = str(tmp)
            raise
    raise UnsafeFileError(
        f"cannot write {path}: every temporary name tried next to it already exists "
        f"(someone may be planting files in {path.parent})"
    )


def write_file(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write via a fresh temporary file, fsync and rename; ``secret`` files are created
    0600, and any folder made for them 0700 (a key's folder names who holds keys)."""
    if secret:
        make_private_dirs(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_exclusive(path, 0o600 if secret else 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            if secret:
                os.fchmod(handle.fileno(), 0o600)  # exactly 0600 whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
