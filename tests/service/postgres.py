"""A throwaway PostgreSQL server for tests: initdb in a temp folder, started on a free
port of 127.0.0.1, stopped and deleted afterwards. Runs as the ``postgres`` user when the
tests run as root (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN_DIRS = (
    *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),
    Path("/usr/local/bin"),
)


def _binary(name: str) -> str | None:
    for folder in BIN_DIRS:
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def available() -> bool:
    return all(_binary(n) for n in ("initdb", "pg_ctl"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database ``medshare`` on a private server."""
    root = Path(tempfile.mkdtemp(prefix="medshare-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    run = lambda cmd: subprocess.run(  # noqa: E731 - a local shorthand
        _as_server_user(cmd), check=True, capture_output=True, text=True, timeout=120
    )
    try:
        run([_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            [
                _binary("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(root / "log"),
                "start",
            ]
        )
        try:
            run(
                [
                    _binary("createdb") or "createdb",
                    "-h",
                    str(sock),
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "medshare",
                ]
            )
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/medshare"
        finally:
            run([_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
