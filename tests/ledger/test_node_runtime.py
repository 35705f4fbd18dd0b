"""NodeRuntime's handling of messages from far-ahead heights (flooding and catch-up), and
of its requests for transactions."""

from __future__ import annotations

from chainkit import Kit
from test_pipeline import child, genesis, others, proposal, proposer, votes

from medshare.crypto.signing import SigningKey
from medshare.ledger.consensus import Proposal
from medshare.ledger.node import CommitNotice, NodeRuntime, SyncReply, SyncRequest, SyncRetry, Wake
from medshare.ledger.store import MemoryStore
from medshare.ledger.types import CommitCertificate, Vote, VoteKind


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[object, object]] = []

    def send(self, dest, payload) -> None:
        self.sent.append((dest, payload))

    def broadcast(self, payload) -> None:
        for peer in self.peers():
            self.send(peer, payload)

    def peers(self) -> list[int]:
        return [1, 2, 3]


class ManualClock:
    def __init__(self) -> None:
        self.timers: list[tuple[int, object]] = []

    def now_ms(self) -> int:
        return 0

    def schedule(self, delay_ms: int, event) -> None:
        self.timers.append((delay_ms, event))


def _runtime() -> tuple[Kit, NodeRuntime, RecordingTransport]:
    kit = Kit.new()
    transport = RecordingTransport()
    runtime = NodeRuntime(kit.keys[0], kit.config, MemoryStore(), transport, ManualClock())
    runtime.start()
    transport.sent.clear()
    return kit, runtime, transport


def test_forged_far_future_votes_are_neither_kept_nor_relayed() -> None:
    kit, runtime, transport = _runtime()
    outsider = SigningKey.generate()
    for height in range(10**6, 10**6 + 50):
        runtime.receive(
            1,
            Vote.create(
                VoteKind.PREVOTE, height, 0, "aa" * 32, outsider, chain=kit.config.chain_id
            ),
        )
    assert transport.sent == []
    assert all(h < 10**6 for h in runtime._seen)


def test_a_signed_far_future_vote_of_a_validator_starts_catch_up() -> None:
    kit, runtime, transport = _runtime()
    vote = Vote.create(VoteKind.PREVOTE, 40, 0, "aa" * 32, kit.keys[1], chain=kit.config.chain_id)
    runtime.receive(1, vote)
    assert any(isinstance(payload, SyncRequest) for _, payload in transport.sent)
    assert not any(payload is vote for _, payload in transport.sent)  # not relayed


def _behind_runtime() -> tuple[Kit, NodeRuntime, RecordingTransport, ManualClock, list]:
    """Node 0 at genesis, waiting (``sync_wait_ms``) for blocks 1 and 2 that the others
    committed; they are certified by the kit and handed to the node as a test needs them."""
    kit = Kit.new()
    transport, clock = RecordingTransport(), ManualClock()
    runtime = NodeRuntime(
        kit.keys[0], kit.config, MemoryStore(), transport, clock, sync_wait_ms=500
    )
    runtime.start()
    blocks = [kit.next_block([kit.tx(1)]), kit.next_block([kit.tx(2)])]
    transport.sent.clear()
    clock.timers.clear()
    return kit, runtime, transport, clock, blocks


def test_a_sync_retry_armed_lower_still_asks_while_behind() -> None:
    """Regression (bench ledger stall, N=64 m=7 1000-tx): a retry armed at height 1 fired
    after the node had advanced to 2 but still lacked block 2, and gave up for good."""
    kit, runtime, transport, clock, blocks = _behind_runtime()
    runtime.receive(
        1, Vote.create(VoteKind.PREVOTE, 3, 0, "aa" * 32, kit.keys[1], chain=kit.config.chain_id)
    )
    [(_, retry)] = [(d, e) for d, e in clock.timers if isinstance(e, SyncRetry)]
    assert retry == SyncRetry(1)
    runtime.receive(2, SyncReply(blocks[:1]))  # block 1 arrives, block 2 does not
    assert runtime.core.height == 2
    transport.sent.clear()
    runtime.fire(retry)
    assert [p for _, p in transport.sent if isinstance(p, SyncRequest)] == [SyncRequest(2)]
    runtime.receive(3, SyncReply(blocks[1:]))
    assert runtime.core.height == 3


