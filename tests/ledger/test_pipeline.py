"""Overlapping heights (ledger/pipeline.py), driven event by event: real Ed25519, real
chain rules, one node at a time, with every other member's messages made by hand."""

from __future__ import annotations

import dataclasses
import json

import pytest

from medshare.crypto.signing import SigningKey
from medshare.ledger import chain, election
from medshare.ledger.consensus import (
    WAL_KEY,
    Broadcast,
    Commit,
    Committed,
    Consensus,
    Persist,
    Proposal,
    RequestBlocks,
    RequestTxs,
    Start,
    Step,
    Timeout,
    TxsAvailable,
    VoteReceived,
    WalCorrupted,
)
from medshare.ledger.pipeline import MAX_LOGGED_PER_SIGNER, PipelinedConsensus
from medshare.ledger.types import Block, CommitCertificate, Tx, TxKind, Vote, VoteKind

PV, PC = VoteKind.PREVOTE, VoteKind.PRECOMMIT
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
BY_PUBLIC = {k.public: k for k in KEYS}
CLIENT = SigningKey(b"\x42" * 32)


def genesis(lag: int = 4, run: int = 8, epoch_length: int = 100) -> chain.ChainState:
    validators = tuple(election.Validator(k.public, f"n{i}", 1000) for i, k in enumerate(KEYS))
    config = chain.ChainConfig(
        "pipeline",
        validators,
        epoch_length=epoch_length,
        committee_size=4,
        certificate_lag=lag,
        proposer_run=run,
    )
    return chain.genesis(config)[1]


def proposer(state: chain.ChainState, height: int, round_: int = 0) -> SigningKey:
    run = state.config.proposer_run
    return BY_PUBLIC[election.proposer(state.committee, height, round_, run)]


def others(state: chain.ChainState, *skip: SigningKey) -> list[SigningKey]:
    return [BY_PUBLIC[m] for m in state.committee if BY_PUBLIC[m] not in skip]


def tx(state: chain.ChainState, nonce: int) -> Tx:
    body = {"record": f"r{nonce}", "patient": "p", "dept": "0304", "digest": "ab" * 32}
    return Tx.create(TxKind.ANCHOR_RECORD, body, nonce, CLIENT, chain=state.config.chain_id)


def child(parent: chain.ChainState, key: SigningKey, nonce: int, t: int = 1000) -> Block:
    """A block on ``parent`` carrying client tx ``nonce`` (lag > height: no last commit)."""
    return chain.build_block(parent, [tx(parent, nonce)], key.public, t, None)[0]


def after(parent: chain.ChainState, block: Block) -> chain.ChainState:
    return chain.apply_block(parent, block, require_certificate=False)


def proposal(state: chain.ChainState, block: Block, round_: int = 0) -> Proposal:
    key = proposer(state, block.height, round_)
    return Proposal.create(block.height, round_, block, -1, key, chain=state.config.chain_id)


def votes(state, kind: VoteKind, block: Block, voters, round_: int = 0) -> list[VoteReceived]:
    chain_id = state.config.chain_id
    return [
        VoteReceived(Vote.create(kind, block.height, round_, block.hash, k, chain=chain_id))
        for k in voters
    ]


def certified(state, block: Block, voters, round_: int = 0) -> Block:
    return block.with_certificate(
        CommitCertificate.from_votes([e.vote for e in votes(state, PC, block, voters, round_)])
    )


def feed(node: PipelinedConsensus, events) -> list:
    acts: list = []
    for event in events:
        acts += node.step(event)
    return acts


def own_votes(acts) -> list[tuple[int, int, VoteKind, str | None]]:
    return [
        (a.message.height, a.message.round, a.message.kind, a.message.block_hash)
        for a in acts
        if isinstance(a, Broadcast) and isinstance(a.message, Vote)
    ]


def commits(acts) -> list[Block]:
    return [a.block for a in acts if isinstance(a, Commit)]


@pytest.fixture
def two_blocks():
    """Genesis, the leader's blocks P1 (height 1) and P2 (its child), and a follower."""
    state = genesis()
    leader = proposer(state, 1)
    p1 = child(state, leader, 0)
    p2 = child(after(state, p1), leader, 1, t=2000)
    follower = others(state, leader)[0]
    return state, leader, follower, p1, p2


# --- overlap ------------------------------------------------------------------------------------


