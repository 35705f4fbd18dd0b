"""``medshare consortium up / down``: member hospitals as separate parties, each its own
data directory, ledger node and server process.

Why: the trust model is that a hospital holds only its own state — its database, its blob
replica, its attribute authority's master key, its ledger node's key — and reaches the
others over the network. This module lays a consortium out that way on one machine
(each folder could as well be on its own machine; only addresses change) and runs it:

    D/consortium.json      the public facts: chain, each hospital's API and node RPC
    D/<code>/              one hospital: medshare.json (local = <code>, peers' URLs),
                           medshare.db, wallets/ (its authority, KEK seed), blobs/<code>/,
                           kac-params.bin, ledger/ (its node; the others listed by address),
                           server.json (its server's pid) and server.log
    D/regulator/ledger/    the regulator's node (the fourth validator of three hospitals;
                           none for a consortium started with one hospital)

``up`` on a new folder makes the genesis for every node, hands each node to its operator
(:func:`medshare.ledger.cometbft.network.split`), starts the nodes, creates each hospital
(:func:`medshare.service.consortium.init_hospital`), enrols one records officer per
hospital (a one-time code in the output: the officer's wallet enrols everyone else), and
starts the servers. ``up`` on an existing folder starts what is stopped. Every process
keeps running after ``up`` returns; ``down`` stops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from medshare import processes
from medshare.crypto import kac
from medshare.fileio import write_file
from medshare.ledger.cometbft import network
from medshare.server.process import medshare_command
from medshare.service import consortium as hospital_setup
from medshare.service import ledgers
from medshare.service.api import MedShare
from medshare.service.config import ServiceConfig

CONSORTIUM_FILE = "consortium.json"
FORMAT = "medshare-consortium"
VERSION = 1
SERVER_FILE = "server.json"
SERVER_LOG = "server.log"
REGULATOR = "regulator"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
OFFICER_CODE_DAYS = 7
GENESIS_COMMITTEE = 4  # 3f+1 with f = 1
OFFICER_DEPT = "69"  # 其他业务科室: a records officer holds no clinical department's key

Progress = Callable[[str], None]


class ConsortiumError(RuntimeError):
    """Something about the consortium's folder or processes a user must fix."""


@dataclass(frozen=True)
class Member:
    """One hospital as the consortium file lists it (no secrets)."""

    code: str
    api: str
    data_dir: str  # relative to the consortium folder
    node_rpc: str


def hospital_codes(count: int) -> list[str]:
    if not 1 <= count <= 99:
        raise ConsortiumError("a consortium here has 1 to 99 hospitals")
    return [f"H{i:03d}" for i in range(1, count + 1)]


