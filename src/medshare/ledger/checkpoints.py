"""Glue between a node's store of the retired engine (``medshare anchor … --db``) and
the public anchor: which checkpoints to publish, and what the local chain says at each
anchored height. A CometBFT chain is anchored by :mod:`medshare.ledger.cometbft.checkpoints`
(``--node``)."""

from __future__ import annotations

from dataclasses import dataclass

from medshare.ledger import anchor, audit, election
from medshare.ledger.store import BlockStore


def local_rows(store: BlockStore) -> list[tuple[int, str, str]]:
    """``(height, block hash, state root)`` of every stored block."""
    return [(b.height, b.hash, b.header.state_root) for b in store.blocks()]


@dataclass(frozen=True)
class PublishResult:
    anchored: list[int]
    committee_epoch: int | None


def publish(store: BlockStore, anchorer: anchor.Anchorer) -> PublishResult:
    """Anchor every due checkpoint above the latest anchored one, and the current committee.

    The chain is re-verified from genesis first: a node never anchors blocks it cannot
    itself verify. ``anchor_every`` comes from the chain configuration.
    """
    state = audit.replay(store)
    latest = anchorer.latest()
    due = anchor.checkpoints_due(
        local_rows(store),
        state.config.anchor_every,
        after=None if latest is None else latest.height,
    )
    for height, block_hash, state_root in due:
        anchorer.anchor_checkpoint(height, block_hash, state_root)
    epoch = election.epoch_of(state.height, state.config.epoch_length)
    published = anchorer.validators()
    changed = None
    if published.epoch < epoch or not published.addresses:
        anchorer.set_validators(epoch, list(state.committee))
        changed = epoch
    return PublishResult([row[0] for row in due], changed)