def test_a_leader_proposes_a_window_of_heights_before_the_first_commits() -> None:
    state = genesis(lag=4)
    leader = proposer(state, 1)
    node = PipelinedConsensus(leader, state)
    acts = node.step(Start())
    proposed = []
    for nonce in range(6):
        requests = [a for a in acts if isinstance(a, RequestTxs)]
        if not requests:
            break
        req = requests[0]
        base = node.state_for(req.height)
        assert base.next_nonce(CLIENT.public) == nonce  # builds on the block in flight
        acts = node.step(TxsAvailable(req.height, req.round, (tx(state, nonce),), 1000 + nonce))
        proposed += [a.message for a in acts if isinstance(a, Broadcast)]
    heights = [m.height for m in proposed if isinstance(m, Proposal)]
    assert heights == [1, 2, 3, 4]  # the window (certificate lag 4), nothing committed
    assert node.state.height == 0 and node.open_heights == (1, 2, 3, 4)
    blocks = [m.block for m in proposed if isinstance(m, Proposal)]
    assert [b.header.prev_hash for b in blocks[1:]] == [b.hash for b in blocks[:-1]]
    assert [(h, k) for h, _, k, _ in own_votes(acts)] == [(4, PV)]


def test_the_first_height_of_an_epoch_waits_for_the_last_one_to_commit() -> None:
    state = genesis(lag=4, epoch_length=3)
    leader = proposer(state, 1)
    node = PipelinedConsensus(leader, state)
    acts = node.step(Start())
    for nonce in range(4):
        req = next((a for a in acts if isinstance(a, RequestTxs)), None)
        if req is None:
            break
        acts = node.step(TxsAvailable(req.height, req.round, (tx(state, nonce),), 1000 + nonce))
    assert node.open_heights == (1, 2, 3)  # 4 starts epoch 1: its committee needs block 3


def test_a_pipeline_needs_a_certificate_lag() -> None:
    with pytest.raises(ValueError, match="certificate_lag"):
        PipelinedConsensus(KEYS[0], genesis(lag=1))


# --- rule 4: decide only after the parent commits ------------------------------------------------


def test_a_decision_waits_for_its_parent_then_both_commit_in_order(two_blocks) -> None:
    state, _leader, follower, p1, p2 = two_blocks
    node = PipelinedConsensus(follower, state)
    acts = feed(node, [Start(), proposal(state, p1), proposal(after(state, p1), p2)])
    assert own_votes(acts) == [(1, 0, PV, p1.hash), (2, 0, PV, p2.hash)]
    voters = others(state, follower)
    acts = feed(node, votes(state, PC, p2, voters))
    assert commits(acts) == [] and node.state.height == 0  # 2f+1 for height 2, but 1 is open
    acts = feed(node, votes(state, PC, p1, voters))
    done = commits(acts)
    assert [b.hash for b in done] == [p1.hash, p2.hash]
    replica = state
    for block in done:  # each with a certificate the chain rules accept
        replica = chain.apply_block(replica, block, require_certificate=True)
    assert node.state.head_hash == replica.head_hash == p2.hash


# --- rule 3: a lock dies only with its parent ---------------------------------------------------


def locked_on_p2(two_blocks) -> tuple[PipelinedConsensus, list]:
    state, _leader, follower, p1, p2 = two_blocks
    node = PipelinedConsensus(follower, state)
    acts = feed(node, [Start(), proposal(state, p1), proposal(after(state, p1), p2)])
    acts += feed(node, votes(state, PV, p2, others(state, follower)))
    assert (2, 0, PC, p2.hash) in own_votes(acts)
    return node, acts


def test_a_lock_survives_while_its_parent_can_still_commit(two_blocks) -> None:
    state, _leader, follower, _p1, p2 = two_blocks
    node, _ = locked_on_p2(two_blocks)
    # Height 1 moves to round 1 (f+1 members are there) with another proposal, and a polka.
    second = proposer(state, 1, 1)
    p1b = child(state, second, 0, t=1500)
    voters = others(state, follower)
    feed(node, votes(state, PV, p1b, voters, round_=1))
    feed(node, [proposal(state, p1b, round_=1)])
    assert node.state.height == 0
    assert node._slots[2].locked == (0, p2.hash)  # P1 may still commit: keep the lock


