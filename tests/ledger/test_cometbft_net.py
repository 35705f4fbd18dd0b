"""Real CometBFT networks with our ABCI application: processes, crashes, partitions,
double signing and junk from outsiders. Nothing is mocked.

Every test starts its own network (one ``cometbft`` and one ``appmain`` process per node)
in its own folder; the ``lab`` fixture stops every node in a ``finally`` and then checks
that no process started for the test is still alive. Every wait polls against a
deadline; nothing asserts on a duration or a rate.

The tests need the pinned CometBFT binary (``medshare net install``, which `.ci/run` runs);
without it they fail with that message — never skipped, never mocked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from medshare.cli.main import app as cli_app
from medshare.crypto.signing import SigningKey
from medshare.ledger.app.rules import Code, address
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import install, network
from medshare.ledger.cometbft import verify as cometbft_verify
from medshare.ledger.cometbft.appmain import SOCKET
from medshare.ledger.cometbft.client import (
    IN_CACHE,
    Committed,
    LedgerClient,
    LedgerUnavailable,
    TxRefused,
    tx_hash,
)
from medshare.ledger.cometbft.load import register_identities
from medshare.ledger.types import Tx, TxKind

T = TypeVar("T")

MAX_SOCKET_PATH = 90  # AF_UNIX allows 107 bytes; keep a margin for longer node folders
CATCH_UP_S = 90.0  # bound for a node to catch up: generous, since CI machines may be slow


# --- fixture: one network folder per test, always torn down ---------------------------------


def _processes_under(directory: Path) -> dict[int, str]:
    """Live processes whose command line names ``directory`` (every app and CometBFT
    process of a node has its folder on its command line)."""
    needle = str(directory).encode() + b"/"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _recorded_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for path in directory.glob("*/pids.json"):
        with contextlib.suppress(OSError, ValueError):
            for entry in json.loads(path.read_text()).values():
                pids.add(entry["pid"] if isinstance(entry, dict) else entry)
    return pids


class Lab:
    """A test's network folder and every network started in it (for the teardown)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.networks: list[network.Network] = []
        self.seen_pids: set[int] = set()

    def up(self, **kwargs: object) -> network.Network:
        net = network.up(self.directory, **kwargs)
        self.networks.append(net)
        self.note_pids()
        return net

    def track(self, net: network.Network) -> None:
        self.networks.append(net)

    def note_pids(self) -> None:
        """Remember the pids now recorded (restarts overwrite pids.json)."""
        self.seen_pids |= _recorded_pids(self.directory)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    try:
        install.binary()
    except install.EngineMissing as exc:
        pytest.fail(f"CometBFT binary missing ({exc})")
    directory = (tmp_path / "net").resolve()
    own_temp = None
    if len(str(directory / "node-00" / SOCKET)) > MAX_SOCKET_PATH:
        own_temp = Path(tempfile.mkdtemp(prefix="msnet-", dir="/tmp")).resolve()
        directory = own_temp / "net"
    lab = Lab(directory)
    try:
        yield lab
    finally:
        lab.note_pids()
        networks = list(lab.networks)
        if (directory / network.NET_FILE).exists():  # also a network made by the CLI
            networks.append(network.Network.load(directory))
        for net in networks:
            with contextlib.suppress(Exception):
                network.down(net)
        deadline = time.monotonic() + 15.0
        survivors = _processes_under(directory)
        while survivors and time.monotonic() < deadline:
            time.sleep(0.1)
            survivors = _processes_under(directory)
        for pid in survivors:  # ours (they name this test's folder): never leave them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if own_temp is not None:
            shutil.rmtree(own_temp, ignore_errors=True)
        recorded = sorted(set(survivors) & lab.seen_pids)
        assert not survivors, f"processes survived network.down ({recorded} recorded): {survivors}"
        assert lab.seen_pids, "no node process was ever recorded"


