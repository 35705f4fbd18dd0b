"""A hospital joins a running consortium from its own machine.

Why: ``medshare consortium up`` makes every member in one ceremony on one machine, which
therefore saw every authority key being made. A hospital that joins later makes its own
keys where it runs — its ledger node's key, its attribute authority, its KEK seed — and
the members learn only public facts; the chain admits its node once more than 2/3 of the
active nodes approved the same key and name (:func:`medshare.ledger.app.rules`'s
``register_node``), so no single member can add a node of its own or keep one out.

1. The newcomer: ``medshare hospital init --dir H --code H004 --join URL`` reads the
   consortium's public facts from any member (``GET /v1/consortium``: chain, genesis,
   nodes' addresses and keys, members' API URLs, KAC parameters), makes its node (same
   genesis, the members' nodes as peers; it starts and syncs as a full node), its
   authority and its database, and prints a *join request* (its code, node key and name,
   node id and addresses, API URL).
2. Each member's IT, with its server stopped: ``medshare hospital admit --dir H1
   REQUEST.json`` signs the member node's ``register_node`` approval and adds the
   newcomer to the member's peers and to its node list.
3. The newcomer: ``medshare hospital serve --dir H`` waits for its node to catch up, then
   registers its authority's identity with its own node and publishes the authority's
   keys (refused, with a message saying so, while the members have not admitted it).
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from medshare.api.bounded_http import PeerAnswerRefused, bounded_request
from medshare.crypto import kac
from medshare.crypto.errors import CryptoError
from medshare.ledger.app import published
from medshare.ledger.app.genesis import Genesis
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import network
from medshare.ledger.cometbft.appmain import SOCKET
from medshare.ledger.types import LedgerFormatError, TxKind
from medshare.server.consortium import first_officer_code
from medshare.service import consortium as hospital_setup
from medshare.service.api import MedShare, node_owner
from medshare.service.config import ConfigError, ServiceConfig
from medshare.service.errors import InvalidInput

REQUEST_FORMAT = "medshare-join-request"
FACTS_FORMAT = "medshare-consortium-facts"
CODE = re.compile(r"[A-Za-z0-9]{1,16}")
CATCH_UP_S = 180.0
REQUEST_FILE = "join-request.json"
NODE_FIELDS = ("name", "public", "node_id", "p2p", "rpc", "metrics")
MAX_FACTS_BYTES = 4 << 20


class JoinError(RuntimeError):
    """A join that cannot go on; the message says why."""


def consortium_facts(service: MedShare) -> dict[str, Any]:
    """What a member tells a hospital that wants to join: public facts only."""
    config = service.config
    if config.local is None or config.api_url is None:
        raise InvalidInput("this server is not a hospital of a consortium of separate parties")
    net = network.Network.load(config.ledger_dir)
    own = net.local_nodes()[0]
    genesis = (net.node_dir(own) / "config" / "genesis.json").read_text()
    return {
        "format": FACTS_FORMAT,
        "chain_id": net.chain_id,
        "cometbft_chain_id": net.cometbft_chain_id,
        "genesis": genesis,
        "nodes": [{k: v for k, v in asdict(n).items() if k != "folder"} for n in net.nodes],
        "members": {**config.peers, config.local: config.api_url},
        "committee": config.committee,
        "replication": config.replication,
        "kac_classes": config.kac_classes,
        "slab_size": config.slab_size,
        "kac_params": base64.b64encode(config.kac_params_file.read_bytes()).decode("ascii"),
    }


def prepare(
    directory: Path,
    code: str,
    url: str,
    *,
    chain_id: str,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> dict[str, Any]:
    """Step 1: make hospital ``code``'s directory from the facts the member at ``url``
    gives; writes the join request for the members (public facts only) to
    ``directory/join-request.json`` and returns it with its path and the one-time code of
    the hospital's first records officer (which must not go to the members).

    ``chain_id`` is the consortium's chain id as the joining hospital was told it out of
    band (``consortium up`` prints it): whichever member answers, the genesis must be
    that chain's, and the nodes it lists must be the genesis's under the same names."""
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise JoinError(f"{directory} is not empty; choose a new directory")
    if not CODE.fullmatch(code):
        raise JoinError("a hospital code is 1-16 letters or digits")
    facts = _fetch_facts(url)
    try:
        members = {str(c): str(u) for c, u in facts["members"].items()}
        params = base64.b64decode(facts["kac_params"], validate=True)
        kac.KacParams.from_bytes(params).verify()
        genesis = Genesis.from_json(json.loads(facts["genesis"])["app_state"])
        nodes = [{k: str(n[k]) for k in NODE_FIELDS} for n in facts["nodes"]]
        sizes = {k: int(facts[k]) for k in ("committee", "replication", "kac_classes", "slab_size")}
    except (CryptoError, LedgerFormatError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JoinError(f"{url} sent malformed consortium facts: {exc}") from None
    if genesis.chain_id != chain_id or facts["chain_id"] != chain_id:
        raise JoinError(
            f"{url} answers for chain {facts['chain_id']!r} (its genesis: {genesis.chain_id!r}), "
            f"not {chain_id!r}: refusing to join"
        )
    listed = {n["public"]: n["name"] for n in nodes}
    if any(listed.get(v.public.hex()) != v.name for v in genesis.nodes):
        raise JoinError(f"{url} lists nodes that are not the genesis's: refusing to join")
    if code in members:
        raise JoinError(f"{code} is a member already")
    reachable = "127.0.0.1" if host in ("0.0.0.0", "") else host
    p2p, rpc, metrics, api_port = network.free_ports(4, reachable)
    api = f"http://{reachable}:{port or api_port}"
    ledger_dir = directory / "ledger"
    index = len(nodes)
    home = ledger_dir / f"node-{index}"
    node_home.init(home, f"node-{index}")
    (home / "config" / "genesis.json").write_text(facts["genesis"])
    node_home.configure(
        home,
        ports=node_home.Ports(p2p, rpc, metrics),
        p2p_host=host if host != "0.0.0.0" else "127.0.0.1",
        rpc_host="127.0.0.1",
        peers=[f"{n['node_id']}@{n['p2p']}" for n in nodes],
        socket=home.resolve() / SOCKET,
    )
    public = node_home.validator_public(home)
    own = network.NodeInfo(
        index,
        f"{code}-a",
        home.name,
        public.hex(),
        node_home.node_id(home),
        f"{reachable}:{p2p}",
        f"http://127.0.0.1:{rpc}",
        f"http://127.0.0.1:{metrics}/metrics",
    )
    others = tuple(
        network.NodeInfo(index=i, folder="", **{k: v for k, v in n.items() if k != "index"})
        for i, n in enumerate(nodes)
    )
    network.Network(
        ledger_dir, facts["chain_id"], facts["cometbft_chain_id"], (*others, own)
    ).save()
    config = ServiceConfig(
        data_dir=directory,
        hospitals=(*members, code),
        nodes=index + 1,
        committee=sizes["committee"],
        replication=sizes["replication"],
        kac_classes=sizes["kac_classes"],
        slab_size=sizes["slab_size"],
        ledger="cometbft",
        patient_keys="device",
        local=code,
        peers=dict(members),
        api_url=api,
    )
    service = hospital_setup.init_hospital(config, params, activate=False)
    try:
        officer_code = first_officer_code(service)
    finally:
        service.close()
    request = {
        "format": REQUEST_FORMAT,
        "code": code,
        "name": own.name,
        "node": own.public,
        "node_id": own.node_id,
        "p2p": own.p2p,
        "rpc": own.rpc,
        "metrics": own.metrics,
        "api": api,
        "chain_id": facts["chain_id"],
    }
    path = directory / REQUEST_FILE
    path.write_text(json.dumps(request, indent=2))
    return {"join_request": str(path), "api": api, "officer_code": officer_code, **request}


def admit(service: MedShare, request: dict[str, Any]) -> dict[str, Any]:
    """Step 2, at a member: approve the newcomer's node on the chain (signed by this
    member's node) and add it to this member's peers and node list."""
    code, name, node, api = _checked_request(service, request)
    committed = service._submit(
        service.node_key(service.config.local or ""),
        TxKind.REGISTER_NODE,
        [{"node": node.hex(), "name": name}],
    )[0]
    config = service.config
    net = network.Network.load(config.ledger_dir)
    if not any(n.public == node.hex() for n in net.nodes):
        joined = network.NodeInfo(
            len(net.nodes), name, "", node.hex(), request["node_id"], request["p2p"],
            request["rpc"], request["metrics"],
        )  # fmt: skip
        replace(net, nodes=(*net.nodes, joined)).save()
    hospitals = (*config.hospitals, code)
    updated = replace(
        config,
        hospitals=hospitals,
        nodes=max(config.nodes, len(hospitals) + 1),
        peers={**config.peers, code: api},
    )
    updated.save()
    return {"admitted": code, "node": name, "txid": committed.tx.txid, "peers": updated.peers}


def activate(service: MedShare, *, timeout_s: float = CATCH_UP_S) -> bool:
    """Step 3, at the newcomer: once its node has caught up and the chain admitted it,
    register its authority and publish the authority's keys (True if done now)."""
    code = service.config.local
    if code is None:
        return False
    if service.ledger.published(published.authority_key(code, published.ABE_KEY)) is not None:
        return False  # active already
    name = f"{code}-a"
    deadline = time.monotonic() + timeout_s
    while name not in _chain_members(service):
        if time.monotonic() > deadline:
            raise JoinError(
                f"{service.config.local}'s node is not a member of the chain yet: more than "
                "2/3 of the active nodes must approve it (`medshare hospital admit` at the "
                "members, with the join request `hospital init --join` printed)"
            )
        time.sleep(1.0)
    return hospital_setup.activate_hospital(service)


