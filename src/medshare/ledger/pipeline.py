"""Overlapping heights: up to W heights in flight, one Tendermint instance each.

Why: one height at a time is latency-bound (about three one-way delays per block, in a
committee as in all-node BFT), so the committee's smaller CPU and message cost never
shows in throughput (docs/ledger-throughput.md). With a certificate lag W > 1
(:attr:`~medshare.ledger.chain.ChainConfig.certificate_lag`) block h carries the
certificate of h − W, so h can be proposed, voted and decided while h − 1 .. h − W + 1 are
still open; with a leader run (``proposer_run``) one leader proposes them back to back.

How: :class:`PipelinedConsensus` has the event/action interface of
:class:`~medshare.ledger.consensus.Consensus` and runs one such core per open height
("slot"). The slot for h is built on a *parent guess*: the block the slot for h − 1
expects to commit (``Consensus.speculation``), with the state after it, so it judges
proposals exactly as the one-height core judges them on a committed state. The four
rules that keep this safe (argued in docs/ledger-throughput.md):

1. *Validity is relative to the parent.* A slot only prevotes, locks on and decides
   children of its parent guess (others fail ``chain.apply_block``: wrong ``prev_hash``).
2. *One lock per height.* There is one core per height, whatever the guess.
3. *A lock dies only with its parent.* When h − 1 commits a block other than slot h's
   guess, slot h is rebuilt on the committed block with its lock and valid value voided
   (they were children of a block that can no longer commit) and its own signed votes
   kept, so it never signs a second vote for a slot.
4. *Decide only after the parent commits.* A slot that gathers 2f+1 precommits holds its
   decision until h − 1 commits its parent (then it commits at once) or another block
   (then the decision is dead and the slot is rebuilt).

The committee of every open height must not depend on an uncommitted block: a pipelined
chain changes seats only at epoch boundaries (``chain.ChainConfig.pipelined``), and the
first height of an epoch opens only once the previous epoch's last block has committed.

Write-ahead: every slot's WAL record (its height's votes and proposals, round and lock)
is kept, tagged with its parent guess, and all of them are persisted together under
:data:`~medshare.ledger.consensus.WAL_KEY` before anything the slot signed is sent. A
restarted node restores a slot's lock only on the parent the lock was taken under.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from medshare.crypto import signing
from medshare.ledger import election
from medshare.ledger.chain import ChainState
from medshare.ledger.consensus import (
    WAL_KEY,
    Action,
    Commit,
    Committed,
    Consensus,
    ConsensusConfig,
    Event,
    Persist,
    Proposal,
    ProtocolError,
    RequestBlocks,
    Start,
    Step,
    Timeout,
    TxsAvailable,
    VoteReceived,
    WalCorrupted,
    credible,
    decode_wal,
    forget_carried,
    signer,
)
from medshare.ledger.types import (
    Block,
    CommitCertificate,
    LedgerFormatError,
    Tx,
    canonical,
)

PIPELINE_WAL_VERSION = 1
#: Messages kept per height and signer for a rebuild (a slot re-judges them on the new
#: parent): a proposal and two votes per round, for many rounds.
MAX_LOGGED_PER_SIGNER = 64

_Logged = Proposal | VoteReceived | Committed


@dataclass
class _HeightLog:
    """What a height's slot must re-judge if it opens or is rebuilt later."""

    events: list[_Logged] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # signatures, or certified block hashes
    per_signer: dict[bytes, int] = field(default_factory=dict)  # b"": certified blocks