def test_when_the_parent_loses_the_lock_is_voided_and_signed_votes_are_kept(two_blocks) -> None:
    state, _leader, follower, _p1, p2 = two_blocks
    node, before = locked_on_p2(two_blocks)
    second = proposer(state, 1, 1)
    p1b = child(state, second, 0, t=1500)
    voters = others(state, follower)
    acts = node.step(Committed(certified(state, p1b, voters, round_=1)))
    assert [b.hash for b in commits(acts)] == [p1b.hash]
    assert node.height == 2 and node.locked == (-1, None)  # P2 can never commit now
    resent = own_votes(acts)
    assert all(v in own_votes(before) for v in resent if v[:2] == (2, 0))  # no second vote
    # Round 1 of height 2: a block on the committed P1' is prevoted (the lock is gone).
    base = after(state, p1b)
    p2b = child(base, proposer(state, 2, 1), 1, t=2500)
    acts = feed(node, votes(state, PV, p2b, voters[:2], round_=1))  # f+1: skip to round 1
    acts += feed(node, [proposal(base, p2b, round_=1)])
    assert (2, 1, PV, p2b.hash) in own_votes(acts)
    assert not [v for v in own_votes(acts) if v[:2] == (2, 0) and v[3] != p2.hash]


def test_a_held_decision_on_a_losing_parent_is_dropped(two_blocks) -> None:
    state, _leader, follower, _p1, p2 = two_blocks
    node, _ = locked_on_p2(two_blocks)
    voters = others(state, follower)
    feed(node, votes(state, PC, p2, voters))  # decided P2, waiting for P1
    p1b = child(state, proposer(state, 1, 1), 0, t=1500)
    acts = node.step(Committed(certified(state, p1b, voters, round_=1)))
    assert [b.hash for b in commits(acts)] == [p1b.hash]  # not P2: its parent lost
    assert node.state.height == 1 and node.open_heights[0] == 2


# --- messages beyond the window ----------------------------------------------------------------


def test_a_message_just_beyond_the_window_is_kept_and_far_ones_ask_for_blocks(two_blocks) -> None:
    state, leader, follower, _p1, p2 = two_blocks
    node = PipelinedConsensus(follower, state)  # window: heights 1..4
    node.step(Start())
    ahead = votes(state, PV, p2, others(state, follower))[0].vote
    near = VoteReceived(Vote.create(PV, 6, 0, "ab" * 32, leader, chain=state.config.chain_id))
    assert node.step(near) == [RequestBlocks(1)]
    assert near in node._log[6].events
    far = VoteReceived(Vote.create(PV, 9, 0, "ab" * 32, leader, chain=state.config.chain_id))
    assert node.step(far) == [RequestBlocks(1)] and 9 not in node._log
    assert node.step(VoteReceived(ahead)) == []  # height 2: no slot yet, kept for it
    assert VoteReceived(ahead) in node._log[2].events


# --- write-ahead log ---------------------------------------------------------------------------


def last_wal(acts) -> bytes:
    return [a.value for a in acts if isinstance(a, Persist) and a.key == WAL_KEY][-1]


def test_a_restart_keeps_a_lock_on_the_same_parent_and_voids_it_on_another(two_blocks) -> None:
    state, _leader, follower, p1, p2 = two_blocks
    _node, acts = locked_on_p2(two_blocks)
    wal = last_wal(acts)
    records = {r["height"]: r for r in json.loads(wal)["pipeline"]}
    assert records[2]["parent"] == p1.hash and records[2]["locked_block"] == p2.hash
    # Same parent: the restarted node opens height 2 on P1 again, locked on P2.
    again = PipelinedConsensus(follower, state, wal=wal)
    acts = feed(again, [Start(), proposal(state, p1)])
    assert again._slots[2].locked == (0, p2.hash)
    assert (2, 0, PC, p2.hash) in own_votes(acts)  # re-sent, not re-signed
    # Restarted after another block committed at height 1: the lock on P2 is dead.
    p1b = child(state, proposer(state, 1, 1), 0, t=1500)
    voters = others(state, follower)
    moved = chain.apply_block(state, certified(state, p1b, voters, 1), require_certificate=True)
    other = PipelinedConsensus(follower, moved, wal=wal)
    acts = other.step(Start())
    assert other.locked == (-1, None)
    assert other._slots[2].own_vote(0, PC).block_hash == p2.hash  # never contradicted


