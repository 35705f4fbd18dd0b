"""Sans-I/O Tendermint-style BFT core for one node (DESIGN §4; STYLE "Ledger / consensus").

One :class:`Consensus` object owns the round state of one node. Everything that can
change it arrives through :meth:`Consensus.step` as a typed event (a peer's proposal or
vote, a timeout that fired, the transactions the driver was asked for, a certified
block learned from a peer); everything the node must do comes back as a list of
actions for the driver to execute **in order**. The core never touches a socket, a
disk, a clock or a random source: time arrives in events (``TxsAvailable.now_ms``,
``Timeout``), persistence leaves as :class:`Persist` actions.

Algorithm: Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus" (2018,
arXiv:1807.04938), Algorithm 1, with one committee per height taken from the chain
rules (:func:`medshare.ledger.chain.begin_block`):

* round ``r``: the proposer ``election.proposer(committee, h, r, run)`` proposes (its
  ``valid`` block if it has one, else a new block from ``chain.build_block``);
* prevote the proposal if it is valid (``chain.apply_block`` on the committed state)
  and we are not locked on another block, or it carries a proof-of-lock round
  ``pol_round ≥ locked_round`` for which we saw 2f+1 prevotes; otherwise prevote nil;
* 2f+1 prevotes for the proposal ("polka"): lock on it and precommit it;
  2f+1 prevotes for nil: precommit nil;
* 2f+1 precommits for a block in any round: commit it with a certificate built from
  those precommits; f+1 votes of a higher round: jump to that round;
* timeouts (growing with the round) prevote nil, precommit nil, or start round r+1.

Safety needs no timing: two blocks cannot both gather 2f+1 precommits at one height
because an honest node precommits only after a polka and then prevotes only its locked
block unless a later polka unlocks it.

Write-ahead: every vote and proposal we sign is first written (:class:`Persist` of
:data:`WAL_KEY`: height, round, lock and every vote/proposal we signed at this height)
and only then broadcast. A node rebuilt from its store's head plus that record never
signs a second, different vote for a (height, round, kind) slot: :meth:`_sign` re-sends
the recorded vote instead.

Accountability: two validly signed votes of one committee member for the same slot and
different blocks yield :class:`EvidenceFound` with a :class:`~medshare.ledger.types.Equivocation`;
two signed proposals for one (height, round) yield :class:`ConflictingProposals`; the node
driver turns both into EVIDENCE txs (and a proposal of a block with a forged transaction
into ``invalid_block`` evidence). Counting follows the paper: "2f+1 of anything" (timeouts,
round skips) counts each voter's first vote once, while "2f+1 for block B" counts every
member who validly signed for B, so an equivocator's second vote still counts for its
value (at most two values per voter and slot are kept). Quorum intersection keeps this
safe, and it keeps honest nodes live when an equivocator split them (counting the first
vote only, a node can miss the proof-of-lock the others locked on).

A re-proposal (``pol_round ≥ 0``) carries its 2f+1 proof-of-lock prevotes, so a node that
missed that round (e.g. after a restart) can still check the proof itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from medshare.crypto import signing
from medshare.ledger import chain, election
from medshare.ledger.chain import ChainState
from medshare.ledger.types import (
    Block,
    CommitCertificate,
    Equivocation,
    LedgerFormatError,
    Tx,
    Vote,
    VoteKind,
    proposal_domain,
    proposal_signing_bytes,
    quorum,
)

WAL_KEY = "consensus/wal"
WAL_VERSION = 1
MAX_ROUNDS_AHEAD = 64  # votes/proposals further ahead of our round are dropped (memory bound)


class ProtocolError(Exception):
    """An event the state machine does not accept in its current state (a driver bug)."""


class WalCorrupted(Exception):
    """The persisted consensus record does not decode: refuse to start rather than guess."""


class Step(StrEnum):
    PROPOSE = "propose"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"
    COMMIT = "commit"  # decided; collecting late precommits until the commit timeout


# The legal step transitions inside one height (entering a height resets to PROPOSE).
TRANSITIONS: dict[Step, frozenset[Step]] = {
    Step.PROPOSE: frozenset({Step.PROPOSE, Step.PREVOTE, Step.COMMIT}),
    Step.PREVOTE: frozenset({Step.PROPOSE, Step.PRECOMMIT, Step.COMMIT}),
    Step.PRECOMMIT: frozenset({Step.PROPOSE, Step.COMMIT}),
    Step.COMMIT: frozenset(),
}


@dataclass(frozen=True)
class ConsensusConfig:
    """Timeouts in (simulated or real) milliseconds; round ``r`` waits ``base + r·delta``."""

    propose_timeout_ms: int = 1000
    propose_delta_ms: int = 500
    prevote_timeout_ms: int = 500
    prevote_delta_ms: int = 250
    precommit_timeout_ms: int = 500
    precommit_delta_ms: int = 250
    # Wait after deciding before starting the next height, collecting late precommits
    # into the certificate (0: start at once with the 2f+1 we have).
    commit_timeout_ms: int = 0
    max_block_txs: int = 1000
    future_buffer: int = 10_000  # messages of height h+1 kept while we finish h

    def timeout(self, step: Step, round_: int) -> int:
        if step is Step.PROPOSE:
            return self.propose_timeout_ms + round_ * self.propose_delta_ms
        if step is Step.PREVOTE:
            return self.prevote_timeout_ms + round_ * self.prevote_delta_ms
        return self.precommit_timeout_ms + round_ * self.precommit_delta_ms


# --- proposals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """A block proposed for (height, round) by that round's proposer, signed over the domain
    tag and the canonical (height, round, block hash, pol_round, proposer).

    ``proposer`` is the signer of this message. It equals ``block.header.proposer`` for a
    fresh block (``pol_round == -1``); a block re-proposed with a proof-of-lock round keeps
    the header (and hash) its first proposer gave it, and carries the 2f+1 prevotes of
    ``pol_round`` for it (``pol_votes``, self-authenticating, not signed again), so a node
    that missed that round (e.g. restarted) can check the proof-of-lock itself."""

    height: int
    round: int
    block: Block
    pol_round: int
    proposer: bytes
    signature: bytes = b""
    pol_votes: tuple[Vote, ...] = ()

    def signing_bytes(self) -> bytes:
        return proposal_signing_bytes(
            self.height, self.round, self.block.hash, self.pol_round, self.proposer
        )

    @classmethod
    def create(
        cls,
        height: int,
        round_: int,
        block: Block,
        pol_round: int,
        key: signing.SigningKey,
        pol_votes: tuple[Vote, ...] = (),
        *,
        chain: str,
    ) -> Proposal:
        unsigned = cls(height, round_, block, pol_round, key.public)
        signature = key.sign(proposal_domain(chain), unsigned.signing_bytes())
        return cls(height, round_, block, pol_round, key.public, signature, tuple(pol_votes))

    def verify(self, chain: str) -> None:
        """Raise ``signing.InvalidSignature`` unless the proposer signed this on ``chain``."""
        signing.verify(self.proposer, self.signature, proposal_domain(chain), self.signing_bytes())

    def proof(self) -> dict:
        """The signed part without the block: enough to prove what was proposed."""
        return {
            "height": self.height,
            "round": self.round,
            "block": self.block.hash,
            "pol_round": self.pol_round,
            "proposer": self.proposer.hex(),
            "signature": self.signature.hex(),
        }

    def to_json(self) -> dict:
        return {
            **self.proof(),
            "block": self.block.to_json(),
            "pol_votes": [v.to_json() for v in self.pol_votes],
        }

    @classmethod
    def from_json(cls, doc: object) -> Proposal:
        if not isinstance(doc, dict):
            raise LedgerFormatError("proposal must be an object")
        try:
            height, round_, pol = int(doc["height"]), int(doc["round"]), int(doc["pol_round"])
            proposer = bytes.fromhex(doc["proposer"])
            signature = bytes.fromhex(doc["signature"])
            pol_votes = tuple(Vote.from_json(v) for v in doc.get("pol_votes", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerFormatError(f"malformed proposal: {exc}") from None
        block = Block.from_json(doc.get("block"))
        return cls(height, round_, block, pol, proposer, signature, pol_votes)


def signer(message: Proposal | Vote) -> bytes:
    """Who signed a proposal or a vote."""
    return message.proposer if isinstance(message, Proposal) else message.voter


def credible(message: Proposal | Vote, state: ChainState) -> bool:
    """Signed, on this chain, by a validator ``state`` knows: worth keeping before the
    height it is about is open (a forged one costs one check and is dropped)."""
    if state.validator(signer(message)) is None:
        return False
    try:
        message.verify(state.config.chain_id)
    except signing.InvalidSignature:
        return False
    return True


def forget_carried(certificates: dict[int, CommitCertificate], state: ChainState) -> None:
    """Drop the certificates that committed blocks already carried: only those of
    ``state.pending`` are still needed (the next block carries the oldest)."""
    oldest = min((head.height for head in state.pending), default=state.height)
    for height in [h for h in certificates if h < oldest]:
        del certificates[height]


@dataclass(frozen=True)
class ConflictingProposals:
    """Two signed proposals of one proposer for the same height and round, different blocks.

    Evidence as data; ``to_body()`` is the ``conflicting_proposals`` EVIDENCE tx body."""

    first: Proposal
    second: Proposal

    @property
    def offender(self) -> bytes:
        return self.first.proposer

    def check(self, chain: str) -> None:
        a, b = self.first, self.second
        if (a.height, a.round, a.proposer) != (b.height, b.round, b.proposer):
            raise LedgerFormatError("the two proposals are not for the same slot")
        if a.block.hash == b.block.hash:
            raise LedgerFormatError("the two proposals do not conflict")
        a.verify(chain)
        b.verify(chain)

    def to_body(self) -> dict:
        return {
            "offender": self.offender.hex(),
            "kind": "conflicting_proposals",
            "proof": [self.first.proof(), self.second.proof()],
        }


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """First event after construction: starts (or resumes, from the WAL) the current round."""


@dataclass(frozen=True)
class VoteReceived:
    vote: Vote


@dataclass(frozen=True)
class Timeout:
    """A :class:`ScheduleTimeout` that fired (the driver echoes its fields)."""

    height: int
    round: int
    step: Step


@dataclass(frozen=True)
class TxsAvailable:
    """Answer to :class:`RequestTxs`: candidate transactions and the proposer's clock."""

    height: int
    round: int
    txs: tuple[Tx, ...]
    now_ms: int


