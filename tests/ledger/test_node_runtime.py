"""NodeRuntime's handling of messages from far-ahead heights (flooding and catch-up)."""

from __future__ import annotations

from chainkit import Kit

from medshare.crypto.signing import SigningKey
from medshare.ledger.node import NodeRuntime, SyncRequest
from medshare.ledger.store import MemoryStore
from medshare.ledger.types import Vote, VoteKind


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
    _, runtime, transport = _runtime()
    outsider = SigningKey.generate()
    for height in range(10**6, 10**6 + 50):
        runtime.receive(1, Vote.create(VoteKind.PREVOTE, height, 0, "aa" * 32, outsider))
    assert transport.sent == []
    assert all(h < 10**6 for h in runtime._seen)


def test_a_signed_far_future_vote_of_a_validator_starts_catch_up() -> None:
    kit, runtime, transport = _runtime()
    vote = Vote.create(VoteKind.PREVOTE, 40, 0, "aa" * 32, kit.keys[1])
    runtime.receive(1, vote)
    assert any(isinstance(payload, SyncRequest) for _, payload in transport.sent)
    assert not any(payload is vote for _, payload in transport.sent)  # not relayed
