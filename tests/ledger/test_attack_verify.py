"""Adversarial review of ``medshare ledger verify --rpc`` (``medshare.ledger.cometbft.verify``):
what the verifier takes on trust. In-process; the real-process exploit (a node of another
chain that verifies "ok" under the victim's chain id) is in ``test_attack_net.py``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from appkit import make_genesis

from medshare.ledger.app.genesis import Genesis
from medshare.ledger.cometbft import home as node_home
from medshare.ledger.cometbft import verify as v


def _genesis_doc(tmp_path: Path, genesis: Genesis) -> dict:
    home = tmp_path / genesis.chain_id
    (home / "config").mkdir(parents=True)
    node_home.write_genesis(home, genesis, "2025-01-01T00:00:00.000000Z")
    return json.loads((home / "config" / "genesis.json").read_text())


def test_attack_verifier_binds_cometbft_chain_id_to_the_app_state(tmp_path: Path) -> None:
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c: ``ChainVerifier`` checks
    ``chain_id == cometbft_chain_id(app_genesis)``). The attack: ``ChainVerifier`` took
    ``genesis["chain_id"]`` (the string every
    CometBFT vote signs, and the ``chain_id`` the report prints) and ``app_state`` (which
    defines ``Genesis.chain_id``, the id every transaction signs, and the first committee)
    independently. A node of an attacker's own chain whose genesis says
    ``"chain_id": "medshare-<victim's id>"`` verifies as "ok" with the victim's chain id in
    the report — every signature checks, against the attacker's keys.

    Fix: refuse a genesis whose ``chain_id`` is not ``home.cometbft_chain_id(app_genesis)``
    (and see the next test: the genesis itself must come from the user, not the node)."""
    victim = make_genesis()
    attacker = make_genesis(epoch=11)
    doc = _genesis_doc(tmp_path, attacker)
    doc["chain_id"] = node_home.cometbft_chain_id(victim)
    try:
        verifier = v.ChainVerifier(doc)
    except ValueError:
        return
    raise AssertionError(
        f"a genesis for app chain {attacker.chain_id} was accepted as {verifier.chain_id}"
    )


def test_attack_verify_node_takes_a_trusted_genesis_from_the_caller() -> None:
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c: ``verify_node(genesis=…)``,
    ``ledger verify --rpc URL --genesis FILE``; without it the report says the genesis was
    "taken from the node"). The attack: ``verify_node(url)`` read the genesis — the one
    thing the module docstring says is trusted ("trusting only the genesis") — from the
    very node it is
    verifying (``NodeSource.genesis``), and neither it nor ``medshare ledger verify --rpc``
    accepts a genesis, genesis hash or chain id from the user. A malicious or compromised
    node serves a self-consistent chain of its own making (own genesis, own validator keys,
    any transactions) and the verdict is ``ok``; nothing in the report ties it to the
    consortium's chain (the chain id can be forged too, previous test).

    Fix: ``verify_node(url, *, genesis)`` / ``ledger verify --rpc URL --genesis FILE`` (or
    ``--genesis-sha256``): compare the served genesis byte-for-byte (or by hash) with the
    trusted one, or use the trusted one and only compare."""
    parameters = inspect.signature(v.verify_node).parameters
    trusted = [p for p in parameters if "genesis" in p or "chain" in p]
    assert trusted, f"verify_node{inspect.signature(v.verify_node)} has no trust anchor parameter"


def test_attack_verify_node_refuses_a_genesis_other_than_the_trusted_one(tmp_path: Path) -> None:
    """RESISTED (769a03c): with a trusted genesis, a node serving any other genesis (here:
    the attacker's, with a chain id that is consistent with its own app state) is refused
    before a single block is read."""

    class Source:
        def __init__(self, url: str, **_: object) -> None:
            pass

        def genesis(self) -> dict:
            return _genesis_doc(tmp_path, make_genesis(epoch=11))

        def close(self) -> None:
            pass

        def latest(self) -> int:
            raise AssertionError("no block may be read from a node with another genesis")

    trusted = _genesis_doc(tmp_path / "t", make_genesis())
    original = v.NodeSource
    v.NodeSource = Source
    try:
        try:
            report = v.verify_node("http://attacker", genesis=trusted)
        except ValueError:
            return
    finally:
        v.NodeSource = original
    raise AssertionError(f"verified against another genesis: {report.as_dict()}")