class PipelinedConsensus:
    """Up to ``certificate_lag`` heights in flight for one node; see the module docstring.

    ``state`` is the committed chain state; ``certificates`` (by height) the certificates
    of its pending blocks; ``wal`` the bytes last persisted under ``WAL_KEY`` (a pipeline
    record, or a one-height core's record); ``verified`` as for :class:`Consensus`.
    """

    def __init__(
        self,
        key: signing.SigningKey,
        state: ChainState,
        config: ConsensusConfig | None = None,
        *,
        certificates: Mapping[int, CommitCertificate] | None = None,
        wal: bytes | None = None,
        verified: Callable[[Tx], bool] | None = None,
    ) -> None:
        if not state.config.pipelined:
            raise ValueError("a pipeline needs a chain with certificate_lag > 1")
        self._key = key
        self.public = key.public
        self.config = config or ConsensusConfig()
        self.state = state
        self.chain_id = state.config.chain_id
        self.window = state.config.certificate_lag
        self._verified = verified
        self._certificates: dict[int, CommitCertificate] = dict(certificates or {})
        records = _decode_wal(wal, key.public) if wal is not None else {}
        self._records = {h: r for h, r in records.items() if h > state.height}  # not stale
        self._record_bytes: dict[int, bytes] = {}
        self._slots: dict[int, Consensus] = {}
        self._parents: dict[int, str] = {}  # slot height -> hash of its parent guess
        self._held: dict[int, tuple[Block, ChainState]] = {}  # decided, parent not committed
        self._log: dict[int, _HeightLog] = {}
        self._sync_asked = -1
        self._started = False
        self.rejected: dict[str, str] = {}  # block hash -> why it was invalid (last 256)
        self._open_committees: tuple[tuple[int, tuple[bytes, ...]], ...] | None = None
        self._open(state.height + 1, state, state.head_hash)

    # --- the view a driver reads (the lowest open height's) ----------------------------------

    @property
    def height(self) -> int:
        """The lowest height not yet committed."""
        return self.state.height + 1

    @property
    def last_open(self) -> int:
        """The highest height that may be in flight."""
        return self.state.height + self.window

    @property
    def horizon(self) -> int:
        """The highest height whose messages are kept: one window beyond the open ones
        (a peer may be that far ahead of us), as the one-height core keeps the next
        height's. Further ones only tell us that we are behind."""
        return self.state.height + 2 * self.window

    @property
    def _front(self) -> Consensus:
        return self._slots[self.height]

    @property
    def committee(self) -> tuple[bytes, ...]:
        return self._front.committee

    @property
    def is_member(self) -> bool:
        return self._front.is_member

    @property
    def round(self) -> int:
        return self._front.round

    @property
    def step_name(self) -> Step:
        return self._front.step_name

    @property
    def locked(self) -> tuple[int, str | None]:
        return self._front.locked

    @property
    def open_heights(self) -> tuple[int, ...]:
        return tuple(sorted(self._slots))

    def peer_committed(self, height: int) -> int:
        """What a peer that sent a message for ``height`` has surely committed: it opens at
        most ``window`` heights past its chain, and no height of an epoch before the epoch
        before it has committed."""
        length = self.state.config.epoch_length
        first = election.epoch_start(election.epoch_of(height, length), length)
        return max(height - self.window, first - 1)

    def open_committees(self) -> tuple[tuple[int, tuple[bytes, ...]], ...]:
        """(height, committee) of every open height (a driver asks for every message)."""
        if self._open_committees is None:
            self._open_committees = tuple(
                (h, self._slots[h].committee) for h in sorted(self._slots)
            )
        return self._open_committees

    def state_for(self, height: int) -> ChainState:
        """The state the block at ``height`` builds on: its slot's parent guess."""
        core = self._slots.get(height)
        if core is None:
            raise ValueError(f"height {height} is not open")
        return core.state

    # --- events ----------------------------------------------------------------------------

    def step(self, event: Event) -> list[Action]:
        if isinstance(event, Start):
            if self._started:
                raise ProtocolError("Start received twice")
            self._started = True
            return self._drive(self.height, event) + self._grow()
        if not self._started:
            raise ProtocolError("the first event must be Start")
        if isinstance(event, Proposal):
            return self._route(event.height, event)
        if isinstance(event, VoteReceived):
            return self._route(event.vote.height, event)
        if isinstance(event, Committed):
            return self._route(event.block.height, event)
        if isinstance(event, Timeout | TxsAvailable):
            if event.height not in self._slots or event.height in self._held:
                return []
            return self._on_local(event)
        raise ProtocolError(f"unknown event {type(event).__name__}")

    def _route(self, height: int, event: _Logged) -> list[Action]:
        if height <= self.state.height:
            return []
        if height > self.horizon:
            return self._sync(height)
        if height != self.height:  # the lowest open height is never rebuilt
            self._keep(height, event)
        if height > self.last_open:
            # A peer opened it, so it committed past our lowest open height: catch up,
            # and keep the message for when the slot opens.
            return self._sync(height)
        if height not in self._slots or height in self._held:
            return []  # replayed when the slot opens (or is rebuilt)
        return self._drive(height, event) + self._grow()

    def _on_local(self, event: Timeout | TxsAvailable) -> list[Action]:
        """A timer of an open height fired, or the txs its proposer asked for arrived."""
        front = self.height
        acts = self._drive(event.height, event) + self._grow()
        if (
            isinstance(event, Timeout)
            and (event.height, event.step) == (front, Step.PROPOSE)
            and self.height == front
            and self._front.speculation() is None
        ):
            # No proposal for our lowest height in time, and nothing to build on above it:
            # if peers sent messages for higher heights, they may have decided it and
            # need our votes there, so catch up (the one-height core learns it from the
            # next proposal's last_commit).
            above = [h for h, log in self._log.items() if h > front and log.events]
            if above:
                acts += self._sync(max(above))
        return acts

    def _keep(self, height: int, event: _Logged) -> None:
        """Log a message for a slot that may open or be rebuilt later: once each, only if
        validly signed by a validator (a certified block: by validators), and a bounded
        share per signer in which a newer round replaces the oldest (so nobody can crowd
        out the others' messages, nor their latest rounds)."""
        log = self._log.get(height) or _HeightLog()
        signer, mark, round_ = self._credentials(event)
        if mark is None or mark in log.seen:
            return
        if log.per_signer.get(signer, 0) >= MAX_LOGGED_PER_SIGNER:
            theirs = [e for e in log.events if self._credentials(e)[0] == signer]
            oldest = min(theirs, key=_round_of)
            if _round_of(oldest) >= round_:
                return
            log.events.remove(oldest)
            log.per_signer[signer] -= 1
        self._log[height] = log
        log.seen.add(mark)
        log.per_signer[signer] = log.per_signer.get(signer, 0) + 1
        log.events.append(event)

    def _credentials(self, event: _Logged) -> tuple[bytes, str | None, int]:
        """(signer, a mark unique to the message or None if it does not check out, round);
        a certified block's signer is b"" (its certificate's validators vouch for it)."""
        if isinstance(event, Committed):
            block, cert = event.block, event.block.certificate
            votes = cert.votes() if cert is not None else ()
            valid = bool(votes) and all(
                self.state.validator(v.voter) is not None and v.is_valid(self.chain_id)
                for v in votes
            )
            return b"", block.hash if valid else None, _round_of(event)
        message = event if isinstance(event, Proposal) else event.vote
        mark = message.signature.hex() if credible(message, self.state) else None
        return signer(message), mark, message.round

    def _sync(self, seen_height: int) -> list[Action]:
        """Ask for certified blocks from our lowest open height (once per height seen)."""
        if seen_height <= self._sync_asked:
            return []
        self._sync_asked = seen_height
        return [RequestBlocks(self.height)]

    # --- slots -----------------------------------------------------------------------------

    def _drive(self, height: int, event: Event) -> list[Action]:
        """Step the slot's core and translate what it asks for: its WAL record joins the
        others', and its decision is held or committed (a slot's core stops there)."""
        core = self._slots[height]
        out: list[Action] = []
        for action in core.step(event):
            if isinstance(action, Persist):
                self._keep_record(height, action.value)
                out.append(Persist(WAL_KEY, self._wal()))
            elif isinstance(action, Commit):
                self._held[height] = (action.block, core.state)
                return out + self._advance()
            elif isinstance(action, RequestBlocks):
                out.append(RequestBlocks(self.height))
            else:
                out.append(action)
        return out

    def _open(self, height: int, parent: ChainState, parent_hash: str) -> list[Action]:
        """Open the slot for ``height`` on ``parent`` (the state after block
        ``parent_hash``), restoring its WAL record: the lock only if it was taken on this
        parent (rule 3), every signed vote always."""
        record = self._records.get(height)
        wal = None
        if record is not None:
            # A one-height core's record (no parent) was taken on the committed head.
            taken_on = record.get("parent", self.state.head_hash)
            if taken_on != parent_hash:  # children of a block that lost: void
                record = {k: v for k, v in record.items() if k != "proof"}
                record.update(locked_round=-1, locked_block=None, valid_round=-1, valid_block=None)
            wal = _core_record(record)
        core = Consensus(
            self._key,
            parent,
            self.config,
            certificates=self._certificates,
            wal=wal,
            verified=self._verified,
            one_height=True,
        )
        if core.height != height:  # pragma: no cover - guarded by the callers
            raise ProtocolError(f"slot {height} built on a state at {parent.height}")
        core.rejected = self.rejected  # one bounded record for every height
        self._open_committees = None
        self._slots[height] = core
        self._parents[height] = parent_hash
        if not self._started:
            return []
        acts = self._drive(height, Start())
        logged = self._log.get(height)
        for event in list(logged.events if logged is not None else ()):
            if height in self._held or height not in self._slots:
                break
            acts += self._drive(height, event)
        return acts

    def _grow(self) -> list[Action]:
        """Open the next heights on the guesses of the ones below, up to the window."""
        acts: list[Action] = []
        epoch_length = self.state.config.epoch_length
        while True:
            top = max(self._slots)
            nxt = top + 1
            if nxt > self.last_open:
                return acts
            if election.epoch_of(nxt, epoch_length) != election.epoch_of(top, epoch_length):
                return acts  # a new epoch's committee needs the old epoch's last block
            guess = self._held.get(top) or self._slots[top].speculation()
            if guess is None:
                return acts
            block, after = guess
            record = self._records.get(nxt)
            if record is not None and record.get("parent") != block.hash:
                return acts  # our lock there may be live on another parent: wait for it
            acts += self._open(nxt, after, block.hash)

    def _advance(self) -> list[Action]:
        """Commit the held decisions that now extend the committed chain, in order; rebuild
        the slots above a parent that lost (rules 3 and 4)."""
        acts: list[Action] = []
        while self.height in self._held:
            height = self.height
            block, after = self._held.pop(height)
            del self._slots[height]
            self._open_committees = None
            self._parents.pop(height)
            self._records.pop(height, None)
            self._record_bytes.pop(height, None)
            self._log.pop(height, None)
            self.state = after
            self._certificates[height] = block.certificate
            forget_carried(self._certificates, after)
            acts.append(Commit(block))
            nxt = height + 1
            if self._parents.get(nxt, block.hash) != block.hash:
                self._close_from(nxt)  # built on a block that lost: dead branch
            if nxt not in self._slots:
                acts += self._open(nxt, after, block.hash)
        if self._records:
            acts.append(Persist(WAL_KEY, self._wal()))
        return acts + self._grow()

    def _close_from(self, height: int) -> None:
        """Drop the slots from ``height`` up (their records stay: the votes they signed
        must never be contradicted, and rule 3 voids their locks when they reopen)."""
        self._open_committees = None
        for h in [h for h in self._slots if h >= height]:
            del self._slots[h]
            self._parents.pop(h)
            self._held.pop(h, None)

    def _keep_record(self, height: int, value: bytes) -> None:
        """Keep a slot's record (its core's JSON object) tagged with the slot's parent,
        as a dict and as the bytes the pipeline WAL joins (a local file: plain JSON)."""
        record = json.loads(value)
        record["parent"] = self._parents[height]
        self._records[height] = record
        self._record_bytes[height] = (
            value[:-1] + b',"parent":' + json.dumps(self._parents[height]).encode() + b"}"
        )

    def _wal(self) -> bytes:
        """Every open height's record, in height order: written whole on every change."""
        for height in self._records.keys() - self._record_bytes.keys():  # restored ones
            self._record_bytes[height] = json.dumps(self._records[height]).encode()
        parts = b",".join(self._record_bytes[h] for h in sorted(self._records))
        return b'{"pipeline":[' + parts + b'],"version":%d}' % PIPELINE_WAL_VERSION