def test_a_commit_notice_from_ahead_is_remembered_until_caught_up() -> None:
    """Regression: a notice of height 2 that arrived at height 1 only made the node wait for
    height 1; once block 1 came in, the node at height 2 never asked for block 2."""
    _, runtime, transport, clock, blocks = _behind_runtime()
    assert blocks[1].certificate is not None
    runtime.receive(1, CommitNotice(blocks[1].certificate))
    [retry] = [e for _, e in clock.timers if isinstance(e, SyncRetry)]
    runtime.receive(2, SyncReply(blocks[:1]))
    assert runtime.core.height == 2
    transport.sent.clear()
    runtime.fire(retry)
    assert [p for _, p in transport.sent if isinstance(p, SyncRequest)] == [SyncRequest(2)]


def test_a_forged_commit_notice_from_ahead_is_not_believed() -> None:
    _, runtime, *_ = _behind_runtime()
    outsider = SigningKey.generate()
    chain_id = runtime.config.chain_id
    fake = CommitCertificate.from_votes(
        [Vote.create(VoteKind.PRECOMMIT, 10**6, 0, "aa" * 32, outsider, chain=chain_id)]
    )
    runtime.receive(1, CommitNotice(fake))
    assert runtime._known_height < 10**6


def test_a_far_ahead_message_is_handled_when_sent_again_after_catch_up() -> None:
    """Regression (bench ledger stall): a vote that arrived while the node was far behind
    was remembered as seen but not kept, so its regossiped copy was dropped after the node
    caught up, and the round waited for it forever."""
    kit, runtime, transport, _, blocks = _behind_runtime()
    vote = Vote.create(VoteKind.PREVOTE, 3, 0, None, kit.keys[1], chain=kit.config.chain_id)
    runtime.receive(1, vote)  # far ahead: starts a catch-up, not kept
    runtime.receive(1, vote)  # the same copy again: one check, nothing new
    runtime.receive(2, SyncReply(tuple(blocks)))
    assert runtime.core.height == 3
    transport.sent.clear()
    runtime.receive(1, vote)  # regossiped: now a vote of the current height
    assert any(payload is vote for _, payload in transport.sent)  # relayed: handled
    assert runtime.core._total(0, VoteKind.PREVOTE) == 1


def test_a_pipelined_node_answers_every_deferred_request_for_txs() -> None:
    """With heights overlapping a node may be asked to propose two (height, round) slots
    at once, e.g. round 1 of height 1 and round 0 of height 2; with an empty mempool both
    wait, and both are proposed when they wake (one used to replace the other)."""
    state = genesis(lag=3, run=1)
    me = proposer(state, 2, 0)
    assert me is proposer(state, 1, 1)
    transport, clock = RecordingTransport(), ManualClock()
    node = NodeRuntime(me, state.config, MemoryStore(), transport, clock)
    node.start()
    p1 = child(state, proposer(state, 1, 0), 0)
    node.receive(1, proposal(state, p1))  # height 2 opens on P1: asks for txs, waits
    for event in votes(state, VoteKind.PREVOTE, p1, others(state, me)[:2], round_=1):
        node.receive(1, event.vote)  # f+1 in round 1 of height 1: asks again, waits
    wakes = [event for _, event in clock.timers if isinstance(event, Wake)]
    assert {(w.request.height, w.request.round) for w in wakes} == {(1, 1), (2, 0)}
    for wake in wakes:
        node.fire(wake)
    mine = {
        (m.height, m.round)
        for _, m in transport.sent
        if isinstance(m, Proposal) and m.proposer == me.public
    }
    assert mine == {(1, 1), (2, 0)}
