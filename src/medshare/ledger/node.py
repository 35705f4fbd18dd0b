"""The node driver: one node's consensus core, mempool and store behind two small ports.

:class:`NodeRuntime` is the only place that performs the actions of the sans-I/O core
(:mod:`medshare.ledger.consensus`), in the order the core returned them: ``Persist`` to the
store before the ``Broadcast`` that follows it (write-ahead), ``Commit`` appends the
certified block, ``RequestTxs`` is answered from the mempool, ``EvidenceFound`` becomes an
EVIDENCE transaction, ``RequestBlocks`` asks a peer for certified blocks.

It talks to the outside only through two ports, so the same driver runs inside the
in-process cluster (a FIFO queue and a simulated clock, :mod:`medshare.ledger.cluster`),
and in a real process (HTTP and the wall clock, :mod:`medshare.ledger.netnode`):

* :class:`Transport` moves messages (:data:`Message`) to peers named by an address
  (an index in-process, a public key over HTTP); delivery may fail silently;
* :class:`Clock` reads the time for block timestamps and schedules timer events, which
  come back through :meth:`NodeRuntime.fire` exactly like a message comes back through
  :meth:`NodeRuntime.receive`.

The runtime is single-threaded by contract: the caller serialises every call into it.
Recovery goes through the same door as normal operation: :meth:`NodeRuntime.start`
replays the store from genesis (re-verifying every block), hands the consensus WAL record
to a fresh core and asks a peer for the blocks it missed.

Mempool: dedupe by txid, drop stale nonces (committed or replayed), verify each signature
once on admission and remember it, so block validation (``verified=``) does not verify it
again.

Byzantine behaviours (:class:`Behaviour`, tests and the simulator only) rewrite what an
otherwise honest node sends; the core inside stays honest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import islice
from typing import Any, Protocol

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
    credible,
)
from medshare.ledger.pipeline import PipelinedConsensus
from medshare.ledger.store import BlockStore
from medshare.ledger.types import (
    TX_DOMAIN,
    Block,
    CommitCertificate,
    Equivocation,
    LedgerFormatError,
    Tx,
    TxKind,
    Vote,
    digest_hex,
    invalid_block_body,
)

SYNC_BATCH = 64  # certified blocks per sync reply
MAX_MEMPOOL = 100_000

Address = int | bytes


# --- messages between nodes ---------------------------------------------------------------------


@dataclass(frozen=True)
class TxGossip:
    """A transaction a node admitted, forwarded to its peers."""

    tx: Tx
    txid: str  # what the receiver gets by hashing the bytes on the wire

    def to_json(self) -> dict:
        return {"tx": self.tx.to_json()}

    @classmethod
    def from_json(cls, doc: object) -> TxGossip:
        if not isinstance(doc, dict):
            raise LedgerFormatError("tx gossip must be an object")
        tx = Tx.from_json(doc.get("tx"))
        return cls(tx, tx.txid)  # never trust a txid from the wire


@dataclass(frozen=True)
class SyncRequest:
    """Please send your certified blocks from ``from_height`` on (at most a batch)."""

    from_height: int

    def to_json(self) -> dict:
        return {"from": self.from_height}

    @classmethod
    def from_json(cls, doc: object) -> SyncRequest:
        value = doc.get("from") if isinstance(doc, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LedgerFormatError("sync request needs a height ≥ 0")
        return cls(value)


@dataclass(frozen=True)
class SyncReply:
    """Certified blocks in height order (each checked by the receiver's core)."""

    blocks: tuple[Block, ...]

    def to_json(self) -> dict:
        return {"blocks": [block.to_json() for block in self.blocks]}

    @classmethod
    def from_json(cls, doc: object) -> SyncReply:
        blocks = doc.get("blocks") if isinstance(doc, dict) else None
        if not isinstance(blocks, list) or len(blocks) > SYNC_BATCH:
            raise LedgerFormatError(f"sync reply needs a list of at most {SYNC_BATCH} blocks")
        return cls(tuple(Block.from_json(block) for block in blocks))


@dataclass(frozen=True)
class CommitNotice:
    """The certificate of a block the sender committed, for nodes that hold the block (from
    its proposal) but do not see the votes (e.g. outside the committee)."""

    certificate: CommitCertificate

    def to_json(self) -> dict:
        return {"certificate": self.certificate.to_json()}

    @classmethod
    def from_json(cls, doc: object) -> CommitNotice:
        if not isinstance(doc, dict):
            raise LedgerFormatError("commit notice must be an object")
        return cls(CommitCertificate.from_json(doc.get("certificate")))


Message = Proposal | Vote | TxGossip | SyncRequest | SyncReply | CommitNotice

_MESSAGE_TYPES: dict[str, Any] = {
    "proposal": Proposal,
    "vote": Vote,
    "tx": TxGossip,
    "sync_request": SyncRequest,
    "sync_reply": SyncReply,
    "commit_notice": CommitNotice,
}
_TYPE_NAMES = {cls: name for name, cls in _MESSAGE_TYPES.items()}


def message_to_json(message: Message) -> dict:
    """``{"type": ..., "body": ...}``; encode with :func:`~medshare.ledger.types.canonical`."""
    return {"type": _TYPE_NAMES[type(message)], "body": message.to_json()}


def message_from_json(doc: object) -> Message:
    """Decode one message; raises :class:`LedgerFormatError` for anything malformed."""
    if not isinstance(doc, dict) or doc.get("type") not in _MESSAGE_TYPES:
        raise LedgerFormatError("not a node message (unknown or missing type)")
    return _MESSAGE_TYPES[doc["type"]].from_json(doc.get("body"))


# --- timer events (scheduled through the Clock, fired back into the runtime) --------------------


@dataclass(frozen=True)
class Wake:
    """Answer a deferred RequestTxs with whatever is pending (possibly nothing)."""

    request: RequestTxs


@dataclass(frozen=True)
class SyncRetry:
    """A sync request may have been lost: ask another peer if we are still behind."""

    from_height: int


@dataclass(frozen=True)
class Regossip:
    """Periodic: if nothing committed since the last tick, send our own proposal and votes
    of the current height again (a lossy transport may have dropped them, and a round
    that waits for 2f+1 messages has no timeout running until they arrive)."""


@dataclass(frozen=True)
class StallCheck:
    """Armed when a peer is known to have committed our height: if we have committed
    nothing since (``commits``), our height's last messages were lost; ask for blocks."""

    commits: int


TimerEvent = Timeout | Wake | SyncRetry | Regossip | StallCheck


# --- ports --------------------------------------------------------------------------------------


class Transport(Protocol):
    """Best-effort delivery to peers; loss is tolerated (rounds time out, sync recovers)."""

    def send(self, dest: Address, payload: Message) -> None: ...
    def broadcast(self, payload: Message) -> None: ...  # to every peer
    def peers(self) -> Sequence[Address]: ...  # every other node, in a fixed order


# Optional transport method ``recipients(message) -> Sequence[Address]``: who a broadcast of
# ``message`` reaches (default: every peer); Byzantine rewriting splits those.


class Clock(Protocol):
    def now_ms(self) -> int: ...
    def schedule(self, delay_ms: int, event: TimerEvent) -> None: ...


# --- mempool ------------------------------------------------------------------------------------


class Rejected(Exception):
    """A transaction the node does not admit; the message says why."""


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

    def offer(self, tx: Tx, txid: str, next_nonce: Callable[[bytes], int]) -> str | None:
        """Add ``tx``; returns why not (known, stale nonce, bad signature) or None."""
        if txid in self._txs:
            return "duplicate: already pending"
        expected = next_nonce(tx.sender)
        if tx.nonce < expected:
            return f"stale nonce {tx.nonce} (the sender's next is {expected}): replayed or used"
        if txid not in self._verified:
            try:
                tx.verify()
            except signing.InvalidSignature:
                self.rejected += 1
                return "invalid signature"
            self._verified.add(txid)
        self._txs[txid] = tx
        self._by_id[id(tx)] = tx
        return None

    def admit(self, tx: Tx, txid: str, next_nonce: Callable[[bytes], int]) -> bool:
        """Add ``tx`` unless known, stale (nonce already used) or badly signed."""
        return self.offer(tx, txid, next_nonce) is None

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


class Behaviour(StrEnum):
    """What a Byzantine node does to the messages its (honest) core sends."""

    EQUIVOCATING_PROPOSER = "equivocating_proposer"  # two valid blocks to the two halves
    INVALID_BLOCK = "invalid_block"  # bad state root / forged tx in every proposal
    SILENT = "silent"  # never sends a vote
    DOUBLE_VOTER = "double_voter"  # each vote also signed for another block (or nil)


# --- the runtime --------------------------------------------------------------------------------


class NodeRuntime:
    """One node: consensus core, mempool, store, evidence reporting, sync, tx admission.

    Construct, then :meth:`start`. Feed it :meth:`receive` (a peer's message),
    :meth:`fire` (a timer event scheduled through the clock) and :meth:`submit` (a client's
    transaction). ``relay`` forwards each proposal and vote once (gossip, so conflicting
    messages sent to different peers meet and become evidence);
    ``empty_block_interval_ms`` is how long a proposer with an empty mempool waits before
    proposing an empty block; with ``batch_wait_ms`` set, a transaction arriving while
    the proposer waits is proposed that long after (otherwise only a full block or the
    interval ends the wait). With ``regossip_ms`` set, a node that has committed nothing
    for that long re-sends its own messages of the current height (needed over a lossy
    transport; the in-process queue loses nothing). With ``sync_wait_ms`` set, a node that
    finds itself behind waits that long for blocks in flight before asking a peer.
    ``mempool`` replaces the default :class:`Mempool`; ``notify(block)`` names the peers
    to send a :class:`CommitNotice` after committing ``block``.

    Hooks: ``on_commit(block)``, ``on_evidence(evidence)``, and ``crash_before(action)``,
    a fault injector: when it returns True the runtime halts before that action and calls
    ``on_halt()``.
    """

    def __init__(
        self,
        key: signing.SigningKey,
        config: chain.ChainConfig,
        store: BlockStore,
        transport: Transport,
        clock: Clock,
        *,
        consensus: ConsensusConfig | None = None,
        behaviour: Behaviour | None = None,
        relay: bool = True,
        empty_block_interval_ms: int = 50,
        batch_wait_ms: int | None = None,
        sync_retry_ms: int = 1000,
        regossip_ms: int | None = None,
        sync_wait_ms: int | None = None,
        mempool: Mempool | None = None,
        notify: Callable[[Block], Sequence[Address]] | None = None,
        on_commit: Callable[[Block], None] | None = None,
        on_evidence: Callable[[Equivocation | ConflictingProposals], None] | None = None,
        on_halt: Callable[[], None] | None = None,
    ) -> None:
        self.key, self.public = key, key.public
        self.config = config
        self.consensus_config = consensus or ConsensusConfig()
        self.store, self.transport, self.clock = store, transport, clock
        self.behaviour = behaviour
        self.relay = relay
        self.empty_block_interval_ms = empty_block_interval_ms
        self.batch_wait_ms = batch_wait_ms
        self.sync_retry_ms = sync_retry_ms
        self.regossip_ms = regossip_ms
        self.sync_wait_ms, self.notify = sync_wait_ms, notify
        self.on_commit, self.on_evidence, self.on_halt = on_commit, on_evidence, on_halt
        self.crash_before: Callable[[Action], bool] | None = None
        self.mempool = mempool if mempool is not None else Mempool()
        self.halted = False
        self.evidence: list[Equivocation | ConflictingProposals] = []
        self._core: Consensus | PipelinedConsensus | None = None
        self._seen: dict[int, set[bytes]] = {}  # height -> message signatures
        self._early: dict[int, set[bytes]] = {}  # the same, for far-ahead messages
        self._own: dict[bytes, Proposal | Vote] = {}  # what we signed at the current height
        self._proposals: dict[tuple[int, int], Proposal] = {}  # first per (height, round)
        self._notices: dict[int, CommitCertificate] = {}  # arrived before their proposal
        self._commits = 0
        self._commits_at_tick = -1
        self._reported: set[bytes] = set()
        self._next_own_nonce = 0
        # Requests for txs waiting for some (by height and round: a pipeline may have
        # several open at once), and those already given an early wake-up.
        self._pending_requests: dict[tuple[int, int], RequestTxs] = {}
        self._early_wakes: set[tuple[int, int]] = set()
        self._known_height = -1  # highest height some peer is known to have committed
        self._sync_cursor = 0
        self._sync_retry_armed = False
        self._stall_armed = False
        self._twins: dict[str, str] = {}  # equivocator: block -> twin hash
        self._tampered = 0  # invalid proposals sent (alternates the kind of invalidity)

    # --- view ------------------------------------------------------------------------------

    @property
    def core(self) -> Consensus | PipelinedConsensus:
        if self._core is None:
            raise RuntimeError("node runtime not started")
        return self._core

    @property
    def state(self) -> chain.ChainState:
        return self.core.state

    @property
    def honest(self) -> bool:
        return self.behaviour is None

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "height": core.state.height,
            "head": core.state.head_hash,
            "committee": [member.hex() for member in core.committee],
            "member": core.is_member,
            "round": core.round,
            "step": str(core.step_name),
            "mempool": len(self.mempool),
        }

    def blocks(self, from_height: int, limit: int = SYNC_BATCH) -> list[Block]:
        """Certified blocks from ``from_height`` on (genesis has no certificate)."""
        return list(islice(self.store.blocks(max(from_height, 0)), max(limit, 0)))

    # --- inputs ----------------------------------------------------------------------------

    def start(self, *, catch_up: bool = False) -> None:
        """Boot from the store (re-verified from genesis) and the consensus WAL; with
        ``catch_up``, ask a peer for the blocks committed while we were away."""
        state = audit.init_store(self.store, self.config)
        if self.store.height() > 0:
            state = audit.replay(self.store)
        # A chain with a certificate lag > 1 overlaps heights (ledger/pipeline.py).
        core = PipelinedConsensus if self.config.pipelined else Consensus
        self._core = core(
            self.key,
            state,
            self.consensus_config,
            certificates=self._pending_certificates(state),
            wal=self.store.get_meta(WAL_KEY),
            verified=self.mempool.is_verified,
        )
        self._execute(self._core.step(Start()))
        if self.regossip_ms is not None:
            self.clock.schedule(self.regossip_ms, Regossip())
        if catch_up and not self.halted:
            self._request_sync(self.core.height)

    def _pending_certificates(self, state: chain.ChainState) -> dict[int, CommitCertificate]:
        """The stored certificates of the blocks no later block certified yet (the next
        block must carry the oldest; with the default lag of 1, the head's)."""
        out = {}
        for head in state.pending:
            block = self.store.get(head.height)
            if block is not None and block.certificate is not None:
                out[head.height] = block.certificate
        return out

    def receive(self, src: Address, payload: Message) -> None:
        """A message from peer ``src``."""
        if self.halted:
            return
        if isinstance(payload, Proposal | Vote):
            if payload.height > self.core.horizon:
                # Far ahead: we are behind, or someone floods us with made-up heights. Only a
                # validly signed message of a known validator is remembered (once) and may
                # start a catch-up; it is not relayed. Forged ones cost one check and vanish.
                # The core does not keep it, so it is not "seen": re-sent (regossip) once we
                # have caught up, it is handled like any other message.
                early = self._early.get(payload.height, ())
                if payload.signature in early or not self._credible(payload):
                    return
                self._early.setdefault(payload.height, set()).add(payload.signature)
                self._learn_height(payload.height)
                self._execute(self.core.step(_as_event(payload)), src)
                return
            seen = self._seen.setdefault(payload.height, set())
            if payload.signature in seen:
                return
            seen.add(payload.signature)
            if self.relay:
                for peer in self.transport.peers():
                    if peer != src:
                        self.transport.send(peer, payload)
            self._learn_height(payload.height)
            if isinstance(payload, Vote):
                self._execute(self.core.step(VoteReceived(payload)), src)
                return
            self._proposals.setdefault((payload.height, payload.round), payload)
            self._execute(self.core.step(payload), src)
            self._check_forged_txs(payload)
            notice = self._notices.get(payload.height)
            if notice is not None and notice.round == payload.round:
                del self._notices[payload.height]
                self._on_notice(src, notice)
        elif isinstance(payload, CommitNotice):
            self._on_notice(src, payload.certificate)
        elif isinstance(payload, TxGossip):
            self._admit(payload.tx, payload.txid)
        elif isinstance(payload, SyncRequest):
            blocks = tuple(self.blocks(payload.from_height))
            if blocks:
                self.transport.send(src, SyncReply(blocks))
        elif isinstance(payload, SyncReply):
            for block in payload.blocks:
                if self.halted:
                    return
                self._known_height = max(self._known_height, block.height)
                self._execute(self.core.step(Committed(block)), src)
            if len(payload.blocks) == SYNC_BATCH and not self.halted:
                self._request_sync(self.core.height, src)
        else:  # pragma: no cover - the Message union is closed
            raise TypeError(f"unknown message {payload!r}")

    def _learn_height(self, message_height: int) -> None:
        """A peer sent a message for ``message_height``, so it committed at least
        ``core.peer_committed`` of it. If that is ours, check after a while that we moved on:
        a node whose height's last votes were lost (peers never resend them once they
        have decided) would otherwise wait forever if its votes are needed above."""
        self._known_height = max(self._known_height, self.core.peer_committed(message_height))
        if self._known_height >= self.core.height and not self._stall_armed:
            self._stall_armed = True
            self.clock.schedule(self.sync_retry_ms, StallCheck(self._commits))

    def _credible(self, message: Proposal | Vote) -> bool:
        return credible(message, self.core.state)

    def fire(self, event: TimerEvent) -> None:
        """A timer scheduled through the clock came due."""
        if self.halted:
            return
        if isinstance(event, Wake):
            request = event.request
            if self._pending_requests.get((request.height, request.round)) == request:
                self._execute(self._answer_txs(request, deferred=True))
        elif isinstance(event, SyncRetry):
            self._sync_retry_armed = False
            # Still behind, ask from where we are now: this node may have advanced past
            # ``event.from_height`` since it was armed (a late proposal, notices) and
            # still lack a block; no other retry could be armed meanwhile.
            if self.core.height <= self._known_height:
                self._request_sync(self.core.height)
        elif isinstance(event, StallCheck):
            self._stall_armed = False
            if self.core.height > self._known_height:
                return  # caught up
            if self._commits == event.commits:
                self._request_sync(self.core.height)
            else:  # moved on, but still behind: look again later
                self._stall_armed = True
                self.clock.schedule(self.sync_retry_ms, StallCheck(self._commits))
        elif isinstance(event, Regossip):
            if self._commits == self._commits_at_tick:
                for message in list(self._own.values()):
                    self._send_out(message)
            self._commits_at_tick = self._commits
            if self.regossip_ms is not None:
                self.clock.schedule(self.regossip_ms, Regossip())
        else:
            self._execute(self.core.step(event))

    def submit(self, tx: Tx) -> str:
        """A client's transaction: admit it and gossip it; returns the txid or raises
        :class:`Rejected` (committed, pending, stale nonce, bad signature, full)."""
        if self.halted:
            raise Rejected("node is not running")
        txid = tx.txid
        where = self.store.find_tx(txid)
        if where is not None:
            raise Rejected(f"duplicate: already committed at height {where[0]}")
        reason = self._admit(tx, txid)
        if reason is not None:
            raise Rejected(reason)
        self.transport.broadcast(TxGossip(tx, txid))
        return txid

    def halt(self) -> None:
        """Stop acting on any input (a crash, or shutdown); the store stays as it is."""
        self.halted = True

    # --- actions ---------------------------------------------------------------------------

    def _execute(self, actions: list[Action], src: Address | None = None) -> None:
        """Run a core's actions in order (the write-ahead order the core chose). ``src`` is
        the peer whose message caused them (asked first when we turn out to be behind)."""
        work = deque(actions)
        while work and not self.halted:
            action = work.popleft()
            if self.crash_before is not None and self.crash_before(action):
                self.halt()
                if self.on_halt is not None:
                    self.on_halt()
                return
            if isinstance(action, Broadcast):
                self._broadcast(action.message)
            elif isinstance(action, Persist):
                self.store.put_meta(action.key, action.value)
            elif isinstance(action, ScheduleTimeout):
                timeout = Timeout(action.height, action.round, action.step)
                self.clock.schedule(action.delay_ms, timeout)
            elif isinstance(action, RequestTxs):
                work.extend(self._answer_txs(action, deferred=False))
            elif isinstance(action, Commit):
                self._commit(action.block)
            elif isinstance(action, EvidenceFound):
                self._on_evidence(action.evidence)
            elif isinstance(action, RequestBlocks):
                self._behind(action.from_height, src)
            else:  # pragma: no cover - the Action union is closed
                raise TypeError(f"unknown action {action!r}")

    def _commit(self, block: Block) -> None:
        self.store.append(block)
        self._commits += 1
        self._own = {s: m for s, m in self._own.items() if m.height > block.height}
        self._proposals = {k: p for k, p in self._proposals.items() if k[0] >= block.height}
        self.mempool.purge(self.core.state.next_nonce)
        for height in [h for h in self._seen if h < block.height]:
            del self._seen[height]
        for height in [h for h in self._early if h <= self.core.horizon]:
            del self._early[height]  # no longer far ahead
        for height in [h for h in self._notices if h <= block.height]:
            del self._notices[height]
        if self.notify is not None and block.certificate is not None:
            notice = CommitNotice(block.certificate)
            for dest in self.notify(block):
                self.transport.send(dest, notice)
        if self.on_commit is not None:
            self.on_commit(block)

    def _on_notice(self, src: Address, cert: CommitCertificate) -> None:
        """Commit from a peer's certificate if we hold its block; else wait or sync."""
        height = self.core.height
        if cert.height < height:
            return
        held = self._proposals.get((cert.height, cert.round))
        # One height at a time, a notice for a later height means we are behind; a pipeline
        # keeps notices as far as it keeps messages.
        last_open = self.core.horizon if self.config.pipelined else height
        if cert.height > last_open:
            # A peer committed cert.height (believed as far as a far-ahead vote is: one
            # valid signature of a validator), even if we later get the blocks up to it.
            votes = cert.votes()
            if votes and self._credible(votes[0]):
                self._known_height = max(self._known_height, cert.height)
            self._behind(height, src)  # the blocks may still be on their way
        elif held is None:
            self._notices[cert.height] = cert  # its proposal is on its way: apply it then
        elif held.block.hash != cert.block_hash:
            self._request_sync(height, src)  # we hold another block
        else:
            block = held.block.with_certificate(cert)
            self._execute(self.core.step(Committed(block)), src)

    def _behind(self, from_height: int, src: Address | None) -> None:
        """Ask for blocks now, or after ``sync_wait_ms`` if still behind then."""
        if self.sync_wait_ms is None:
            self._request_sync(from_height, src)
            return
        self._known_height = max(self._known_height, from_height)
        if not self._sync_retry_armed:
            self._sync_retry_armed = True
            self.clock.schedule(self.sync_wait_ms, SyncRetry(from_height))

    def _answer_txs(self, request: RequestTxs, *, deferred: bool) -> list[Action]:
        """Propose now if there is something to propose, else after the empty-block interval
        (an idle network would otherwise spin out empty blocks as fast as it can)."""
        slot = (request.height, request.round)
        try:  # nonces after the block this one builds on (in flight, on a pipeline)
            base = self.core.state_for(request.height)
        except ValueError:  # a stale request: that height is no longer open
            self._pending_requests.pop(slot, None)
            self._early_wakes.discard(slot)
            return []
        txs = self.mempool.take(request.max_txs, base.next_nonce)
        if not txs and not deferred:
            self._pending_requests[slot] = request
            self.clock.schedule(self.empty_block_interval_ms, Wake(request))
            return []
        self._pending_requests.pop(slot, None)
        self._early_wakes.discard(slot)
        return self.core.step(TxsAvailable(request.height, request.round, txs, self.clock.now_ms()))

    def _admit(self, tx: Tx, txid: str) -> str | None:
        if tx.chain != self.config.chain_id:
            return "signed for another chain (replayed from elsewhere?)"
        if len(self.mempool) >= MAX_MEMPOOL:
            return "mempool full; retry later"
        reason = self.mempool.offer(tx, txid, self.core.state.next_nonce)
        if reason is not None:
            return reason
        for slot in sorted(self._pending_requests):
            request = self._pending_requests.get(slot)
            if request is None:
                continue  # answered meanwhile
            if len(self.mempool) >= request.max_txs:
                self._execute(self._answer_txs(request, deferred=True))
            elif self.batch_wait_ms is not None and slot not in self._early_wakes:
                self._early_wakes.add(slot)
                self.clock.schedule(self.batch_wait_ms, Wake(request))
        return None

    def _request_sync(self, from_height: int, dest: Address | None = None) -> None:
        """Ask ``dest`` (else the next peer in turn) for blocks; retry elsewhere if lost."""
        peers = list(self.transport.peers())
        if not peers:
            return
        if dest is None or dest not in peers:
            dest = peers[self._sync_cursor % len(peers)]
            self._sync_cursor += 1
        self.transport.send(dest, SyncRequest(from_height))
        if not self._sync_retry_armed:
            self._sync_retry_armed = True
            self.clock.schedule(self.sync_retry_ms, SyncRetry(from_height))

    def _on_evidence(self, evidence: Equivocation | ConflictingProposals) -> None:
        """Honest nodes turn vote equivocation and twin proposals into EVIDENCE txs."""
        self.evidence.append(evidence)
        if self.on_evidence is not None:
            self.on_evidence(evidence)
        if not self.honest:
            return
        if isinstance(evidence, Equivocation):
            self._report(evidence.first.voter, evidence.to_body())
        else:
            self._report(evidence.offender, evidence.to_body())

    def _check_forged_txs(self, proposal: Proposal) -> None:
        """A proposal the core refused for a transaction with a bad signature is provable
        misbehaviour on its own (``invalid_block`` evidence: the signed proposal, the header,
        the transaction and its Merkle path). Only then are the block's txs checked again,
        so honest traffic costs nothing extra."""
        reason = self.core.rejected.get(proposal.block.hash, "")
        if not self.honest or "invalid signature" not in reason:
            return
        for index, tx in enumerate(proposal.block.txs):
            if not signing.is_valid(tx.sender, tx.signature, TX_DOMAIN, tx.signing_bytes()):
                body = invalid_block_body(proposal.proof(), proposal.block, index)
                self._report(proposal.proposer, body)
                return

    def _report(self, offender: bytes, body: dict) -> None:
        """Submit one EVIDENCE tx against ``offender`` (once per offender per node)."""
        validator = self.state.validator(offender)
        if offender in self._reported or validator is None or validator.ejected:
            return
        self._reported.add(offender)
        nonce = max(self.state.next_nonce(self.public), self._next_own_nonce)
        self._next_own_nonce = nonce + 1
        tx = Tx.create(TxKind.EVIDENCE, body, nonce, self.key, chain=self.config.chain_id)
        if self._admit(tx, tx.txid) is None:
            self.transport.broadcast(TxGossip(tx, tx.txid))

    # --- sending, and Byzantine rewriting --------------------------------------------------

    def _broadcast(self, message: Proposal | Vote) -> None:
        self._seen.setdefault(message.height, set()).add(message.signature)
        if isinstance(message, Proposal):
            self._proposals.setdefault((message.height, message.round), message)
        if self.regossip_ms is not None and message.height >= self.core.height:
            self._own[message.signature] = message
        self._send_out(message)

    def _send_out(self, message: Proposal | Vote) -> None:
        if self.behaviour is None:
            self.transport.broadcast(message)
            return
        for dest, payload in self._byzantine(message):
            self.transport.send(dest, payload)

    def _byzantine(self, msg: Proposal | Vote) -> list[tuple[Address, Proposal | Vote]]:
        route = getattr(self.transport, "recipients", None)
        peers = list(route(msg) if route is not None else self.transport.peers())
        everyone = [(p, msg) for p in peers]
        kind, key, chain_id = self.behaviour, self.key, self.config.chain_id

        def split(twin: Proposal | Vote) -> list[tuple[Address, Proposal | Vote]]:
            return [(p, twin if k % 2 else msg) for k, p in enumerate(peers)]

        if kind is Behaviour.SILENT:
            return [] if isinstance(msg, Vote) else everyone
        if kind is Behaviour.DOUBLE_VOTER and isinstance(msg, Vote):
            other = None if msg.block_hash is not None else digest_hex(msg.signature)
            twin = Vote.create(msg.kind, msg.height, msg.round, other, key, chain=chain_id)
            return split(twin)
        if kind is Behaviour.EQUIVOCATING_PROPOSER:
            if isinstance(msg, Proposal):
                header = msg.block.header
                block = Block(
                    replace(header, timestamp_ms=header.timestamp_ms + 1),
                    msg.block.txs,
                    msg.block.last_commit,
                )
                self._twins[msg.block.hash] = block.hash
                twin = Proposal.create(
                    msg.height, msg.round, block, msg.pol_round, key, msg.pol_votes, chain=chain_id
                )
                return split(twin)
            if msg.block_hash in self._twins:
                twin_vote = Vote.create(
                    msg.kind,
                    msg.height,
                    msg.round,
                    self._twins[msg.block_hash],
                    key,
                    chain=chain_id,
                )
                return split(twin_vote)
        if kind is Behaviour.INVALID_BLOCK and isinstance(msg, Proposal):
            bad = self._invalid_block(msg)
            forged = Proposal.create(msg.height, msg.round, bad, msg.pol_round, key, chain=chain_id)
            return [(p, forged) for p in peers]
        return everyone

    def _invalid_block(self, msg: Proposal) -> Block:
        """Alternately a block with a wrong state root and one carrying a forged tx (with
        roots consistent, so only the signature check catches it)."""
        block, state = msg.block, self.core.state
        self._tampered += 1
        if self._tampered % 2 == 1 or state.height + 1 != msg.height:
            return Block(replace(block.header, state_root="ff" * 32), block.txs, block.last_commit)
        own = sum(1 for tx in block.txs if tx.sender == self.public)
        nonce = state.next_nonce(self.public) + own
        body = {"record": "forged", "patient": "p", "dept": "0000", "digest": "00" * 32}
        forged = Tx(
            TxKind.ANCHOR_RECORD, self.public, nonce, body, bytes(64), state.config.chain_id
        )
        bad, _ = chain.build_block(
            state,
            (*block.txs, forged),
            self.public,
            block.header.timestamp_ms,
            block.last_commit,
            verified=lambda _tx: True,
        )
        return bad


def _as_event(message: Proposal | Vote) -> Proposal | VoteReceived:
    return message if isinstance(message, Proposal) else VoteReceived(message)
