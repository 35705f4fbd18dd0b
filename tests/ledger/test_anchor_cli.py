"""``medshare anchor publish|verify`` against a real anvil, and as the ledger a real
4-node CometBFT network (``--node``) or a database of the retired engine (``--db``).

Nothing is mocked: a doctored node is a real node behind a small JSON-RPC proxy that
edits its answers. Missing anvil or CometBFT binaries fail the tests (never skip).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from chainkit import Kit
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.ledger import anchor
from medshare.ledger.anvil import AnvilProcess
from medshare.ledger.cometbft import checkpoints, install, network
from medshare.ledger.cometbft import verify as v
from medshare.ledger.store import SQLiteStore


def _node_db(path: Path, blocks: int) -> Path:
    store = SQLiteStore(path)
    Kit.new(nodes=5, committee=4, epoch_length=4).fill(store, blocks=blocks)
    store.close()
    return path


def _invoke(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def test_publish_then_verify_then_detect_divergence(anvil: AnvilProcess, tmp_path: Path) -> None:
    db = _node_db(tmp_path / "node.db", blocks=25)
    code, out = _invoke("anchor", "publish", "--db", str(db), "--rpc", anvil.rpc_url, "--deploy")
    assert code == 0, out
    assert out["anchored_heights"] == [0, 10, 20]
    assert out["committee_epoch"] == 6
    contract = out["checkpoint_registry"]
    code, report = _invoke(
        "anchor", "verify", "--db", str(db), "--rpc", anvil.rpc_url, "--contract", contract
    )
    assert code == 0 and report["ok"] and report["checked"] == 3
    # publishing again anchors nothing new
    code, again = _invoke(
        "anchor",
        "publish",
        "--db",
        str(db),
        "--rpc",
        anvil.rpc_url,
        "--contract",
        contract,
        "--validators",
        out["validator_registry"],
    )
    assert code == 0 and again["anchored_heights"] == [] and again["committee_epoch"] is None
    # a node whose block 10 was rewritten no longer matches the anchor
    con = sqlite3.connect(db)
    con.execute("UPDATE blocks SET hash = ? WHERE height = 10", ("ee" * 32,))
    (data,) = con.execute("SELECT data FROM blocks WHERE height = 10").fetchone()
    con.execute(
        "UPDATE blocks SET data = ? WHERE height = 10",
        (data.replace(b'"time_ms":', b'"time_ms":1'),),
    )
    con.commit()
    code, report = _invoke(
        "anchor", "verify", "--db", str(db), "--rpc", anvil.rpc_url, "--contract", contract
    )
    assert code == 1
    assert not report["ok"] and any("height 10" in m for m in report["mismatches"])


def test_verify_reports_missing_local_blocks(anvil: AnvilProcess, tmp_path: Path) -> None:
    long_db = _node_db(tmp_path / "long.db", blocks=21)
    code, out = _invoke(
        "anchor", "publish", "--db", str(long_db), "--rpc", anvil.rpc_url, "--deploy"
    )
    assert code == 0, out
    short_db = tmp_path / "short.db"
    store = SQLiteStore(short_db)
    for block in SQLiteStore(long_db).blocks():
        if block.height <= 12:
            store.append(block)
    from medshare.ledger import audit

    store.put_meta(audit.CONFIG_KEY, SQLiteStore(long_db).get_meta(audit.CONFIG_KEY))
    store.close()
    code, report = _invoke(
        "anchor",
        "verify",
        "--db",
        str(short_db),
        "--rpc",
        anvil.rpc_url,
        "--contract",
        out["checkpoint_registry"],
    )
    assert code == 1 and report["missing"] == [20]


def test_publish_refuses_an_unverifiable_chain(anvil: AnvilProcess, tmp_path: Path) -> None:
    db = _node_db(tmp_path / "node.db", blocks=5)
    con = sqlite3.connect(db)
    (data,) = con.execute("SELECT data FROM blocks WHERE height = 3").fetchone()
    con.execute(
        "UPDATE blocks SET data = ? WHERE height = 3",
        (data.replace(b'"time_ms":', b'"time_ms":1'),),
    )
    con.commit()
    result = CliRunner().invoke(
        app, ["anchor", "publish", "--db", str(db), "--rpc", anvil.rpc_url, "--deploy"]
    )
    assert result.exit_code == 1
    assert "block 3" in result.output and "Traceback" not in result.output


def test_anchor_errors_are_clear(tmp_path: Path) -> None:
    db = _node_db(tmp_path / "node.db", blocks=2)
    result = CliRunner().invoke(
        app,
        ["anchor", "verify", "--db", str(db), "--rpc", "http://127.0.0.1:9", "--contract", "0x0"],
    )
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output


# --- a CometBFT node as the ledger (--node) -----------------------------------------------------

EVERY = 5  # the default (10) is exercised by the first test; 5 gives more checkpoints sooner
MIN_HEIGHT = 22  # two default checkpoints (10, 20) and the header after the second


def _rpc(url: str, method: str, **params: object) -> dict:
    reply = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=10
    ).json()
    assert "result" in reply, reply
    return reply["result"]


def _height(url: str) -> int:
    return int(_rpc(url, "status")["sync_info"]["latest_block_height"])


def _wait_height(url: str, height: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while _height(url) < height:
        assert time.monotonic() < deadline, f"the network did not reach height {height}"
        time.sleep(0.3)


@dataclass(frozen=True)
class Net:
    net: network.Network
    url: str


@pytest.fixture(scope="module")
def cometbft() -> Iterator[Net]:
    """A 4-node network (committee of 4) at height ≥ MIN_HEIGHT, in a short /tmp folder
    (Unix socket paths are short); always brought down."""
    try:
        install.binary()
    except install.EngineMissing as exc:
        pytest.fail(f"the CometBFT binary is required for the anchoring tests: {exc}")
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="msa-"))
    net = None
    try:
        net = network.up(folder / "n", nodes=4, committee=4)
        url = net.node(0).rpc
        _wait_height(url, MIN_HEIGHT)
        yield Net(net, url)
    finally:
        if net is not None:
            network.down(net)
        shutil.rmtree(folder, ignore_errors=True)


def _node_checkpoint(url: str, height: int) -> tuple[str, str]:
    """What the node itself says: (block id hash of h, app_hash of header h+1)."""
    block_hash = _rpc(url, "block", height=str(height))["block_id"]["hash"].lower()
    app_hash = _rpc(url, "block", height=str(height + 1))["block"]["header"]["app_hash"].lower()
    return block_hash, app_hash


def _node_validators(url: str, height: int) -> list[str]:
    members = _rpc(url, "validators", height=str(height), per_page="100")["validators"]
    return [anchor.validator_address(base64.b64decode(m["pub_key"]["value"])) for m in members]


Doctor = Callable[[str, dict, dict], None]  # (method, params, answer) → edits the answer


class _Proxy:
    """A JSON-RPC proxy to a real node; ``doctor`` may edit every answer (result or error)."""

    def __init__(self, upstream: str, doctor: Doctor) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reply = httpx.post(upstream, content=body, timeout=10).json()
                requests = json.loads(body)
                for request, answer in zip(
                    requests if isinstance(requests, list) else [requests],
                    reply if isinstance(reply, list) else [reply],
                    strict=False,
                ):
                    doctor(request["method"], request.get("params") or {}, answer)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@contextlib.contextmanager
def _proxy(upstream: str, doctor: Doctor) -> Iterator[str]:
    proxy = _Proxy(upstream, doctor)
    try:
        yield proxy.url
    finally:
        proxy.close()


def _at(method: str, height: int) -> Callable[[str, dict], bool]:
    return lambda m, params: m == method and int(params.get("height", -1)) == height


def _flip_hex(text: str) -> str:
    return ("0" if text[0] != "0" else "1") + text[1:]


@pytest.mark.slow
def test_publish_from_a_node_then_verify(anvil: AnvilProcess, cometbft: Net) -> None:
    url = cometbft.url
    code, out = _invoke("anchor", "publish", "--node", url, "--rpc", anvil.rpc_url, "--deploy")
    assert code == 0, out
    latest = _height(url)
    anchored = out["anchored_heights"]  # the default K = 10, up to the node's latest - 1
    assert anchored[:2] == [10, 20] and anchored == list(range(10, latest, 10))[: len(anchored)]
    assert out["verified_to"] == anchored[-1] + 1
    assert out["committee_epoch"] == 10 and out["committee_epochs"] == [10]  # one set so far
    assert len(out["validators"]) == 4 and {v["power"] for v in out["validators"]} == {10}
    on_chain = anchor.read_anchored(anvil.rpc_url, out["checkpoint_registry"])
    assert [cp.height for cp in on_chain] == anchored
    for cp in on_chain:  # (height, header hash of h, app_hash of header h+1)
        assert (cp.block_hash, cp.state_root) == _node_checkpoint(url, cp.height)
    registry = anchor.read_validator_registry(anvil.rpc_url, out["validator_registry"])
    assert registry is not None and registry.epoch == 10
    assert list(registry.addresses) == _node_validators(url, 10)
    assert [v["evm"] for v in out["validators"]] == _node_validators(url, anchored[-1])

    verify_args = ["anchor", "verify", "--node", url, "--rpc", anvil.rpc_url]
    verify_args += ["--contract", out["checkpoint_registry"]]
    code, report = _invoke(*verify_args, "--validators", out["validator_registry"])
    assert code == 0, report
    assert report["ok"] and report["checked"] == len(anchored) and report["first_mismatch"] is None

    # again, with --every 5: only heights above the latest anchored, the same committee
    _wait_height(url, anchored[-1] + 7)
    code, again = _invoke(
        "anchor", "publish", "--node", url, "--rpc", anvil.rpc_url, "--every", "5",
        "--contract", out["checkpoint_registry"], "--validators", out["validator_registry"],
    )  # fmt: skip
    assert code == 0, again
    assert again["anchored_heights"][0] == anchored[-1] + 5
    assert again["committee_epoch"] is None
    code, report = _invoke(*verify_args)
    assert code == 0 and report["checked"] == len(anchored) + len(again["anchored_heights"])


@pytest.fixture(scope="module")
def published(anvil: AnvilProcess, cometbft: Net) -> anchor.Deployment:
    """Checkpoints every 5 blocks of the network, up to MIN_HEIGHT at least."""
    anchorer = anchor.Anchorer(anvil.rpc_url)
    deployment = anchorer.deploy()
    result = checkpoints.publish(cometbft.url, anchorer, every=EVERY)
    assert result.anchored[:4] == [5, 10, 15, 20]
    return deployment


def _doctors(url: str) -> dict[str, tuple[Doctor, int, str]]:
    """name → (doctor, first mismatching height, words in that mismatch)."""

    def block_id(m: str, p: dict, a: dict) -> None:
        if _at("block", 10)(m, p):
            a["result"]["block_id"]["hash"] = _flip_hex(a["result"]["block_id"]["hash"])

    def other_block(m: str, p: dict, a: dict) -> None:  # consistently: id = header's hash
        if _at("block", 10)(m, p) or _at("block", 15)(m, p):
            header = a["result"]["block"]["header"]
            header["last_results_hash"] = _flip_hex(header["last_results_hash"])
            rehashed = v.header_hash(v.header_pb(header)).hex().upper()
            a["result"]["block_id"]["hash"] = rehashed

    def app_hash(m: str, p: dict, a: dict) -> None:
        if _at("block", 16)(m, p):
            header = a["result"]["block"]["header"]
            header["app_hash"] = _flip_hex(header["app_hash"])

    def forked_next(m: str, p: dict, a: dict) -> None:
        if _at("block", 21)(m, p):
            last = a["result"]["block"]["header"]["last_block_id"]
            last["hash"] = _flip_hex(last["hash"])

    def validator_swapped(m: str, p: dict, a: dict) -> None:
        if m == "validators" and "result" in a:
            a["result"]["validators"].reverse()

    def behind(m: str, p: dict, a: dict) -> None:  # a node that has nothing above 12
        if m == "block" and int(p.get("height", 0)) > 12:
            a.pop("result", None)
            a["error"] = {"code": -32603, "message": "Internal error", "data": "height too high"}

    return {
        "block id": (block_id, 10, "block id"),
        "other block": (other_block, 10, "block hash differs"),
        "app hash": (app_hash, 15, "state root differs"),
        "next header": (forked_next, 20, "does not follow"),
        "validator set": (validator_swapped, 5, "validator set registered"),
        "behind": (behind, -1, ""),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["block id", "other block", "app hash", "next header", "validator set", "behind"]
)
def test_verify_catches_a_doctored_node_at_the_height(
    anvil: AnvilProcess, cometbft: Net, published: anchor.Deployment, case: str
) -> None:
    doctor, height, words = _doctors(cometbft.url)[case]
    with _proxy(cometbft.url, doctor) as url:
        code, report = _invoke(
            "anchor", "verify", "--node", url, "--rpc", anvil.rpc_url,
            "--contract", published.checkpoint_registry,
            "--validators", published.validator_registry,
        )  # fmt: skip
    assert code == 1 and not report["ok"], report
    if case == "behind":
        assert report["first_mismatch"] is None and report["missing"][0] == 15
        assert report["checked"] == 2  # 5 and 10
        return
    assert report["first_mismatch"] == height, report
    assert report["mismatches"][0].startswith(f"height {height}: ")
    assert any(m.startswith(f"height {height}: ") and words in m for m in report["mismatches"])
    with _proxy(cometbft.url, lambda *_: None) as url:  # the proxy itself is faithful
        assert checkpoints.verify_node(
            url,
            anvil.rpc_url,
            published.checkpoint_registry,
            validator_registry=published.validator_registry,
        ).ok


@pytest.mark.slow
def test_publish_refuses_a_node_whose_chain_does_not_verify(
    anvil: AnvilProcess, cometbft: Net
) -> None:
    def commit_signature(m: str, p: dict, a: dict) -> None:  # the commit of 10 is in 11
        if _at("block", 11)(m, p):
            sig = next(
                s for s in a["result"]["block"]["last_commit"]["signatures"] if s["signature"]
            )
            raw = bytearray(base64.b64decode(sig["signature"]))
            raw[3] ^= 1
            sig["signature"] = base64.b64encode(bytes(raw)).decode()

    signer = anchor.Anchorer(anvil.rpc_url)
    deployment = signer.deploy()
    with _proxy(cometbft.url, commit_signature) as url:
        result = CliRunner().invoke(
            app,
            [
                "anchor", "publish", "--node", url, "--rpc", anvil.rpc_url,
                "--contract", deployment.checkpoint_registry,
                "--validators", deployment.validator_registry,
            ],
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "fails at height 10" in result.output and "commit signature" in result.output
    assert "Traceback" not in result.output
    assert signer.checkpoints() == [] and signer.validators().addresses == ()


@pytest.mark.slow
def test_publish_refuses_a_node_that_disagrees_with_the_anchor(
    anvil: AnvilProcess, cometbft: Net
) -> None:
    signer = anchor.Anchorer(anvil.rpc_url)
    signer.deploy()
    real_hash, real_root = _node_checkpoint(cometbft.url, 5)
    signer.anchor_checkpoint(5, real_hash, _flip_hex(real_root))  # someone else's history
    with pytest.raises(checkpoints.Unverified, match="height 5: the node's checkpoint") as info:
        checkpoints.publish(cometbft.url, signer, every=EVERY)
    assert info.value.height == 5
    assert [cp.height for cp in signer.checkpoints()] == [5]


def test_node_option_errors_are_clear(anvil: AnvilProcess, tmp_path: Path) -> None:
    runner = CliRunner()
    rpc = ["--rpc", anvil.rpc_url]
    result = runner.invoke(app, ["anchor", "publish", *rpc, "--deploy"])
    assert result.exit_code == 2 and "exactly one of --node and --db" in result.output
    db = _node_db(tmp_path / "node.db", blocks=2)
    both = ["--node", "http://127.0.0.1:9", "--db", str(db)]
    result = runner.invoke(app, ["anchor", "verify", *rpc, *both, "--contract", "0x0"])
    assert result.exit_code == 2 and "exactly one" in result.output
    result = runner.invoke(app, ["anchor", "publish", *rpc, "--db", str(db), "--every", "5"])
    assert result.exit_code == 2 and "--every goes with --node" in result.output
    result = runner.invoke(
        app, ["anchor", "publish", *rpc, "--node", "http://127.0.0.1:9", "--deploy"]
    )
    assert result.exit_code == 1 and "cannot read the node" in result.output
    assert "Traceback" not in result.output