# --- helpers ------------------------------------------------------------------------------------


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float, every=0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, LedgerUnavailable, KeyError, ValueError):
            value = probe()
            if value:
                return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _rpc(url: str, method: str, timeout: float = 5.0, **params: object) -> dict:
    answer = httpx.get(f"{url}/{method}", params=params, timeout=timeout).json()
    if "result" not in answer:
        raise LedgerUnavailable(f"{method}: {answer.get('error')}")
    return answer["result"]


def _height(url: str) -> int | None:
    try:
        return int(_rpc(url, "status", timeout=2.0)["sync_info"]["latest_block_height"])
    except (httpx.HTTPError, LedgerUnavailable, KeyError, ValueError):
        return None


def _heights(net: network.Network, nodes: Sequence[int] | None = None) -> dict[int, int | None]:
    nodes = range(len(net.nodes)) if nodes is None else nodes
    return {i: _height(net.node(i).rpc) for i in nodes}


def _wait_advance(net: network.Network, nodes: Sequence[int], timeout: float = 30.0) -> None:
    """Every node in ``nodes`` goes past the height it has now."""
    start = _heights(net, nodes)
    assert all(h is not None for h in start.values()), f"a node does not answer: {start}"
    for i in nodes:
        _wait_for(
            f"node {i} to pass height {start[i]}",
            lambda i=i: (_height(net.node(i).rpc) or 0) > start[i],
            timeout,
        )


def _assert_same_chain(net: network.Network, nodes: Sequence[int], timeout: float) -> int:
    """All ``nodes`` reach a common height and agree there on the block hash, the app hash
    and the commit; returns that height."""
    target = max(h for h in _heights(net, nodes).values() if h is not None)
    _wait_for(
        f"nodes {list(nodes)} to reach height {target}",
        lambda: all((h or 0) >= target for h in _heights(net, nodes).values()),
        timeout,
    )
    blocks = {i: _rpc(net.node(i).rpc, "block", height=target) for i in nodes}
    commits = {i: _rpc(net.node(i).rpc, "commit", height=target) for i in nodes}
    block_hashes = {i: b["block_id"]["hash"] for i, b in blocks.items()}
    app_hashes = {i: b["block"]["header"]["app_hash"] for i, b in blocks.items()}
    commit_hashes = {
        i: c["signed_header"]["commit"]["block_id"]["hash"] for i, c in commits.items()
    }
    commit_app = {i: c["signed_header"]["header"]["app_hash"] for i, c in commits.items()}
    assert len(set(block_hashes.values())) == 1, f"block hashes at {target}: {block_hashes}"
    assert len(set(app_hashes.values())) == 1, f"app hashes at {target}: {app_hashes}"
    assert set(commit_hashes.values()) == set(block_hashes.values()), commit_hashes
    assert set(commit_app.values()) == set(app_hashes.values()), commit_app
    return target


def _find(urls: Sequence[str], txid: str) -> Committed | None:
    """The committed transaction ``txid`` as the first node that has it reports it (URI
    form of ``/tx``, where ``0x…`` hex is accepted; see the ``LedgerClient.find`` test)."""
    for url in urls:
        try:
            answer = httpx.get(f"{url}/tx", params={"hash": "0x" + txid}, timeout=3.0).json()
        except (httpx.HTTPError, ValueError):
            continue
        result = answer.get("result")
        if result is not None:
            res = result.get("tx_result", {})
            return Committed(
                txid,
                int(result["height"]),
                int(result["index"]),
                int(res.get("code", 0)),
                res.get("log", ""),
            )
    return None


def _full_status(net: network.Network, timeout: float = 30.0) -> dict:
    """``network.status`` once it has the validator set and committee (before block 1 the
    nodes' RPC answers but ``/validators`` fails, and status leaves both None)."""
    return _wait_for(
        "a validator set and committee in network.status",
        lambda: (s := network.status(net))["validators"] and s["committee"] and s,
        timeout,
    )


def _access(key: SigningKey, nonce: int, chain: str, record: str = "r") -> Tx:
    body = {"record": f"{record}-{nonce}", "actor": "dr-test", "area": "institution"}
    return Tx.create(TxKind.ACCESS, body, nonce, key, chain=chain)


