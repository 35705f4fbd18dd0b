"""The replicated state of the ledger application and its app hash.

The state is small and per-key: per-sender nonces (anti-replay), the identities nodes
registered, and the consortium's nodes with their reputation and the committee the app
elected. Each block's changes are collected in a :class:`BlockChanges`; the app hash after
block h is ``SHA-256(domain ‖ app_hash(h-1) ‖ h ‖ canonical(changes of h))``, a hash
chain over every state change in order. Two nodes that applied the same blocks and agree
on every change have the same hash; the first block where they differ changes the hash
there, and CometBFT halts the node whose result disagrees with the committed one (the
next block's header carries the app hash 2/3 of the committee signed). It costs O(changes)
per block instead of O(state), which keeps ``FinalizeBlock`` flat as the number of
senders grows; ``medshare ledger verify`` recomputes it by replaying from genesis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from medshare.ledger import election
from medshare.ledger.app.genesis import Genesis
from medshare.ledger.types import canonical

APP_HASH_DOMAIN = b"medshare/app-hash/v1"
GENESIS_APP_HASH_DOMAIN = b"medshare/app-hash/genesis/v1"


@dataclass
class BlockChanges:
    """What one block changed, keyed so that the last write wins."""

    nonces: dict[str, int] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    validators: bool = False
    committee: bool = False
    candidates: bool = False
    # Reputation credited from a commit: persisted with the block, hashed at the epoch's
    # end (``rules.finalize``) unless ``validators`` is set.
    reputation: bool = False

    @property
    def empty(self) -> bool:
        """Nothing the app hash commits to changed (pending reputation aside)."""
        return not (
            self.nonces
            or self.identities
            or self.published
            or self.validators
            or self.committee
            or self.candidates
        )

    def canonical(self, state: LedgerState) -> bytes:
        doc: dict = {"nonces": self.nonces, "identities": self.identities}
        if self.published:  # absent when empty: blocks without publications hash as before
            doc["published"] = self.published
        if self.validators:
            doc["validators"] = election.state_json(state.validators)
        if self.committee:
            doc["committee"] = [m.hex() for m in state.committee]
        if self.candidates:
            doc["candidates"] = state.candidates_json()
        return canonical(doc)


@dataclass
class LedgerState:
    """The state after block ``height``; changed only by :mod:`medshare.ledger.app.rules`."""

    genesis: Genesis
    height: int
    app_hash: bytes
    validators: tuple[election.Validator, ...]
    committee: tuple[bytes, ...]
    nonces: dict[str, int]
    identities: dict[str, str]
    # Node registrations pending approval by more than 2/3 of the active nodes:
    # "<public key hex>/<name>" -> (opening node's key hex, approving nodes' keys hex,
    # the height it was opened at).
    candidates: dict[str, tuple[str, frozenset[str], int]] = field(default_factory=dict)
    # Public keys their owners published (``publish_key``): name -> SHA-256 hex of the key,
    # e.g. ``authority/H001/abe`` or ``patient/P1/block/0``. Written once, never replaced.
    published: dict[str, str] = field(default_factory=dict)
    # identity name -> its enrolled key (hex): the inverse of ``identities``, built on
    # first use (not part of the state's identity, derived from it).
    _holders: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def initial(cls, genesis: Genesis) -> LedgerState:
        """The state before block 1: the genesis nodes and the first elected committee."""
        app_hash = hashlib.sha256(GENESIS_APP_HASH_DOMAIN + canonical(genesis.to_json())).digest()
        return cls(genesis, 0, app_hash, genesis.nodes, genesis.first_committee(), {}, {})

    def candidates_json(self) -> dict:
        return {
            key: {"opener": opener, "approvals": sorted(approvals), "opened": opened}
            for key, (opener, approvals, opened) in sorted(self.candidates.items())
        }

    @staticmethod
    def candidates_from_json(doc: object) -> dict[str, tuple[str, frozenset[str], int]]:
        if not isinstance(doc, dict):
            raise ValueError("candidates must be an object")
        return {
            str(key): (
                str(entry["opener"]),
                frozenset(map(str, entry["approvals"])),
                int(entry.get("opened", 0)),
            )
            for key, entry in doc.items()
        }

    def holder(self, identity: str) -> str | None:
        """The key (hex) enrolled under ``identity``, if any."""
        if self._holders is None:
            self._holders = {name: key for key, name in self.identities.items()}
        return self._holders.get(identity)

    def enrol(self, key: str, identity: str) -> None:
        """Bind ``identity`` to ``key`` (the rules checked both are new)."""
        self.identities[key] = identity
        if self._holders is not None:
            self._holders[identity] = key

    def next_nonce(self, sender: bytes) -> int:
        return self.nonces.get(sender.hex(), 0)

    def node(self, public: bytes) -> election.Validator | None:
        return next((v for v in self.validators if v.public == public), None)

    def clone(self) -> LedgerState:
        copy = LedgerState(
            self.genesis,
            self.height,
            self.app_hash,
            self.validators,
            self.committee,
            dict(self.nonces),
            dict(self.identities),
            dict(self.candidates),
            dict(self.published),
        )
        if self._holders is not None:
            copy._holders = dict(self._holders)
        return copy

    def seal(self, height: int, changes: BlockChanges) -> bytes:
        """Advance to ``height`` and chain the block's changes into the app hash; a block
        that changed nothing keeps the app hash, so CometBFT need not make another block
        at once to commit it (the chain idles at ``create_empty_blocks_interval``)."""
        self.height = height
        if changes.empty:
            return self.app_hash
        self.app_hash = hashlib.sha256(
            APP_HASH_DOMAIN + self.app_hash + height.to_bytes(8, "big") + changes.canonical(self)
        ).digest()
        return self.app_hash

    def summary(self) -> dict:
        """What ``net status`` and auditors read: height, committee, reputations."""
        names = {v.public: v.name for v in self.validators}
        return {
            "chain_id": self.genesis.chain_id,
            "height": self.height,
            "app_hash": self.app_hash.hex(),
            "epoch_length": self.genesis.epoch_length,
            "committee": [{"public": m.hex(), "name": names.get(m, "?")} for m in self.committee],
            "nodes": election.state_json(self.validators),
            "identities": len(self.identities),
            "published_keys": len(self.published),
        }
