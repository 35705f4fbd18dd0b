"""Inclusion proofs of transactions on CometBFT: the merkle path, the header, the commit."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.crypto.signing import SigningKey
from medshare.ledger.comet_port import CometLedger
from medshare.ledger.cometbft import home, install, network, proofs
from medshare.ledger.cometbft import verify as v
from medshare.ledger.cometbft.client import LedgerClient
from medshare.ledger.types import Tx, TxKind


def _path(items: list[bytes], index: int) -> list[bytes]:
    """Aunts of leaf ``index`` (CometBFT's ``ProofsFromByteSlices``), written independently."""
    if len(items) == 1:
        return []
    split = 1 << ((len(items) - 1).bit_length() - 1)
    if index < split:
        return [*_path(items[:split], index), v.merkle_root(items[split:])]
    return [*_path(items[split:], index - split), v.merkle_root(items[:split])]


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7, 8, 9, 33])
def test_every_leaf_proves_to_the_root(total: int) -> None:
    items = [hashlib.sha256(b"tx %d" % i).digest() for i in range(total)]
    root = v.merkle_root(items)
    for i in range(total):
        leaf = v.leaf_hash(items[i])
        assert proofs.root_from_aunts(i, total, leaf, _path(items, i)) == root
        if total > 1:
            other = v.leaf_hash(items[(i + 1) % total])
            assert proofs.root_from_aunts(i, total, other, _path(items, i)) != root


@pytest.mark.parametrize(("index", "total", "aunts"), [(3, 3, 2), (-1, 2, 1), (0, 1, 1), (0, 4, 0)])
def test_malformed_paths_are_refused(index: int, total: int, aunts: int) -> None:
    with pytest.raises(proofs.ProofError):
        proofs.root_from_aunts(index, total, b"\0" * 32, [b"\1" * 32] * aunts)


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[network.Network, str]]:
    try:
        install.binary()
    except install.EngineMissing as exc:
        pytest.fail(f"CometBFT binary missing: {exc}")
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="msp-"))
    net = network.up(folder / "net", nodes=4, committee=4, epoch=1000)
    try:
        node_key = SigningKey(home.validator_seed(net.node_dir(0)))
        with LedgerClient([n.rpc for n in net.nodes]) as client:
            nonce = client.next_nonce(node_key.public)
            txs = [
                Tx.create(
                    TxKind.ANCHOR_RECORD,
                    {"record": f"r{i}", "patient": "p", "dept": "03", "digest": "ab" * 32},
                    nonce + i,
                    node_key,
                    chain=net.chain_id,
                )
                for i in range(5)
            ]
            committed = client.submit(txs)
        yield net, committed[3].txid
    finally:
        network.down(net)
        shutil.rmtree(folder, ignore_errors=True)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


@pytest.mark.slow
def test_a_proof_checks_offline_and_against_the_chain(chain, tmp_path: Path) -> None:
    net, txid = chain
    code, out = _cli("ledger", "prove", "--rpc", net.nodes[1].rpc, "--tx", txid)
    assert code == 0, out
    path = tmp_path / "proof.json"
    path.write_text(out)
    code, out = _cli("ledger", "check-proof", str(path))
    assert code == 0, out
    offline = json.loads(out)
    assert offline["ok"] and offline["txid"] == txid and offline["committee"] == "taken on trust"
    assert offline["signatures_checked"] >= 3
    code, out = _cli("ledger", "check-proof", str(path), "--rpc", net.nodes[2].rpc)
    assert code == 0, out
    assert json.loads(out)["committee"] == "checked against the chain"


def _signed_slot(doc: dict) -> dict:
    """The first commit slot that carries a signature (a validator may be absent)."""
    return next(sig for sig in doc["commit"]["signatures"] if sig.get("signature"))


@pytest.mark.slow
def test_tampered_proofs_fail_at_the_broken_link(chain) -> None:
    net, txid = chain
    good = proofs.make(net.nodes[0].rpc, txid)
    proofs.check(good)

    def tampered(edit) -> dict:
        doc = copy.deepcopy(good)
        edit(doc)
        return doc

    def flip_b64(text: str) -> str:
        raw = bytearray(v.b64_bytes(text))
        raw[0] ^= 1
        import base64

        return base64.b64encode(bytes(raw)).decode()

    other_key = SigningKey.generate().public
    cases = {
        "tx": lambda d: d.update(tx=flip_b64(d["tx"])),
        "aunt": lambda d: d["proof"]["aunts"].__setitem__(0, flip_b64(d["proof"]["aunts"][0])),
        "data_hash": lambda d: d["header"].update(data_hash="00" * 32),
        "signature": lambda d: _signed_slot(d).update(
            signature=flip_b64(_signed_slot(d)["signature"])
        ),
        "validator": lambda d: d["validators"][0]["pub_key"].update(
            value=__import__("base64").b64encode(other_key).decode()
        ),
        "height": lambda d: d.update(height=d["height"] + 1),
        "format": lambda d: d.update(format="something else"),
    }
    for name, edit in cases.items():
        with pytest.raises(proofs.ProofError):
            proofs.check(tampered(edit))
        assert name
    # Dropping signatures below 2/3 of the power fails too.
    doc = tampered(lambda d: None)
    for sig in doc["commit"]["signatures"][:2]:
        sig.update(
            block_id_flag=1, validator_address="", timestamp="0001-01-01T00:00:00Z", signature=None
        )
    with pytest.raises(proofs.ProofError):
        proofs.check(doc)


@pytest.mark.slow
def test_a_foreign_committee_is_caught_against_the_chain(chain) -> None:
    net, txid = chain
    good = proofs.make(net.nodes[0].rpc, txid)
    trusted, chain_id = proofs.trusted_set(net.nodes[0].rpc, good["height"])
    proofs.check(good, trusted, chain_id)
    with pytest.raises(proofs.ProofError):
        proofs.check(good, trusted[1:], chain_id)
    with pytest.raises(proofs.ProofError):
        proofs.check(good, trusted, "another-chain")


def test_cli_refuses_bad_input(tmp_path: Path) -> None:
    assert _cli("ledger", "prove", "--tx", "ab")[0] == 2  # neither --db nor --rpc
    junk = tmp_path / "p.json"
    junk.write_text('{"format": "medshare-cometbft-tx-proof", "version": 1}')
    code, _ = _cli("ledger", "check-proof", str(junk))
    assert code == 1


def test_reading_only_empty_heights_asks_nothing_of_the_node(chain) -> None:
    """CometBFT answers an empty JSON-RPC batch with an empty body (not JSON): the client
    must not send one. Found when faster blocks left a scan with only empty heights, and
    every node looked unreachable to the demo's trace step."""
    net, _ = chain
    raw = httpx.post(net.nodes[0].rpc, json=[], timeout=5.0)
    assert raw.content == b""  # what made every node look down
    with LedgerClient([n.rpc for n in net.nodes]) as client:
        assert client.batch([]) == []
        top = client.height()
    ledger = CometLedger.open(net.directory, start=False)
    try:
        ledger._scan_blocks(top + 1, top)  # nothing to read
        end = ledger.height()
        ledger._scanned = end - 1
        # The last height has no transactions (the fixture's are long committed).
        assert list(ledger.txs(start_height=end)) == []
    finally:
        ledger.close()