def _chain_members(service: MedShare) -> set[str]:
    """Node names in the application's state as this hospital's own node serves it."""
    net = network.Network.load(service.config.ledger_dir)
    url = net.nodes[net.local_nodes()[0]].rpc
    try:
        status = httpx.get(f"{url}/status", timeout=2.0).json()["result"]["sync_info"]
        if status["catching_up"]:
            return set()
        query = httpx.get(f"{url}/abci_query", params={"path": '"/state"'}, timeout=2.0).json()
        value = query["result"]["response"].get("value")
        state = json.loads(base64.b64decode(value)) if value else {}
    except (httpx.HTTPError, KeyError, ValueError, TypeError):
        return set()
    return {n.get("name") for n in state.get("nodes", []) if not n.get("ejected")}


def _checked_request(service: MedShare, request: object) -> tuple[str, str, bytes, str]:
    if not isinstance(request, dict) or request.get("format") != REQUEST_FORMAT:
        raise InvalidInput("not a join request (hospital init --join prints one)")
    code, name, api = request.get("code"), request.get("name"), request.get("api")
    if not isinstance(code, str) or not CODE.fullmatch(code):
        raise InvalidInput("the join request's code is 1-16 letters or digits")
    if name != f"{code}-a":
        raise InvalidInput(f"the joining node is named {code}-a")
    if request.get("chain_id") != service.ledger.chain_id:
        raise InvalidInput("the join request is for another chain")
    taken = {h.casefold() for h in service.config.hospitals} | {"regulator"}
    taken |= {
        node_owner(n).casefold() or n.casefold() for n in service.ledger.chain_nodes().values()
    }
    if code.casefold() in taken or code in service.config.peers:
        # a member's name (in any case) must never be handed to another key or address
        raise InvalidInput(f"{code} cannot join: a member or the regulator has that name")
    if not isinstance(api, str) or not api.startswith(("http://", "https://")):
        raise InvalidInput("the join request's api is an http(s) URL")
    for field in ("node_id", "p2p", "rpc", "metrics"):
        if not isinstance(request.get(field), str) or not 0 < len(request[field]) <= 256:
            raise InvalidInput(f"the join request's {field} is a short string")
    try:
        node = bytes.fromhex(request.get("node") or "")
    except ValueError:
        node = b""
    if len(node) != 32:
        raise InvalidInput("the join request's node key is 32 bytes of hex")
    return code, name, node, api


def _fetch_facts(url: str) -> dict[str, Any]:
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=10.0) as client:
            status, body = bounded_request(
                client, "GET", "/v1/consortium", deadline_s=30.0, max_bytes=MAX_FACTS_BYTES
            )
        facts = json.loads(body)
    except (PeerAnswerRefused, ValueError, RecursionError) as exc:
        raise JoinError(f"{url} does not answer as a consortium member: {exc}") from None
    if status != 200 or not isinstance(facts, dict):
        raise JoinError(f"{url} refused ({status})")
    if facts.get("format") != FACTS_FORMAT:
        raise JoinError(f"{url} did not send a consortium's facts")
    return facts


__all__ = ["ConfigError", "JoinError", "activate", "admit", "consortium_facts", "prepare"]