def _tx_count(client: LedgerClient, txid: str, first: int, last: int) -> int:
    """How many blocks in first..last carry ``txid``."""
    count = 0
    for h in range(max(first, 1), last + 1):
        [decided] = _wait_for(
            f"results of block {h}",
            lambda h=h: (d := client.block_txs(h)) is not None and [d],
            10.0,
        )
        count += sum(c.txid == txid for c in decided)
    return count


def _block_txs(url: str, first: int, last: int) -> int:
    """The number of transactions in blocks first..last of the node at ``url``."""
    total = 0
    for h in range(max(first, 1), last + 1):
        total += len(_rpc(url, "block", height=h)["block"]["data"].get("txs") or [])
    return total


def _log_lines(folder: Path, needle: str, limit: int = 5) -> list[str]:
    try:
        lines = (folder / "cometbft.log").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if needle in line][:limit]


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_stopped(pids: Sequence[int]) -> None:
    """SIGSTOP is delivered asynchronously: wait until every process shows state T."""
    _wait_for(
        f"processes {list(pids)} to be stopped",
        lambda: all(_process_state(pid) == "T" for pid in pids),
        10.0,
        every=0.05,
    )


# --- 1. basics through the CLI ------------------------------------------------------------------


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == 0, f"medshare {' '.join(args)}: {result.output}"
    return json.loads(result.stdout)


@pytest.mark.slow
def test_cli_up_status_and_admission(lab: Lab) -> None:
    d = str(lab.directory)
    up = _cli("net", "up", "--dir", d, "--nodes", "4", "--committee", "4")
    lab.note_pids()
    urls = [n["rpc"] for n in up["nodes"]]
    assert len(urls) == 4 and len(set(urls)) == 4
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    net = network.Network.load(lab.directory)
    assert [n.rpc for n in net.nodes] == urls

    names = {f"node-{i}" for i in range(4)}
    # `net up` returns once every RPC answers, which can be before block 1: until then
    # /validators fails and `net status` has no validator set
    status = _wait_for(
        "a validator set in `net status`",
        lambda: (s := _cli("net", "status", "--dir", d))["validators"] and s,
        30.0,
    )
    assert {v["name"] for v in status["validators"]} == names
    assert [v["power"] for v in status["validators"]] == [10] * 4
    assert {m["name"] for m in status["committee"]} == names
    assert status["ejected"] == []
    assert all(n["running"] and n["height"] is not None for n in status["nodes"])
    first = status["height"]
    _wait_for(
        "heights to advance in `net status`",
        lambda: all(n["height"] > first for n in _cli("net", "status", "--dir", d)["nodes"]),
        30.0,
    )

    chain = up["chain_id"]
    staff = SigningKey.generate()
    register_identities(net, [staff])
    with LedgerClient(urls) as client:
        assert client.next_nonce(staff.public) == 0
        # a registered identity's access commits and is applied
        tx0 = _access(staff, 0, chain)
        [done] = client.submit([tx0])
        assert done.code == 0
        assert _wait_for("tx0 in the tx index", lambda: _find(urls, tx0.txid), 10.0) == done
        assert client.next_nonce(staff.public) == 1

        # an unregistered key is refused by CheckTx (never reaches a block)
        stranger = SigningKey.generate()
        outsider = _access(stranger, 0, chain)
        with pytest.raises(TxRefused) as refused:
            client.submit([outsider])
        assert refused.value.code == Code.NOT_PERMITTED == 5

        # replaying committed bytes: refused from the cache (or by nonce), never twice
        [(code, _log)] = client.broadcast([tx0.encode()])
        assert code in (IN_CACHE, Code.BAD_NONCE), code
        # the same nonce in new bytes is a replay too
        [(code, log)] = client.broadcast([_access(staff, 0, chain, record="again").encode()])
        assert code == Code.BAD_NONCE, log
        # signed for another chain
        other_chain = ("ab" if not chain.startswith("ab") else "cd") * 16
        [(code, log)] = client.broadcast([_access(staff, 1, other_chain).encode()])
        assert code == Code.WRONG_CHAIN == 2, log

        # a tampered signature (right sender, nonce and chain)
        good = _access(staff, 1, chain)
        sig = bytearray(good.signature)
        sig[7] ^= 0x01
        tampered = dataclasses.replace(good, signature=bytes(sig))
        assert tampered.encode() != good.encode()
        [(code, log)] = client.broadcast([tampered.encode()])
        assert code == Code.BAD_SIGNATURE == 3, log

        # the refused ones used no nonce: the good nonce-1 tx commits
        [done1] = client.submit([good])
        assert done1.code == 0
        top = done1.height + 2
        _wait_for(f"height {top}", lambda: client.height() >= top, 30.0)
        assert _tx_count(client, tx0.txid, done.height, top) == 1
        for tx in (outsider, tampered):
            assert _find(urls, tx.txid) is None
        assert client.next_nonce(staff.public) == 2
        assert client.next_nonce(stranger.public) == 0

    stopped = _cli("net", "down", "--dir", d)
    assert stopped == {"stopped": 4}
    assert not any(network.running(net, i) for i in range(4))


