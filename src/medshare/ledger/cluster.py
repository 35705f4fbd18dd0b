"""An in-process cluster of consensus nodes: tests, the demo and the in-process benchmark.

N :class:`~medshare.ledger.consensus.Consensus` cores share one process, one message
queue and one simulated clock. The queue is FIFO (deterministic) unless ``shuffle=True``,
in which case a ``random.Random(seed)`` picks the next message; when the queue is empty
the clock jumps to the next scheduled timeout. This module is the *driver*: it executes
the cores' actions in order (``Persist`` to the node's store before the ``Broadcast``
that follows it), keeps each node's mempool, gossips transactions, relays proposals and
votes once per node (so conflicting messages sent to different peers meet somewhere and
become evidence), serves catch-up requests from the stores, and can make nodes Byzantine
(:class:`Behaviour`) by rewriting what they send: the core inside stays honest.

Mempool: dedupe by txid, drop stale nonces (committed or replayed), verify each
signature once on admission and remember it, so block validation (``verified=``) does
not verify again.

Crash and restart: :meth:`InProcessCluster.crash` drops a node's memory (core, mempool,
pending timers and messages to it); :meth:`InProcessCluster.restart` rebuilds it from its
store (re-verified from genesis) plus the consensus WAL, then fetches the certified blocks
it missed from a peer.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import islice

from medshare.crypto import signing
from medshare.ledger import audit, chain
from medshare.ledger.consensus import (
    WAL_KEY,
    Action,
    Broadcast,
    Commit,
    Committed,
    ConflictingProposals,
    Consensus,
    ConsensusConfig,
    EvidenceFound,
    Persist,
    Proposal,
    RequestBlocks,
    RequestTxs,
    ScheduleTimeout,
    Start,
    Timeout,
    TxsAvailable,
    VoteReceived,
)
from medshare.ledger.store import BlockStore, MemoryStore
from medshare.ledger.types import Block, Equivocation, Tx, TxKind, Vote, digest_hex

SYNC_BATCH = 64


class Behaviour(StrEnum):
    """What a Byzantine node does to the messages its (honest) core sends."""

    EQUIVOCATING_PROPOSER = "equivocating_proposer"  # two valid blocks to the two halves
    INVALID_BLOCK = "invalid_block"  # bad state root / forged tx in every proposal
    SILENT = "silent"  # never sends a vote
    DOUBLE_VOTER = "double_voter"  # each vote also signed for another block (or nil)


class LivenessError(RuntimeError):
    """The run stopped making progress (or exceeded its step budget)."""


class SafetyViolation(AssertionError):
    """Two honest nodes committed different blocks at one height."""


class Mempool:
    """Pending transactions of one node, keyed by txid, each signature verified once."""

    def __init__(self) -> None:
        self._txs: dict[str, Tx] = {}
        self._by_id: dict[int, Tx] = {}  # id(tx) -> tx: verified objects (fast path)
        self._verified: set[str] = set()
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, txid: object) -> bool:
        return txid in self._txs

    def admit(self, tx: Tx, txid: str, next_nonce: Callable[[bytes], int]) -> bool:
        """Add ``tx`` unless known, stale (nonce already used) or badly signed."""
        if txid in self._txs or tx.nonce < next_nonce(tx.sender):
            return False
        if txid not in self._verified:
            try:
                tx.verify()
            except signing.InvalidSignature:
                self.rejected += 1
                return False
            self._verified.add(txid)
        self._txs[txid] = tx
        self._by_id[id(tx)] = tx
        return True

    def is_verified(self, tx: Tx) -> bool:
        """The ``verified`` predicate for the chain rules."""
        return self._by_id.get(id(tx)) is tx or tx.txid in self._verified

    def take(self, limit: int, next_nonce: Callable[[bytes], int]) -> tuple[Tx, ...]:
        """Up to ``limit`` candidates, each sender's in nonce order, otherwise by arrival."""
        live = [tx for tx in self._txs.values() if tx.nonce >= next_nonce(tx.sender)]
        live.sort(key=lambda tx: tx.nonce)
        return tuple(live[:limit])

    def purge(self, next_nonce: Callable[[bytes], int]) -> None:
        """Forget committed and replayed transactions (nonce below the sender's next)."""
        stale = [txid for txid, tx in self._txs.items() if tx.nonce < next_nonce(tx.sender)]
        for txid in stale:
            tx = self._txs.pop(txid)
            self._by_id.pop(id(tx), None)


