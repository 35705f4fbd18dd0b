"""What every node of a consortium agrees on before block 1 (CometBFT's ``app_state``).

The consortium's nodes are listed with their CometBFT validator keys (Ed25519): a node's
validator key is also its identity on the ledger (it signs the transactions a hospital
node sends), so the key CometBFT reports in ``decided_last_commit`` and ``misbehavior``
is the key reputation is kept for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from medshare.crypto import signing
from medshare.ledger import election
from medshare.ledger.types import CHAIN_ID_BYTES, LedgerFormatError, canonical, digest_hex

# Voting power CometBFT gives every committee member (equal power: the election already
# weighted who sits in the committee; power inside it is one member, one vote).
MEMBER_POWER = 10
MAX_COMMITTEE = 150  # far above any useful committee; bounds validator updates per block


@dataclass(frozen=True)
class Genesis:
    chain_name: str
    nodes: tuple[election.Validator, ...]
    epoch_length: int = 100
    committee_size: int = 4
    policy: election.ReputationPolicy = field(default_factory=election.ReputationPolicy)
    # When this chain was launched (CometBFT's genesis time): part of the chain id, so a
    # consortium relaunched with the same keys never accepts the old chain's transactions.
    launched: str = ""

    def __post_init__(self) -> None:
        if not self.chain_name or not isinstance(self.chain_name, str):
            raise ValueError("chain_name must be a non-empty string")
        if not self.nodes:
            raise ValueError("a consortium needs at least one node")
        election.state_json(self.nodes)  # unique keys
        for node in self.nodes:
            if not signing.is_sound_public_key(node.public):
                raise ValueError(f"node {node.name}: not a sound Ed25519 key")
        if not isinstance(self.epoch_length, int) or self.epoch_length < 1:
            raise ValueError("epoch_length must be an integer ≥ 1")
        if (
            not isinstance(self.committee_size, int)
            or not 1 <= self.committee_size <= MAX_COMMITTEE
        ):
            raise ValueError(f"committee_size must be in 1..{MAX_COMMITTEE}")

    @cached_property
    def chain_id(self) -> str:
        """What every transaction signs to name its chain: 16 bytes of the genesis digest."""
        return digest_hex(canonical(self.to_json()))[: 2 * CHAIN_ID_BYTES]

    @cached_property
    def seed(self) -> bytes:
        """Seeds the first committee's election."""
        return bytes.fromhex(digest_hex(b"medshare/genesis-seed/v1" + canonical(self.to_json())))

    def first_committee(self) -> tuple[bytes, ...]:
        return election.elect(self.nodes, self.seed, self.committee_size)

    def to_json(self) -> dict:
        policy = self.policy
        return {
            "chain": self.chain_name,
            "nodes": election.state_json(self.nodes),
            "epoch_length": self.epoch_length,
            "committee_size": self.committee_size,
            "reputation": {
                "initial": policy.initial,
                "proposal_bonus": policy.proposal_bonus,
                "vote_bonus": policy.vote_bonus,
                "missed_penalty": policy.missed_penalty,
                "cap": policy.cap,
                "floor": policy.floor,
            },
            **({"launched": self.launched} if self.launched else {}),
        }

    @classmethod
    def from_json(cls, doc: object) -> Genesis:
        if not isinstance(doc, Mapping):
            raise LedgerFormatError("genesis app_state must be an object")
        try:
            rep: Mapping[str, Any] = doc.get("reputation", {})
            return cls(
                chain_name=doc["chain"],
                nodes=election.from_state_json(doc["nodes"]),
                epoch_length=doc["epoch_length"],
                committee_size=doc["committee_size"],
                policy=election.ReputationPolicy(**rep),
                launched=str(doc.get("launched", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerFormatError(f"malformed genesis app_state: {exc}") from None
