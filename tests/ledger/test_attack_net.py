"""Adversarial review against real CometBFT v0.38 processes running our application
(``medshare net``), with the ``lab`` fixture of ``test_cometbft_net.py`` (every process is
stopped and accounted for at teardown). Small networks (1–2 nodes) and short waits: the
machine is shared.

Tests that FAIL on the current code demonstrate a vulnerability (their docstring says what
is wrong and the fix); tests that PASS are regression tests for attacks resisted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from appkit import make_genesis
from test_cometbft_net import (  # noqa: F401 - lab is a fixture
    Lab,
    _access,
    _find,
    _height,
    _wait_for,
    _wait_stopped,
    lab,
)

from medshare.crypto.signing import SigningKey
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import network
from medshare.ledger.cometbft import verify as v
from medshare.ledger.cometbft.appmain import SOCKET
from medshare.ledger.cometbft.client import LedgerClient, LedgerUnavailable
from medshare.ledger.cometbft.load import register_identities
from medshare.ledger.types import MAX_TX_BYTES, Tx, TxKind


def _tail(path: Path, lines: int = 4) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _grep(path: Path, *needles: str, limit: int = 3) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join([x[:200] for x in lines if any(n in x for n in needles)][:limit])


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].rsplit(":", 1)
                if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                    found.add(address)
    return found


# --- resisted: files, socket and ports ------------------------------------------------------------


@pytest.mark.slow
def test_attack_resisted_node_keys_socket_and_ports_are_private(lab: Lab) -> None:  # noqa: F811 - the imported fixture
    """RESISTED: the node folder is 0700, the validator and p2p keys 0600, the ABCI socket
    0600 (another local user can neither read the keys nor drive the application); RPC,
    p2p and Prometheus listen on 127.0.0.1 only by default; CometBFT's unsafe RPC routes
    are off."""
    net = lab.up(nodes=1, committee=1)
    folder = net.node_dir(0)
    assert folder.stat().st_mode & 0o777 == 0o700
    for secret in ("config/priv_validator_key.json", "config/node_key.json"):
        assert (folder / secret).stat().st_mode & 0o077 == 0, secret
    sock = folder / SOCKET
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
    node = net.node(0)
    ports = [int(node.rpc.rsplit(":", 1)[1]), int(node.p2p.rsplit(":", 1)[1])]
    ports.append(int(node.metrics.rsplit(":", 1)[1].split("/")[0]))
    for port in ports:
        where = _listening(port)
        assert where and where <= {"0100007F"}, f"port {port} listens on {where}"
    answer = httpx.post(
        node.rpc,
        json={"jsonrpc": "2.0", "id": 1, "method": "dial_peers", "params": {"peers": []}},
        timeout=5,
    ).json()
    assert "error" in answer


# --- finding: one broadcast stops a node ----------------------------------------------------------


@pytest.mark.slow
def test_attack_json_bomb_over_rpc_does_not_stop_the_node(lab: Lab) -> None:  # noqa: F811 - the imported fixture
    """REGRESSION (was CRITICAL at HEAD 8f67e77, observed: CometBFT exited; fixed in
    769a03c by ``types.check_depth``; in-process cause: ``test_attack_decode.py``). One
    ``broadcast_tx_sync`` of 5000 × ``[`` — from anyone who can reach the RPC, or relayed by
    any p2p peer — makes CheckTx raise RecursionError; the ABCI ``exception`` response
    makes CometBFT's socket client stop and CometBFT kill itself. Fix: ``Tx.decode`` bounds
    nesting before parsing and maps every parse error to ``LedgerFormatError``."""
    net = lab.up(nodes=1, committee=1)
    url = net.node(0).rpc
    first = _wait_for("height 1", lambda: _height(url), 30.0)
    bomb = base64.b64encode(b"[" * 5000).decode()
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "broadcast_tx_sync", "params": {"tx": bomb}},
            timeout=10,
        )
    at_bomb = _height(url) or first
    deadline = time.monotonic() + 10.0  # the node must still be up and deciding after 10 s
    while time.monotonic() < deadline:
        if not network.running(net, 0) or _height(url) is None:
            folder = net.node_dir(0)
            pytest.fail(
                "one junk transaction stopped the node: "
                f"cometbft.log: {_grep(folder / 'cometbft.log', 'quit', 'kill')} "
                f"app.log: {_grep(folder / 'app.log', 'Error', 'failed')}"
            )
        time.sleep(0.2)
    now = _height(url) or 0
    assert now > at_bomb + 2, f"the node stopped deciding blocks after the junk tx ({now})"


# --- finding: stale same-nonce transactions starve the chain --------------------------------------


def _padded_access(key: SigningKey, nonce: int, chain: str, variant: int) -> Tx:
    """An access as close to MAX_TX_BYTES as it gets (the padding is in ``record``)."""
    base = {"record": "", "actor": f"v{variant:04}", "area": "institution"}
    size = len(Tx.create(TxKind.ACCESS, base, nonce, key, chain=chain).encode())
    body = {**base, "record": "x" * (MAX_TX_BYTES - size)}
    tx = Tx.create(TxKind.ACCESS, body, nonce, key, chain=chain)
    assert len(tx.encode()) == MAX_TX_BYTES
    return tx


@pytest.mark.slow
def test_attack_stale_same_nonce_txs_starve_every_later_tx(lab: Lab) -> None:  # noqa: F811 - the imported fixture
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c by the strict nonce in
    CheckTx and ``mempool.recheck = true``). The attack: any registered identity (one
    nurse's key) stopped every transaction
    of everyone from committing. It broadcasts 70 *different* 64 KiB transactions, all with
    its next nonce; CheckTx admits every one (nonce range rule), one commits, 69 stay in
    CometBFT's mempool for good (``mempool.recheck = false``, no TTL). CometBFT reaps a
    proposal from the front of its FIFO mempool and stops at the first tx past the block's
    ~4 MiB, so every later proposal is made of stale txs only, ``PrepareProposal`` drops
    them, and the chain makes empty blocks while the victim's valid transaction waits
    forever. (A node restart clears it; the attacker repeats it for one nonce.)

    Fix (see ``test_attack_abci``): refuse different bytes for an already pending
    (sender, nonce) in CheckTx, and re-enable ``mempool.recheck`` (or set
    ``mempool.ttl_num_blocks``) so transactions a block made invalid leave the mempool;
    optionally cap pending transactions per sender."""
    net = lab.up(nodes=1, committee=1)
    url = net.node(0).rpc
    attacker, victim = SigningKey.generate(), SigningKey.generate()
    register_identities(net, [attacker, victim])
    chain = net.chain_id
    flood = [_padded_access(attacker, 0, chain, i).encode() for i in range(70)]
    with LedgerClient([url], timeout=30.0) as client:
        admitted = 0
        for start in range(0, len(flood), 10):
            admitted += sum(code == 0 for code, _ in client.broadcast(flood[start : start + 10]))
        # 769a03c: one transaction per pending nonce, and the mempool is re-checked after
        # each block (so a twin admitted on another node leaves once this one commits)
        assert admitted == 1, f"{admitted} different transactions with one nonce admitted"
        config = (net.node_dir(0) / "config" / "config.toml").read_text()
        assert "\nrecheck = true\n" in config
        _wait_for(
            "the attacker's nonce 0 to commit", lambda: client.next_nonce(attacker.public), 30
        )
        honest = _access(victim, 0, chain)
        try:
            [done] = client.submit([honest], timeout=20.0)
        except LedgerUnavailable:
            pending = int(client.call("num_unconfirmed_txs")["n_txs"])
            pytest.fail(
                f"a valid tx of another identity did not commit in 20 s: {pending} stale "
                f"same-nonce txs sit in the mempool and every proposal is reaped from them "
                f"(height {client.height()}, chain still making empty blocks)"
            )
        assert done.code == 0


# --- finding: `ledger verify --rpc` vouches for a chain under a borrowed chain id -----------------


@pytest.mark.slow
def test_attack_verify_rejects_a_chain_that_borrows_another_chains_id(lab: Lab) -> None:  # noqa: F811 - the imported fixture
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c). The attack: an attacker
    runs its own one-node chain whose ``genesis.json``
    claims the victim consortium's CometBFT chain id (``medshare-<victim id>``; CometBFT
    accepts any string). ``verify_node`` takes the genesis from that node, checks every
    header and signature against it, and reports ``ok`` with the victim's chain id.
    Fix: bind ``chain_id`` to ``app_state`` (``cometbft_chain_id(Genesis.from_json(...))``)
    and make the caller supply the trusted genesis (``ledger verify --genesis FILE``)."""
    net = network.create(lab.directory, nodes=1, committee=1, epoch=5)
    lab.track(net)
    claimed = node_home.cometbft_chain_id(make_genesis())  # "the victim's" chain
    path = net.node_dir(0) / "config" / "genesis.json"
    doc = json.loads(path.read_text())
    doc["chain_id"] = claimed
    path.write_text(json.dumps(doc, indent=2))
    network.start(net, 0)
    lab.note_pids()
    url = net.node(0).rpc
    _wait_for("height 4", lambda: (_height(url) or 0) >= 4, 60.0)
    with pytest.raises(ValueError):  # refused with or without a trusted genesis
        v.verify_node(url, genesis=json.loads(path.read_text()))
    try:
        report = v.verify_node(url)
    except ValueError:
        return
    assert not (report.ok and report.chain_id == claimed), (
        f"verify says ok for {report.height} blocks of chain {report.chain_id!r}, "
        f"but the chain's own app chain id is {net.chain_id}"
    )


@pytest.mark.slow
def test_attack_resisted_verify_against_the_published_genesis_file(lab: Lab) -> None:  # noqa: F811 - the imported fixture
    """RESISTED (769a03c): the trust anchor is usable as published — an honest node's
    ``/genesis`` equals its ``config/genesis.json``, so ``verify_node(genesis=<file>)``
    reports ok "given by the caller"; the same file with one app-state field changed is
    refused before any block is read."""
    net = lab.up(nodes=1, committee=1)
    url = net.node(0).rpc
    _wait_for("height 2", lambda: (_height(url) or 0) >= 2, 30.0)
    published = json.loads((net.node_dir(0) / "config" / "genesis.json").read_text())
    report = v.verify_node(url, genesis=published)
    assert report.ok and report.as_dict()["genesis"] == "given by the caller", report.as_dict()
    altered = json.loads(json.dumps(published))
    altered["app_state"]["epoch_length"] += 1
    with pytest.raises(ValueError):
        v.verify_node(url, genesis=altered)


# --- finding: the client's "not committed" is not final -------------------------------------------


@pytest.mark.slow
def test_attack_client_not_committed_means_it_never_commits(lab: Lab) -> None:  # noqa: F811 - the imported fixture
    """FIXED (was low/medium): ``LedgerClient.submit`` raises ``LedgerUnavailable("1
    transaction(s) not committed in 4 s")`` while the transaction sits valid in a mempool
    (here: the chain is stalled because one of two validators is partitioned); once the
    partition heals it commits. The module docstring promises "reported as not committed"
    only when it can never commit. Callers that treat the error as failure and redo the
    operation (``port.sign`` takes the *committed* next nonce, so the redo reuses the
    pending nonce with a new body — admitted by the nonce range rule) either see the
    original commit after they reported failure, or leave a stale duplicate in the mempool.

    Fix: raise a distinct ``TxPending``/outcome-unknown error (with the txids) when the
    sender's committed nonce is still ≤ the tx's nonce, and reserve "not committed" for
    the definitive case (nonce taken by another tx and no block holds this one)."""
    net = lab.up(nodes=2, committee=2)
    staff = SigningKey.generate()
    register_identities(net, [staff])
    url = net.node(0).rpc
    tx = _access(staff, 0, net.chain_id)
    network.pause(net, 1)
    try:
        _wait_stopped(list(network.pids(net, 1).values()))
        with LedgerClient([url], timeout=5.0) as client, pytest.raises(LedgerUnavailable) as err:
            client.submit([tx], timeout=4.0)
    finally:
        network.resume(net, 1)
    committed = _wait_for(
        "the tx to commit after the partition heals", lambda: _find([url], tx.txid), 30.0
    )
    assert "not committed" not in str(err.value), (
        f"submit reported {str(err.value)!r}, then the tx committed at height {committed.height}"
    )


# --- finding: `net down` signals whatever process now has a recorded pid --------------------------


def test_attack_net_down_signals_only_its_own_processes(tmp_path: Path) -> None:
    """FIXED (was medium): ``network.pids`` trusts ``pids.json``: any live pid in it is
    "the node", and ``kill`` sends SIGTERM/SIGKILL to its whole *process group*
    (``os.killpg``). After a reboot or a crash the recorded pids are reused by unrelated
    processes of the same user (a shell, an editor, a database); ``medshare net down``,
    ``net kill`` or ``net restart`` then kills them and their groups. (Here: a ``sleep`` of
    this test, in its own session, stands for the unrelated process.)

    Fix: record each process's start time (``/proc/<pid>/stat`` field 22) and its command
    line in ``pids.json`` and signal only a pid whose start time and command line (the
    node's folder, ``appmain``/``cometbft start --home``) still match; never ``killpg`` a
    group the network did not create."""
    net = network.Network(
        tmp_path,
        "00" * 16,
        "medshare-" + "00" * 16,
        (
            network.NodeInfo(
                0,
                "node-0",
                "node-0",
                "00" * 32,
                "id",
                "127.0.0.1:1",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2/metrics",
            ),
        ),
    )
    (tmp_path / "node-0").mkdir()
    bystanders = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    try:
        (tmp_path / "node-0" / "pids.json").write_text(
            json.dumps({"app": bystanders[0].pid, "cometbft": bystanders[1].pid})
        )
        network.down(net)
        time.sleep(0.2)
        killed = [p.pid for p in bystanders if p.poll() is not None]
        assert not killed, f"`net down` killed unrelated processes {killed} (stale pids.json)"
    finally:
        for p in bystanders:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    assert sys.platform.startswith("linux")