@dataclass(frozen=True)
class Committed:
    """A certified block learned from a peer or a store (catch-up)."""

    block: Block


Event = Start | Proposal | VoteReceived | Timeout | TxsAvailable | Committed


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broadcast:
    message: Proposal | Vote


@dataclass(frozen=True)
class Persist:
    """Write ``value`` under ``key`` durably before executing the next action."""

    key: str
    value: bytes


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: Step
    delay_ms: int


@dataclass(frozen=True)
class RequestTxs:
    """We propose at (height, round): answer with :class:`TxsAvailable`."""

    height: int
    round: int
    max_txs: int


@dataclass(frozen=True)
class Commit:
    """Append this block (it carries its certificate) to the store."""

    block: Block


@dataclass(frozen=True)
class EvidenceFound:
    evidence: Equivocation | ConflictingProposals


@dataclass(frozen=True)
class RequestBlocks:
    """We are behind: fetch certified blocks from ``from_height`` on and feed them back as
    :class:`Committed` events, in height order."""

    from_height: int


Action = Broadcast | Persist | ScheduleTimeout | RequestTxs | Commit | EvidenceFound | RequestBlocks

_NIL = None


class Consensus:
    """The BFT state machine of one node at one height at a time.

    ``state`` is the committed chain state; ``certificates`` (by height) hold the
    certificates of its pending blocks (``state.pending``: with the default certificate lag
    of 1 just the head's, which ``last_commit`` may give instead), because the next block
    must carry the one :func:`chain.certificate_due` names; ``wal`` the bytes last
    persisted under :data:`WAL_KEY` (or ``None``), ``verified`` an optional predicate
    naming transactions whose signature the driver has already checked (passed to the
    chain rules).
    """

    def __init__(
        self,
        key: signing.SigningKey,
        state: ChainState,
        config: ConsensusConfig | None = None,
        *,
        last_commit: CommitCertificate | None = None,
        certificates: Mapping[int, CommitCertificate] | None = None,
        wal: bytes | None = None,
        verified: Callable[[Tx], bool] | None = None,
        one_height: bool = False,
    ) -> None:
        self._key = key
        # A pipeline's slot decides one height and stops (ledger/pipeline.py); the next
        # height is another slot's, built on a block that may not be committed yet.
        self._one_height = one_height
        self.finished = False
        self.public = key.public
        self.config = config or ConsensusConfig()
        self.state = state
        self.chain_id = state.config.chain_id
        self._run = state.config.proposer_run
        self._certificates: dict[int, CommitCertificate] = dict(certificates or {})
        if last_commit is not None:
            self._certificates[state.height] = last_commit
        self._verified = verified
        self._future: list[Proposal | VoteReceived] = []
        self._wal_record: dict | None = decode_wal(wal) if wal is not None else None
        self._started = False
        self.rejected: dict[str, str] = {}  # block hash -> why it was invalid (last 256)
        self._enter_height()

    # --- public view -----------------------------------------------------------------------

    @property
    def locked(self) -> tuple[int, str | None]:
        return self.locked_round, self.locked_hash

    def own_vote(self, round_: int, kind: VoteKind) -> Vote | None:
        return self._own.get((round_, kind))

    @staticmethod
    def peer_committed(height: int) -> int:
        """What a peer that sent a message for ``height`` has surely committed: the
        height before (one height at a time)."""
        return height - 1

    @property
    def horizon(self) -> int:
        """The highest height whose messages this core keeps (the next one, buffered);
        further ones only tell it that it is behind."""
        return self.height + 1

    def open_committees(self) -> tuple[tuple[int, tuple[bytes, ...]], ...]:
        """(height, committee) of every height in flight: here just the current one."""
        return ((self.height, self.committee),)

    def state_for(self, height: int) -> ChainState:
        """The state a block at ``height`` builds on (the proposer's mempool takes its
        nonces from it): the committed state, since one height runs at a time."""
        if height != self.height:
            raise ValueError(f"height {height} is not in flight (at {self.height})")
        return self.state

    def speculation(self) -> tuple[Block, ChainState] | None:
        """The block this node expects its height to commit, with the state after it, or
        None: the decided block, else the locked, else the valid one, else the current
        round's valid proposal. A pipeline builds the next height on it before it commits
        (:mod:`medshare.ledger.pipeline`)."""
        if self._decided is not None:
            block, _round, after = self._decided
            return block, after
        for block_hash in (self.locked_hash, self.valid_hash):
            after = self._validity.get(block_hash) if block_hash is not None else None
            if after is not None:
                return self._blocks[block_hash], after
        proposal = self._proposals.get(self.round)
        if proposal is not None:
            after = self._validate(proposal.block)
            if after is not None:
                return proposal.block, after
        return None

    def step(self, event: Event) -> list[Action]:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise ProtocolError(f"unknown event {type(event).__name__}")
        if not self._started and not isinstance(event, Start):
            raise ProtocolError("the first event must be Start")
        if self.finished:
            return []
        return handler(self, event)

    # --- height and round bookkeeping ------------------------------------------------------

    def _enter_height(self) -> None:
        self.height = self.state.height + 1
        due = chain.certificate_due(self.state)
        # The certificate the next block carries; None near genesis.
        self.last_commit = None if due is None else self._certificates.get(due.height)
        self.committee = chain.begin_block(self.state, self.last_commit).committee
        self._members = frozenset(self.committee)
        self.is_member = self.public in self._members
        self._quorum = quorum(len(self.committee))
        self._skip = len(self.committee) - self._quorum + 1  # f+1: at least one honest
        self.round = 0
        self.step_name = Step.PROPOSE
        self.locked_round, self.locked_hash = -1, _NIL
        self.valid_round, self.valid_hash = -1, _NIL
        self._proposals: dict[int, Proposal] = {}
        self._blocks: dict[str, Block] = {}
        self._json_of: dict[str, dict] = {}  # block hash -> JSON form, for the WAL
        self._validity: dict[str, ChainState | None] = {}
        # Per (round, kind): each voter's first vote (totals "2f+1 of anything"), and per
        # block every validly signed vote for it (quorums for one value, as in the paper:
        # an equivocator may count for two values, which quorum intersection tolerates).
        self._votes: dict[tuple[int, VoteKind], dict[bytes, Vote]] = {}
        self._by_block: dict[tuple[int, VoteKind], dict[str | None, dict[bytes, Vote]]] = {}
        self._round_voters: dict[int, set[bytes]] = {}
        self._own: dict[tuple[int, VoteKind], Vote] = {}
        self._proposed: dict[int, str] = {}
        self._fired: set[tuple[Any, ...]] = set()
        self._reported: set[tuple[Any, ...]] = set()
        self._decided: tuple[Block, int, ChainState] | None = None
        self._cert_votes: dict[bytes, Vote] = {}
        self._sync_asked = -1
        record = self._wal_record
        if record is not None and record["height"] <= self.height:
            self._wal_record = None  # a record ahead of our store waits for its height
            if record["height"] == self.height:
                self._restore(record)

    def _restore(self, record: dict) -> None:
        self.round = record["round"]
        self.locked_round, self.locked_hash = record["locked_round"], record["locked_block"]
        self.valid_round, self.valid_hash = record["valid_round"], record["valid_block"]
        if self.valid_round < self.locked_round:  # a record from before valid values were kept
            self.valid_round, self.valid_hash = self.locked_round, self.locked_hash
        self._proposed = dict(record["proposed"])
        for vote in record["votes"]:
            if vote.voter != self.public or vote.height != self.height:
                raise WalCorrupted("WAL holds a vote that is not ours at this height")
            self._own[(vote.round, vote.kind)] = vote
            self._count(vote)
        # The locked and valid blocks with their proof-of-lock: without them a restarted
        # node that must re-propose (or accept) its lock could never do so, and if f+1
        # honest members are locked the height stalls. Judged again when used.
        for block in record["blocks"]:
            self._blocks.setdefault(block.hash, block)
        for vote in record["prevotes"]:
            if (
                vote.height == self.height
                and vote.voter in self._members
                and vote.is_valid(self.chain_id)
            ):
                self._count(vote)

    def _proposer(self, round_: int) -> bytes:
        return election.proposer(self.committee, self.height, round_, self._run)

    def _set_step(self, step: Step) -> None:
        if step not in TRANSITIONS[self.step_name]:
            raise ProtocolError(f"illegal step transition {self.step_name} -> {step}")
        self.step_name = step

    def _start_round(self, round_: int) -> list[Action]:
        self.round = round_
        self._set_step(Step.PROPOSE)
        if not self.is_member:
            return []
        h = self.height
        acts: list[Action] = [
            ScheduleTimeout(h, round_, Step.PROPOSE, self.config.timeout(Step.PROPOSE, round_))
        ]
        # After a restart, the votes we already signed in this round fix our step.
        for kind, step in ((VoteKind.PREVOTE, Step.PREVOTE), (VoteKind.PRECOMMIT, Step.PRECOMMIT)):
            vote = self._own.get((round_, kind))
            if vote is not None:
                self._set_step(step)
                acts.append(Broadcast(vote))
        proposer = self._proposer(round_)
        if self.step_name is Step.PROPOSE and proposer == self.public:
            if round_ in self._proposed:
                pass  # signed a proposal here before a restart; never sign another one
            elif self.valid_hash is not None and self.valid_hash in self._blocks:
                acts += self._propose(self._blocks[self.valid_hash], self.valid_round)
            else:
                acts.append(RequestTxs(h, round_, self.config.max_block_txs))
        return acts

    # --- event handlers --------------------------------------------------------------------

    def _on_start(self, _event: Start) -> list[Action]:
        if self._started:
            raise ProtocolError("Start received twice")
        self._started = True
        return self._start_round(self.round) + self._evaluate()

    def _on_txs(self, ev: TxsAvailable) -> list[Action]:
        if (
            (ev.height, ev.round) != (self.height, self.round)
            or self.step_name is not Step.PROPOSE
            or not self.is_member
            or ev.round in self._proposed
            or self._proposer(self.round) != self.public
        ):
            return []  # stale answer
        block, _dropped = chain.build_block(
            self.state,
            ev.txs[: self.config.max_block_txs],
            self.public,
            ev.now_ms,
            self.last_commit,
            verified=self._verified,
        )
        return self._propose(block, -1) + self._evaluate()

    def _on_proposal(self, p: Proposal) -> list[Action]:
        if p.height == self.height + 1:
            self._buffer(p)
            cert = p.block.last_commit
            if cert is not None and cert.height == self.height:
                # Its last_commit certifies our current height (certificate lag 1): enough
                # to commit if we hold the block.
                return self._commit_with(cert)
            # Its proposer has committed our height, but (certificate lag > 1) the
            # certificate it carries is older: ask for the block rather than wait for
            # precommits we may have missed (peers never resend them once decided).
            return self._behind(p.height)
        if p.height > self.height + 1:
            return self._behind(p.height)
        if p.height < self.height or self._decided is not None:
            return []
        return self._accept_proposal(p, trusted=False) + self._evaluate()

    def _on_vote(self, ev: VoteReceived) -> list[Action]:
        vote = ev.vote
        if vote.height == self.height + 1:
            self._buffer(ev)
            return []
        if vote.height > self.height + 1:
            return self._behind(vote.height)
        if vote.height < self.height or vote.voter not in self._members:
            return []
        if vote.round > self.round + MAX_ROUNDS_AHEAD:
            return []
        if self._decided is not None:
            self._collect_late(vote)
            return []
        if vote.voter == self.public:
            return self._adopt_own(vote)
        return self._ingest(vote) + self._evaluate()

    def _on_timeout(self, t: Timeout) -> list[Action]:
        if t.step is Step.COMMIT:
            if self._decided is not None and (t.height, t.round) == (self.height, self._decided[1]):
                return self._finalize(None) + self._evaluate()
            return []
        if (t.height, t.round) != (self.height, self.round) or self._decided is not None:
            return []
        if not self.is_member:
            return []
        if t.step is Step.PROPOSE and self.step_name is Step.PROPOSE:
            acts = self._prevote(_NIL)
        elif t.step is Step.PREVOTE and self.step_name is Step.PREVOTE:
            acts = self._precommit(_NIL)
        elif t.step is Step.PRECOMMIT:
            acts = self._start_round(self.round + 1)
        else:
            return []
        return acts + self._evaluate()

    def _on_committed(self, ev: Committed) -> list[Action]:
        block = ev.block
        acts: list[Action] = []
        if self._decided is not None:
            if block.height <= self.height:
                return []
            acts += self._finalize(None)  # we already know h; move on and look at h+1
        if block.height < self.height:
            return acts
        if block.height > self.height:
            return acts + self._behind(block.height, force=True)
        if block.certificate is None:
            return acts
        nxt = self._validity.get(block.hash)
        try:
            if nxt is not None:
                chain.check_certificate(
                    block.certificate, nxt.head_committee, block.hash, block.height, self.chain_id
                )
            else:
                nxt = chain.apply_block(
                    self.state, block, require_certificate=True, verified=self._verified
                )
        except (chain.InvalidBlock, ValueError) as exc:
            self._note_rejected(block.hash, str(exc))
            return acts
        self._decided = (block, block.certificate.round, nxt)
        return acts + self._finalize(block.certificate) + self._evaluate()

    # --- the rules (Algorithm 1), evaluated until none fires -------------------------------

    def _evaluate(self) -> list[Action]:
        acts: list[Action] = []
        while self._decided is None:
            fired = self._fire_one()
            if fired is None:
                break
            acts += fired
        return acts

    def _fire_one(self) -> list[Action] | None:
        q = self._quorum
        # Decide: 2f+1 precommits for a block, in any round.
        for (r, kind), by_block in self._by_block.items():
            if kind is not VoteKind.PRECOMMIT:
                continue
            for bh, voters in by_block.items():
                if bh is None or len(voters) < q or ("decide", r, bh) in self._fired:
                    continue
                block = self._blocks.get(bh)
                if block is None:
                    continue  # wait for the proposal (or a certified block)
                nxt = self._validate(block)
                if nxt is None:
                    self._fired.add(("decide", r, bh))  # > f faulty members: never commit it
                    continue
                return self._decide(block, r, nxt)
        if not self.is_member:
            return None
        # Round skip: f+1 members already vote in a later round.
        ahead = [r for r, voters in self._round_voters.items() if r > self.round]
        for r in sorted(ahead, reverse=True):
            if len(self._round_voters[r]) >= self._skip:
                return self._start_round(r)
        r, step = self.round, self.step_name
        proposal = self._proposals.get(r)
        x = proposal.block.hash if proposal is not None else None
        if step is Step.PROPOSE and proposal is not None:
            if proposal.pol_round == -1:
                ok = self._validate(proposal.block) is not None and self.locked_hash in (_NIL, x)
                return self._prevote(x if ok else _NIL)
            if self._count_of(proposal.pol_round, VoteKind.PREVOTE, x) >= q:
                ok = self._validate(proposal.block) is not None and (
                    self.locked_round <= proposal.pol_round or self.locked_hash == x
                )
                return self._prevote(x if ok else _NIL)
        prevote_wait = ("prevote-wait", r)
        if (
            step is Step.PREVOTE
            and self._total(r, VoteKind.PREVOTE) >= q
            and prevote_wait not in self._fired
        ):
            self._fired.add(prevote_wait)
            return [ScheduleTimeout(self.height, r, Step.PREVOTE, self.config.timeout(step, r))]
        if (
            proposal is not None
            and step in (Step.PREVOTE, Step.PRECOMMIT)
            and ("polka", r) not in self._fired
            and self._count_of(r, VoteKind.PREVOTE, x) >= q
            and self._validate(proposal.block) is not None
        ):
            self._fired.add(("polka", r))
            self.valid_round, self.valid_hash = r, x
            if step is Step.PREVOTE:
                self.locked_round, self.locked_hash = r, x
                return self._precommit(x)
            return []
        if step is Step.PREVOTE and self._count_of(r, VoteKind.PREVOTE, _NIL) >= q:
            return self._precommit(_NIL)
        if self._total(r, VoteKind.PRECOMMIT) >= q and ("precommit-wait", r) not in self._fired:
            self._fired.add(("precommit-wait", r))
            delay = self.config.timeout(Step.PRECOMMIT, r)
            return [ScheduleTimeout(self.height, r, Step.PRECOMMIT, delay)]
        return None

    # --- votes, proposals, decisions -------------------------------------------------------

    def _ingest(self, vote: Vote) -> list[Action]:
        """Count a current-height vote of another committee member (signature checked)."""
        slot = (vote.round, vote.kind)
        prior = self._votes.get(slot, {}).get(vote.voter)
        if prior is not None and (
            prior.block_hash == vote.block_hash or ("vote", vote.voter, slot) in self._reported
        ):
            return []  # duplicate, or a third value from a known equivocator
        if not vote.is_valid(self.chain_id):
            return []
        self._count(vote)
        if prior is None:
            return []
        self._reported.add(("vote", vote.voter, slot))
        return [EvidenceFound(Equivocation(prior, vote))]

    def _adopt_own(self, vote: Vote) -> list[Action]:
        """An echo of a vote we signed but do not remember (WAL lost): keep it, so we never
        sign a different one for that slot."""
        slot = (vote.round, vote.kind)
        if slot in self._own:
            return []
        if not vote.is_valid(self.chain_id):
            return []
        self._own[slot] = vote
        self._count(vote)
        return [self._persist(), *self._evaluate()]

    def _count(self, vote: Vote) -> None:
        slot = (vote.round, vote.kind)
        self._votes.setdefault(slot, {}).setdefault(vote.voter, vote)
        self._by_block.setdefault(slot, {}).setdefault(vote.block_hash, {})[vote.voter] = vote
        self._round_voters.setdefault(vote.round, set()).add(vote.voter)

    def _count_of(self, round_: int, kind: VoteKind, block_hash: str | None) -> int:
        return len(self._by_block.get((round_, kind), {}).get(block_hash, ()))

    def _total(self, round_: int, kind: VoteKind) -> int:
        return len(self._votes.get((round_, kind), ()))

    def _accept_proposal(self, p: Proposal, *, trusted: bool) -> list[Action]:
        if not (0 <= p.round <= self.round + MAX_ROUNDS_AHEAD and -1 <= p.pol_round < p.round):
            return []
        if p.block.height != p.height:
            return []
        if p.proposer != self._proposer(p.round):
            return []
        if p.pol_round == -1 and p.block.header.proposer != p.proposer:
            return []  # a fresh block is built by the proposer who signs it
        prior = self._proposals.get(p.round)
        if prior is not None and prior.block.hash == p.block.hash:
            return []
        if not trusted:
            try:
                p.verify(self.chain_id)
            except signing.InvalidSignature:
                return []
        if prior is not None:
            key = ("proposal", p.round)
            if key in self._reported:
                return []
            self._reported.add(key)
            return [EvidenceFound(ConflictingProposals(prior, p))]
        self._proposals[p.round] = p
        self._blocks.setdefault(p.block.hash, p.block)
        acts: list[Action] = []
        for vote in p.pol_votes[: len(self.committee)]:
            if (
                (vote.kind, vote.height, vote.round) == (VoteKind.PREVOTE, p.height, p.pol_round)
                and vote.block_hash == p.block.hash
                and vote.voter in self._members
                and vote.voter != self.public
            ):
                acts += self._ingest(vote)
        return acts

    def _validate(self, block: Block) -> ChainState | None:
        """The state after ``block`` if it is a valid next block for this height, else None."""
        bh = block.hash
        if bh in self._validity:
            return self._validity[bh]
        nxt: ChainState | None
        try:
            nxt = chain.apply_block(
                self.state, block, require_certificate=False, verified=self._verified
            )
        except (chain.InvalidBlock, ValueError) as exc:
            self._note_rejected(bh, str(exc))
            nxt = None
        self._validity[bh] = nxt
        return nxt

    def _note_rejected(self, block_hash: str, reason: str) -> None:
        if len(self.rejected) >= 256:
            del self.rejected[next(iter(self.rejected))]
        self.rejected[block_hash] = reason

    def _propose(self, block: Block, pol_round: int) -> list[Action]:
        pol: tuple[Vote, ...] = ()
        if pol_round >= 0:
            by_block = self._by_block.get((pol_round, VoteKind.PREVOTE), {})
            pol = tuple(by_block.get(block.hash, {}).values())
        proposal = Proposal.create(
            self.height, self.round, block, pol_round, self._key, pol, chain=self.chain_id
        )
        self._proposed[self.round] = block.hash
        acts: list[Action] = [self._persist(), Broadcast(proposal)]
        return acts + self._accept_proposal(proposal, trusted=True)

    def _prevote(self, block_hash: str | None) -> list[Action]:
        self._set_step(Step.PREVOTE)
        return self._sign(VoteKind.PREVOTE, block_hash)

    def _precommit(self, block_hash: str | None) -> list[Action]:
        self._set_step(Step.PRECOMMIT)
        return self._sign(VoteKind.PRECOMMIT, block_hash)

    def _sign(self, kind: VoteKind, block_hash: str | None) -> list[Action]:
        """The only place that signs votes: once per (round, kind), persisted before sent."""
        slot = (self.round, kind)
        prior = self._own.get(slot)
        if prior is not None:
            return [Broadcast(prior)]  # double-sign protection (restart): resend, never re-sign
        vote = Vote.create(
            kind, self.height, self.round, block_hash, self._key, chain=self.chain_id
        )
        self._own[slot] = vote
        self._count(vote)
        return [self._persist(), Broadcast(vote)]

    def _persist(self) -> Persist:
        record = {
            "version": WAL_VERSION,
            "height": self.height,
            "round": self.round,
            "locked_round": self.locked_round,
            "locked_block": self.locked_hash,
            "proposed": sorted([r, h] for r, h in self._proposed.items()),
            "votes": [v.to_json() for _, v in sorted(self._own.items())],
            "valid_round": self.valid_round,
            "valid_block": self.valid_hash,
        }
        proof = self._lock_proof()
        if proof["blocks"]:
            record["proof"] = proof
        # A local file read back with json.loads: plain JSON (C speed), not RFC 8785.
        return Persist(WAL_KEY, json.dumps(record, separators=(",", ":")).encode())

    def _block_json(self, block_hash: str) -> dict:
        cached = self._json_of.get(block_hash)
        if cached is None:
            cached = self._json_of[block_hash] = self._blocks[block_hash].to_json()
        return cached

    def _lock_proof(self) -> dict:
        """The locked and valid blocks we hold, and the 2f+1 prevotes that justify them."""
        blocks, prevotes = {}, {}
        for round_, block_hash in (
            (self.locked_round, self.locked_hash),
            (self.valid_round, self.valid_hash),
        ):
            if block_hash is None or block_hash not in self._blocks:
                continue
            blocks[block_hash] = self._block_json(block_hash)
            voters = self._by_block.get((round_, VoteKind.PREVOTE), {}).get(block_hash, {})
            for vote in voters.values():
                prevotes[vote.signature] = vote.to_json()
        return {
            "blocks": [blocks[h] for h in sorted(blocks)],
            "prevotes": [prevotes[k] for k in sorted(prevotes)],
        }

    def _decide(self, block: Block, round_: int, nxt: ChainState) -> list[Action]:
        self._decided = (block, round_, nxt)
        self._set_step(Step.COMMIT)
        slot = (round_, VoteKind.PRECOMMIT)
        self._cert_votes = dict(self._by_block.get(slot, {}).get(block.hash, {}))
        delay = self.config.commit_timeout_ms
        if delay > 0:
            return [ScheduleTimeout(self.height, round_, Step.COMMIT, delay)]
        return self._finalize(None)

    def _collect_late(self, vote: Vote) -> None:
        """While waiting in COMMIT: add further valid precommits for the decided block."""
        assert self._decided is not None
        block, round_, _ = self._decided
        if (vote.kind, vote.round, vote.block_hash) != (VoteKind.PRECOMMIT, round_, block.hash):
            return
        if vote.voter in self._cert_votes:
            return
        if vote.is_valid(self.chain_id):
            self._cert_votes[vote.voter] = vote

    def _commit_with(self, cert: CommitCertificate | None) -> list[Action]:
        """Commit our current height from a certificate seen elsewhere (a proposal's
        last_commit), if we hold the block it certifies."""
        if cert is None or cert.height != self.height or self._decided is not None:
            return []
        block = self._blocks.get(cert.block_hash)
        if block is None:
            return self._behind(self.height + 1)  # decided elsewhere; we lack the block
        nxt = self._validate(block)
        if nxt is None:
            return []
        try:
            chain.check_certificate(
                cert, nxt.head_committee, block.hash, block.height, self.chain_id
            )
        except chain.InvalidBlock:
            return []
        self._decided = (block, cert.round, nxt)
        self._set_step(Step.COMMIT)
        return self._finalize(cert) + self._evaluate()

    def _finalize(self, cert: CommitCertificate | None) -> list[Action]:
        assert self._decided is not None
        block, _round, nxt = self._decided
        if cert is None:
            cert = CommitCertificate.from_votes(list(self._cert_votes.values()))
        committed = block.with_certificate(cert)
        self.state = nxt
        self._certificates[block.height] = cert
        forget_carried(self._certificates, nxt)
        acts: list[Action] = [Commit(committed)]
        if self._one_height:
            self.finished = True
            return acts
        self._enter_height()
        acts += self._start_round(0)
        pending, self._future = self._future, []
        for event in pending:
            acts += self.step(event)
        return acts

    def _buffer(self, event: Proposal | VoteReceived) -> None:
        if len(self._future) < self.config.future_buffer:
            self._future.append(event)

    def _behind(self, seen_height: int, *, force: bool = False) -> list[Action]:
        """Peers are at ``seen_height`` > ours + 1: ask for certified blocks (once per
        height we learn of, unless ``force``)."""
        if not force and seen_height <= self._sync_asked:
            return []
        self._sync_asked = max(self._sync_asked, seen_height)
        return [RequestBlocks(self.height)]


