"""A local ``anvil`` EVM node as a context manager, for tests and the demo.

``anvil`` comes from the npm package ``@foundry-rs/anvil`` (pinned in the project's
``package.json``; install with ``npm ci``). The package ships the real binary in a
platform package (``@foundry-rs/anvil-linux-amd64`` etc.) from the npm registry, plus a
node wrapper in ``node_modules/.bin/anvil``. We run the platform binary directly when we
can find it, so that terminating it ends the node (no wrapper in between).

The binary is looked up in this order:

1. the ``binary`` argument,
2. the ``MEDSHARE_ANVIL`` environment variable,
3. ``node_modules/@foundry-rs/anvil-<os>-<arch>/bin/anvil`` under the project root, then
   ``node_modules/.bin/anvil`` (the root is the nearest directory above the current
   directory, or above this file, holding a ``package.json`` and ``node_modules/``),
4. ``anvil`` on ``PATH``.

The node listens on 127.0.0.1 only, on a free port, with ``--silent``. ``__enter__``
returns once the node answers JSON-RPC (bounded by ``startup_timeout``) and ``__exit__``
terminates it (SIGTERM, then SIGKILL), so no process outlives the ``with`` block; a
finaliser also kills it if the object is dropped or the interpreter exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Self

ANVIL_ENV = "MEDSHARE_ANVIL"
HOST = "127.0.0.1"
_NPM_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class AnvilError(RuntimeError):
    """``anvil`` is missing, failed to start, or did not answer in time."""


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest directory at or above ``start`` (default: the current directory, then
    this file) holding both ``package.json`` and ``node_modules/``; None if there is none."""
    starts = [start] if start is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for origin in starts:
        for directory in (origin.resolve(), *origin.resolve().parents):
            if (directory / "package.json").is_file() and (directory / "node_modules").is_dir():
                return directory
    return None


def _platform_package() -> str | None:
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform)
    arch = _NPM_ARCH.get(platform.machine().lower())
    if system is None or arch is None:
        return None
    return f"anvil-{system}-{arch}"


def find_anvil(binary: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``anvil`` executable (see the module docstring for the order)."""
    explicit = binary if binary is not None else os.environ.get(ANVIL_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            source = "argument" if binary is not None else f"${ANVIL_ENV}"
            raise AnvilError(f"anvil binary from {source} is not an executable file: {path}")
        return path
    tried: list[str] = []
    root = find_project_root()
    if root is not None:
        candidates = []
        package = _platform_package()
        if package is not None:
            exe = "anvil.exe" if sys.platform == "win32" else "anvil"
            candidates.append(root / "node_modules" / "@foundry-rs" / package / "bin" / exe)
        candidates.append(root / "node_modules" / ".bin" / "anvil")
        for candidate in candidates:
            tried.append(str(candidate))
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    tried.append("anvil on PATH")
    where = f"project root {root}" if root else "no project root with package.json + node_modules"
    raise AnvilError(
        "anvil not found: run `npm ci` in the project root (it installs the pinned "
        f"@foundry-rs/anvil), or set ${ANVIL_ENV} to the binary ({where}; tried: "
        + ", ".join(tried)
        + ")"
    )


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def rpc_call(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> object:
    """One JSON-RPC call with the standard library (no web3 needed); returns ``result``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise AnvilError(f"{method} failed: {reply['error']}")
    return reply["result"]


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGTERM anvil if the thread that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _kill(process: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate ``process`` (and its process group), escalating to SIGKILL."""
    if process.poll() is not None:
        return
    try:
        if sys.platform != "win32":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=grace)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sys.platform != "win32":
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.wait(timeout=grace)


class AnvilProcess:
    """``with AnvilProcess() as node: Web3(HTTPProvider(node.rpc_url))``.

    Chain id 31337 and anvil's default dev accounts (10 accounts of 10,000 ETH from the
    well-known ``test test … junk`` mnemonic) unless ``extra_args`` say otherwise.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        port: int | None = None,
        startup_timeout: float = 20.0,
        chain_id: int = 31337,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_anvil(binary)
        self._fixed_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.chain_id = chain_id
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def rpc_url(self) -> str:
        if self.port is None or self._process is None:
            raise AnvilError("anvil is not running")
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self._process is not None:
            raise AnvilError("anvil already started")
        attempts = 1 if self._fixed_port is not None else 3
        last_error: AnvilError | None = None
        for _ in range(attempts):
            try:
                self._start_once(self._fixed_port or free_port())
                return self
            except AnvilError as exc:  # e.g. another process took the port in between
                last_error = exc
                self.stop()
        assert last_error is not None
        raise last_error

    def _start_once(self, port: int) -> None:
        self.port = port
        args = [
            str(self.binary),
            "--host", HOST,
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            "--silent",
            *self.extra_args,
        ]  # fmt: skip
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        on_main = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=sys.platform != "win32",
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" and on_main else None,
        )
        self._finalizer = weakref.finalize(self, _kill, self._process)
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{HOST}:{port}"
        while True:
            code = self._process.poll()
            if code is not None:
                raise AnvilError(
                    f"anvil exited with code {code} at start-up: {self._stderr_text()}"
                )
            try:
                chain_id = int(str(rpc_call(url, "eth_chainId", timeout=1.0)), 16)
            except (OSError, urllib.error.URLError, ValueError, AnvilError):
                if time.monotonic() > deadline:
                    raise AnvilError(
                        f"anvil ({self.binary}) did not answer JSON-RPC on {url} within "
                        f"{self.startup_timeout:g} s; stderr: {self._stderr_text()}"
                    ) from None
                time.sleep(0.05)
                continue
            if chain_id != self.chain_id:
                raise AnvilError(
                    f"the node on {url} reports chain id {chain_id}, expected {self.chain_id} "
                    "(another process on the port?)"
                )
            return

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read()[-2000:].decode(errors="replace").strip()
        return text or "(empty)"

    def stop(self) -> None:
        if self._process is not None:
            _kill(self._process)
            if self._finalizer is not None:
                self._finalizer.detach()
        if self._stderr is not None:
            self._stderr.close()
        self._process = None
        self._stderr = None
        self._finalizer = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"on {HOST}:{self.port}" if self.running() else "stopped"
        return f"AnvilProcess({self.binary}, {state})"
