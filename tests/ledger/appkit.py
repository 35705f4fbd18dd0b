"""Shared fixtures of the ledger application's tests: fixed node keys and a genesis."""

from __future__ import annotations

from medshare.crypto.signing import SigningKey
from medshare.ledger import election
from medshare.ledger.app.genesis import Genesis

NODE_KEYS = tuple(SigningKey(bytes([i + 1]) * 32) for i in range(6))


def make_genesis(nodes: int = 6, committee: int = 4, epoch: int = 5) -> Genesis:
    return Genesis(
        "test",
        tuple(
            election.Validator(k.public, f"node-{i}", 1000) for i, k in enumerate(NODE_KEYS[:nodes])
        ),
        epoch_length=epoch,
        committee_size=committee,
    )
