"""Fixtures for the EVM anchoring tests: one real anvil node per test module.

anvil comes from ``npm ci`` (package.json pins @foundry-rs/anvil). If it is missing the
tests fail with a message saying so; they are never skipped and never mocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account import Account
from web3 import Web3

from medshare.ledger.anchor import Anchorer
from medshare.ledger.anvil import AnvilError, AnvilProcess


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    """A fresh anvil on 127.0.0.1 for the module; stopped (no orphan) at module end."""
    try:
        node = AnvilProcess()
        node.start()
    except AnvilError as exc:
        pytest.fail(f"anvil is required for the anchoring tests and could not start: {exc}")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def anchorer(anvil: AnvilProcess) -> Anchorer:
    """Freshly deployed contracts, owned by anvil's first (unlocked) dev account, so each
    test starts from empty registries whatever ran before it on the same node."""
    anchorer = Anchorer(anvil.rpc_url)
    anchorer.deploy()
    return anchorer


@pytest.fixture
def funded_key(anvil: AnvilProcess) -> str:
    """A new random private key whose account anvil has funded with 100 ETH."""
    account = Account.create()
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    w3.provider.make_request("anvil_setBalance", [account.address, hex(100 * 10**18)])
    return account.key.hex()