@dataclass(frozen=True)
class _TxGossip:
    tx: Tx
    txid: str  # what the receiver would get by hashing the bytes on the wire


@dataclass(frozen=True)
class _SyncRequest:
    from_height: int


@dataclass(frozen=True)
class _SyncReply:
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class _Wake:
    """The driver's own timer: answer a deferred RequestTxs with whatever is pending."""

    request: RequestTxs


@dataclass(eq=False)
class Node:
    """One simulated node: its key, store, core (``None`` while crashed) and mempool.

    ``crash_before`` is a fault-injection hook: the node crashes right before executing
    the first action for which it returns True (e.g. before appending a block, or between
    persisting a vote and sending it)."""

    index: int
    key: signing.SigningKey
    public: bytes
    store: BlockStore
    behaviour: Behaviour | None = None
    consensus: Consensus | None = None
    mempool: Mempool = field(default_factory=Mempool)
    incarnation: int = 0
    seen: dict[int, set[bytes]] = field(default_factory=dict)  # height -> message signatures
    evidence: list[Equivocation | ConflictingProposals] = field(default_factory=list)
    reported: set[bytes] = field(default_factory=set)
    next_own_nonce: int = 0
    pending_request: RequestTxs | None = None
    crash_before: Callable[[Action], bool] | None = None
    twins: dict[str, str] = field(default_factory=dict)  # equivocator: block -> twin hash
    tampered: int = 0  # invalid proposals sent (alternates the kind of invalidity)
    committed_txs: int = 0

    @property
    def alive(self) -> bool:
        return self.consensus is not None

    @property
    def honest(self) -> bool:
        return self.behaviour is None

    @property
    def core(self) -> Consensus:
        if self.consensus is None:
            raise RuntimeError(f"node {self.index} is crashed")
        return self.consensus

    @property
    def state(self) -> chain.ChainState:
        return self.core.state


