"""Chain rules: genesis, block validation and the replicated state, as pure-ish logic.

This is the one place that says what a valid next block is. The consensus core uses
it to judge proposals, replicas use it to accept certified blocks, and ``ledger
verify`` replays the whole chain from genesis through it, so all three agree by
construction.

Order of work when block ``h+1`` is applied to the state after block ``h``:

1. ``last_commit`` (the certificate for block ``h + 1 − W`` chosen by the proposer of
   ``h+1`` and hashed into its header; ``W`` = ``certificate_lag``, 1 by default, so
   normally block ``h``) must carry 2f+1 valid precommits of that block's committee;
   reputation is updated from it (its proposer +, signers +, absent members −).
   Using the certificate *inside* a later block, rather than each node's own copy,
   keeps reputation identical on every node. A lag ``W > 1`` lets a pipelined consensus
   propose ``h+1`` before ``h`` has a certificate.
2. At an epoch boundary the committee is elected afresh from the reputations committed
   after block ``h`` (before step 1's update, so the choice of certificate cannot change
   it), seeded by the hash of the previous epoch's final block (block ``h``).
3. The header is checked: height, previous hash, epoch, proposer ∈ committee,
   strictly increasing time, Merkle root.
4. Transactions apply in order: signature, per-sender nonce (anti-replay), kind rules
   (evidence ejects the offender and, if it sits in the committee, re-elects the
   committee from the next height on, or from the next epoch on a pipelined chain; a
   registered node joins with the initial reputation). The block itself is certified
   by the committee it was proposed to.
5. The resulting state root must equal the header's.
6. When the block's own certificate is given, it must carry 2f+1 valid precommits of
   the committee for ``h+1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from medshare.crypto import signing
from medshare.ledger import election
from medshare.ledger.types import (
    CHAIN_ID_BYTES,
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitCertificate,
    Equivocation,
    LedgerFormatError,
    Tx,
    TxKind,
    canonical,
    certificate_hash,
    certificate_signers,
    conflicting_proposals_offender,
    digest_hex,
    invalid_block_offender,
    merkle_root_hex,
    quorum,
)

GENESIS_PROPOSER = bytes(32)
# Block times are ms since the epoch. The cap keeps every later time encodable in RFC 8785
# (|n| < 2^53): without it one Byzantine proposer could certify a time after which no
# successor block can be written, halting the chain.
MAX_TIMESTAMP_MS = 2**52
# Bounds the blocks a state keeps pending (and the certificates a node keeps) and how long
# reputation may lag: far beyond any useful pipeline depth (docs/ledger-throughput.md).
MAX_CERTIFICATE_LAG = 256
# Longest leader run (ChainConfig.proposer_run): one leader per run of heights.
MAX_PROPOSER_RUN = 1024


class InvalidBlock(Exception):
    """A block that breaks a chain rule; the message names the rule."""


class TxRejected(Exception):
    """A transaction that cannot be applied to the current state."""


@dataclass(frozen=True)
class ChainConfig:
    """Everything nodes must agree on before block 1: the genesis."""

    chain_name: str
    validators: tuple[election.Validator, ...]
    epoch_length: int = 10
    committee_size: int = 4
    genesis_time_ms: int = 0
    anchor_every: int = 10
    policy: election.ReputationPolicy = field(default_factory=election.ReputationPolicy)
    # Block h carries the certificate of block h - certificate_lag (see ChainState.pending):
    # 1 is the classic "previous block's commit"; a larger lag lets a pipelined consensus
    # propose h before h-1 has a certificate (docs/ledger-throughput.md).
    certificate_lag: int = 1
    # One committee member leads proposer_run consecutive heights (election.proposer): 1 is
    # Tendermint's rotation per height; a longer run lets one leader propose heights back
    # to back. The chain rules only need the proposer to be a member; consensus checks the
    # rotation, so every node must agree on it, hence it is part of the genesis.
    proposer_run: int = 1

    def __post_init__(self) -> None:
        for name, top in (
            ("certificate_lag", MAX_CERTIFICATE_LAG),
            ("proposer_run", MAX_PROPOSER_RUN),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if not 1 <= value <= top:
                raise ValueError(f"{name} must be in 1..{top}")

    @property
    def pipelined(self) -> bool:
        """Whether heights may be in flight before their parent commits (lag > 1). Such a
        chain changes its committee only at epoch boundaries: every height in flight must
        have a committee fixed by committed blocks (docs/ledger-throughput.md)."""
        return self.certificate_lag > 1

    @cached_property
    def chain_id(self) -> str:
        """What every transaction signs to name its chain: 16 bytes of the genesis digest.

        Derived from the whole genesis (name, validators, genesis time, ...) rather than the
        name alone, because names repeat ("medshare" is every embedded consortium's)."""
        return digest_hex(canonical(self.to_json()))[: 2 * CHAIN_ID_BYTES]

    def to_json(self) -> dict:
        doc = {
            "chain": self.chain_name,
            "validators": election.state_json(self.validators),
            "epoch_length": self.epoch_length,
            "committee_size": self.committee_size,
            "genesis_time_ms": self.genesis_time_ms,
            "anchor_every": self.anchor_every,
        }
        # Absent when 1 (the default): genesis hashes of existing chains stay unchanged.
        for name in ("certificate_lag", "proposer_run"):
            if getattr(self, name) != 1:
                doc[name] = getattr(self, name)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ChainConfig:
        try:
            return cls(
                chain_name=str(doc["chain"]),
                validators=election.from_state_json(doc["validators"]),
                epoch_length=int(doc["epoch_length"]),
                committee_size=int(doc["committee_size"]),
                genesis_time_ms=int(doc["genesis_time_ms"]),
                anchor_every=int(doc.get("anchor_every", 10)),
                certificate_lag=doc.get("certificate_lag", 1),
                proposer_run=doc.get("proposer_run", 1),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerFormatError(f"malformed chain config: {exc}") from None


@dataclass(frozen=True)
class CertifiedHead:
    """What checking a block's certificate later needs: which block, who proposed it and
    which committee must have signed it."""

    height: int
    block_hash: str
    proposer: bytes
    committee: tuple[bytes, ...]


@dataclass
class ChainState:
    """The replicated state after some block; mutated only by :func:`apply_block`.

    ``pending``: the applied blocks whose certificates no later block has carried yet,
    oldest first; with ``certificate_lag`` W it holds the last W blocks (fewer near
    genesis), and the next block must carry the certificate of ``pending[0]`` once W are
    pending. Derived from the chain, so not part of the state root."""

    config: ChainConfig
    height: int
    head_hash: str
    head_time_ms: int
    validators: tuple[election.Validator, ...]
    committee: tuple[bytes, ...]
    nonces: dict[str, int]
    head_proposer: bytes = GENESIS_PROPOSER
    head_committee: tuple[bytes, ...] = ()
    pending: tuple[CertifiedHead, ...] = ()

    def state_root(self) -> str:
        """SHA-256 of the canonical (RFC 8785) {committee, height, nonces, validators}.

        Written member by member in RFC 8785 key order, each value canonicalised on its
        own and the validators from their cached bytes: the same bytes as canonicalising
        the whole object (tested), at a fraction of the cost for 64 validators."""
        return digest_hex(
            b'{"committee":'
            + canonical([c.hex() for c in self.committee])
            + b',"height":'
            + canonical(self.height)
            + b',"nonces":'
            + canonical(self.nonces)
            + b',"validators":'
            + election.state_canonical(self.validators)
            + b"}"
        )

    def clone(self) -> ChainState:
        return ChainState(
            self.config,
            self.height,
            self.head_hash,
            self.head_time_ms,
            self.validators,
            self.committee,
            dict(self.nonces),
            self.head_proposer,
            self.head_committee,
            self.pending,
        )

    def next_nonce(self, sender: bytes) -> int:
        return self.nonces.get(sender.hex(), 0)

    def validator(self, public: bytes) -> election.Validator | None:
        return next((v for v in self.validators if v.public == public), None)


def genesis(config: ChainConfig) -> tuple[Block, ChainState]:
    """Block 0 and the state after it; the first committee is elected from the genesis hash."""
    seed = digest_hex(canonical(config.to_json()))
    committee = election.elect(config.validators, bytes.fromhex(seed), config.committee_size)
    state = ChainState(
        config, 0, ZERO_HASH, config.genesis_time_ms, config.validators, committee, {}
    )
    header = BlockHeader(
        height=0,
        prev_hash=seed,
        merkle_root=merkle_root_hex(()),
        state_root=state.state_root(),
        last_commit_hash=ZERO_HASH,
        epoch=0,
        proposer=GENESIS_PROPOSER,
        timestamp_ms=config.genesis_time_ms,
    )
    block = Block(header, ())
    state.head_hash = block.hash
    state.head_committee = committee
    return block, state


# --- transactions -------------------------------------------------------------------------------


def _equivocating_voter(body: Mapping[str, Any], chain_id: str) -> bytes:
    evidence = Equivocation.from_body(body)
    evidence.check(chain_id)
    if body.get("offender") != evidence.first.voter.hex():
        raise LedgerFormatError("the evidence names another offender than the votes' signer")
    return evidence.first.voter


# Evidence kinds the chain accepts: each checks its proof on its own, without the state
# (signatures over conflicting statements, or a signed proposal of a block carrying a
# transaction whose signature fails), and names the offender. A block invalid only against
# the state (e.g. a wrong state root) is not provable this way: its proposer loses rounds.
_EVIDENCE_CHECKS: Mapping[str, Callable[[Mapping[str, Any], str], bytes]] = {
    "equivocation": _equivocating_voter,
    "conflicting_proposals": conflicting_proposals_offender,
    "invalid_block": invalid_block_offender,
}


def _apply_evidence(state: ChainState, tx: Tx) -> None:
    check = _EVIDENCE_CHECKS.get(str(tx.body.get("kind")))
    if check is None:
        raise TxRejected(f"unknown evidence kind {tx.body.get('kind')!r}")
    try:
        offender = check(tx.body, state.config.chain_id)
    except (LedgerFormatError, signing.InvalidSignature) as exc:
        raise TxRejected(f"invalid evidence: {exc}") from None
    if state.validator(offender) is None:
        raise TxRejected("evidence names an unknown validator")
    state.validators = election.eject(state.validators, {offender})
    if offender in state.committee and not state.config.pipelined:
        # Replace the offender for the rest of the epoch (from the next height on; the
        # current block is still certified by the committee that voted on it). A pipelined
        # chain keeps the seat until the epoch ends (the offender is ejected at once, so it
        # is not re-elected): heights after this one may already be in flight, and their
        # committee must not depend on a block that was not committed when they began.
        state.committee = election.elect(
            state.validators, bytes.fromhex(state.head_hash), state.config.committee_size
        )


def _apply_register_node(state: ChainState, tx: Tx) -> None:
    sponsor = state.validator(tx.sender)
    if sponsor is None or sponsor.ejected:
        raise TxRejected("only an active validator may register a new node")
    try:
        public = bytes.fromhex(str(tx.body["node"]))
    except ValueError:
        raise TxRejected("node must be a hex Ed25519 public key") from None
    if len(public) != signing.PUBLIC_KEY_BYTES or state.validator(public) is not None:
        raise TxRejected("node key malformed or already registered")
    new = election.Validator(public, str(tx.body["name"]), state.config.policy.initial)
    state.validators = (*state.validators, new)


_KIND_RULES: Mapping[TxKind, Callable[[ChainState, Tx], None]] = {
    TxKind.EVIDENCE: _apply_evidence,
    TxKind.REGISTER_NODE: _apply_register_node,
}


def apply_tx(state: ChainState, tx: Tx, *, verified: Callable[[Tx], bool] | None = None) -> None:
    """Apply one transaction; raises :class:`TxRejected` and leaves ``state`` as it was."""
    if tx.chain != state.config.chain_id:
        raise TxRejected(f"transaction {tx.txid[:12]} was signed for another chain")
    if verified is None or not verified(tx):
        try:
            tx.verify()
        except signing.InvalidSignature:
            raise TxRejected(f"transaction {tx.txid[:12]} has an invalid signature") from None
    expected = state.next_nonce(tx.sender)
    if tx.nonce != expected:
        raise TxRejected(
            f"transaction {tx.txid[:12]} has nonce {tx.nonce}, expected {expected} (replay?)"
        )
    rule = _KIND_RULES.get(tx.kind)
    if rule is not None:
        rule(state, tx)
    state.nonces[tx.sender.hex()] = expected + 1


# --- blocks -------------------------------------------------------------------------------------


def check_certificate(
    cert: CommitCertificate | None,
    committee: Sequence[bytes],
    block_hash: str,
    height: int,
    chain_id: str,
) -> set[bytes]:
    """The signers of a valid certificate (precommits signed on ``chain_id``); raises
    :class:`InvalidBlock` if it lacks 2f+1."""
    if cert is None:
        raise InvalidBlock(f"block {height} has no commit certificate")
    signers = certificate_signers(cert, committee, block_hash, height, chain_id)
    if len(signers) < quorum(len(committee)):
        raise InvalidBlock(
            f"certificate for block {height} has {len(signers)} valid committee signatures, "
            f"needs {quorum(len(committee))}"
        )
    return signers


def certificate_due(state: ChainState) -> CertifiedHead | None:
    """The block whose certificate the next block must carry (``last_commit``): the oldest
    pending one once ``certificate_lag`` blocks are pending; None near genesis."""
    if len(state.pending) < state.config.certificate_lag:
        return None
    return state.pending[0]


def begin_block(state: ChainState, last_commit: CommitCertificate | None) -> ChainState:
    """Steps 1–2: the state a block at ``state.height + 1`` is built on (a new object)."""
    nxt = state.clone()
    height = state.height + 1
    due = certificate_due(state)
    if due is not None:
        signers = check_certificate(
            last_commit, due.committee, due.block_hash, due.height, state.config.chain_id
        )
        nxt.validators = election.update_reputation(
            nxt.validators, due.committee, due.proposer, signers, state.config.policy
        )
        nxt.pending = state.pending[1:]
    elif last_commit is not None:
        raise InvalidBlock(
            f"block {height} must not carry a last commit (lag {state.config.certificate_lag})"
        )
    E = state.config.epoch_length
    if height > 1 and election.epoch_of(height, E) != election.epoch_of(height - 1, E):
        # Elect from the committed reputations, not from the ones just updated by
        # ``last_commit``: two valid certificates for one block may name different signers,
        # and the committee must be known before anyone votes on this height.
        nxt.committee = election.elect(
            state.validators, bytes.fromhex(state.head_hash), state.config.committee_size
        )
    return nxt


def apply_block(
    state: ChainState,
    block: Block,
    *,
    require_certificate: bool = True,
    verified: Callable[[Tx], bool] | None = None,
) -> ChainState:
    """Validate ``block`` as the successor of ``state``; return the new state (``state`` is
    untouched). Raises :class:`InvalidBlock` naming the broken rule."""
    h = block.header
    if h.height != state.height + 1:
        raise InvalidBlock(f"expected height {state.height + 1}, got {h.height}")
    if h.prev_hash != state.head_hash:
        raise InvalidBlock(f"block {h.height} does not extend the current head")
    if h.last_commit_hash != certificate_hash(block.last_commit):
        raise InvalidBlock(f"block {h.height} last-commit hash mismatch")
    nxt = begin_block(state, block.last_commit)
    if h.epoch != election.epoch_of(h.height, state.config.epoch_length):
        raise InvalidBlock(f"block {h.height} has epoch {h.epoch}")
    signing_committee = nxt.committee
    if h.proposer not in signing_committee:
        raise InvalidBlock(f"block {h.height} proposer is not in the elected committee")
    if h.timestamp_ms <= state.head_time_ms:
        raise InvalidBlock(f"block {h.height} time does not increase")
    if h.timestamp_ms > MAX_TIMESTAMP_MS:
        raise InvalidBlock(f"block {h.height} time is beyond {MAX_TIMESTAMP_MS} ms")
    if h.merkle_root != block.tx_merkle_root():
        raise InvalidBlock(f"block {h.height} Merkle root does not match its transactions")
    for tx in block.txs:
        try:
            apply_tx(nxt, tx, verified=verified)
        except TxRejected as exc:
            raise InvalidBlock(f"block {h.height}: {exc}") from None
    nxt.height = h.height
    if h.state_root != nxt.state_root():
        raise InvalidBlock(f"block {h.height} state root mismatch")
    if require_certificate:
        check_certificate(
            block.certificate, signing_committee, block.hash, h.height, state.config.chain_id
        )
    nxt.head_hash = block.hash
    nxt.head_time_ms = h.timestamp_ms
    nxt.head_proposer = h.proposer
    nxt.head_committee = signing_committee
    nxt.pending = (
        *nxt.pending,
        CertifiedHead(h.height, block.hash, h.proposer, signing_committee),
    )
    return nxt


def build_block(
    state: ChainState,
    txs: Iterable[Tx],
    proposer: bytes,
    timestamp_ms: int,
    last_commit: CommitCertificate | None,
    *,
    verified: Callable[[Tx], bool] | None = None,
) -> tuple[Block, list[Tx]]:
    """A proposer's block on ``state``: keeps the txs that apply, returns those it dropped."""
    nxt = begin_block(state, last_commit)
    included, dropped = [], []
    for tx in txs:
        try:
            apply_tx(nxt, tx, verified=verified)  # leaves nxt unchanged when it rejects
        except TxRejected:
            dropped.append(tx)
            continue
        included.append(tx)
    nxt.height = state.height + 1
    header = BlockHeader(
        height=nxt.height,
        prev_hash=state.head_hash,
        merkle_root=merkle_root_hex(included),
        state_root=nxt.state_root(),
        last_commit_hash=certificate_hash(last_commit),
        epoch=election.epoch_of(nxt.height, state.config.epoch_length),
        proposer=proposer,
        timestamp_ms=max(timestamp_ms, state.head_time_ms + 1),
    )
    return Block(header, tuple(included), last_commit), dropped
