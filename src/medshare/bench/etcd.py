"""The etcd reference row of the ledger benchmark: a real 3-member Raft cluster, same run.

Why etcd: our ledger's committed tx/s and commit latency mean little on their own, since
the numbers depend on the machine, the disk and the load. etcd is a widely deployed
replicated log whose write path is close to the one we measure: a client write returns
only once the leader has appended it to its own fsynced WAL and a majority of members has
acknowledged it (crash-fault-tolerant Raft, not BFT, so it is an upper bound on what
any consensus-replicated store does on this machine, not a like-for-like competitor).
Running it on the same machine, in the same run and with the same number of concurrent
clients as the CometBFT network turns our numbers into a ratio that survives a change of
hardware.

What is measured (:func:`measure_writes`): ``clients`` threads, each with its own
``httpx.Client`` bound to one member (round-robin, as our clients are bound to
validators), issue sequential ``PUT``\\ s of unique keys through etcd's v3 JSON gateway
(``POST /v3/kv/put``) for a fixed wall time. A ``PUT`` answered with HTTP 200 is committed
by the Raft quorum, so its round-trip time is its commit latency. A follower forwards a
write to the leader, as a CometBFT validator gossips a transaction to the proposer.

etcd runs with its defaults (fsync on, 100 ms heartbeat, 1 s election timeout): an
``--unsafe-no-fsync`` etcd would be faster and compare against nothing real.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from medshare.ledger.cometbft.network import free_ports

#: Where Debian's ``etcd-server`` package installs the binary, tried when PATH has none.
DEBIAN_ETCD = Path("/usr/bin/etcd")
#: Bound on the whole start-up (every member healthy), so a broken cluster fails the run.
STARTUP_TIMEOUT_S = 30.0
#: Per-request bound; etcd's own server-side request timeout is longer (5 s + 2 elections).
REQUEST_TIMEOUT_S = 5.0
#: After its SIGTERM, how long a member gets to exit before SIGKILL.
STOP_TIMEOUT_S = 5.0
#: After a failed request a writer waits this long, so a dead member is not hammered in a
#: tight loop that steals CPU from the live ones (the machine is shared with the cluster).
ERROR_BACKOFF_S = 0.01
LOG_TAIL_LINES = 20


def etcd_binary() -> Path | None:
    """The ``etcd`` server binary (PATH first, then Debian's path), or None when absent.

    None, not an exception, so that benchmarks and tests can leave the reference row out
    (or skip) on a machine without ``etcd-server`` instead of failing.
    """
    found = shutil.which("etcd")
    if found is not None:
        return Path(found)
    if DEBIAN_ETCD.is_file() and os.access(DEBIAN_ETCD, os.X_OK):
        return DEBIAN_ETCD
    return None


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _is_healthy(client: httpx.Client, url: str) -> bool:
    """etcd's ``/health``: true when the member sees a leader and a quorum read succeeds."""
    try:
        response = client.get(f"{url}/health")
        return response.status_code == 200 and response.json().get("health") == "true"
    except (httpx.HTTPError, ValueError):
        return False


class EtcdCluster:
    """A static ``members``-member etcd cluster on 127.0.0.1, alive inside a ``with`` block.

    Each member gets its own data directory and log file under a fresh folder in
    ``directory`` (so two clusters never share state), a client and a peer port, the same
    static ``--initial-cluster`` and a per-cluster ``--initial-cluster-token`` (so members
    of two clusters started side by side can never join each other). ``__enter__`` returns
    only once every member reports healthy; ``__exit__`` stops every process, whatever
    happened inside the block.
    """

    def __init__(self, directory: Path, members: int = 3, base_port: int | None = None) -> None:
        if members < 1:
            raise ValueError(f"an etcd cluster needs at least one member, not {members}")
        self.directory = Path(directory)
        self.members = members
        self.base_port = base_port
        self.token = f"medshare-bench-{uuid.uuid4().hex[:12]}"
        self.root: Path | None = None
        self.client_urls: list[str] = []
        self.peer_urls: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def pids(self) -> list[int]:
        """The process id of each member, in member order."""
        return [process.pid for process in self.processes]

    def log_path(self, index: int) -> Path:
        """The file that holds member ``index``'s stdout and stderr."""
        assert self.root is not None, "the cluster has not been started"
        return self.root / f"member-{index}" / "etcd.log"

    def __enter__(self) -> EtcdCluster:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed: apt-get install etcd-server (Debian/Ubuntu)")
        try:
            self._start(binary)
            self._wait_healthy(STARTUP_TIMEOUT_S, starting=True)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self, binary: Path) -> None:
        if self.base_port is None:
            ports = free_ports(2 * self.members)
        else:
            ports = list(range(self.base_port, self.base_port + 2 * self.members))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="etcd-cluster-", dir=self.directory))
        names = [f"m{i}" for i in range(self.members)]
        self.client_urls = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(self.members)]
        self.peer_urls = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(self.members)]
        initial_cluster = ",".join(f"{n}={u}" for n, u in zip(names, self.peer_urls, strict=True))
        # etcd also reads every flag from an ETCD_* variable and refuses to start when
        # one shadows a flag; the caller's environment must not change the cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        for i, name in enumerate(names):
            member_dir = self.root / f"member-{i}"
            member_dir.mkdir()
            log = open(self.log_path(i), "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            command = [
                str(binary),
                "--name", name,
                "--data-dir", str(member_dir / "data"),
                "--listen-client-urls", self.client_urls[i],
                "--advertise-client-urls", self.client_urls[i],
                "--listen-peer-urls", self.peer_urls[i],
                "--initial-advertise-peer-urls", self.peer_urls[i],
                "--initial-cluster", initial_cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
            ]  # fmt: skip
            self.processes.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=member_dir,
                )
            )

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Return once every live member answers ``/health`` true; raise after ``timeout``.

        For use after a member has been stopped on purpose (a fault test): the survivors
        are healthy again once they have a leader and a quorum. The error carries the
        tail of every member's log, which is where etcd says why.
        """
        self._wait_healthy(timeout, starting=False)

    def _wait_healthy(self, timeout: float, *, starting: bool) -> None:
        # While starting, a member that exits (a port taken, a bad flag) fails start-up at
        # once: the other two would still form a quorum and hide it.
        deadline = time.monotonic() + timeout
        if not self.processes:
            raise RuntimeError("the etcd cluster has not been started")
        with httpx.Client(timeout=1.0) as client:
            while True:
                live = [i for i, p in enumerate(self.processes) if p.poll() is None]
                if starting and len(live) < len(self.processes):
                    raise RuntimeError(self._failure("an etcd member exited while starting"))
                if not live:
                    raise RuntimeError(self._failure("every etcd member has exited"))
                healthy = [i for i in live if _is_healthy(client, self.client_urls[i])]
                if len(healthy) == len(live):
                    return
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        self._failure(
                            f"etcd cluster not healthy after {timeout:.0f} s "
                            f"(healthy members: {healthy}, live: {live})"
                        )
                    )
                time.sleep(0.1)

    def _failure(self, message: str) -> str:
        parts = [message]
        for i, process in enumerate(self.processes):
            state = "running" if process.poll() is None else f"exited {process.returncode}"
            parts.append(
                f"--- member {i} ({state}), {self.log_path(i)}:\n{_log_tail(self.log_path(i))}"
            )
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every member: SIGTERM one at a time, SIGKILL after a bound; idempotent.

        One at a time, because etcd's leader, on SIGTERM, first hands leadership to its
        best-connected peer and waits for that (up to 7 s): when every member is told to
        stop at once, the peer it picked is already gone and the leader sits out the
        whole timeout. Stopped in turn, followers exit at once, the leader hands over to
        a live peer, and the last member has no peer to wait for; the whole cluster stops
        in well under a second. A member still running ``STOP_TIMEOUT_S`` after its
        SIGTERM is killed, and every process is waited for (reaped), so none is left
        running or as a zombie, even if this is interrupted.
        """
        try:
            for process in self.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            for process in self.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                process.wait()
            for log in self._logs:
                log.close()
            self._logs.clear()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _put(client: httpx.Client, url: str, key: bytes, value: str) -> str | None:
    """One ``PUT`` through the v3 JSON gateway; None when committed, else why it failed.

    HTTP 200 with a response ``header`` is etcd's acknowledgement that the write is in the
    Raft log of a quorum and applied; anything else (gateway error body, timeout, refused
    connection) is a failed write.
    """
    try:
        response = client.post(f"{url}/v3/kv/put", json={"key": _b64(key), "value": value})
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"{url}: HTTP {response.status_code}: {response.text[:200]}"
    try:
        body = response.json()
    except ValueError:
        return f"{url}: not JSON: {response.text[:200]}"
    if "header" not in body:
        return f"{url}: unexpected reply: {response.text[:200]}"
    return None