class InProcessCluster:
    """N nodes, one FIFO (or seeded-shuffle) queue, one simulated clock in ms.

    ``byzantine`` maps node index to a :class:`Behaviour`; ``relay`` forwards each proposal
    and vote once per node (gossip); ``empty_block_interval_ms`` is how long a proposer with
    an empty mempool waits before proposing an empty block."""

    def __init__(
        self,
        config: chain.ChainConfig,
        keys: Sequence[signing.SigningKey],
        stores: Sequence[BlockStore] | None = None,
        byzantine: dict[int, Behaviour] | None = None,
        seed: int = 0,
        *,
        consensus: ConsensusConfig | None = None,
        relay: bool = True,
        shuffle: bool = False,
        empty_block_interval_ms: int = 50,
    ) -> None:
        if stores is not None and len(stores) != len(keys):
            raise ValueError("need one store per key")
        self.config = config
        self.consensus_config = consensus or ConsensusConfig()
        self.rng = random.Random(seed)
        self.relay, self.shuffle = relay, shuffle
        self.empty_block_interval_ms = empty_block_interval_ms
        self.now_ms = config.genesis_time_ms
        self._queue: deque[tuple[int, int, object]] = deque()
        self._timers: list[tuple[int, int, int, int, Timeout | _Wake]] = []
        self._seq = itertools.count()
        self.delivered: Counter[str] = Counter()
        self.evidence: list[tuple[int, Equivocation | ConflictingProposals]] = []
        byz = byzantine or {}
        self.nodes = [
            Node(i, k, k.public, stores[i] if stores is not None else MemoryStore(), byz.get(i))
            for i, k in enumerate(keys)
        ]
        for node in self.nodes:
            self._boot(node)

    # --- public API ------------------------------------------------------------------------

    def node(self, i: int) -> Node:
        return self.nodes[i]

    def submit(self, tx: Tx, node: int = 0) -> bool:
        """Give ``tx`` to one node, which admits it and gossips it to the others."""
        return self._admit_and_gossip(self.nodes[node], tx)

    def heads(self) -> list[tuple[int, str] | None]:
        return [(n.state.height, n.state.head_hash) if n.alive else None for n in self.nodes]

    def honest(self) -> list[Node]:
        return [n for n in self.nodes if n.honest]

    def step(self) -> bool:
        """Deliver one message, or fire the next timer; False when nothing is left."""
        if self._queue:
            if self.shuffle and len(self._queue) > 1:
                i = self.rng.randrange(len(self._queue))
                self._queue.rotate(-i)
                item = self._queue.popleft()
                self._queue.rotate(i)
            else:
                item = self._queue.popleft()
            self._deliver(*item)
            return True
        while self._timers:
            at, _, index, incarnation, event = heapq.heappop(self._timers)
            node = self.nodes[index]
            if node.incarnation != incarnation or not node.alive:
                continue
            self.now_ms = max(self.now_ms, at)
            self._fire(node, event)
            return True
        return False

    def run_until_height(self, height: int, max_steps: int = 500_000) -> int:
        """Run until every live honest node has committed ``height``; returns steps taken."""
        steps = 0
        while min((n.state.height for n in self.honest() if n.alive), default=height) < height:
            if steps >= max_steps:
                raise LivenessError(f"no height {height} after {max_steps} steps: {self.heads()}")
            if not self.step():
                raise LivenessError(f"cluster idle before height {height}: {self.heads()}")
            steps += 1
        return steps

    def run_for(self, ms: int, max_steps: int = 500_000) -> int:
        """Run until the simulated clock has advanced ``ms``; returns steps taken."""
        deadline = self.now_ms + ms
        steps = 0
        while steps < max_steps:
            if not self._queue and (not self._timers or self._timers[0][0] > deadline):
                break
            self.step()
            steps += 1
        self.now_ms = max(self.now_ms, deadline)
        return steps

    def crash(self, i: int) -> None:
        """Lose node ``i``'s memory; its store (blocks and WAL) survives."""
        node = self.nodes[i]
        node.consensus = None
        node.incarnation += 1
        node.mempool = Mempool()
        node.seen.clear()
        node.pending_request = None
        node.crash_before = None

    def restart(self, i: int, store: BlockStore | None = None) -> None:
        """Rebuild node ``i`` from its store (or ``store``, e.g. the SQLite file reopened)
        and its WAL, then catch up from a peer."""
        node = self.nodes[i]
        if node.alive:
            raise RuntimeError(f"node {i} is running")
        if store is not None:
            node.store = store
        self._boot(node)
        self._request_sync(node, node.core.height)

    def check_safety(self) -> int:
        """Raise :class:`SafetyViolation` unless all honest stores agree at every height
        they share; returns the number of heights compared."""
        seen: dict[int, tuple[int, str]] = {}
        for node in self.honest():
            for block in node.store.blocks():
                first = seen.setdefault(block.height, (node.index, block.hash))
                if first[1] != block.hash:
                    raise SafetyViolation(
                        f"height {block.height}: node {first[0]} committed {first[1][:12]}, "
                        f"node {node.index} committed {block.hash[:12]}"
                    )
        return len(seen)

    # --- driver ----------------------------------------------------------------------------

    def _boot(self, node: Node) -> None:
        state = audit.init_store(node.store, self.config)
        last_commit = None
        if node.store.height() > 0:
            state = audit.replay(node.store)
            head = node.store.get(node.store.height())
            last_commit = head.certificate if head is not None else None
        node.mempool = Mempool()
        node.consensus = Consensus(
            node.key,
            state,
            self.consensus_config,
            last_commit=last_commit,
            wal=node.store.get_meta(WAL_KEY),
            verified=node.mempool.is_verified,
        )
        self._execute(node, node.consensus.step(Start()))

    def _execute(self, node: Node, actions: list[Action]) -> None:
        """Run a core's actions in order (the write-ahead order the core chose)."""
        work = deque(actions)
        incarnation = node.incarnation
        while work and node.incarnation == incarnation:
            action = work.popleft()
            if node.crash_before is not None and node.crash_before(action):
                self.crash(node.index)
                return
            if isinstance(action, Broadcast):
                self._broadcast(node, action.message)
            elif isinstance(action, Persist):
                node.store.put_meta(action.key, action.value)
            elif isinstance(action, ScheduleTimeout):
                timeout = Timeout(action.height, action.round, action.step)
                self._schedule(node, action.delay_ms, timeout)
            elif isinstance(action, RequestTxs):
                work.extend(self._answer_txs(node, action, deferred=False))
            elif isinstance(action, Commit):
                node.store.append(action.block)
                node.committed_txs += len(action.block.txs)
                node.mempool.purge(node.core.state.next_nonce)
                for height in [h for h in node.seen if h < action.block.height]:
                    del node.seen[height]
            elif isinstance(action, EvidenceFound):
                self._on_evidence(node, action.evidence)
            elif isinstance(action, RequestBlocks):
                self._request_sync(node, action.from_height)
            else:  # pragma: no cover - the Action union is closed
                raise TypeError(f"unknown action {action!r}")

    def _schedule(self, node: Node, delay_ms: int, event: Timeout | _Wake) -> None:
        entry = (self.now_ms + delay_ms, next(self._seq), node.index, node.incarnation, event)
        heapq.heappush(self._timers, entry)

    def _fire(self, node: Node, event: Timeout | _Wake) -> None:
        if isinstance(event, _Wake):
            if node.pending_request == event.request:
                self._execute(node, self._answer_txs(node, event.request, deferred=True))
            return
        self._execute(node, node.core.step(event))

    def _answer_txs(self, node: Node, request: RequestTxs, *, deferred: bool) -> list[Action]:
        """Propose now if there is something to propose, else after the empty-block interval
        (an idle cluster would otherwise spin out empty blocks without the clock moving)."""
        txs = node.mempool.take(request.max_txs, node.core.state.next_nonce)
        if not txs and not deferred:
            node.pending_request = request
            self._schedule(node, self.empty_block_interval_ms, _Wake(request))
            return []
        node.pending_request = None
        return node.core.step(TxsAvailable(request.height, request.round, txs, self.now_ms))

    def _send(self, src: int, dest: int, payload: object) -> None:
        self._queue.append((dest, src, payload))

    def _deliver(self, dest: int, src: int, payload: object) -> None:
        node = self.nodes[dest]
        if not node.alive:
            return
        self.delivered[type(payload).__name__] += 1
        if isinstance(payload, Proposal | Vote):
            seen = node.seen.setdefault(payload.height, set())
            if payload.signature in seen:
                return
            seen.add(payload.signature)
            if self.relay:
                for j in range(len(self.nodes)):
                    if j not in (dest, src):
                        self._send(dest, j, payload)
            event = payload if isinstance(payload, Proposal) else VoteReceived(payload)
            self._execute(node, node.core.step(event))
        elif isinstance(payload, _TxGossip):
            self._admit(node, payload.tx, payload.txid)
        elif isinstance(payload, _SyncRequest):
            blocks = tuple(islice(node.store.blocks(payload.from_height), SYNC_BATCH))
            if blocks:
                self._send(dest, src, _SyncReply(blocks))
        elif isinstance(payload, _SyncReply):
            for block in payload.blocks:
                if not node.alive:
                    return
                self._execute(node, node.core.step(Committed(block)))
            if len(payload.blocks) == SYNC_BATCH and node.alive:
                self._request_sync(node, node.core.height)

    def _admit(self, node: Node, tx: Tx, txid: str) -> bool:
        if not node.mempool.admit(tx, txid, node.core.state.next_nonce):
            return False
        request = node.pending_request
        if request is not None and len(node.mempool) >= request.max_txs:
            self._execute(node, self._answer_txs(node, request, deferred=True))
        return True

    def _admit_and_gossip(self, node: Node, tx: Tx) -> bool:
        txid = tx.txid
        if not node.alive or not self._admit(node, tx, txid):
            return False
        for j in range(len(self.nodes)):
            if j != node.index:
                self._send(node.index, j, _TxGossip(tx, txid))
        return True

    def _request_sync(self, node: Node, from_height: int) -> None:
        peers = [
            n for n in self.nodes if n is not node and n.alive and n.store.height() >= from_height
        ]
        if peers:
            best = max(peers, key=lambda n: (n.store.height(), -n.index))
            self._send(node.index, best.index, _SyncRequest(from_height))

    def _on_evidence(self, node: Node, evidence: Equivocation | ConflictingProposals) -> None:
        """Honest nodes turn vote equivocation into an EVIDENCE tx (the kind chain.py knows)."""
        node.evidence.append(evidence)
        self.evidence.append((node.index, evidence))
        if not node.honest or not isinstance(evidence, Equivocation):
            return
        offender = evidence.first.voter
        validator = node.state.validator(offender)
        if offender in node.reported or validator is None or validator.ejected:
            return
        node.reported.add(offender)
        nonce = max(node.state.next_nonce(node.public), node.next_own_nonce)
        node.next_own_nonce = nonce + 1
        tx = Tx.create(TxKind.EVIDENCE, evidence.to_body(), nonce, node.key)
        self._admit_and_gossip(node, tx)

    # --- Byzantine behaviours --------------------------------------------------------------

    def _broadcast(self, node: Node, message: Proposal | Vote) -> None:
        node.seen.setdefault(message.height, set()).add(message.signature)
        for dest, payload in self._outgoing(node, message):
            self._send(node.index, dest, payload)

    def _outgoing(self, node: Node, msg: Proposal | Vote) -> list[tuple[int, Proposal | Vote]]:
        peers = [j for j in range(len(self.nodes)) if j != node.index]
        everyone = [(j, msg) for j in peers]
        half = len(peers) // 2
        first, second = peers[:half], peers[half:]
        kind, key = node.behaviour, node.key
        if kind is None:
            return everyone
        if kind is Behaviour.SILENT:
            return [] if isinstance(msg, Vote) else everyone
        if kind is Behaviour.DOUBLE_VOTER and isinstance(msg, Vote):
            other = None if msg.block_hash is not None else digest_hex(msg.signature)
            twin = Vote.create(msg.kind, msg.height, msg.round, other, key)
            return [(j, msg) for j in first] + [(j, twin) for j in second]
        if kind is Behaviour.EQUIVOCATING_PROPOSER:
            if isinstance(msg, Proposal):
                header = msg.block.header
                block = Block(
                    replace(header, timestamp_ms=header.timestamp_ms + 1),
                    msg.block.txs,
                    msg.block.last_commit,
                )
                node.twins[msg.block.hash] = block.hash
                twin = Proposal.create(msg.height, msg.round, block, msg.pol_round, key)
                return [(j, msg) for j in first] + [(j, twin) for j in second]
            if msg.block_hash in node.twins:
                twin_vote = Vote.create(
                    msg.kind, msg.height, msg.round, node.twins[msg.block_hash], key
                )
                return [(j, msg) for j in first] + [(j, twin_vote) for j in second]
        if kind is Behaviour.INVALID_BLOCK and isinstance(msg, Proposal):
            bad = self._invalid_block(node, msg)
            forged = Proposal.create(msg.height, msg.round, bad, msg.pol_round, key)
            return [(j, forged) for j in peers]
        return everyone

    def _invalid_block(self, node: Node, msg: Proposal) -> Block:
        """Alternately a block with a wrong state root and one carrying a forged tx (with
        roots consistent, so only the signature check catches it)."""
        block, state = msg.block, node.core.state
        node.tampered += 1
        if node.tampered % 2 == 1 or state.height + 1 != msg.height:
            return Block(replace(block.header, state_root="ff" * 32), block.txs, block.last_commit)
        own = sum(1 for tx in block.txs if tx.sender == node.public)
        nonce = state.next_nonce(node.public) + own
        body = {"record": "forged", "patient": "p", "dept": "0000", "digest": "00" * 32}
        forged = Tx(TxKind.ANCHOR_RECORD, node.public, nonce, body, bytes(64))
        bad, _ = chain.build_block(
            state,
            (*block.txs, forged),
            node.public,
            block.header.timestamp_ms,
            block.last_commit,
            verified=lambda _tx: True,
        )
        return bad
