"""``medshare …`` as a separate process, for the tests that drive real processes."""

from __future__ import annotations

import json
import subprocess

from medshare.server.process import medshare_command


def run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(medshare_command(*args), capture_output=True, text=True, timeout=timeout)


def ok(*args: object) -> dict:
    """The command's JSON output; the test fails with its error output if it failed."""
    done = run(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