@pytest.mark.slow
def test_client_find_and_resubmit_of_a_committed_tx(lab: Lab) -> None:
    net = lab.up(nodes=1, committee=1)
    staff = SigningKey.generate()
    register_identities(net, [staff])
    tx = _access(staff, 0, net.chain_id)
    with LedgerClient([net.node(0).rpc]) as client:
        [done] = client.submit([tx])
        # read-your-writes: when submit returns, the app's state holds the tx (CheckTx and
        # queries read that state, which trails the stored block results by the Commit)
        assert client.applied_height() >= done.height
        assert client.next_nonce(staff.public) == 1
        url = [net.node(0).rpc]
        assert _wait_for("the tx indexed", lambda: _find(url, tx.txid), 10.0) == done
        assert client.find(tx.txid) == done
        # the same bytes again: the node answers "in cache"; submit must find the commit
        assert client.submit([tx], timeout=6.0) == [done]


# --- 2. a validator crashes under load ----------------------------------------------------------


@dataclasses.dataclass
class Ledgerbook:
    """What the load thread saw, per transaction (guarded by ``lock``)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    acked: list[Tx] = dataclasses.field(default_factory=list)
    acked_at: dict[str, float] = dataclasses.field(default_factory=dict)
    committed: dict[str, Committed] = dataclasses.field(default_factory=dict)
    unresolved: list[Tx] = dataclasses.field(default_factory=list)
    refusals: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    uncertain: list[Tx] = dataclasses.field(default_factory=list)  # broadcast raised
    errors: list[str] = dataclasses.field(default_factory=list)


def _load_thread(
    keys: Sequence[SigningKey],
    all_urls: Sequence[str],
    urls_for: Callable[[int], list[str]],
    chain: str,
    stop: threading.Event,
    book: Ledgerbook,
) -> None:
    """One background thread driving every identity, each strictly sequential: broadcast
    its next transaction, wait until a block carries it, then the next. A transaction
    late by 8 s gets the client's retry rule once (ask any node by hash; resend if the
    sender's committed nonce has not passed it); an identity whose transaction is still
    unresolved after 20 s stops (its nonce state is unknown), as in
    :mod:`medshare.ledger.cometbft.load`."""
    submitters = [LedgerClient(urls_for(k), timeout=3.0) for k in range(len(keys))]
    reader = LedgerClient(all_urls, timeout=3.0)
    try:
        nonces = [c.next_nonce(key.public) for c, key in zip(submitters, keys, strict=True)]
        pending: dict[int, Tx] = {}  # identity -> its transaction in flight
        active = set(range(len(keys)))
        retried: set[str] = set()
        cursor = reader.height() + 1
        counter = 0
        while active and not stop.is_set():
            try:
                for k in sorted(active - set(pending)):
                    counter += 1
                    tx = _access(keys[k], nonces[k], chain, record=f"load-{k}-{counter}")
                    try:
                        [(code, log)] = submitters[k].broadcast([tx.encode()])
                    except LedgerUnavailable:  # no answer: it may have reached a mempool
                        with book.lock:
                            book.uncertain.append(tx)
                        continue
                    with book.lock:
                        if code != 0:  # not acknowledged: a fresh tx, same nonce, next round
                            book.refusals.append((code, log))
                            continue
                        book.acked.append(tx)
                        book.acked_at[tx.txid] = time.monotonic()
                    pending[k] = tx
                top = reader.height()
                progressed = False
                while cursor <= top:
                    decided = reader.block_txs(cursor)
                    if decided is None:
                        break
                    by_id = {c.txid: c for c in decided}
                    for k, tx in list(pending.items()):
                        if tx.txid in by_id:
                            with book.lock:
                                book.committed[tx.txid] = by_id[tx.txid]
                            del pending[k]
                            nonces[k] = reader.next_nonce(keys[k].public)
                    cursor += 1
                    progressed = True
                for k, tx in list(pending.items()):
                    waited = time.monotonic() - book.acked_at[tx.txid]
                    if waited > 8.0 and tx.txid not in retried:
                        retried.add(tx.txid)
                        committed = _find(all_urls, tx.txid)
                        if committed is not None:  # seen by another node's index
                            with book.lock:
                                book.committed[tx.txid] = committed
                            del pending[k]
                            nonces[k] = reader.next_nonce(keys[k].public)
                        elif reader.next_nonce(tx.sender) <= tx.nonce:
                            submitters[k].broadcast([tx.encode()])
                    elif waited > 20.0:
                        with book.lock:
                            book.unresolved.append(tx)
                        del pending[k]
                        active.discard(k)
                if not progressed:
                    time.sleep(0.05)
            except LedgerUnavailable as exc:  # every node failed this call: try again
                with book.lock:
                    book.errors.append(str(exc))
                time.sleep(0.1)
    finally:
        reader.close()
        for c in submitters:
            c.close()


@pytest.mark.slow
def test_validator_crash_under_load(lab: Lab) -> None:
    net = lab.up(nodes=4, committee=4)
    victim = 2
    urls = [n.rpc for n in net.nodes]
    keys = [SigningKey.generate() for _ in range(6)]
    register_identities(net, keys)

    def urls_for(k: int) -> list[str]:  # identity k asks node k % 4 first: some the victim
        return urls[k % 4 :] + urls[: k % 4]

    book = Ledgerbook()
    stop = threading.Event()
    loader = threading.Thread(
        target=_load_thread, args=(keys, urls, urls_for, net.chain_id, stop, book), daemon=True
    )
    began = time.monotonic()
    loader.start()
    try:
        _wait_for("the first committed load tx", lambda: len(book.committed) > 0, 30.0)
        while time.monotonic() - began < 4.0:  # the crash is scheduled ~4 s into the load
            time.sleep(0.05)
        network.kill(net, victim)
        assert not network.running(net, victim)
        assert _height(urls[victim]) is None
        committed_at_crash = len(book.committed)
        while time.monotonic() - began < 8.0:
            time.sleep(0.05)
        _wait_advance(net, [i for i in range(4) if i != victim])
        network.start(net, victim)
        lab.note_pids()
        restarted_at = time.monotonic()
        # load for ~15 s in all, and until txs acknowledged after the restart commit
        _wait_for(
            "a load tx acknowledged after the restart to commit",
            lambda: (
                time.monotonic() - began >= 15.0
                and any(
                    book.acked_at[t] > restarted_at
                    for t in list(book.committed)
                    if t in book.acked_at
                )
            ),
            60.0,
        )
    finally:
        stop.set()
        loader.join(timeout=60.0)
    assert not loader.is_alive(), "the load thread did not stop"
    assert book.acked, "no load transaction was acknowledged"
    assert len(book.committed) > committed_at_crash, "nothing committed after the crash"

    # Every acknowledged transaction is accounted for: committed, or (retry rule) its
    # nonce was taken and no block holds it, or resent and then committed.
    survivors = [urls[i] for i in range(4) if i != victim] + [urls[victim]]
    lost = []
    with LedgerClient(survivors) as client:
        for tx in book.acked:
            committed = _find(survivors, tx.txid)
            if committed is not None:
                if tx.txid in book.committed:
                    assert committed.height == book.committed[tx.txid].height
                continue
            if client.next_nonce(tx.sender) > tx.nonce:
                continue  # reported as not committed: another tx of its key took the nonce
            start = client.height()
            client.broadcast([tx.encode()])
            if tx.txid not in client.wait([tx.txid], start, timeout=20.0):
                lost.append(tx.txid)
        assert not lost, f"acknowledged but neither committed nor refused by nonce: {lost}"
        # each identity's nonces 0..next-1 were used by exactly one acknowledged tx each:
        # nothing committed twice, nothing committed that was not acknowledged
        for key in keys:
            applied = sorted(
                tx.nonce
                for tx in [*book.acked, *book.uncertain]
                if tx.sender == key.public
                and (c := _find(survivors, tx.txid)) is not None
                and c.code == 0
            )
            assert applied == list(range(client.next_nonce(key.public))), applied

    # all four nodes agree, and the restarted one caught up
    h = _assert_same_chain(net, range(4), CATCH_UP_S)
    assert h >= 1
    assert network.running(net, victim)
    victim_sync = _rpc(urls[victim], "status")["sync_info"]
    assert victim_sync["catching_up"] is False
    assert int(victim_sync["latest_block_height"]) >= h
    # `ledger verify` from genesis passes on every node, up to the common height.
    genesis = json.loads((net.node_dir(0) / "config" / "genesis.json").read_text())
    for url in urls:
        report = cometbft_verify.verify_node(url, to=h, genesis=genesis)
        assert report.ok, report.as_dict()


# --- 3. a partition (SIGSTOP) of one validator for 30 s ----------------------------------------


@pytest.mark.slow
def test_partitioned_validator_catches_up(lab: Lab) -> None:
    net = lab.up(nodes=4, committee=4)
    paused = 3
    others = [0, 1, 2]
    staff = SigningKey.generate()
    register_identities(net, [staff])
    before = _heights(net, others)
    network.pause(net, paused)
    committed: list[Committed] = []
    try:
        pids = network.pids(net, paused)
        assert len(pids) == 2
        _wait_stopped(list(pids.values()))
        with LedgerClient([net.node(i).rpc for i in others]) as client:
            nonce = client.next_nonce(staff.public)
            began = time.monotonic()
            while time.monotonic() - began < 30.0:  # the partition lasts 30 s
                [done] = client.submit([_access(staff, nonce, net.chain_id)], timeout=20.0)
                assert done.code == 0
                committed.append(done)
                nonce += 1
        during = _heights(net, others)
        assert all(during[i] > before[i] for i in others), (before, during)
        assert committed, "no tx committed during the partition"
        assert all(_process_state(pid) == "T" for pid in pids.values()), "woke up early"
    finally:
        network.resume(net, paused)
    target = max(h for h in _heights(net, others).values() if h is not None)
    _wait_for(
        f"node {paused} to catch up to height {target}",
        lambda: (_height(net.node(paused).rpc) or 0) >= target,
        CATCH_UP_S,
    )
    _assert_same_chain(net, range(4), CATCH_UP_S)
    # the resumed node holds what was committed while it was away
    with LedgerClient([net.node(paused).rpc]) as client:
        last = committed[-1]
        resumed = [net.node(paused).rpc]
        assert _wait_for("the last tx indexed", lambda: _find(resumed, last.txid), 30.0) == last
        assert client.next_nonce(staff.public) == len(committed)
    assert network.running(net, paused)


# --- 4. double signing: a second node with a copy of a validator's key ------------------------


def _start_copy(lab: Lab, net: network.Network, source: int) -> network.Network:
    """A new node whose validator key is a copy of node ``source``'s (its own node key,
    ports, app process and a fresh sign state), peered with every node; returns the
    network extended by it (its index is ``len(net.nodes)``)."""
    folder = net.directory / f"copy-{source}"
    node_home.init(folder, f"copy-of-node-{source}")
    os.chmod(folder, 0o700)
    shutil.copy(
        net.node_dir(source) / "config" / "priv_validator_key.json",
        folder / "config" / "priv_validator_key.json",
    )
    (folder / "data" / "priv_validator_state.json").write_text(
        json.dumps({"height": "0", "round": 0, "step": 0})
    )
    shutil.copy(net.node_dir(0) / "config" / "genesis.json", folder / "config" / "genesis.json")
    p2p, rpc, metrics = network.free_ports(3)
    node_home.configure(
        folder,
        ports=node_home.Ports(p2p=p2p, rpc=rpc, metrics=metrics),
        p2p_host="127.0.0.1",
        rpc_host="127.0.0.1",
        peers=[f"{n.node_id}@{n.p2p}" for n in net.nodes],
        socket=folder.resolve() / SOCKET,
    )
    info = dataclasses.replace(
        net.node(source),  # same validator key
        index=len(net.nodes),
        name=f"copy-of-node-{source}",
        folder=folder.name,
        node_id=node_home.node_id(folder),
        p2p=f"127.0.0.1:{p2p}",
        rpc=f"http://127.0.0.1:{rpc}",
        metrics=f"http://127.0.0.1:{metrics}/metrics",
    )
    extended = dataclasses.replace(net, nodes=(*net.nodes, info))
    lab.track(extended)  # stopped by the fixture even if starting fails half-way
    network.start(extended, info.index)
    lab.note_pids()
    return extended


def _evidence_block(url: str, offender: str, first: int, last: int) -> int | None:
    """The height of the first block in first..last carrying duplicate-vote evidence
    against the validator address ``offender``."""
    for h in range(max(first, 1), last + 1):
        block = _rpc(url, "block", height=h)["block"]
        for ev in block["evidence"].get("evidence") or []:
            if (
                ev.get("type") == "tendermint/DuplicateVoteEvidence"
                and ev["value"]["vote_a"]["validator_address"] == offender
            ):
                return h
    return None


@pytest.mark.slow
def test_double_signing_ejects_the_offender(lab: Lab) -> None:
    # five nodes, four seats: the offender's seat must go to the elected non-member
    net = lab.up(nodes=5, committee=4, epoch=1000)
    status = _full_status(net)
    seated = {m["name"] for m in status["committee"]}
    assert len(seated) == 4 and status["ejected"] == []
    offender = next(i for i in range(5) if net.node(i).name in seated)
    outsider = next(i for i in range(5) if net.node(i).name not in seated)
    offender_name = net.node(offender).name
    offender_addr = address(bytes.fromhex(net.node(offender).public)).hex().upper()
    start_height = status["height"] or 1

    _start_copy(lab, net, offender)
    url = net.node(outsider).rpc  # a node that is not the offender reads the chain

    def ejected() -> bool:
        return offender_name in (network.status(net)["ejected"] or [])

    try:
        _wait_for(f"{offender_name} to be ejected for double signing", ejected, 90.0, every=0.5)
    except pytest.fail.Exception:
        seen = {
            f.name: _log_lines(f, "conflicting votes", 2)
            for f in sorted(net.directory.iterdir())
            if f.is_dir()
        }
        pytest.fail(f"no ejection within 90 s; CometBFT logs about conflicting votes: {seen}")

    top = _height(url) or 0
    h = _evidence_block(url, offender_addr, start_height, top)
    assert h is not None, "ejected, but no DuplicateVoteEvidence in any block"

    status = _full_status(net)
    assert status["reputation"][offender_name] == 0
    assert status["ejected"] == [offender_name]
    committee = {m["name"] for m in status["committee"]}
    assert offender_name not in committee
    assert committee == (seated - {offender_name}) | {net.node(outsider).name}

    # validator updates returned at H take effect at H+2
    _wait_for(f"height {h + 3}", lambda: (_height(url) or 0) >= h + 3, 30.0)

    def power_at(height: int) -> dict[str, int]:
        vals = _rpc(url, "validators", height=height, per_page=100)["validators"]
        return {v["address"]: int(v["voting_power"]) for v in vals}

    outsider_addr = address(bytes.fromhex(net.node(outsider).public)).hex().upper()
    assert offender_addr in power_at(h + 1)
    assert offender_addr not in power_at(h + 2)
    assert power_at(h + 2).get(outsider_addr) == 10
    assert offender_addr not in {v["address"] for v in _full_status(net)["validators"]}
    # the chain goes on without the offender (and without its copy)
    _wait_advance(net, [i for i in range(5) if i != offender])


# --- 5. junk from outsiders ----------------------------------------------------------------------


@pytest.mark.slow
def test_outsider_junk_is_refused(lab: Lab) -> None:
    net = lab.up(nodes=4, committee=4)
    target = net.node(0)
    first = _wait_for("height 1", lambda: _height(target.rpc), 30.0)

    junk: list[tuple[str, bytes]] = [
        ("random bytes", os.urandom(4096)),
        (
            "oversized body",
            b'{"jsonrpc":"2.0","id":1,"method":"status","params":{}}'.ljust(5 * 1024 * 1024, b" "),
        ),
        ("truncated JSON-RPC", b'{"jsonrpc":"2.0","id":1,"method":'),
        ("not a request", b"[1, 2, 3]"),
        ("unknown method", b'{"jsonrpc":"2.0","id":1,"method":"rm_rf","params":{}}'),
        ("bad params", b'{"jsonrpc":"2.0","id":1,"method":"block","params":{"height":"x"}}'),
        (
            "tx that is not base64",
            b'{"jsonrpc":"2.0","id":1,"method":"broadcast_tx_sync","params":{"tx":"!!"}}',
        ),
    ]
    for what, body in junk:
        response = httpx.post(
            target.rpc, content=body, headers={"content-type": "application/json"}, timeout=10
        )
        answer = response.json()
        assert "error" in answer and "result" not in answer, (what, response.text[:300])

    # random bytes as a transaction: CheckTx says malformed, nothing is committed
    garbage = [os.urandom(256) for _ in range(3)]
    with LedgerClient([target.rpc]) as client:
        for (code, log), raw in zip(client.broadcast(garbage), garbage, strict=True):
            assert code == Code.MALFORMED == 1, log
            assert _find([target.rpc], tx_hash(raw)) is None

    # random bytes to the p2p port: the secret-connection handshake fails, CometBFT hangs up
    host, port = target.p2p.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5.0) as conn:
        conn.sendall(os.urandom(4096))
        conn.settimeout(1.0)
        deadline = time.monotonic() + 40.0  # CometBFT's handshake timeout is 20 s
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                closed = conn.recv(4096) == b""
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
        assert closed, "CometBFT kept a p2p connection that sent random bytes"

    _wait_advance(net, range(4))
    assert all(network.running(net, i) for i in range(4))
    assert int(_rpc(target.rpc, "net_info")["n_peers"]) == 3
    last = _height(target.rpc) or 0
    assert _block_txs(target.rpc, first, last) == 0, "junk reached a block"
    with LedgerClient([target.rpc]) as client:
        for raw in garbage:
            assert _find([target.rpc], tx_hash(raw)) is None


def test_listening_ports_are_chosen_below_the_ephemeral_range() -> None:
    """Outgoing connections take their source ports from the kernel's ephemeral range: a
    port chosen there could be taken by any client before its server binds it."""
    low, _ = network._ephemeral_range()
    ports = network.free_ports(16)
    assert len(set(ports)) == 16
    assert all(network.LISTEN_PORTS_FROM <= p < low for p in ports)
