"""Ledger nodes as real processes over HTTP on 127.0.0.1: ``medshare net``, ``/tx``
admission, and a node killed with SIGKILL mid-run that restarts from its SQLite database
and catches up; plus the in-process reason the HTTP node re-sends its messages.

Each process test brings its own network up in a temporary folder and always takes it
down (SIGTERM, then SIGKILL), so no process outlives the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.crypto.signing import SigningKey
from medshare.ledger import audit, chain, election, localnet
from medshare.ledger.cluster import InProcessCluster, LivenessError
from medshare.ledger.netnode import request_json
from medshare.ledger.store import SQLiteStore
from medshare.ledger.types import Tx, TxKind

runner = CliRunner()


def cli(*args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


# --- in process: why a lossy transport needs regossip ---------------------------------------


@pytest.mark.parametrize("regossip_ms", [None, 500])
def test_more_than_f_nodes_missing_at_start_need_regossip(regossip_ms: int | None) -> None:
    """Two of four nodes come up late (real processes start at different times): the
    messages sent to them are lost. Nodes 0 and 1 then wait in round 0 for 2f+1 precommits
    and nodes 2 and 3 for 2f+1 prevotes, and no timeout runs: without re-sending, nothing
    ever commits. The HTTP node re-sends (``regossip_ms``)."""
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    validators = tuple(election.Validator(k.public, f"n{i}", 1000) for i, k in enumerate(keys))
    cluster = InProcessCluster(
        chain.ChainConfig("late-start", validators, committee_size=4),
        keys,
        regossip_ms=regossip_ms,
    )
    cluster.crash(2)
    cluster.crash(3)
    cluster.run_for(1500)
    cluster.restart(2)
    cluster.restart(3)
    if regossip_ms is None:
        with pytest.raises(LivenessError, match="idle"):
            cluster.run_until_height(1, max_steps=20_000)
    else:
        cluster.run_until_height(3, max_steps=20_000)
        assert cluster.check_safety() == 4


# --- real processes -------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def net_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "net"
    try:
        yield directory
    finally:
        with contextlib.suppress(localnet.NetError):
            localnet.down(directory)
        if (directory / localnet.NET_FILE).exists():  # belt and braces: nothing survives
            for node in json.loads((directory / localnet.NET_FILE).read_text())["nodes"]:
                if node.get("pid"):
                    with contextlib.suppress(ProcessLookupError, ChildProcessError):
                        os.kill(node["pid"], signal.SIGKILL)


def up(directory: Path, nodes: int = 4, *extra: str) -> dict:
    summary = cli(
        "net", "up", "--nodes", str(nodes), "--dir", str(directory), "--timeout", "30", *extra
    )
    assert len(summary["nodes"]) == nodes and all(n["pid"] for n in summary["nodes"])
    return summary


def client_key(directory: Path) -> SigningKey:
    return SigningKey(bytes.fromhex((directory / "keys/client.key").read_text()))


def anchor(summary: dict, key: SigningKey, nonce: int, tag: str = "") -> Tx:
    body = {"record": f"r{nonce}{tag}", "patient": "p", "dept": "0304", "digest": "ab" * 32}
    return Tx.create(TxKind.ANCHOR_RECORD, body, nonce, key, chain=summary["chain_id"])


def post_tx(url: str, tx: Tx | bytes) -> tuple[int, dict]:
    """POST a transaction (or raw bytes, for malformed input) to a node's /tx."""
    if isinstance(tx, Tx):
        return request_json("POST", f"{url}/tx", tx.to_json())
    req = urllib.request.Request(f"{url}/tx", data=tx, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def committed_on(url: str, txid: str) -> bool:
    try:
        return request_json("GET", f"{url}/tx/{txid}", timeout=2)[0] == 200
    except OSError:
        return False


def status(url: str) -> dict:
    code, doc = request_json("GET", f"{url}/status", timeout=2)
    assert code == 200
    return doc


def same_head(urls: list[str]) -> bool:
    heads = {(s["height"], s["head"]) for s in (status(u) for u in urls)}
    return len(heads) == 1


def check_dbs(summary: dict, txids: list[str]) -> None:
    """After ``net down``: every db verifies from genesis, holds every txid, and all agree
    at every height they share."""
    stores = [SQLiteStore(n["db"]) for n in summary["nodes"]]
    try:
        for node, store in zip(summary["nodes"], stores, strict=True):
            report = cli("ledger", "verify", "--db", node["db"])
            assert report["ok"], report
            assert audit.verify_chain(store).ok
            assert all(store.find_tx(txid) is not None for txid in txids), node["name"]
        common = min(store.height() for store in stores)
        for height in range(common + 1):
            assert len({store.get(height).hash for store in stores}) == 1, height
        counted = [tx.txid for block in stores[0].blocks(1) for tx in block.txs]
        assert len(counted) == len(set(counted))  # nothing committed twice
    finally:
        for store in stores:
            store.close()


@pytest.mark.slow
def test_four_processes_commit_50_txs_and_every_db_verifies(net_dir: Path) -> None:
    summary = up(net_dir)
    urls = [n["url"] for n in summary["nodes"]]
    submitted = cli("net", "submit", "--dir", str(net_dir), "--count", "50")
    txids = submitted["txids"]
    assert len(set(txids)) == 50 and "error" not in submitted
    wait_until(
        lambda: all(committed_on(u, t) for u in urls for t in (txids[0], txids[-1])),
        20,
        "the first and last tx on every node",
    )
    assert all(committed_on(u, t) for u in urls for t in txids)
    wait_until(lambda: cli("net", "status", "--dir", str(net_dir))["agree"], 10, "one head")
    assert cli("net", "down", "--dir", str(net_dir))["killed"] == []
    assert cli("net", "down", "--dir", str(net_dir)) == {
        "dir": str(net_dir.resolve()),
        "terminated": [],
        "killed": [],
    }  # idempotent
    for node in summary["nodes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(node["pid"], 0)  # gone (and reaped), not a zombie or an orphan
    check_dbs(summary, txids)


@pytest.mark.slow
def test_forged_replayed_and_malformed_txs_get_400_and_never_commit(net_dir: Path) -> None:
    summary = up(net_dir)
    urls = [n["url"] for n in summary["nodes"]]
    key = client_key(net_dir)
    good = anchor(summary, key, 0)
    forged = dataclasses.replace(anchor(summary, key, 1), signature=bytes(64))
    other = SigningKey(bytes([7]) * 32)
    # Signed by another key, claims the client's; nonce 2, never stale here (nonce 0 may
    # already be committed when it arrives, and the stale check comes first).
    impostor = dataclasses.replace(anchor(summary, other, 2), sender=key.public)
    elsewhere = anchor({"chain_id": "ab" * 16}, key, 3)  # signed for another chain

    assert post_tx(urls[0], good) == (200, {"txid": good.txid})
    code, answer = post_tx(urls[1], forged)
    assert code == 400 and answer["error"] == "invalid signature"
    code, answer = post_tx(urls[2], impostor)
    assert code == 400 and answer["error"] == "invalid signature"
    code, answer = post_tx(urls[0], elsewhere)
    assert code == 400 and answer["error"].startswith("signed for another chain")
    code, answer = post_tx(urls[3], b'{"kind": "anchor_record"')
    assert code == 400 and answer["error"].startswith("malformed transaction")
    code, answer = post_tx(urls[3], b'{"kind": "grant", "body": {}}')
    assert code == 400 and "malformed" in answer["error"]

    wait_until(lambda: all(committed_on(u, good.txid) for u in urls), 15, "the good tx")
    code, answer = post_tx(urls[1], good)  # the same signed bytes again: a replay
    assert code == 400 and answer["error"].startswith("duplicate: already committed at height")
    replay = anchor(summary, key, 0, tag="-again")  # a fresh signature on a used nonce
    code, answer = post_tx(urls[2], replay)
    assert code == 400 and answer["error"].startswith("stale nonce 0"), answer
    second = anchor(summary, key, 1)
    assert post_tx(urls[3], second)[0] == 200
    code, answer = post_tx(urls[3], second)
    assert code == 400 and answer["error"].startswith("duplicate")

    wait_until(lambda: all(committed_on(u, second.txid) for u in urls), 15, "the second tx")
    for bad in (forged, impostor, replay, elsewhere):
        assert not any(committed_on(u, bad.txid) for u in urls)
    cli("net", "down", "--dir", str(net_dir))
    # A folder from before txs named their chain is refused with the reason, not started.
    doc = json.loads((net_dir / "net.json").read_text())
    del doc["chain_id"]
    (net_dir / "net.json").write_text(json.dumps(doc))
    for args in (["up", "--dir"], ["restart", "--node", "1", "--dir"], ["submit", "--dir"]):
        result = runner.invoke(app, ["net", *args, str(net_dir)])
        assert result.exit_code == 2 and "did not name their chain" in result.output, args
    check_dbs(summary, [good.txid, second.txid])
    for node in summary["nodes"]:
        store = SQLiteStore(node["db"])
        try:
            assert all(store.find_tx(bad.txid) is None for bad in (forged, impostor, replay))
        finally:
            store.close()


@pytest.mark.slow
@pytest.mark.parametrize(("lag", "run"), [(1, 1), (3, 1), (4, 5)])
def test_sigkilled_node_restarts_from_its_db_and_catches_up(
    net_dir: Path, lag: int, run: int
) -> None:
    """With --certificate-lag 3 the restarted process must also reload, from its db, the
    certificates its next blocks carry; with a lag > 1 the nodes decide heights at once
    (ledger/pipeline.py), and with --proposer-run one leader proposes several in a row."""
    summary = up(net_dir, 4, "--certificate-lag", str(lag), "--proposer-run", str(run))
    nodes = summary["nodes"]
    urls = [n["url"] for n in nodes]
    victim = 3
    key = client_key(net_dir)
    txs = [anchor(summary, key, n) for n in range(40)]
    killed = threading.Event()
    errors: list[str] = []

    def submit(tx: Tx, first: int) -> None:
        """Round-robin with failover: a dead node refuses the connection."""
        for k in range(len(urls)):
            target = (first + k) % len(urls)
            if killed.is_set() and target == victim:
                continue
            try:
                code, answer = post_tx(urls[target], tx)
            except OSError:
                continue
            if code == 200 or answer.get("error", "").startswith("duplicate"):
                return
            errors.append(answer.get("error", str(code)))
            return

    def client() -> None:
        for n, tx in enumerate(txs):
            submit(tx, n)
            time.sleep(0.02)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: committed_on(urls[0], txs[8].txid), 15, "the first txs to commit")
        os.kill(nodes[victim]["pid"], signal.SIGKILL)  # mid-stream, no warning
        killed.set()
    finally:
        thread.join()
    assert errors == []
    live = [u for i, u in enumerate(urls) if i != victim]

    def all_committed() -> bool:
        # A tx the victim admitted but never gossiped died with it; the client resubmits
        # whatever is still missing (at-least-once, idempotent by txid).
        missing = [
            (n, tx) for n, tx in enumerate(txs) if not all(committed_on(u, tx.txid) for u in live)
        ]
        for n, tx in missing[:5]:
            submit(tx, n)
        return not missing

    wait_until(all_committed, 20, "all 40 txs on the three live nodes")
    behind_at = status(urls[0])["height"]

    restarted = cli("net", "restart", "--dir", str(net_dir), "--node", str(victim))
    assert restarted["pid"] != nodes[victim]["pid"]
    caught_up = lambda: status(urls[victim])["height"] >= behind_at + 2  # noqa: E731
    wait_until(caught_up, 20, "the victim to catch up")
    assert all(committed_on(urls[victim], tx.txid) for tx in txs)
    wait_until(lambda: same_head(urls), 10, "one head on all four nodes")
    log = Path(nodes[victim]["log"]).read_text()
    assert "Traceback" not in log and log.count("listening on") == 2

    cli("net", "down", "--dir", str(net_dir))
    check_dbs(summary, [tx.txid for tx in txs])
    store = SQLiteStore(nodes[victim]["db"])
    try:
        carried = [(b.height, b.last_commit.height) for b in store.blocks(lag + 1)]
        assert carried and all(h - c == lag for h, c in carried)  # the lag, across processes
    finally:
        store.close()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--certificate-lag", "0", "--certificate-lag must be in 1..256"),
        ("--certificate-lag", "257", "--certificate-lag must be in 1..256"),
        ("--proposer-run", "0", "--proposer-run must be in 1..1024"),
    ],
)
def test_net_up_refuses_a_bad_lag_or_run_before_creating_anything(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    target = tmp_path / "net"
    result = runner.invoke(app, ["net", "up", "--dir", str(target), option, value])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not target.exists()
