"""A hospital server as its own process (``medshare hospital serve``), started and stopped
by whoever needs one on 127.0.0.1: the demo, the HTTP benchmark.

Why a process and not a thread: the parties must not share memory — the server holds the
hospital's keys and data, the wallets talking to it hold theirs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from medshare.ledger.cometbft.network import free_ports

START_TIMEOUT_S = 120


def medshare_command(*args: object) -> list[str]:
    """The ``medshare`` console script (or the module, where it is not on the PATH)."""
    exe = shutil.which("medshare")
    base = [exe] if exe else [sys.executable, "-m", "medshare.cli.main"]
    return base + [str(a) for a in args]


class ServerProcess:
    """``medshare hospital serve --dir DATA`` on a free 127.0.0.1 port until :meth:`stop`;
    its output goes to ``log``."""

    def __init__(self, data: Path, log: Path, *, precompute: int = 0) -> None:
        """``precompute``: issuance offers whose randomness the server keeps ready per
        authority (none by default: a demo or a benchmark issues few keys, and the
        background work would only compete with what they measure)."""
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = log
        self._log = log.open("wb")
        self._process = subprocess.Popen(
            medshare_command(
                "hospital", "serve", "--dir", data, "--port", port, "--precompute", precompute
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the hospital server did not start: {tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
