"""The sans-I/O consensus core, driven event by event (real Ed25519, real chain rules)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from medshare.crypto.signing import InvalidSignature, SigningKey
from medshare.ledger import chain, election
from medshare.ledger.consensus import (
    WAL_KEY,
    Broadcast,
    Commit,
    Committed,
    ConflictingProposals,
    Consensus,
    EvidenceFound,
    Persist,
    Proposal,
    ProtocolError,
    RequestBlocks,
    RequestTxs,
    ScheduleTimeout,
    Start,
    Step,
    Timeout,
    TxsAvailable,
    VoteReceived,
    WalCorrupted,
)
from medshare.ledger.types import (
    Block,
    CommitCertificate,
    Equivocation,
    LedgerFormatError,
    Tx,
    TxKind,
    Vote,
    VoteKind,
    conflicting_proposals_offender,
    invalid_block_body,
    invalid_block_offender,
)

PV, PC = VoteKind.PREVOTE, VoteKind.PRECOMMIT
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(5)]
BY_PUBLIC = {k.public: k for k in KEYS}
CLIENT = SigningKey(b"\x42" * 32)


def genesis_state(nodes: int = 4, committee: int = 4, epoch_length: int = 10) -> chain.ChainState:
    validators = tuple(
        election.Validator(k.public, f"n{i}", 1000) for i, k in enumerate(KEYS[:nodes])
    )
    config = chain.ChainConfig(
        "unit", validators, epoch_length=epoch_length, committee_size=committee
    )
    return chain.genesis(config)[1]


CHAIN = genesis_state().config.chain_id  # the default test chain's id


def proposer(state: chain.ChainState, round_: int, last=None) -> SigningKey:
    committee = chain.begin_block(state, last).committee
    return BY_PUBLIC[election.proposer(committee, state.height + 1, round_)]


def build(state, key: SigningKey, txs=(), t: int = 1000, last=None) -> Block:
    return chain.build_block(state, txs, key.public, t, last)[0]


def propose(state, round_: int, block: Block, key: SigningKey, pol: int = -1, pol_votes=()):
    chain_id = state.config.chain_id
    return Proposal.create(
        state.height + 1, round_, block, pol, key, tuple(pol_votes), chain=chain_id
    )


def vote(
    kind: VoteKind, height: int, round_: int, block_hash, key: SigningKey, chain: str = CHAIN
) -> VoteReceived:
    return VoteReceived(Vote.create(kind, height, round_, block_hash, key, chain=chain))


def sent_votes(actions) -> list[Vote]:
    return [a.message for a in actions if isinstance(a, Broadcast) and isinstance(a.message, Vote)]


def start(key: SigningKey, state, **kw) -> tuple[Consensus, list]:
    node = Consensus(key, state, **kw)
    return node, node.step(Start())


@pytest.fixture
def roles():
    """Genesis state and its committee by role at height 1: p[r] proposes round r; ``me`` is
    the proposer of round 3 (so not of rounds 0-2)."""
    state = genesis_state()
    p = [proposer(state, r) for r in range(4)]
    return state, p, p[3]


def anchor_tx(nonce: int, key: SigningKey = CLIENT) -> Tx:
    """A client tx for the default ``genesis_state()`` chain."""
    body = {"record": f"r{nonce}", "patient": "p", "dept": "0304", "digest": "ab" * 32}
    return Tx.create(TxKind.ANCHOR_RECORD, body, nonce, key, chain=CHAIN)


# --- a round, start to finish -------------------------------------------------------------------


def test_proposer_asks_for_txs_proposes_and_prevotes_its_block(roles) -> None:
    state, p, _ = roles
    node, acts = start(p[0], state)
    assert RequestTxs(1, 0, node.config.max_block_txs) in acts
    assert ScheduleTimeout(1, 0, Step.PROPOSE, 1000) in acts
    acts = node.step(TxsAvailable(1, 0, (anchor_tx(0), anchor_tx(1)), 5000))
    proposals = [a.message for a in acts if isinstance(a, Broadcast)][:1]
    assert isinstance(proposals[0], Proposal) and len(proposals[0].block.txs) == 2
    proposals[0].verify(CHAIN)
    assert proposals[0].block.header.timestamp_ms == 5000
    assert [(v.kind, v.block_hash) for v in sent_votes(acts)] == [(PV, proposals[0].block.hash)]
    # A stale answer (wrong round) is ignored.
    assert node.step(TxsAvailable(1, 1, (), 6000)) == []


def test_full_round_commits_a_block_with_a_valid_certificate(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    block = build(state, p[0], [anchor_tx(0)])
    acts = node.step(propose(state, 0, block, p[0]))
    assert [(v.kind, v.round, v.block_hash) for v in sent_votes(acts)] == [(PV, 0, block.hash)]
    acts = node.step(vote(PV, 1, 0, block.hash, p[0]))
    assert sent_votes(acts) == []  # 2 of 4 prevotes: no polka yet
    acts = node.step(vote(PV, 1, 0, block.hash, p[1]))
    assert [(v.kind, v.block_hash) for v in sent_votes(acts)] == [(PC, block.hash)]
    assert node.locked == (0, block.hash)
    node.step(vote(PC, 1, 0, block.hash, p[0]))
    acts = node.step(vote(PC, 1, 0, block.hash, p[1]))
    commits = [a.block for a in acts if isinstance(a, Commit)]
    assert len(commits) == 1 and commits[0].hash == block.hash
    assert len(commits[0].certificate.signatures) == 3
    # The certificate satisfies the chain rules on the parent state.
    after = chain.apply_block(state, commits[0], require_certificate=True)
    assert node.state.head_hash == after.head_hash == block.hash
    assert node.height == 2 and node.round == 0 and node.locked == (-1, None)
    assert node.last_commit == commits[0].certificate


def test_every_vote_is_persisted_before_it_is_broadcast(roles) -> None:
    state, p, me = roles
    node, acts = start(me, state)
    block = build(state, p[0])
    acts += node.step(propose(state, 0, block, p[0]))
    acts += node.step(vote(PV, 1, 0, block.hash, p[0]))
    acts += node.step(vote(PV, 1, 0, block.hash, p[1]))
    acts += node.step(Timeout(1, 0, Step.PRECOMMIT))
    acts += node.step(Timeout(1, 1, Step.PROPOSE))
    broadcasts = 0
    for i, action in enumerate(acts):
        if isinstance(action, Broadcast) and isinstance(action.message, Vote):
            broadcasts += 1
            persisted = [a for a in acts[:i] if isinstance(a, Persist) and a.key == WAL_KEY]
            record = json.loads(persisted[-1].value)
            assert action.message.to_json() in record["votes"]
    assert broadcasts == 3  # prevote B, precommit B, round-1 prevote nil
    assert json.loads(persisted[-1].value)["locked_block"] == block.hash


# --- locking --------------------------------------------------------------------------------------


def locked_on_b_in_round_0(state, p, me):
    node, _ = start(me, state)
    b = build(state, p[0], t=1000)
    node.step(propose(state, 0, b, p[0]))
    node.step(vote(PV, 1, 0, b.hash, p[0]))
    node.step(vote(PV, 1, 0, b.hash, p[1]))
    assert node.locked == (0, b.hash)
    node.step(Timeout(1, 0, Step.PRECOMMIT))
    assert (node.round, node.step_name) == (1, Step.PROPOSE)
    return node, b


def test_locked_node_prevotes_nil_for_another_block_without_proof_of_lock(roles) -> None:
    state, p, me = roles
    node, _ = locked_on_b_in_round_0(state, p, me)
    other = build(state, p[1], t=2000)
    acts = node.step(propose(state, 1, other, p[1]))
    assert [(v.round, v.block_hash) for v in sent_votes(acts)] == [(1, None)]
    # The same proposal gets a prevote from an unlocked node: the lock made the difference.
    fresh, _ = start(me, state)
    fresh.step(Timeout(1, 0, Step.PROPOSE))
    fresh.step(Timeout(1, 0, Step.PREVOTE))
    fresh.step(Timeout(1, 0, Step.PRECOMMIT))
    acts = fresh.step(propose(state, 1, other, p[1]))
    assert [(v.round, v.block_hash) for v in sent_votes(acts)] == [(1, other.hash)]


def test_locked_node_prevotes_another_block_with_a_later_proof_of_lock(roles) -> None:
    state, p, me = roles
    node, _ = locked_on_b_in_round_0(state, p, me)
    other = build(state, p[1], t=2000)
    node.step(propose(state, 1, other, p[1]))  # nil (locked)
    node.step(Timeout(1, 1, Step.PREVOTE))
    node.step(Timeout(1, 1, Step.PRECOMMIT))
    assert node.round == 2
    # Round 2 re-proposes `other` claiming a polka in round 1, which we have not seen: wait.
    acts = node.step(propose(state, 2, other, p[2], pol=1))
    assert sent_votes(acts) == []
    for k in p[:3]:
        acts += node.step(vote(PV, 1, 1, other.hash, k))
    assert [(v.round, v.block_hash) for v in sent_votes(acts)] == [(2, other.hash)]


def skip_round(node: Consensus, round_: int) -> None:
    for step in (Step.PROPOSE, Step.PREVOTE, Step.PRECOMMIT):
        node.step(Timeout(node.height, round_, step))


def test_proof_of_lock_older_than_the_lock_does_not_unlock(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    skip_round(node, 0)
    skip_round(node, 1)
    b = build(state, p[2], t=1000)
    node.step(propose(state, 2, b, p[2]))
    node.step(vote(PV, 1, 2, b.hash, p[0]))
    node.step(vote(PV, 1, 2, b.hash, p[1]))
    assert node.locked == (2, b.hash)
    skip_round(node, 2)
    skip_round(node, 3)
    assert node.round == 4
    # A complete, valid polka for another block, but from round 1 < our lock round 2.
    other = build(state, p[1], t=2000)
    polka = [Vote.create(PV, 1, 1, other.hash, k, chain=CHAIN) for k in p[:3]]
    acts = node.step(propose(state, 4, other, p[0], pol=1, pol_votes=polka))
    assert [(v.round, v.block_hash) for v in sent_votes(acts)] == [(4, None)]


def test_pol_votes_carried_in_the_proposal_are_enough(roles) -> None:
    state, p, me = roles
    other = build(state, p[1], t=2000)
    polka = [Vote.create(PV, 1, 1, other.hash, k, chain=CHAIN) for k in p[:3]]
    forged = [dataclasses.replace(v, signature=bytes(64)) for v in polka]
    for pol_votes, expected in ((forged, []), (polka, [(2, other.hash)])):
        node, _ = locked_on_b_in_round_0(state, p, me)  # never saw round 1's polka itself
        skip_round(node, 1)
        acts = node.step(propose(state, 2, other, p[2], pol=1, pol_votes=pol_votes))
        assert [(v.round, v.block_hash) for v in sent_votes(acts)] == expected


# --- validation and accountability ----------------------------------------------------------------


def test_invalid_proposal_gets_a_nil_prevote(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    good = build(state, p[0])
    bad = Block(dataclasses.replace(good.header, state_root="ff" * 32), good.txs)
    acts = node.step(propose(state, 0, bad, p[0]))
    assert [v.block_hash for v in sent_votes(acts)] == [None]
    assert "state root" in node.rejected[bad.hash]


def test_block_with_forged_tx_gets_a_nil_prevote(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    forged = dataclasses.replace(anchor_tx(0), signature=bytes(64))
    block = chain.build_block(state, [forged], p[0].public, 1000, None, verified=lambda _t: True)
    acts = node.step(propose(state, 0, block[0], p[0]))
    assert [v.block_hash for v in sent_votes(acts)] == [None]
    assert "invalid signature" in node.rejected[block[0].hash]


def test_proposal_from_the_wrong_proposer_or_badly_signed_is_ignored(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    block = build(state, p[1])
    assert node.step(propose(state, 0, block, p[1])) == []  # p[1] proposes round 1, not 0
    good = propose(state, 0, build(state, p[0]), p[0])
    assert node.step(dataclasses.replace(good, signature=bytes(64))) == []
    assert sent_votes(node.step(good)) != []


def test_bad_signatures_and_non_members_do_not_count() -> None:
    state = genesis_state(nodes=5, committee=4)
    outsider = next(k for k in KEYS if k.public not in state.committee)
    p = [proposer(state, r) for r in range(4)]
    me = p[3]
    node, _ = start(me, state)
    block = build(state, p[0])
    node.step(propose(state, 0, block, p[0]))
    forged = Vote.create(PV, 1, 0, block.hash, p[1], chain=state.config.chain_id)
    forged = dataclasses.replace(
        forged, signature=Vote.create(PV, 1, 0, None, p[1], chain=state.config.chain_id).signature
    )
    assert node.step(VoteReceived(forged)) == []
    assert node.step(vote(PV, 1, 0, block.hash, outsider, chain=state.config.chain_id)) == []
    assert node.step(vote(PV, 1, 0, block.hash, p[0], chain=state.config.chain_id)) == []
    assert node.locked == (-1, None)  # me + p0 only: the outsider and the forgery count 0
    acts = node.step(vote(PV, 1, 0, block.hash, p[1], chain=state.config.chain_id))
    assert [v.kind for v in sent_votes(acts)] == [PC]


def test_conflicting_votes_become_evidence_once(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    block = build(state, p[0])
    node.step(vote(PV, 1, 0, block.hash, p[1]))
    acts = node.step(vote(PV, 1, 0, None, p[1]))
    evidence = [a.evidence for a in acts if isinstance(a, EvidenceFound)]
    assert len(evidence) == 1 and isinstance(evidence[0], Equivocation)
    evidence[0].check(CHAIN)
    assert evidence[0].first.block_hash == block.hash and evidence[0].second.block_hash is None
    assert node.step(vote(PV, 1, 0, "cd" * 32, p[1])) == []  # reported already
    assert node.step(vote(PV, 1, 0, None, p[1])) == []


def test_conflicting_proposals_become_evidence(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    first = propose(state, 0, build(state, p[0], t=1000), p[0])
    second = propose(state, 0, build(state, p[0], t=1001), p[0])
    node.step(first)
    acts = node.step(second)
    [evidence] = [a.evidence for a in acts if isinstance(a, EvidenceFound)]
    assert isinstance(evidence, ConflictingProposals) and evidence.offender == p[0].public
    evidence.check(CHAIN)
    body = json.loads(json.dumps(evidence.to_body()))  # what an EVIDENCE tx would carry
    assert conflicting_proposals_offender(body, CHAIN) == p[0].public
    body["proof"][1]["block"] = body["proof"][0]["block"]
    with pytest.raises(LedgerFormatError):
        conflicting_proposals_offender(body, CHAIN)
    body = evidence.to_body()
    body["proof"][1] = {**body["proof"][1], "block": "cd" * 32}  # signature no longer matches
    with pytest.raises(InvalidSignature):
        conflicting_proposals_offender(body, CHAIN)


def _forged_proposal(state, key: SigningKey) -> tuple[Proposal, int]:
    """A proposal whose block carries, between two good txs, one with a zeroed signature."""
    forged = dataclasses.replace(anchor_tx(1), signature=bytes(64))
    txs = [anchor_tx(0), forged, anchor_tx(2)]
    block = chain.build_block(state, txs, key.public, 1000, None, verified=lambda _tx: True)[0]
    assert block.txs == tuple(txs)
    return propose(state, 0, block, key), 1


def test_a_proposed_forged_transaction_is_provable_evidence(roles) -> None:
    state, p, _ = roles
    proposal, index = _forged_proposal(state, p[0])
    with pytest.raises(chain.InvalidBlock, match="invalid signature"):
        chain.apply_block(state, proposal.block, require_certificate=False)
    body = json.loads(json.dumps(invalid_block_body(proposal.proof(), proposal.block, index)))
    assert invalid_block_offender(body, CHAIN) == p[0].public
    # The evidence is checked on its own: every part of it matters.
    good_tx = invalid_block_body(proposal.proof(), proposal.block, 0)
    with pytest.raises(LedgerFormatError, match="valid: no offence"):
        invalid_block_offender(good_tx, CHAIN)
    moved = json.loads(json.dumps(body))
    moved["proof"]["index"] = 0
    with pytest.raises(LedgerFormatError, match="not in the proposed block"):
        invalid_block_offender(moved, CHAIN)
    other_header = json.loads(json.dumps(body))
    other_header["proof"]["header"]["time_ms"] += 1
    with pytest.raises(LedgerFormatError, match="does not sign this block header"):
        invalid_block_offender(other_header, CHAIN)
    blamed = json.loads(json.dumps(body))
    blamed["offender"] = blamed["proof"]["proposal"]["proposer"] = p[1].public.hex()
    with pytest.raises(InvalidSignature):
        invalid_block_offender(blamed, CHAIN)


def test_invalid_block_evidence_ejects_the_proposer(roles) -> None:
    state, p, _ = roles
    proposal, index = _forged_proposal(state, p[0])
    body = invalid_block_body(proposal.proof(), proposal.block, index)
    reporter = p[1]
    evidence = Tx.create(TxKind.EVIDENCE, body, 0, reporter, chain=state.config.chain_id)
    nxt = chain.begin_block(state, None)
    chain.apply_tx(nxt, evidence)
    assert nxt.validator(p[0].public).ejected
    assert p[0].public not in nxt.committee


def test_timeouts_grow_with_the_round_and_nil_votes_follow(roles) -> None:
    state, p, me = roles
    node, acts = start(me, state)
    assert ScheduleTimeout(1, 0, Step.PROPOSE, 1000) in acts
    acts = node.step(Timeout(1, 0, Step.PROPOSE))
    assert [(v.kind, v.block_hash) for v in sent_votes(acts)] == [(PV, None)]
    for k in p[:2]:
        acts += node.step(vote(PV, 1, 0, None, k))
    assert ScheduleTimeout(1, 0, Step.PREVOTE, 500) in acts
    assert [(v.kind, v.block_hash) for v in sent_votes(acts)][-1] == (PC, None)
    acts = node.step(Timeout(1, 0, Step.PRECOMMIT))
    assert ScheduleTimeout(1, 1, Step.PROPOSE, 1500) in acts
    assert node.step(Timeout(1, 0, Step.PROPOSE)) == []  # stale


def test_f_plus_one_votes_of_a_later_round_skip_ahead(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    node.step(vote(PV, 1, 3, None, p[0]))
    assert node.round == 0
    acts = node.step(vote(PV, 1, 3, None, p[1]))
    assert node.round == 3
    assert RequestTxs(1, 3, node.config.max_block_txs) in acts  # me proposes round 3


def certified(state, p_key: SigningKey, signers, last=None, t: int = 1000) -> Block:
    block = build(state, p_key, t=t, last=last)
    votes = [Vote.create(PC, block.height, 0, block.hash, k, chain=CHAIN) for k in signers]
    return block.with_certificate(CommitCertificate.from_votes(votes))


def test_catch_up_from_certified_blocks(roles) -> None:
    state, p, me = roles
    b1 = certified(state, p[0], p[:3])
    s1 = chain.apply_block(state, b1)
    b2 = certified(s1, proposer(s1, 0, b1.certificate), p[1:4], b1.certificate, 2000)
    node, _ = start(me, state)
    assert node.step(Committed(b2)) == [RequestBlocks(1)]
    weak = b1.with_certificate(CommitCertificate.from_votes(b1.certificate.votes()[:2]))
    assert node.step(Committed(weak)) == []  # 2 of 4 signatures: not a certificate
    acts = node.step(Committed(b1)) + node.step(Committed(b2))
    assert [a.block.hash for a in acts if isinstance(a, Commit)] == [b1.hash, b2.hash]
    assert node.height == 3 and node.state.head_hash == b2.hash


def test_messages_for_the_next_height_wait_and_a_last_commit_decides(roles) -> None:
    state, p, me = roles
    node, _ = start(me, state)
    b1 = certified(state, p[0], p[:3])
    node.step(propose(state, 0, Block(b1.header, b1.txs), p[0]))  # we hold b1, no precommits
    s1 = chain.apply_block(state, b1)
    p2 = proposer(s1, 0, b1.certificate)
    b2 = build(s1, p2, t=2000, last=b1.certificate)
    acts = node.step(propose(s1, 0, b2, p2))  # height 2 proposal, carrying b1's certificate
    assert [a.block.hash for a in acts if isinstance(a, Commit)] == [b1.hash]
    assert node.height == 2
    assert [(v.height, v.block_hash) for v in sent_votes(acts)] == [(2, b2.hash)]


def test_non_member_never_votes_but_commits() -> None:
    state = genesis_state(nodes=5, committee=4)
    outsider = next(k for k in KEYS if k.public not in state.committee)
    p = [proposer(state, r) for r in range(4)]
    node, acts = start(outsider, state)
    assert not node.is_member and acts == []
    block = build(state, p[0])
    acts = node.step(propose(state, 0, block, p[0]))
    chain_id = state.config.chain_id
    for k in p[:3]:
        acts += node.step(vote(PV, 1, 0, block.hash, k, chain_id))
    acts += node.step(Timeout(1, 0, Step.PROPOSE))
    for k in p[:3]:
        acts += node.step(vote(PC, 1, 0, block.hash, k, chain_id))
    assert sent_votes(acts) == []
    assert [a.block.hash for a in acts if isinstance(a, Commit)] == [block.hash]


def last_wal(actions) -> bytes:
    return [a.value for a in actions if isinstance(a, Persist) and a.key == WAL_KEY][-1]


def test_restarted_node_never_signs_a_conflicting_vote(roles) -> None:
    state, p, me = roles
    node, acts = start(me, state)
    b = build(state, p[0], t=1000)
    acts += node.step(propose(state, 0, b, p[0]))
    [prevote] = sent_votes(acts)
    wal = last_wal(acts)
    # The proposer equivocates after our crash: a different block for the same round.
    b2 = propose(state, 0, build(state, p[0], t=1500), p[0])

    restarted, acts = start(me, state, wal=wal)
    assert sent_votes(acts) == [prevote]  # re-sent as it was, not signed again
    acts = restarted.step(b2) + restarted.step(Timeout(1, 0, Step.PROPOSE))
    assert {v.block_hash for v in sent_votes(acts)} <= {b.hash}
    assert restarted.own_vote(0, PV) == prevote

    # Without the WAL the same node would have equivocated (what the WAL prevents).
    amnesiac, _ = start(me, state)
    [again] = sent_votes(amnesiac.step(b2))
    Equivocation(prevote, again).check(CHAIN)


def test_restarted_node_keeps_its_lock(roles) -> None:
    state, p, me = roles
    node, acts = start(me, state)
    b = build(state, p[0])
    acts += node.step(propose(state, 0, b, p[0]))
    acts += node.step(vote(PV, 1, 0, b.hash, p[0]))
    acts += node.step(vote(PV, 1, 0, b.hash, p[1]))
    restarted, acts = start(me, state, wal=last_wal(acts))
    assert restarted.locked == (0, b.hash) and restarted.step_name is Step.PRECOMMIT
    assert [(v.kind, v.block_hash) for v in sent_votes(acts)] == [(PV, b.hash), (PC, b.hash)]
    restarted.step(Timeout(1, 0, Step.PRECOMMIT))
    acts = restarted.step(propose(state, 1, build(state, p[1], t=3000), p[1]))
    assert [(v.round, v.block_hash) for v in sent_votes(acts)] == [(1, None)]


def test_a_restarted_locked_proposer_re_proposes_its_lock_with_the_proof(roles) -> None:
    """The WAL keeps the locked block and its 2f+1 prevotes: without them a restarted
    proposer proposes a new block, prevotes nil on it, and if f+1 honest members are
    locked the height never commits."""
    state, p, me = roles  # me proposes round 3
    node, acts = start(me, state)
    b = build(state, p[0])
    acts += node.step(propose(state, 0, b, p[0]))
    acts += node.step(vote(PV, 1, 0, b.hash, p[0]))
    acts += node.step(vote(PV, 1, 0, b.hash, p[1]))  # polka: locked on B, precommitted
    restarted, _ = start(me, state, wal=last_wal(acts))
    assert restarted.locked == (0, b.hash)
    acts = restarted.step(vote(PV, 1, 3, None, p[0])) + restarted.step(vote(PV, 1, 3, None, p[1]))
    proposals = [a.message for a in acts if isinstance(a, Broadcast)]
    proposals = [m for m in proposals if isinstance(m, Proposal)]
    assert len(proposals) == 1 and proposals[0].round == 3  # f+1 in round 3: it leads there
    assert (proposals[0].block.hash, proposals[0].pol_round) == (b.hash, 0)
    assert len(proposals[0].pol_votes) == 3  # the proof others can check
    assert [(v.round, v.block_hash) for v in sent_votes(acts)] == [(3, b.hash)]
    assert not [a for a in acts if isinstance(a, RequestTxs)]


def test_stale_wal_is_ignored_and_garbage_is_refused(roles) -> None:
    state, p, me = roles
    node, acts = start(me, state)
    acts += node.step(Timeout(1, 0, Step.PROPOSE))
    b1 = certified(state, p[0], p[:3])
    s1 = chain.apply_block(state, b1)
    later, _ = start(me, s1, last_commit=b1.certificate, wal=last_wal(acts))
    assert later.height == 2 and later.own_vote(0, PV) is None
    with pytest.raises(WalCorrupted):
        Consensus(me, state, wal=b"{not json")
    record = json.loads(last_wal(acts))
    for bad in ({"valid_block": 7}, {"proof": {"blocks": [1]}}, {"proof": [1]},
                {"proof": {"prevotes": [{"kind": "prevote"}]}}):  # fmt: skip
        with pytest.raises(WalCorrupted):
            Consensus(me, state, wal=json.dumps({**record, **bad}).encode())


def test_an_echo_of_our_own_vote_is_adopted(roles) -> None:
    state, _, me = roles
    earlier = Vote.create(
        PV, 1, 0, "ab" * 32, me, chain=CHAIN
    )  # signed before a crash that lost the WAL
    node, _ = start(me, state)
    acts = node.step(VoteReceived(earlier))
    assert any(isinstance(a, Persist) for a in acts)
    acts = node.step(Timeout(1, 0, Step.PROPOSE))
    assert sent_votes(acts) == [earlier]


# --- protocol errors and wire form ----------------------------------------------------------------


def test_protocol_errors(roles) -> None:
    state, _, me = roles
    node = Consensus(me, state)
    with pytest.raises(ProtocolError):
        node.step(Timeout(1, 0, Step.PROPOSE))  # before Start
    node.step(Start())
    with pytest.raises(ProtocolError):
        node.step(Start())
    with pytest.raises(ProtocolError):
        node.step("tick")  # type: ignore[arg-type]


def test_proposal_json_round_trip(roles) -> None:
    state, p, _ = roles
    polka = (Vote.create(PV, 1, 0, "ab" * 32, p[0], chain=CHAIN),)
    original = propose(state, 1, build(state, p[0], [anchor_tx(0)]), p[1], pol=0, pol_votes=polka)
    again = Proposal.from_json(json.loads(json.dumps(original.to_json())))
    assert again == original
    again.verify(CHAIN)
