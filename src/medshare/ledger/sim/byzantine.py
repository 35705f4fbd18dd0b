"""Byzantine behaviours for the simulated network: rewrite what an honest core sends.

The core inside a Byzantine node stays honest (real chain rules, real WAL); only its
outgoing proposals and votes are rewritten, as in the in-process cluster
(:class:`~medshare.ledger.node.Behaviour`). The simulator has no relay, so a
behaviour that sends two versions splits the recipients: within the committee members
and within the other nodes, even positions get the original and odd positions the twin.
Honest nodes then meet the second version only in a commit certificate (or a proof of
lock), where the runner's certificate check turns it into evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from medshare.crypto import signing
from medshare.ledger import chain
from medshare.ledger.consensus import Consensus, Proposal
from medshare.ledger.node import Behaviour
from medshare.ledger.types import Block, Tx, TxKind, Vote, digest_hex

__all__ = ["Adversary", "Behaviour"]

Message = Proposal | Vote


class Adversary:
    """One Byzantine node's rewriting strategy (stateful: twins, tampering count)."""

    def __init__(self, behaviour: Behaviour, key: signing.SigningKey) -> None:
        self.behaviour = Behaviour(behaviour)
        self._key = key
        self._twins: dict[str, str] = {}  # equivocator: block hash -> twin block hash
        self._tampered = 0

    def outgoing(
        self, core: Consensus, msg: Message, members: Sequence[int], others: Sequence[int]
    ) -> list[tuple[int, Message]]:
        """(destination, message) pairs, members first, instead of ``msg`` to everyone."""
        everyone = [(d, msg) for d in (*members, *others)]
        kind = self.behaviour
        if kind is Behaviour.SILENT:
            return [] if isinstance(msg, Vote) else everyone
        if kind is Behaviour.DOUBLE_VOTER and isinstance(msg, Vote):
            other = None if msg.block_hash is not None else digest_hex(msg.signature)
            twin = Vote.create(msg.kind, msg.height, msg.round, other, self._key)
            return _split(msg, twin, members, others)
        if kind is Behaviour.EQUIVOCATING_PROPOSER:
            if isinstance(msg, Proposal):
                header = msg.block.header
                block = Block(
                    replace(header, timestamp_ms=header.timestamp_ms + 1),
                    msg.block.txs,
                    msg.block.last_commit,
                )
                self._twins[msg.block.hash] = block.hash
                twin_p = Proposal.create(
                    msg.height, msg.round, block, msg.pol_round, self._key, msg.pol_votes
                )
                return _split(msg, twin_p, members, others)
            if msg.block_hash in self._twins:
                twin_v = Vote.create(
                    msg.kind, msg.height, msg.round, self._twins[msg.block_hash], self._key
                )
                return _split(msg, twin_v, members, others)
        if kind is Behaviour.INVALID_BLOCK and isinstance(msg, Proposal):
            bad = self._invalid_block(core, msg)
            forged = Proposal.create(msg.height, msg.round, bad, msg.pol_round, self._key)
            return [(d, forged) for d in (*members, *others)]
        return everyone

    def _invalid_block(self, core: Consensus, msg: Proposal) -> Block:
        """Alternately a block with a wrong state root and one carrying a forged tx (roots
        consistent, so only the signature check catches it)."""
        block, state = msg.block, core.state
        self._tampered += 1
        if self._tampered % 2 == 1 or state.height + 1 != msg.height:
            return Block(replace(block.header, state_root="ff" * 32), block.txs, block.last_commit)
        public = self._key.public
        own = sum(1 for tx in block.txs if tx.sender == public)
        nonce = state.next_nonce(public) + own
        body = {"record": "forged", "patient": "p", "dept": "0000", "digest": "00" * 32}
        forged = Tx(TxKind.ANCHOR_RECORD, public, nonce, body, bytes(64))
        bad, _ = chain.build_block(
            state,
            (*block.txs, forged),
            public,
            block.header.timestamp_ms,
            block.last_commit,
            verified=lambda _tx: True,
        )
        return bad


def _split(
    first: Message, second: Message, members: Sequence[int], others: Sequence[int]
) -> list[tuple[int, Message]]:
    out: list[tuple[int, Message]] = []
    for group in (members, others):
        out += [(d, first if k % 2 == 0 else second) for k, d in enumerate(group)]
    return out