def test_a_one_height_record_is_read_and_garbage_is_refused(two_blocks) -> None:
    state, _leader, follower, p1, _p2 = two_blocks
    single = Consensus(follower, state)
    acts = single.step(Start()) + single.step(proposal(state, p1))
    record = last_wal(acts)  # a one-height core's record (before the chain was pipelined)
    node = PipelinedConsensus(follower, state, wal=record)
    assert (1, 0, PV, p1.hash) in own_votes(node.step(Start()))
    for garbage in (b"{", b"[]", b'{"version": 9, "pipeline": []}', b'{"pipeline": 3}'):
        with pytest.raises(WalCorrupted):
            PipelinedConsensus(follower, state, wal=garbage)
    bad_parent = json.dumps({"version": 1, "pipeline": [{**json.loads(record), "parent": 7}]})
    with pytest.raises(WalCorrupted, match="parent"):
        PipelinedConsensus(follower, state, wal=bad_parent.encode())


def test_a_bad_record_for_a_later_height_refuses_the_start(two_blocks) -> None:
    """Checked when the pipeline starts, not when that height's slot opens (which would
    fail in the middle of committing the height below)."""
    state, leader, follower, p1, p2 = two_blocks
    node = PipelinedConsensus(follower, state)
    doc = json.loads(
        last_wal(feed(node, [Start(), proposal(state, p1), proposal(after(state, p1), p2)]))
    )
    later = next(r for r in doc["pipeline"] if r["height"] == 2)
    later["votes"] = [votes(state, PV, p2, [leader])[0].vote.to_json()]  # not ours
    doc["pipeline"] = [later]
    with pytest.raises(WalCorrupted, match="not ours"):
        PipelinedConsensus(follower, state, wal=json.dumps(doc).encode())


def test_the_log_keeps_each_message_once_and_cannot_be_crowded_out(two_blocks) -> None:
    """Junk for a height not open yet (from a non-validator, repeated, or beyond one
    signer's share) is not kept; the others' real proposal and votes that come after are."""
    state, leader, follower, p1, p2 = two_blocks
    node = PipelinedConsensus(follower, state)
    node.step(Start())
    chain_id = state.config.chain_id
    outsider, byzantine = SigningKey(b"\x77" * 32), others(state, follower, leader)[0]
    for n in range(200):
        node.step(VoteReceived(Vote.create(PV, 2, n, "ab" * 32, outsider, chain=chain_id)))
        node.step(VoteReceived(Vote.create(PV, 2, n, "cd" * 32, byzantine, chain=chain_id)))
    assert 2 not in node._slots
    kept = node._log[2].events
    assert len(kept) == MAX_LOGGED_PER_SIGNER  # the Byzantine member's share, nobody else's
    honest = [proposal(after(state, p1), p2), *votes(state, PC, p2, others(state, follower))]
    for event in honest + honest:
        node.step(event)
    for event in honest:  # each kept once, except the Byzantine member's, beyond its share
        over_share = isinstance(event, VoteReceived) and event.vote.voter == byzantine.public
        assert kept.count(event) == (0 if over_share else 1)
    node.step(Committed(p2))  # a "certified" block without its certificate is not kept
    assert Committed(p2) not in kept


def test_forged_messages_neither_fill_a_share_nor_hide_the_latest_rounds(two_blocks) -> None:
    """Votes naming a validator without its signature are not kept (they used to use up
    its share); past a signer's share a newer round replaces its oldest message; junk
    from outsiders does not make the lowest height's timeout ask for blocks."""
    state, leader, follower, p1, _ = two_blocks
    node = PipelinedConsensus(follower, state)
    node.step(Start())
    chain_id = state.config.chain_id
    for n in range(MAX_LOGGED_PER_SIGNER):
        real = Vote.create(PV, 2, n, "ab" * 32, SigningKey(b"\x66" * 32), chain=chain_id)
        node.step(VoteReceived(dataclasses.replace(real, voter=leader.public)))  # forged
    assert 2 not in node._log  # nothing kept, no trace of a higher height either
    acts = node.step(Timeout(1, 0, Step.PROPOSE))  # no proposal for 1: but nobody is ahead
    assert not [a for a in acts if isinstance(a, RequestBlocks)]
    base = after(state, p1)
    voters = others(state, follower)
    for r in range(40):  # the others go through 40 rounds at height 2 meanwhile
        for kind in (PV, PC):
            for key in voters:
                node.step(VoteReceived(Vote.create(kind, 2, r, None, key, chain=chain_id)))
    late = child(base, proposer(state, 2, 40), 1, t=2000)
    node.step(proposal(base, late, round_=40))
    node.step(Committed(certified(state, p1, voters)))
    slot = node._slots[2]
    assert slot.round == 39 and 40 in slot._proposals  # the latest rounds were kept
