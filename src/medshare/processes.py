"""Processes started to outlive their command (ledger nodes, hospital servers), found again
by a pid file without ever signalling a stranger.

Why: ``medshare consortium up`` and ``medshare net up`` return while their processes run
on; a later ``down`` reads the pids back. After a crash or a reboot a pid may belong to
another process, so a pid counts only while it is the very process that was started: the
same start time (clock ticks since boot) and a command line that names the expected
folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie — killed, not yet reaped — does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def identity(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, command line) of a process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return int(stat[19]), cmdline
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return None


def record(pid: int) -> dict:
    """What a pid file keeps of a process it started: its pid, start time and command
    line (read again for a moment while it is empty: a process just past ``exec`` may
    show none yet)."""
    found = identity(pid)
    for _ in range(50):
        if found is None or found[1]:
            break
        time.sleep(0.01)
        found = identity(pid)
    return {"pid": pid, "start": found[0] if found else -1, "cmdline": found[1] if found else ""}


def still_ours(entry: object, needle: str) -> int | None:
    """The pid of a pid-file ``entry`` (:func:`record`) if that very process still runs:
    the same start time, the same command line (when recorded), which must contain
    ``needle`` (its folder); else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
        return None
    found = identity(entry["pid"])
    if found is None or found[0] != entry.get("start") or needle not in found[1]:
        return None
    if entry.get("cmdline") and entry["cmdline"] != found[1]:
        return None
    return entry["pid"] if alive(entry["pid"]) else None


def leads_its_group(pid: int) -> bool:
    """Whether ``pid`` is the leader of its own process group (started with a new
    session), so signalling the group reaches only it and its children."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
