"""A consortium of CometBFT nodes with our application, started as real processes.

``medshare net up`` lays out one folder per node and starts, per node, two processes: the
application (``appmain``, ABCI on a Unix socket in the node's folder) and CometBFT (p2p
with its own authenticated encryption between nodes, RPC bound to 127.0.0.1 unless told
otherwise). The first ``committee`` nodes' worth of voting power is given by the
election, not by position: every node holds a validator key, only the elected committee
has power, the others follow as full nodes.

Layout::

    D/net.json                 who is where (no secrets)
    D/node-<i>/config/         CometBFT config, genesis, keys (0600)
    D/node-<i>/data/           CometBFT blocks and state
    D/node-<i>/app.db          the application state
    D/node-<i>/abci.sock       the app's socket (0600)
    D/node-<i>/pids.json       the two process ids
    D/node-<i>/*.log           their output

A network may also be *split* among its operators (:func:`split`): each party's folder
keeps only its own nodes, and its ``net.json`` lists the others with no folder (``""``:
run elsewhere, reached over RPC and p2p only). A party starts, stops and signs with its
own nodes; it cannot touch another's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from medshare import processes
from medshare.fileio import write_file
from medshare.ledger import election
from medshare.ledger.app.genesis import MAX_COMMITTEE, Genesis
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import install, server
from medshare.ledger.cometbft.appmain import SOCKET

NET_FILE = "net.json"
FORMAT = "medshare-net"
VERSION = 1
START_TIMEOUT_S = 60.0
LISTEN_PORTS_FROM = 20_000  # listening ports are chosen from here to the ephemeral range


class NetworkError(RuntimeError):
    """Something about the network that a user must fix; the message says what."""


@dataclass(frozen=True)
class NodeInfo:
    index: int
    name: str
    folder: str  # relative to the network folder
    public: str  # validator key, hex
    node_id: str
    p2p: str  # host:port
    rpc: str  # URL
    metrics: str  # Prometheus URL


@dataclass(frozen=True)
class Network:
    directory: Path
    chain_id: str
    cometbft_chain_id: str
    nodes: tuple[NodeInfo, ...]

    def node_dir(self, i: int) -> Path:
        node = self.node(i)
        if not node.folder:
            raise NetworkError(
                f"node {i} ({node.name}) is run by another party; this folder holds "
                f"only nodes {', '.join(map(str, self.local_nodes())) or 'none'}"
            )
        return self.directory / node.folder

    def is_local(self, i: int) -> bool:
        """Whether node ``i``'s folder (keys, state, processes) is in this network folder."""
        return bool(self.node(i).folder)

    def local_nodes(self) -> list[int]:
        return [n.index for n in self.nodes if n.folder]

    def node(self, i: int) -> NodeInfo:
        if not 0 <= i < len(self.nodes):
            raise NetworkError(f"no node {i}: the network has nodes 0..{len(self.nodes) - 1}")
        return self.nodes[i]

    def save(self) -> None:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "chain_id": self.chain_id,
            "cometbft_chain_id": self.cometbft_chain_id,
            "nodes": [asdict(n) for n in self.nodes],
        }
        write_file(self.directory / NET_FILE, json.dumps(doc, indent=2).encode())

    @classmethod
    def load(cls, directory: Path) -> Network:
        path = directory / NET_FILE
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise NetworkError(f"{path} is not a medshare network file (version {VERSION})")
            nodes = tuple(NodeInfo(**n) for n in doc["nodes"])
            return cls(directory, doc["chain_id"], doc["cometbft_chain_id"], nodes)
        except FileNotFoundError:
            raise NetworkError(f"no network in {directory} (run `medshare net up`)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise NetworkError(f"{path} is damaged: {exc}") from None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free now, below the kernel's ephemeral range (held open together until all
    are chosen, so they are distinct). Why below it: a port the kernel hands out for
    ``bind(0)`` comes from the range it also takes outgoing connections' source ports
    from, and between the choice and the server's own bind (seconds, for a consortium
    being made) any client connection of the machine could take it. Below the range only
    another listener can, which picks at random among ~20,000 ports too; a server that
    still meets a taken port fails to start and says so."""
    low, _ = _ephemeral_range()
    choose = random.SystemRandom()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count * 50):
            if len(sockets) == count:
                break
            s = socket.socket()
            try:
                s.bind((host, choose.randrange(LISTEN_PORTS_FROM, low)))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        if len(sockets) < count:
            raise NetworkError(f"no {count} free ports below {low} on {host}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux; else the IANA
    dynamic range)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        if int(low) > LISTEN_PORTS_FROM + 1000:
            return int(low), int(high)
    except (OSError, ValueError):
        pass
    return 49152, 65535


def create(
    directory: Path,
    *,
    nodes: int,
    committee: int,
    epoch: int = 100,
    chain_name: str = "medshare",
    p2p_host: str = "127.0.0.1",
    rpc_host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> Network:
    """Lay out a new network (keys, genesis, configs); starts nothing. ``names``: the
    nodes' names in genesis (``node-<i>`` by default); a consortium names them after
    their operators (``H001-a``), which the chain reads to bind identity names
    (``…@H001``) to the operator's nodes."""
    if nodes < 1:
        raise NetworkError("a network needs at least one node")
    names = list(names) if names is not None else [f"node-{i}" for i in range(nodes)]
    if len(names) != nodes:
        raise NetworkError(f"{nodes} nodes need {nodes} names, got {len(names)}")
    if not 1 <= committee <= MAX_COMMITTEE:
        # more seats than nodes: every node validates, and the seats fill as nodes join
        raise NetworkError(f"the committee must have 1..{MAX_COMMITTEE} members")
    if (directory / NET_FILE).exists():
        raise NetworkError(f"{directory} already holds a network (`medshare net down` first)")
    install.binary()
    directory.mkdir(parents=True, exist_ok=True)
    homes = [directory / f"node-{i}" for i in range(nodes)]
    for i, home in enumerate(homes):
        node_home.init(home, f"node-{i}")
        os.chmod(home, 0o700)
        socket_path = home.resolve() / SOCKET
        if len(str(socket_path)) > server.UNIX_PATH_MAX - len(".new"):
            raise NetworkError(f"folder path too long for a Unix socket: {socket_path}")
    publics = [node_home.validator_public(h) for h in homes]
    genesis_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    genesis = Genesis(
        chain_name,
        tuple(election.Validator(p, names[i], 1000) for i, p in enumerate(publics)),
        epoch_length=epoch,
        committee_size=committee,
        launched=genesis_time,
    )
    if ports is None:
        ports = free_ports(3 * nodes, rpc_host if rpc_host != "0.0.0.0" else "127.0.0.1")
    if len(ports) < 3 * nodes:
        raise NetworkError(f"{nodes} nodes need {3 * nodes} ports")
    node_ports = [node_home.Ports(*ports[3 * i : 3 * i + 3]) for i in range(nodes)]
    ids = [node_home.node_id(h) for h in homes]
    infos = []
    for i, home in enumerate(homes):
        peers = [f"{ids[j]}@{p2p_host}:{node_ports[j].p2p}" for j in range(nodes) if j != i]
        node_home.write_genesis(home, genesis, genesis_time)
        node_home.configure(
            home,
            ports=node_ports[i],
            p2p_host=p2p_host,
            rpc_host=rpc_host,
            peers=peers,
            socket=home.resolve() / SOCKET,
        )
        rpc_ip = "127.0.0.1" if rpc_host == "0.0.0.0" else rpc_host
        infos.append(
            NodeInfo(
                i,
                names[i],
                home.name,
                publics[i].hex(),
                ids[i],
                f"{p2p_host}:{node_ports[i].p2p}",
                f"http://{rpc_ip}:{node_ports[i].rpc}",
                f"http://{rpc_ip}:{node_ports[i].metrics}/metrics",
            )
        )
    network = Network(
        directory.resolve(), genesis.chain_id, node_home.cometbft_chain_id(genesis), tuple(infos)
    )
    network.save()
    return network