def _decode_wal(data: bytes, public: bytes) -> dict[int, dict]:
    """Per-height records of a pipeline WAL; a one-height core's record (written before
    the chain was pipelined) becomes the record of its height with an unknown parent.
    Every record is checked now (its votes are ours, at its height), not when its slot
    opens: a bad one refuses the start instead of failing in the middle of a commit."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise WalCorrupted(f"consensus WAL does not decode: {exc}") from None
    if isinstance(doc, dict) and "pipeline" in doc:
        if doc.get("version") != PIPELINE_WAL_VERSION or not isinstance(doc["pipeline"], list):
            raise WalCorrupted("unknown pipeline WAL version")
        records = doc["pipeline"]
    else:
        records = [doc]
    out: dict[int, dict] = {}
    for record in records:
        if not isinstance(record, dict):
            raise WalCorrupted("consensus WAL record is not an object")
        parent = record.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise WalCorrupted("consensus WAL parent is not a block hash")
        decoded = decode_wal(_core_record(record))
        height = decoded["height"]
        if any(v.voter != public or v.height != height for v in decoded["votes"]):
            raise WalCorrupted("consensus WAL holds a vote that is not ours at its height")
        out[height] = record
    return out


def _core_record(record: dict) -> bytes:
    """A slot's record as its one-height core persists it (without the parent tag)."""
    try:
        return canonical({k: v for k, v in record.items() if k != "parent"})
    except LedgerFormatError as exc:
        raise WalCorrupted(f"consensus WAL does not decode: {exc}") from None


def _round_of(event: _Logged) -> int:
    if isinstance(event, Committed):
        cert = event.block.certificate
        return cert.round if cert is not None else 0
    return event.round if isinstance(event, Proposal) else event.vote.round