def _server_version(client: httpx.Client, url: str) -> str:
    """The version the server itself reports (``GET /version``), not the local binary's."""
    try:
        return str(client.get(f"{url}/version").json()["etcdserver"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise RuntimeError(f"no etcd server answers at {url}: {exc}") from exc


def _member_count(client: httpx.Client, url: str) -> int:
    """How many members the cluster has (its own member list), live or not."""
    try:
        response = client.post(f"{url}/v3/cluster/member/list", json={})
        return len(response.json()["members"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise RuntimeError(f"etcd at {url} did not list its members: {exc}") from exc


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an ascending list."""
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q) - 1]


def measure_writes(
    client_urls: list[str],
    *,
    seconds: float,
    clients: int,
    value_bytes: int = 256,
    timeout: float = REQUEST_TIMEOUT_S,
) -> dict:
    """Committed writes per second and commit latency of an etcd cluster under load.

    ``clients`` threads, writer ``i`` bound to ``client_urls[i % len(client_urls)]``,
    each with its own ``httpx.Client`` (its own keep-alive connection), issue sequential
    PUTs of unique keys with ``value_bytes``-byte values until ``seconds`` have passed.
    Before the clock starts each URL must accept one write, so a wrong address fails
    fast with its reason instead of producing a row of errors. During the run a failed
    request is counted in ``errors``, not raised: the point is the rate the cluster
    sustains. If no write at all commits, RuntimeError. Every request is bounded by
    ``timeout``, so the call returns by about ``seconds + timeout``; ``seconds`` in the
    row is the measured wall time from the start to the last writer's end, and
    ``tx_per_s`` is ``committed / seconds``.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, not {seconds}")
    if clients < 1:
        raise ValueError(f"clients must be at least 1, not {clients}")
    if not client_urls:
        raise ValueError("no etcd client URL given")
    urls = [url.rstrip("/") for url in client_urls]
    run = uuid.uuid4().hex[:12]
    with httpx.Client(timeout=timeout) as probe:
        version = _server_version(probe, urls[0])
        members = _member_count(probe, urls[0])
        for url in dict.fromkeys(urls):
            failure = _put(probe, url, f"bench/{run}/probe".encode(), _b64(b"probe"))
            if failure is not None:
                raise RuntimeError(f"etcd did not accept a write before the run: {failure}")

    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[list[str]] = [[] for _ in range(clients)]
    start_barrier = threading.Barrier(clients + 1)
    deadline_box: list[float] = []

    def writer(index: int) -> None:
        url = urls[index % len(urls)]
        value = _b64(os.urandom(value_bytes))
        done, failed = latencies[index], failures[index]
        with httpx.Client(timeout=timeout) as client:
            # Open the keep-alive connection outside the timed window.
            with contextlib.suppress(httpx.HTTPError):
                client.get(f"{url}/version")
            start_barrier.wait()
            deadline = deadline_box[0]
            seq = 0
            while time.perf_counter() < deadline:
                key = f"bench/{run}/{index}/{seq}".encode()
                seq += 1
                begin = time.perf_counter()
                try:
                    failure = _put(client, url, key, value)
                except Exception as exc:  # counted like any failed write, never lost
                    failure = f"{url}: {type(exc).__name__}: {exc}"
                if failure is None:
                    done.append(time.perf_counter() - begin)
                else:
                    failed.append(failure)
                    time.sleep(min(ERROR_BACKOFF_S, max(0.0, deadline - time.perf_counter())))

    threads = [
        threading.Thread(target=writer, args=(i,), name=f"etcd-writer-{i}", daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline_box.append(start + seconds)
    start_barrier.wait(timeout=timeout + 5.0)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start

    ordered = sorted(latency for per_writer in latencies for latency in per_writer)
    errors = [failure for per_writer in failures for failure in per_writer]
    if not ordered:
        first = errors[0] if errors else "no request was issued"
        raise RuntimeError(
            f"no etcd write committed in {elapsed:.1f} s ({len(errors)} failed): {first}"
        )
    return {
        "system": "etcd",
        "version": version,
        "members": members,
        "clients": clients,
        "seconds": elapsed,
        "committed": len(ordered),
        "tx_per_s": len(ordered) / elapsed,
        "p50_ms": _percentile(ordered, 50) * 1e3,
        "p99_ms": _percentile(ordered, 99) * 1e3,
        "errors": len(errors),
    }


def run_reference(directory: Path, *, seconds: float, clients: int) -> list[dict]:
    """The reference rows: one 3-member cluster, one writer, then ``clients`` writers.

    Sequential isolates the commit latency of a single write (one Raft round trip plus
    fsyncs); concurrent shows how much of it batching recovers, the same comparison the
    ledger benchmark makes for the CometBFT network. Both run on the same cluster, one
    after the other, so they share its warm-up and data directory.
    """
    with EtcdCluster(directory, members=3) as cluster:
        sequential = measure_writes(cluster.client_urls, seconds=seconds, clients=1)
        concurrent = measure_writes(cluster.client_urls, seconds=seconds, clients=clients)
    return [{"mode": "sequential", **sequential}, {"mode": "concurrent", **concurrent}]
