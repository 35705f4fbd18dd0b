"""A network of real node processes on this machine (``medshare net up|down|status|…``).

``up`` writes everything a network needs into one folder and starts one detached
``medshare node`` process per node (its own session, output appended to ``node-<i>.log``):

* ``keys/node-<i>.key`` and ``keys/client.key``: hex Ed25519 seeds, mode 0600;
* ``node-<i>.json``: the node's :class:`~medshare.ledger.netnode.NodeConfig` (genesis with
  every node as a validator, its peers, its SQLite database ``node-<i>.db``);
* ``net.json``: names, public keys, ports, URLs and process ids (the state that
  ``down``, ``status``, ``submit`` and ``restart`` read).

Processes are found again by pid, and a pid counts as ours only while its command line
still names our config file (pids are reused).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import medshare
from medshare.crypto import signing
from medshare.ledger import chain, election
from medshare.ledger.netnode import DEFAULT_HOST, NodeConfig, PeerConfig, request_json
from medshare.ledger.types import Tx, TxKind

NET_FILE = "net.json"
CLIENT_KEY = "keys/client.key"
CLIENT_NONCE = "client.nonce"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

# Popen handles of the nodes this process started: kept so they are reaped, not warned about.
_started: list[subprocess.Popen] = []


class NetError(Exception):
    """A local network that cannot be brought up, found or reached; the message says why."""


# --- files --------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Atomic write (temp file + rename); secret files are 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, doc: Any) -> None:
    _write(path, (json.dumps(doc, indent=1) + "\n").encode())


def load_net(directory: Path) -> dict[str, Any]:
    path = directory / NET_FILE
    if not directory.is_dir():
        raise NetError(f"no such directory: {directory}")
    if not path.is_file():
        raise NetError(f"{directory} holds no network (no {NET_FILE}); run `medshare net up`")
    try:
        doc = json.loads(path.read_text())
        doc["nodes"][0]["config"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise NetError(f"{path} is not a network description: {exc}") from None
    return doc


def _save_net(directory: Path, doc: dict[str, Any]) -> None:
    _write_json(directory / NET_FILE, doc)


def _free_ports(count: int, host: str) -> list[int]:
    """Distinct free ports (all held open while choosing, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _check_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise NetError(f"port {port} on {host} is already in use") from None


# --- processes ----------------------------------------------------------------------------------


def _ours(pid: int | None, config: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process running ``config``; reaps it if it
    is our exited child."""
    if not pid or _reaped(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        _reaped(pid)  # it may have exited since the first look
        return False
    exiting = not any(cmdline)  # the kernel empties cmdline while a process exits
    return exiting or config.encode() in cmdline


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by another `net` command)
        return False
    return done == pid


def _spawn(node: dict[str, Any]) -> subprocess.Popen:
    env = dict(os.environ)
    src = str(Path(medshare.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "medshare.cli.main", "node", "--config", node["config"]]
    with open(node["log"], "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=str(Path(node["config"]).parent),
        )
    _started.append(proc)
    return proc


def _tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _status(node: dict[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        code, doc = request_json("GET", f"{node['url']}/status", timeout=timeout)
    except OSError:
        return None
    return doc if code == 200 and isinstance(doc, dict) else None


def _wait_ready(nodes: list[dict[str, Any]], procs: dict[int, subprocess.Popen], timeout: float):
    """Until every node answers /status; a node that exits or stays silent is an error."""
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            proc = procs.get(node["index"])
            if proc is not None and proc.poll() is not None:
                raise NetError(
                    f"node {node['index']} exited with code {proc.returncode} before answering: "
                    f"{_tail(node['log'])}"
                )
            if _status(node, timeout=0.5) is not None:
                waiting.remove(node)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(str(n["index"]) for n in waiting)
            raise NetError(f"node(s) {names} did not answer within {timeout:.0f} s; see their logs")
        if waiting:
            time.sleep(0.1)


def _terminate(nodes: list[dict[str, Any]], timeout: float) -> dict[str, list[int]]:
    """SIGTERM every live node, wait, SIGKILL stragglers; returns who got which."""
    live = [n for n in nodes if _ours(n.get("pid"), n["config"])]
    for node in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_ours(n["pid"], n["config"]) for n in live):
        time.sleep(0.05)
    killed = [n for n in live if _ours(n["pid"], n["config"])]
    for node in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(_ours(n["pid"], n["config"]) for n in killed):
        time.sleep(0.05)
    return {
        "terminated": [n["index"] for n in live if n not in killed],
        "killed": [n["index"] for n in killed],
    }


# --- commands -----------------------------------------------------------------------------------


def check_committee(nodes: int, committee: int | None) -> int:
    if nodes < 1:
        raise NetError("--nodes must be at least 1")
    # Default: the largest 3f+1 ≤ min(4, N), i.e. 4, or 1 for fewer than four nodes.
    size = (4 if nodes >= 4 else 1) if committee is None else committee
    if size < 1 or (size - 1) % 3 != 0:
        raise NetError(f"--committee must be 3f+1 (1, 4, 7, …), got {size}")
    if size > nodes:
        raise NetError(f"--committee {size} is larger than --nodes {nodes}")
    return size


def up(
    directory: Path,
    nodes: int,
    *,
    committee: int | None = None,
    epoch: int = 10,
    certificate_lag: int = 1,
    proposer_run: int = 1,
    base_port: int | None = None,
    host: str = DEFAULT_HOST,
    timeout: float = START_TIMEOUT_S,
) -> dict[str, Any]:
    """Create (or resume, if stopped) the network in ``directory`` and start every node."""
    directory = directory.resolve()
    if (directory / NET_FILE).exists():
        return _resume(directory, timeout)
    size = check_committee(nodes, committee)
    if epoch < 1:
        raise NetError("--epoch must be at least 1")
    if not 1 <= certificate_lag <= chain.MAX_CERTIFICATE_LAG:
        raise NetError(f"--certificate-lag must be in 1..{chain.MAX_CERTIFICATE_LAG}")
    if not 1 <= proposer_run <= chain.MAX_PROPOSER_RUN:
        raise NetError(f"--proposer-run must be in 1..{chain.MAX_PROPOSER_RUN}")
    if base_port is not None:
        if not 0 < base_port <= 65535 - nodes:
            raise NetError(f"--base-port {base_port} out of range")
        ports = [base_port + i for i in range(nodes)]
        for port in ports:
            _check_port(host, port)
    else:
        ports = _free_ports(nodes, host)
    directory.mkdir(parents=True, exist_ok=True)
    keys = [signing.SigningKey.generate() for _ in range(nodes)]
    names = [f"node-{i}" for i in range(nodes)]
    genesis = chain.ChainConfig(
        chain_name=f"medshare-localnet-{os.urandom(4).hex()}",
        validators=tuple(
            election.Validator(k.public, name, 1000) for k, name in zip(keys, names, strict=True)
        ),
        epoch_length=epoch,
        committee_size=size,
        genesis_time_ms=int(time.time() * 1000),
        certificate_lag=certificate_lag,
        proposer_run=proposer_run,
    )
    urls = [f"http://{host}:{port}" for port in ports]
    peers = [PeerConfig(n, k.public, u) for n, k, u in zip(names, keys, urls, strict=True)]
    described = []
    for i, key in enumerate(keys):
        key_file = directory / f"keys/{names[i]}.key"
        _write(key_file, key.seed.hex().encode() + b"\n", secret=True)
        config = NodeConfig(
            name=names[i],
            key_file=Path(f"keys/{names[i]}.key"),
            port=ports[i],
            db=Path(f"{names[i]}.db"),
            chain=genesis,
            peers=tuple(p for j, p in enumerate(peers) if j != i),
            host=host,
        )
        config_file = directory / f"{names[i]}.json"
        _write_json(config_file, config.to_json())
        described.append(
            {
                "index": i,
                "name": names[i],
                "public": key.public.hex(),
                "port": ports[i],
                "url": urls[i],
                "config": str(config_file),
                "db": str(directory / f"{names[i]}.db"),
                "log": str(directory / f"{names[i]}.log"),
                "pid": None,
            }
        )
    client = signing.SigningKey.generate()
    _write(directory / CLIENT_KEY, client.seed.hex().encode() + b"\n", secret=True)
    doc = {
        "version": 1,
        "chain": genesis.chain_name,
        "genesis": chain.genesis(genesis)[0].hash,
        "chain_id": genesis.chain_id,
        "committee_size": size,
        "epoch_length": epoch,
        "client": {"key_file": str(directory / CLIENT_KEY), "public": client.public.hex()},
        "nodes": described,
    }
    _save_net(directory, doc)
    return _start(directory, doc, described, timeout)


def _chain_id(directory: Path, doc: dict[str, Any]) -> str:
    """The chain id the folder's genesis gives its txs; a folder from before txs named
    their chain (its node databases no longer verify) is refused with the reason."""
    chain_id = doc.get("chain_id")
    if not isinstance(chain_id, str):
        raise NetError(
            f"{directory} was made by an earlier medshare whose transactions did not name "
            "their chain; `medshare net down` it and create a new one with `medshare net up`"
        )
    return chain_id


def _resume(directory: Path, timeout: float) -> dict[str, Any]:
    doc = load_net(directory)
    _chain_id(directory, doc)
    running = [n["index"] for n in doc["nodes"] if _ours(n.get("pid"), n["config"])]
    if running:
        raise NetError(
            f"a network is already running in {directory} (nodes {running}); "
            "use `medshare net down` first, or another --dir"
        )
    return {**_start(directory, doc, doc["nodes"], timeout), "resumed": True}


def _start(
    directory: Path, doc: dict[str, Any], nodes: list[dict[str, Any]], timeout: float
) -> dict[str, Any]:
    """Start ``nodes``, record their pids, wait until they answer; on failure stop them."""
    for node in nodes:
        _check_port(urllib.parse.urlsplit(node["url"]).hostname or DEFAULT_HOST, node["port"])
    procs: dict[int, subprocess.Popen] = {}
    try:
        for node in nodes:
            proc = _spawn(node)
            procs[node["index"]] = proc
            node["pid"] = proc.pid
        _save_net(directory, doc)
        _wait_ready(nodes, procs, timeout)
    except BaseException:
        _terminate(nodes, STOP_TIMEOUT_S)
        for node in nodes:
            node["pid"] = None
        _save_net(directory, doc)
        raise
    return summary(directory, doc)


def summary(directory: Path, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "dir": str(directory),
        "chain": doc["chain"],
        "genesis": doc["genesis"],
        "chain_id": doc.get("chain_id"),
        "committee_size": doc["committee_size"],
        "client": doc["client"]["public"],
        "nodes": [
            {k: n[k] for k in ("index", "name", "public", "pid", "url", "log", "db")}
            for n in doc["nodes"]
        ],
    }


def down(directory: Path, timeout: float = STOP_TIMEOUT_S) -> dict[str, Any]:
    """Stop every node of the network (idempotent)."""
    directory = directory.resolve()
    doc = load_net(directory)
    result = _terminate(doc["nodes"], timeout)
    for node in doc["nodes"]:
        node["pid"] = None
    _save_net(directory, doc)
    return {"dir": str(directory), **result}


def status(directory: Path) -> dict[str, Any]:
    """Every node's head, as it answers /status (or why it does not)."""
    doc = load_net(directory.resolve())
    out = []
    for node in doc["nodes"]:
        entry: dict[str, Any] = {"index": node["index"], "name": node["name"], "url": node["url"]}
        entry["running"] = _ours(node.get("pid"), node["config"])
        answer = _status(node) if entry["running"] else None
        if answer is None:
            entry["error"] = "not running" if not entry["running"] else "not answering"
        else:
            for key in ("height", "head", "round", "step", "mempool", "committee"):
                entry[key] = answer.get(key)
        out.append(entry)
    heads = {(n["height"], n["head"]) for n in out if "head" in n}
    return {"nodes": out, "agree": len(heads) == 1, "answering": sum("head" in n for n in out)}


def restart(directory: Path, index: int, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Start node ``index`` again from its config (its db and WAL); it catches up itself."""
    directory = directory.resolve()
    doc = load_net(directory)
    _chain_id(directory, doc)
    node = next((n for n in doc["nodes"] if n["index"] == index), None)
    if node is None:
        raise NetError(f"no node {index} in {directory} (0..{len(doc['nodes']) - 1})")
    if _ours(node.get("pid"), node["config"]):
        raise NetError(f"node {index} is running (pid {node['pid']}); stop or kill it first")
    _start(directory, doc, [node], timeout)
    return {k: node[k] for k in ("index", "name", "pid", "url", "log")}


def _anchor_tx(client: signing.SigningKey, nonce: int, chain_id: str) -> Tx:
    record = f"localnet-{client.public.hex()[:8]}-{nonce}"
    body = {
        "record": record,
        "patient": "demo-patient",
        "dept": "0000",
        "digest": hashlib.sha256(record.encode()).hexdigest(),
    }
    return Tx.create(TxKind.ANCHOR_RECORD, body, nonce, client, chain=chain_id)


def _load_client(directory: Path) -> signing.SigningKey:
    path = directory / CLIENT_KEY
    try:
        return signing.SigningKey(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        raise NetError(f"no client key {path}") from None
    except ValueError:
        raise NetError(f"{path} does not hold a hex seed") from None


def submit(directory: Path, count: int) -> dict[str, Any]:
    """``count`` signed ANCHOR_RECORD txs from the client key, round-robin over the nodes
    (a node that does not answer is skipped). Nonces continue from the larger of the
    chain's next nonce and the ones this folder already handed out."""
    if count < 0:
        raise NetError("--count must be ≥ 0")
    directory = directory.resolve()
    doc = load_net(directory)
    client = _load_client(directory)
    chain_id = _chain_id(directory, doc)
    nodes = doc["nodes"]
    chain_next = None
    for node in nodes:
        with contextlib.suppress(OSError):
            code, answer = request_json(
                "GET", f"{node['url']}/nonce/{client.public.hex()}", timeout=2.0
            )
            if code == 200:
                chain_next = int(answer["next_nonce"])
                break
    if chain_next is None:
        raise NetError(f"no node of {directory} answers; is the network up?")
    counter = directory / CLIENT_NONCE
    try:
        handed_out = int(counter.read_text())
    except (OSError, ValueError):
        handed_out = 0
    nonce = max(chain_next, handed_out)
    txids: list[str] = []
    error = None
    for i in range(count):
        tx = _anchor_tx(client, nonce + i, chain_id)
        error = _post_round_robin(nodes, i, tx)
        if error is not None:  # later nonces would wait behind this gap: stop here
            break
        txids.append(tx.txid)
    if txids:
        _write(counter, str(nonce + len(txids)).encode())
    out: dict[str, Any] = {"txids": txids, "first_nonce": nonce}
    if error is not None:
        out["error"] = f"tx with nonce {nonce + len(txids)} not admitted: {error}"
    return out


def _post_round_robin(nodes: list[dict[str, Any]], start: int, tx: Tx) -> str | None:
    """Post to node ``start % N``, else the next ones; None if admitted (or known)."""
    last = "no node answered"
    for k in range(len(nodes)):
        node = nodes[(start + k) % len(nodes)]
        try:
            code, answer = request_json("POST", f"{node['url']}/tx", tx.to_json(), timeout=5.0)
        except OSError as exc:
            last = f"{node['name']}: {exc}"
            continue
        if code == 200:
            return None
        error = str(answer.get("error", code)) if isinstance(answer, dict) else str(code)
        if error.startswith("duplicate"):
            return None  # a timed-out earlier attempt got through
        if code != 503:
            return error
        last = error
    return last