# --- processes ------------------------------------------------------------------------------


def _pid_file(network: Network, i: int) -> Path:
    return network.node_dir(i) / "pids.json"


def pids(network: Network, i: int) -> dict[str, int]:
    """Node ``i``'s live processes. A pid counts only while it is the very process the
    network started — same start time, and its command line names the node's folder — so
    a pid reused by another process after a crash or a reboot is never signalled."""
    if not network.is_local(i):
        return {}
    try:
        doc = json.loads(_pid_file(network, i).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    folder = str(network.node_dir(i))
    out = {}
    for role, entry in doc.items() if isinstance(doc, dict) else ():
        pid = processes.still_ours(entry, folder)
        if pid is not None:
            out[role] = pid
    return out


def running(network: Network, i: int) -> bool:
    """Whether node ``i`` runs here (a node another party runs is never "running" here)."""
    return network.is_local(i) and len(pids(network, i)) == 2


def start(network: Network, i: int, *, wait: bool = True) -> None:
    """Start node ``i``'s application, then its CometBFT (which connects to it)."""
    if pids(network, i):
        raise NetworkError(f"node {i} is already running (`medshare net kill` it first)")
    folder = network.node_dir(i)
    sock = folder / SOCKET
    if sock.exists():
        sock.unlink()
    app_log = open(folder / "app.log", "ab")  # noqa: SIM115 - handed to the child
    app = subprocess.Popen(
        [sys.executable, "-m", "medshare.ledger.cometbft.appmain", str(folder)],
        stdout=app_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    app_log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not sock.exists():
        if app.poll() is not None or time.monotonic() > deadline:
            raise NetworkError(f"node {i}'s application did not start: {_tail(folder / 'app.log')}")
        time.sleep(0.02)
    engine_log = open(folder / "cometbft.log", "ab")  # noqa: SIM115
    engine = subprocess.Popen(
        [str(install.binary()), "start", "--home", str(folder)],
        stdout=engine_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    engine_log.close()
    write_file(
        _pid_file(network, i),
        json.dumps(
            {"app": processes.record(app.pid), "cometbft": processes.record(engine.pid)}
        ).encode(),
    )
    if wait:
        wait_rpc(network, i, deadline)


def wait_rpc(network: Network, i: int, deadline: float, *, min_height: int = 0) -> None:
    """Wait until node ``i`` answers its RPC at ``min_height`` or above."""
    url = network.node(i).rpc
    while True:
        try:
            response = httpx.get(f"{url}/status", timeout=1.0)
            height = int(response.json()["result"]["sync_info"]["latest_block_height"])
            if response.status_code == 200 and height >= min_height:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        if not running(network, i) or time.monotonic() > deadline:
            folder = network.node_dir(i)
            raise NetworkError(
                f"node {i} did not come up: {_tail(folder / 'cometbft.log')} "
                f"{_tail(folder / 'app.log')}"
            )
        time.sleep(0.1)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def kill(network: Network, i: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to both processes of node ``i`` (SIGKILL: a crash)."""
    for pid in pids(network, i).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
    if sig in (signal.SIGKILL, signal.SIGTERM):
        _reap(network, i, 10.0)


def _reap(network: Network, i: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pids(network, i) and time.monotonic() < deadline:
        for pid in pids(network, i).values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def pause(network: Network, i: int) -> None:
    """SIGSTOP both processes: the node is partitioned away, its state kept."""
    kill(network, i, signal.SIGSTOP)


def resume(network: Network, i: int) -> None:
    kill(network, i, signal.SIGCONT)


def stop(network: Network, i: int) -> None:
    """Stop node ``i`` cleanly (SIGTERM; SIGKILL after 10 s)."""
    kill(network, i, signal.SIGCONT)
    kill(network, i, signal.SIGTERM)
    if pids(network, i):
        kill(network, i, signal.SIGKILL)


def up(directory: Path, **kwargs) -> Network:
    network = create(directory, **kwargs)
    try:
        for i in range(len(network.nodes)):
            start(network, i, wait=False)
        deadline = time.monotonic() + START_TIMEOUT_S
        for i in range(len(network.nodes)):
            wait_rpc(network, i, deadline, min_height=1)  # the chain has started
    except BaseException:
        down(network)
        raise
    return network


def down(network: Network) -> None:
    """Stop this folder's nodes (another party's keep running)."""
    for i in network.local_nodes():
        stop(network, i)


def split(network: Network, owners: Sequence[Path]) -> list[Network]:
    """Hand each node to its operator: node ``i``'s folder moves to
    ``owners[i]/node-<i>`` and each distinct owner folder gets a ``net.json`` that lists
    every node (the public facts: name, key, node id, addresses) with a folder only for
    its own. Nothing may be running. The genesis and the peers in each node's config are
    unchanged, so the network is the same chain; only who holds which keys changes.
    Returns the owners' networks in order of first appearance; ``network.directory`` is
    left without nodes and its ``net.json`` removed."""
    if len(owners) != len(network.nodes):
        raise NetworkError(f"{len(network.nodes)} nodes need {len(network.nodes)} owners")
    if any(running(network, i) for i in network.local_nodes()):
        raise NetworkError("stop the network before splitting it among its operators")
    targets = [Path(o).resolve() for o in owners]
    for i, target in enumerate(targets):
        target.mkdir(parents=True, exist_ok=True)
        if (target / NET_FILE).exists():
            raise NetworkError(f"{target} already holds a network")
        moved = target / f"node-{i}"
        socket_path = moved / SOCKET
        if len(str(socket_path)) > server.UNIX_PATH_MAX - len(".new"):
            raise NetworkError(f"folder path too long for a Unix socket: {socket_path}")
    out: list[Network] = []
    for target in dict.fromkeys(targets):
        nodes = tuple(
            replace(n, folder=f"node-{n.index}" if targets[n.index] == target else "")
            for n in network.nodes
        )
        out.append(Network(target, network.chain_id, network.cometbft_chain_id, nodes))
    for i, target in enumerate(targets):
        old = network.node_dir(i)
        new = target / f"node-{i}"
        os.replace(old, new)
        # the node's config names its own socket by absolute path
        node_home.set_config(new, {("", "proxy_app"): f"unix://{new / SOCKET}"})
    for net in out:
        net.save()
    (network.directory / NET_FILE).unlink()
    return out


def status(network: Network) -> dict:
    """Every node's height, and the validator set with power as CometBFT reports it next
    to the committee and reputations the application holds."""
    from medshare.ledger.app.rules import address

    per_node = []
    validators: list[dict] | None = None
    app_state: dict | None = None
    names = {address(bytes.fromhex(n.public)).hex().upper(): n.name for n in network.nodes}
    for i, node in enumerate(network.nodes):
        entry: dict = {
            "node": i,
            "name": node.name,
            "rpc": node.rpc,
            "running": running(network, i),
        }
        try:
            with httpx.Client(timeout=2.0) as http:
                sync = http.get(f"{node.rpc}/status").json()["result"]["sync_info"]
                entry["height"] = int(sync["latest_block_height"])
                entry["catching_up"] = bool(sync["catching_up"])
                if entry["height"] < 1:
                    per_node.append(entry)  # nothing decided yet: no validators to ask for
                    continue
                if validators is None:
                    vals = http.get(f"{node.rpc}/validators", params={"per_page": 100}).json()
                    validators = [
                        {
                            "name": names.get(v["address"], "?"),
                            "address": v["address"],
                            "power": int(v["voting_power"]),
                        }
                        for v in vals["result"]["validators"]
                    ]
                if app_state is None:
                    query = http.get(f"{node.rpc}/abci_query", params={"path": '"/state"'}).json()
                    value = query["result"]["response"].get("value")
                    app_state = json.loads(base64.b64decode(value)) if value else None
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            entry["height"] = None
            entry["error"] = type(exc).__name__
        per_node.append(entry)
    heights = [e["height"] for e in per_node if e.get("height") is not None]
    return {
        "chain_id": network.chain_id,
        "height": max(heights) if heights else None,
        "validators": validators,
        "committee": app_state["committee"] if app_state else None,
        "reputation": {v["name"]: v["reputation"] for v in app_state["nodes"]}
        if app_state
        else None,
        "ejected": [v["name"] for v in app_state["nodes"] if v["ejected"]] if app_state else None,
        "nodes": per_node,
    }