_HANDLERS: dict[type, Callable[[Consensus, Any], list[Action]]] = {
    Start: Consensus._on_start,
    Proposal: Consensus._on_proposal,
    VoteReceived: Consensus._on_vote,
    Timeout: Consensus._on_timeout,
    TxsAvailable: Consensus._on_txs,
    Committed: Consensus._on_committed,
}


def decode_wal(data: bytes) -> dict:
    """Parse a persisted record (one height's); any decode error is corruption (never
    ignored): raises :class:`WalCorrupted`."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != WAL_VERSION:
            raise LedgerFormatError("unknown WAL version")
        record = {
            "height": _nat(doc["height"]),
            "round": _nat(doc["round"]),
            "locked_round": int(doc["locked_round"]),
            "locked_block": doc["locked_block"],
            "proposed": [(_nat(r), str(h)) for r, h in doc["proposed"]],
            "votes": [Vote.from_json(v) for v in doc["votes"]],
            # Absent from records written before valid values and lock proofs were kept.
            "valid_round": int(doc.get("valid_round", -1)),
            "valid_block": doc.get("valid_block"),
            "blocks": [Block.from_json(b) for b in doc.get("proof", {}).get("blocks", [])],
            "prevotes": [Vote.from_json(v) for v in doc.get("proof", {}).get("prevotes", [])],
        }
    except (LedgerFormatError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WalCorrupted(f"consensus WAL does not decode: {exc}") from None
    for name in ("locked_block", "valid_block"):
        if record[name] is not None and not isinstance(record[name], str):
            raise WalCorrupted(f"consensus WAL {name.replace('_', ' ')} is not a block hash")
    return record


def _nat(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a non-negative integer")
    return value
