"""Attacks on joining a running consortium (``hospital init --join`` / ``admit`` / ``serve``,
``GET /v1/consortium``, the chain's ``register_node``).

One consortium of three separate hospitals for the module; the newcomer H004 is prepared
once (its server is never started). Members' servers are stopped only around ``admit``.
Order matters: H001 approves H004 (pending, 1 of 3), H002 is asked last to admit a request
in H001's name (refused), H003 never approves anything. All found by the review are fixed:
a request in another member's name, a pending newcomer trusted by its one approver, a
newcomer that believed any member's answer (it now pins the chain id and checks the
genesis nodes)."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from typer.testing import CliRunner

from medshare.api import signed_requests
from medshare.cli.main import app as cli
from medshare.crypto.signing import SigningKey
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import network
from medshare.server import consortium, join
from medshare.server.process import medshare_command
from medshare.service.common import wall_clock_ms
from medshare.service.config import ServiceConfig

pytestmark = pytest.mark.slow


def _run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(medshare_command(*args), capture_output=True, text=True, timeout=timeout)


def _ok(*args: object) -> dict:
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("joinattack")
    directory, newcomer = root / "c", root / "H004"
    try:
        summary = _ok("consortium", "up", "--dir", directory, "--precompute", 0)
        apis = {h["code"]: h["api"] for h in summary["hospitals"]}
        (port,) = network.free_ports(1)
        made = _ok("hospital", "init", "--dir", newcomer, "--code", "H004", "--join",
                   apis["H001"], "--chain-id", summary["chain_id"], "--port", port)  # fmt: skip
        facts = httpx.get(f"{apis['H001']}/v1/consortium", timeout=10).json()
        yield {"root": root, "dir": directory, "newcomer": newcomer, "made": made,
               "apis": apis, "facts": facts, "chain": facts["chain_id"]}  # fmt: skip
    finally:
        if (directory / consortium.CONSORTIUM_FILE).exists():
            _run("consortium", "down", "--dir", directory)
        if (newcomer / "ledger" / network.NET_FILE).exists():
            network.down(network.Network.load(newcomer / "ledger"))


# --- helpers --------------------------------------------------------------------------------


def _newcomer_key(newcomer) -> SigningKey:
    net = network.Network.load(newcomer / "ledger")
    return SigningKey(node_home.validator_seed(net.node_dir(net.local_nodes()[0])))


def _me(api: str, key: SigningKey, identity: str, audience: str) -> httpx.Response:
    headers = signed_requests.sign(
        key, identity, "GET", "/v1/me", b"", audience=audience, now_ms=wall_clock_ms()
    )
    return httpx.get(f"{api}/v1/me", headers=headers, timeout=30)


def _chain_node_names(directory, code: str) -> set[str]:
    net = network.Network.load(directory / code / "ledger")
    rpc = net.nodes[net.local_nodes()[0]].rpc
    query = httpx.get(f"{rpc}/abci_query", params={"path": '"/state"'}, timeout=5).json()
    state = json.loads(base64.b64decode(query["result"]["response"]["value"]))
    return {n["name"] for n in state["nodes"] if not n.get("ejected")}


class _FakeMember:
    """An HTTP server answering GET /v1/consortium with facts the attacker chose."""

    def __init__(self, facts: dict) -> None:
        body = json.dumps(facts).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


ATTACKER_API = "http://169.254.169.254/latest/meta-data"


# --- the newcomer trusts whichever member it asked -------------------------------------------


def test_resisted_forged_facts_that_are_malformed(world, tmp_path):
    """Bad KAC parameters, a genesis naming another chain, a non-facts answer: refused."""
    facts = world["facts"]
    bad_params = {**facts, "kac_params": base64.b64encode(b"\x00" * 64).decode()}
    other_chain = {**facts, "chain_id": "f" * 32}
    not_facts = {**facts, "format": "something-else"}
    cases = (
        (bad_params, "KAC parameters|malformed"),
        (other_chain, "refusing to join"),
        (not_facts, "did not send"),
    )
    for forged, message in cases:
        with _FakeMember(forged) as fake, pytest.raises(join.JoinError, match=message):
            join.prepare(tmp_path / "x", "H009", fake.url, chain_id=world["chain"])
        assert not (tmp_path / "x" / join.REQUEST_FILE).exists()


def test_resisted_a_forged_chain_or_forged_nodes_from_the_member_asked(world, tmp_path):
    """The newcomer pins the chain id it was told out of band: a self-consistent answer
    for another chain is refused, and so is the true chain with its genesis nodes'
    keys swapped (the nodes it lists must be the genesis's under the same names)."""
    facts = world["facts"]
    forged_chain = {**facts, "chain_id": "e" * 32}
    swapped = {
        **facts,
        "nodes": [{**n, "public": SigningKey.generate().public.hex()} for n in facts["nodes"]],
    }
    for forged in (forged_chain, swapped):
        with (
            _FakeMember(forged) as fake,
            pytest.raises(join.JoinError, match="refusing to join"),
        ):
            join.prepare(tmp_path / "victim", "H005", fake.url, chain_id=world["chain"])
        assert not (tmp_path / "victim" / join.REQUEST_FILE).exists()
    # Still open (not tested as resisted): the members' API URLs and the nodes' p2p
    # addresses come from the one member asked; the newcomer learns nothing secret from
    # them, and its blobs go only to peers the chain counts as members.


# --- admission at the members ------------------------------------------------------------------


def test_resisted_admit_while_the_members_server_runs(world):
    """The server holds the ledger's client lock: admit cannot run beside it."""
    h3 = world["dir"] / "H003"
    before = (h3 / "medshare.json").read_bytes() if (h3 / "medshare.json").exists() else None
    done = _run("hospital", "admit", "--dir", h3, world["newcomer"] / join.REQUEST_FILE)
    assert done.returncode != 0
    config = ServiceConfig.load(h3)
    assert "H004" not in config.peers and "H004" not in config.hospitals
    if before is not None:
        assert (h3 / "medshare.json").read_bytes() == before
    assert "H004-a" not in {n.name for n in network.Network.load(h3 / "ledger").nodes}


def test_resisted_pending_newcomer_is_no_member_service_at_its_one_approver(world):
    """One approval of three: the chain has not admitted the node, and the approving
    member does not take its key as a member's records service either (the server trusts
    the chain's member nodes, not its own list)."""
    directory, newcomer = world["dir"], world["newcomer"]
    consortium.stop_server(directory, "H001")
    try:
        _ok("hospital", "admit", "--dir", directory / "H001", newcomer / join.REQUEST_FILE)
    finally:
        consortium.start_server(directory, "H001")
    on_chain = _chain_node_names(directory, "H001")
    key = _newcomer_key(newcomer)
    answer = _me(world["apis"]["H001"], key, "records@H004", f"{world['chain']}/H001")
    assert "H004-a" not in on_chain
    assert answer.status_code == 401, answer.text


def test_resisted_newcomer_key_at_a_member_that_did_not_admit(world):
    key = _newcomer_key(world["newcomer"])
    for identity in ("records@H004", "records@H003", "records@H001"):
        answer = _me(world["apis"]["H003"], key, identity, f"{world['chain']}/H003")
        assert answer.status_code in (401, 403), (identity, answer.status_code, answer.text)


def _request(code: str, key: SigningKey, chain: str, **extra) -> dict:
    return {
        "format": join.REQUEST_FORMAT, "code": code, "name": f"{code}-a",
        "node": key.public.hex(), "node_id": "ab" * 20, "p2p": "127.0.0.66:26656",
        "rpc": "http://127.0.0.66:26657", "metrics": "http://127.0.0.66:26660/metrics",
        "api": "http://127.0.0.66:8400", "chain_id": chain, **extra,
    }  # fmt: skip


def test_resisted_malformed_join_requests(world):
    """At H002 (its own code, the regulator, non-ASCII codes, names not <code>-a, file://
    and other non-http API URLs, oversized fields): refused before anything is signed."""
    directory, root, chain = world["dir"], world["root"], world["chain"]
    key = SigningKey.generate()
    cases = [
        (_request("H002", key, chain), "cannot join"),
        (_request("regulator", key, chain), "cannot join"),
        (_request("REGULATOR", key, chain), "cannot join"),
        (_request("Н001", key, chain), "letters or digits"),  # Cyrillic Н
        (_request("H0０1", key, chain), "letters or digits"),  # fullwidth digit
        (_request("H001", key, chain, name="H001-b"), "named"),
        (_request("H009", key, chain, name="H001-a"), "named"),
        (_request("H009", key, chain, api="file:///etc/passwd"), "http"),
        (_request("H009", key, chain, api="gopher://127.0.0.1:25/"), "http"),
        (_request("H009", key, chain, p2p="x" * 5000), "short string"),
        (_request("H009", key, chain, node="00" * 31), "32 bytes"),
    ]
    consortium.stop_server(directory, "H002")
    try:
        for i, (request, message) in enumerate(cases):
            path = root / f"bad{i}.json"
            path.write_text(json.dumps(request))
            # the same command in this process (eleven start-ups of a CLI process cost a
            # minute; the admit test below runs it as its own process)
            done = CliRunner().invoke(
                cli, ["hospital", "admit", "--dir", str(directory / "H002"), str(path)]
            )
            said = " ".join(done.stderr.split())
            assert done.exit_code == 2 and message in said, (request["code"], done.stderr)
    finally:
        consortium.start_server(directory, "H002")
    config = ServiceConfig.load(directory / "H002")
    assert set(config.peers) == {"H001", "H003"}


def test_resisted_admit_in_the_name_of_another_member(world):
    """A request in another member's name (H001 at H002, in any case) is refused before
    anything is signed: H002's peers and node list keep H001's address and key, and the
    attacker's key is nobody at H002."""
    directory, root, chain = world["dir"], world["root"], world["chain"]
    attacker = SigningKey.generate()
    consortium.stop_server(directory, "H002")
    try:
        for code in ("H001", "h001"):
            path = root / f"as-{code}.json"
            path.write_text(json.dumps(_request(code, attacker, chain, api=ATTACKER_API)))
            done = _run("hospital", "admit", "--dir", directory / "H002", path)
            assert done.returncode == 2 and "cannot join" in done.stderr, done.stderr
    finally:
        consortium.start_server(directory, "H002")
    config = ServiceConfig.load(directory / "H002")
    names = [n.name for n in network.Network.load(directory / "H002" / "ledger").nodes]
    answer = _me(world["apis"]["H002"], attacker, "records@H001", f"{chain}/H002")
    assert config.peers.get("H001") == world["apis"]["H001"]
    assert names.count("H001-a") == 1
    assert answer.status_code == 401