def up(
    directory: Path,
    *,
    hospitals: int = 3,
    host: str = "127.0.0.1",
    precompute: int = 2,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Create (if new) and start the consortium in ``directory``; returns its summary
    (each hospital's code, API URL, data directory and node RPC; on creation, each
    hospital's records-officer code). ``host`` is fixed at creation; ``precompute`` is the
    issuance offers each server keeps ready per authority (``hospital serve
    --precompute``)."""
    say = progress or (lambda _msg: None)
    directory = directory.resolve()
    officer_codes: dict[str, str] = {}
    if not (directory / CONSORTIUM_FILE).exists():
        if directory.exists() and any(directory.iterdir()):
            raise ConsortiumError(f"{directory} is not empty and holds no consortium")
        try:
            officer_codes = _create(directory, hospitals, host, say)
            _start_servers(directory, load(directory), host, say, precompute)
        except BaseException:
            _stop_all(directory)  # a half-made consortium leaves nothing running
            raise
    members = load(directory)
    for party in _parties(directory, members):
        network.Network.load(party)  # damaged or missing: say so before starting anything
    # what runs already stays running if a start fails (the error says which)
    _start_nodes(directory, members, say)
    _start_servers(directory, members, _host(directory), say, precompute)
    summary = status(directory)
    for entry in summary["hospitals"]:
        if entry["code"] in officer_codes:
            entry["officer_code"] = officer_codes[entry["code"]]
    return summary


def down(directory: Path, *, progress: Progress | None = None) -> dict[str, Any]:
    """Stop every hospital's server and every node in ``directory``."""
    say = progress or (lambda _msg: None)
    directory = directory.resolve()
    members = load(directory)
    for member in members:
        if _stop_server(directory / member.data_dir):
            say(f"{member.code}: server stopped")
    for party in _parties(directory, members):
        net = network.Network.load(party)
        network.down(net)
    say("ledger nodes stopped")
    return status(directory)


def _stop_all(directory: Path) -> None:
    """Stop whatever of ``directory``'s consortium runs (as far as it was made)."""
    with contextlib.suppress(ConsortiumError, network.NetworkError, OSError):
        members = load(directory)
        for member in members:
            _stop_server(directory / member.data_dir)
    for party in [*sorted(directory.glob("*/ledger")), directory / ".genesis"]:
        with contextlib.suppress(network.NetworkError, OSError):
            network.down(network.Network.load(party))


def status(directory: Path) -> dict[str, Any]:
    directory = directory.resolve()
    members = load(directory)
    doc = json.loads((directory / CONSORTIUM_FILE).read_text())
    out = []
    for member in members:
        data_dir = directory / member.data_dir
        net = network.Network.load(data_dir / "ledger")
        out.append(
            {
                "code": member.code,
                "api": member.api,
                "data_dir": str(data_dir),
                "node_rpc": member.node_rpc,
                "server_running": _server_pid(data_dir) is not None,
                "node_running": any(network.running(net, i) for i in net.local_nodes()),
            }
        )
    return {"directory": str(directory), "chain_id": doc["chain_id"], "hospitals": out}


def load(directory: Path) -> list[Member]:
    path = directory / CONSORTIUM_FILE
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ConsortiumError(f"{path} is not a medshare consortium file")
        members = [Member(**m) for m in doc["hospitals"]]
    except FileNotFoundError:
        raise ConsortiumError(
            f"no consortium in {directory} (run `medshare consortium up --dir {directory}`)"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConsortiumError(f"{path} is damaged: {exc}") from None
    for m in members:
        # each hospital's folder is the one named by its code, inside this folder: an
        # edited file must not point `down` at another folder's processes
        if not re.fullmatch(r"[A-Za-z0-9]{1,16}", m.code) or m.data_dir != m.code:
            raise ConsortiumError(f"{path} is damaged: hospital {m.code!r} at {m.data_dir!r}")
        if not m.api.startswith(("http://", "https://")):
            raise ConsortiumError(f"{path} is damaged: {m.code}'s API is {m.api!r}")
    return members


# --- creation -------------------------------------------------------------------------------


def _create(directory: Path, count: int, host: str, say: Progress) -> dict[str, str]:
    codes = hospital_codes(count)
    ports = network.free_ports(count, host if host != "0.0.0.0" else "127.0.0.1")
    api = {
        code: f"http://{_reachable(host)}:{port}" for code, port in zip(codes, ports, strict=True)
    }
    template = ServiceConfig(
        data_dir=directory,
        hospitals=tuple(codes),
        nodes=_nodes(count),
        committee=min(4, _nodes(count)),
        replication=min(2, count),
        ledger="cometbft",
        patient_keys="device",
    )
    configs = [
        ServiceConfig(
            **{
                **_fields(template),
                "data_dir": directory / code,
                "local": code,
                "peers": {c: u for c, u in api.items() if c != code},
                "api_url": api[code],
            }
        )
        for code in codes
    ]
    labels = ledgers.node_labels(template)
    owners = [
        directory / (REGULATOR if label == REGULATOR else label.rsplit("-", 1)[0]) / "ledger"
        for label in labels
    ]
    say(f"genesis for {len(labels)} nodes ({', '.join(labels)}), each in its operator's folder")
    staging = directory / ".genesis"
    net = network.create(
        staging,
        nodes=template.nodes,
        committee=GENESIS_COMMITTEE,  # seats beyond the first nodes fill as hospitals join
        names=labels,
        p2p_host=host if host != "0.0.0.0" else "127.0.0.1",
        rpc_host="127.0.0.1",
    )
    parts = network.split(net, owners)
    staging.rmdir()
    members = [
        Member(
            code,
            api[code],
            code,
            next(n.rpc for n in parts[0].nodes if n.name.startswith(f"{code}-")),
        )
        for code in codes
    ]
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "chain_id": net.chain_id,
        "host": host,
        "hospitals": [m.__dict__ for m in members],
    }
    write_file(directory / CONSORTIUM_FILE, json.dumps(doc, indent=2).encode())
    _start_nodes(directory, members, say)
    say("KAC parameters (setup ceremony; α discarded)")
    params = kac.setup(template.kac_classes).to_bytes()
    officers = {}
    for config in configs:
        service = hospital_setup.init_hospital(config, params, progress=say)
        try:
            officers[config.local or ""] = first_officer_code(service)
        finally:
            service.close()
    return officers


def first_officer_code(service: MedShare) -> str:
    """A one-time code for the new hospital's first records officer (``officer@<code>``),
    whose wallet then enrols everyone else: no one's key is made at the hospital."""
    code = service.config.local or ""
    return service.enrol(
        code,
        f"officer@{code}",
        kind="clinician",
        role="records",
        dept=OFFICER_DEPT,
        ttl_ms=OFFICER_CODE_DAYS * 86_400_000,
    ).code


def _nodes(hospitals: int) -> int:
    """Ledger nodes of a new consortium: one per hospital and the regulator's (three
    hospitals make the four validators that tolerate one fault); a consortium started
    with one hospital has no regulator's node, so hospitals that join later are admitted
    by the members' own approvals (the regulator's node has no server to approve with)."""
    return hospitals + 1 if hospitals > 1 else 1


def _fields(config: ServiceConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _parties(directory: Path, members: list[Member]) -> list[Path]:
    """Every ledger folder of the consortium: each hospital's and the regulator's."""
    folders = [directory / m.data_dir / "ledger" for m in members]
    regulator = directory / REGULATOR / "ledger"
    return folders + ([regulator] if regulator.exists() else [])


def _start_nodes(directory: Path, members: list[Member], say: Progress) -> None:
    """Start every stopped node of every party, then wait until each answers."""
    nets = [network.Network.load(p) for p in _parties(directory, members)]
    started = []
    for net in nets:
        for i in net.local_nodes():
            if not network.running(net, i):
                network.start(net, i, wait=False)
                started.append((net, i))
    if started:
        say(f"ledger nodes started: {', '.join(net.nodes[i].name for net, i in started)}")
    deadline = time.monotonic() + network.START_TIMEOUT_S
    for net, i in started:
        network.wait_rpc(net, i, deadline)


# --- servers --------------------------------------------------------------------------------


def _server_pid(data_dir: Path) -> int | None:
    try:
        entry = json.loads((data_dir / SERVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return processes.still_ours(entry, str(data_dir))


def start_server(directory: Path, code: str, *, precompute: int = 0) -> None:
    """Start hospital ``code``'s server (if stopped) and wait until it answers."""
    directory = directory.resolve()
    member = next((m for m in load(directory) if m.code == code), None)
    if member is None:
        raise ConsortiumError(f"no hospital {code!r} in {directory}")
    _start_servers(directory, [member], _host(directory), lambda _m: None, precompute)


def stop_server(directory: Path, code: str) -> bool:
    """Stop hospital ``code``'s server; True if it was running."""
    directory = directory.resolve()
    member = next((m for m in load(directory) if m.code == code), None)
    if member is None:
        raise ConsortiumError(f"no hospital {code!r} in {directory}")
    return _stop_server(directory / member.data_dir)


def _host(directory: Path) -> str:
    doc = json.loads((directory / CONSORTIUM_FILE).read_text())
    return str(doc.get("host", "127.0.0.1"))


def _start_servers(
    directory: Path, members: list[Member], host: str, say: Progress, precompute: int
) -> None:
    """``medshare hospital serve`` for each stopped member, as processes that outlive this
    one: all started at once, then waited for."""
    started = []
    for member in members:
        data_dir = directory / member.data_dir
        if _server_pid(data_dir) is not None:
            continue
        port = member.api.rsplit(":", 1)[1]
        with (data_dir / SERVER_LOG).open("ab") as log:
            child = subprocess.Popen(
                medshare_command(
                    "hospital", "serve", "--dir", data_dir, "--host", host, "--port", port,
                    "--precompute", precompute,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        write_file(data_dir / SERVER_FILE, json.dumps(processes.record(child.pid)).encode())
        started.append((member, child))
    deadline = time.monotonic() + START_TIMEOUT_S
    for member, child in started:
        data_dir = directory / member.data_dir
        while True:
            try:
                if httpx.get(f"{member.api}/v1/health", timeout=2).status_code == 200:
                    say(f"{member.code}: server at {member.api}")
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                _stop_server(data_dir)
                tail = (data_dir / SERVER_LOG).read_text(errors="replace")[-1500:]
                raise ConsortiumError(f"{member.code}'s server did not start: {tail}")
            time.sleep(0.1)


def _stop_server(data_dir: Path) -> bool:
    """SIGTERM the hospital's server (SIGKILL after a while); True if one was running."""
    pid = _server_pid(data_dir)
    if pid is None:
        return False
    if not processes.leads_its_group(pid):
        raise ConsortiumError(f"process {pid} in {data_dir / SERVER_FILE} is not a server we run")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while processes.alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if processes.alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    (data_dir / SERVER_FILE).unlink(missing_ok=True)
    return True
