"""Reputation-weighted, deterministic election of the block-producing committee (DESIGN §4).

Why a committee
---------------
Running BFT (propose / prevote / precommit) among all N institutions costs O(N²) messages
and 2N signature verifications per node per block, and every quorum waits for the
⌈2N/3⌉-th fastest of N links. Instead, time is cut into epochs of E blocks and at each
epoch boundary a committee of m = 3f+1 producers is elected; inside the epoch only the
committee runs BFT (O(m²) messages, tolerating f Byzantine members) while every other node
just verifies the 2f+1-signature commit certificates.

How
---
Efraimidis–Spirakis weighted sampling without replacement. For every eligible validator
(not ejected, reputation > 0) a ticket ``x_i = SHA-256(tag ‖ seed ‖ pk_i)`` (256-bit
integer) is mapped exactly into the open interval ``u_i = (x_i + 1) / (2^256 + 1)`` and
given the key ``k_i = u_i^(1/w_i)`` with weight ``w_i`` = reputation; the ``size`` largest
keys win. With ``size = 1`` this picks validator i with probability exactly ``w_i / Σw``;
larger committees are the successive draws without replacement.

Determinism: no floats. ``k_i`` is compared through ``ln(u_i) / w_i`` computed with
:mod:`decimal` in a private context of 100 significant digits (``ln`` is correctly rounded
by the decimal specification, in both the C and the pure-Python implementation), so every
machine computes bit-identical keys. Two keys that differ in their first ~95 significant
digits are ordered correctly; closer keys (probability ≈ 1e-95) are still ordered
identically everywhere, with equal keys broken by the smaller public key. The committee
is returned sorted by public key, which is the order proposer rotation indexes.

Seed, bias and grinding (honest limits)
---------------------------------------
The seed of epoch e+1 is the hash of the final block of epoch e (``epoch_end(e)``); for
epoch 0 it is the genesis hash. That block's proposer chooses which transactions it
includes, their order and the timestamp, so it can build ~2^k candidate blocks, compute
the resulting committee for each (everything here is public) and propose the one it likes
best. If a given outcome (e.g. "I, or my colluders, hold more than f seats") has
probability p under an honest seed, grinding over 2^k tries raises it to at most
``1 - (1 - p)^(2^k) ≤ 2^k · p``: the bias grows linearly in the number of tries, so only
outcomes with non-negligible p can be made likely. It can also withhold its proposal
(forcing a view change and handing the choice to the next proposer) — one more option,
not a new power. The grinding is bounded by the time it has to propose before the round
times out, and it can only affect elections when it happens to propose an epoch's final
block.

Reputation weighting limits Sybils: a newly registered node starts at
``ReputationPolicy.initial`` while established honest nodes climb to ``cap`` (10× by
default), and registration itself is a consortium transaction; a node gains weight only
by proposing and voting on committed blocks over time, loses it for missed rounds, and is
zeroed and ejected for good on evidence of equivocation or invalid blocks. The floor of 1
lets a crashed-and-recovered honest node be elected again.

Because the committee of the next epoch is known as soon as the seed block commits, an
attacker can target its members (e.g. denial of service) for the whole epoch.

What a VRF would add
--------------------
With a verifiable random function each node would compute ``(y_i, π_i) = VRF_sk_i(seed)``
and use ``y_i`` as its ticket: the lottery is still publicly verifiable (via ``π_i``) but
unpredictable to everyone else and private until the node reveals it when it first
speaks, so the committee cannot be targeted in advance and a grinding proposer can no
longer evaluate other nodes' outcomes. Deriving the seed itself as a VRF output of the
previous seed (Algorand-style) would shrink the proposer's grinding to one bit (publish or
withhold).

Everything here is a pure function: no I/O, no clock, no randomness, no global state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import cached_property, lru_cache

from medshare.ledger.types import LedgerFormatError, canonical, digest_hex

ELECTION_DOMAIN = b"medshare/election/v1"
PUBLIC_KEY_BYTES = 32
PRECISION = 100

_DENOMINATOR = 2**256 + 1


def _check_int(value: object, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}")
    return value


@dataclass(frozen=True)
class Validator:
    """A node eligible for election: Ed25519 key, name, reputation in milli-points."""

    public: bytes
    name: str
    reputation: int
    ejected: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.public, bytes) or len(self.public) != PUBLIC_KEY_BYTES:
            raise ValueError(f"public must be {PUBLIC_KEY_BYTES} bytes")
        if not isinstance(self.name, str):
            raise ValueError("name must be a string")
        _check_int(self.reputation, "reputation")
        if not isinstance(self.ejected, bool):
            raise ValueError("ejected must be a bool")

    @property
    def eligible(self) -> bool:
        return not self.ejected and self.reputation > 0

    @cached_property
    def canonical_json(self) -> bytes:
        """RFC 8785 bytes of this validator's entry in the state (a state root joins them).
        Cached per object, and per value: nodes of one process (the simulator, the
        in-process cluster) rebuild equal validators for every block they apply."""
        return _entry_bytes(self.public, self.name, self.reputation, self.ejected)


@dataclass(frozen=True)
class ReputationPolicy:
    """Reputation changes applied per committed block (integer milli-points)."""

    initial: int = 1000
    proposal_bonus: int = 20
    vote_bonus: int = 10
    missed_penalty: int = 50
    cap: int = 10_000
    floor: int = 1

    def __post_init__(self) -> None:
        for name in ("initial", "proposal_bonus", "vote_bonus", "missed_penalty", "cap"):
            _check_int(getattr(self, name), name)
        _check_int(self.floor, "floor", 1)
        if not self.floor <= self.initial <= self.cap:
            raise ValueError("need floor ≤ initial ≤ cap")


# --- committee arithmetic ------------------------------------------------------------------------


@lru_cache(maxsize=1 << 14)
def _entry_bytes(public: bytes, name: str, reputation: int, ejected: bool) -> bytes:
    """A pure function of its arguments, so a bounded memo is safe to share."""
    return canonical(
        {"public": public.hex(), "name": name, "reputation": reputation, "ejected": ejected}
    )


def committee_size(f: int) -> int:
    """Members needed to tolerate ``f`` Byzantine ones: 3f + 1."""
    return 3 * _check_int(f, "f") + 1


def max_faults(size: int) -> int:
    """Byzantine members a committee of ``size`` tolerates: ⌊(size − 1) / 3⌋."""
    return (_check_int(size, "size", 1) - 1) // 3


def proposer(committee: Sequence[bytes], height: int, round: int, run: int = 1) -> bytes:
    """Round-robin proposer: ``committee[(height // run + round) % len(committee)]``.

    ``run`` > 1 keeps one leader for ``run`` consecutive heights (heights 0..run-1, then
    run..2·run-1, …), so it can propose them back to back without waiting for a block
    from another member: the precondition for overlapping heights
    (docs/ledger-throughput.md). A failed round still hands the height to the next member.
    """
    if not committee:
        raise ValueError("empty committee")
    _check_int(height, "height")
    _check_int(round, "round")
    _check_int(run, "run", 1)
    return committee[(height // run + round) % len(committee)]


def epoch_of(height: int, epoch_length: int) -> int:
    """Epoch of a block: heights 1..E are epoch 0, E+1..2E epoch 1, …; genesis (0) is epoch 0."""
    _check_int(height, "height")
    _check_int(epoch_length, "epoch_length", 1)
    return 0 if height == 0 else (height - 1) // epoch_length


def epoch_start(epoch: int, epoch_length: int) -> int:
    """First height of ``epoch`` (epoch 0 starts at height 1, after genesis)."""
    return _check_int(epoch, "epoch") * _check_int(epoch_length, "epoch_length", 1) + 1


def epoch_end(epoch: int, epoch_length: int) -> int:
    """Last height of ``epoch``; its block hash seeds the election of ``epoch + 1``."""
    return (_check_int(epoch, "epoch") + 1) * _check_int(epoch_length, "epoch_length", 1)


# --- election ------------------------------------------------------------------------------------


def ticket(seed: bytes, public: bytes) -> int:
    """The 256-bit lottery ticket ``x = SHA-256(tag ‖ seed ‖ public)`` as an integer."""
    if not isinstance(seed, bytes):
        raise ValueError("seed must be bytes")
    if not isinstance(public, bytes) or len(public) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public must be {PUBLIC_KEY_BYTES} bytes")
    return int.from_bytes(hashlib.sha256(ELECTION_DOMAIN + seed + public).digest(), "big")


def election_key(seed: bytes, public: bytes, weight: int) -> Decimal:
    """``ln(u) / w`` for ``u = (x + 1) / (2^256 + 1)``: the log of the E–S key ``u^(1/w)``.

    Monotone in ``u^(1/w)`` (larger wins); computed with 100 correctly rounded digits.
    """
    _check_int(weight, "weight", 1)
    ctx = Context(prec=PRECISION, rounding=ROUND_HALF_EVEN)
    u = ctx.divide(Decimal(ticket(seed, public) + 1), Decimal(_DENOMINATOR))
    return ctx.divide(ctx.ln(u), Decimal(weight))


def _unique(validators: Iterable[Validator]) -> None:
    seen: set[bytes] = set()
    for v in validators:
        if not isinstance(v, Validator):
            raise ValueError("validators must be Validator instances")
        if v.public in seen:
            raise ValueError(f"duplicate validator key {v.public.hex()}")
        seen.add(v.public)


def elect(validators: Sequence[Validator], seed: bytes, size: int) -> tuple[bytes, ...]:
    """Elect up to ``size`` public keys, weighted by reputation, ordered by public key.

    Ejected and zero-reputation validators are never elected; with fewer eligible
    validators than ``size`` all of them are returned. Raises ValueError if ``size < 1``,
    nobody is eligible, or two validators share a key. The input order is irrelevant.
    """
    _check_int(size, "size", 1)
    _unique(validators)
    eligible = [v for v in validators if v.eligible]
    if not eligible:
        raise ValueError("no eligible validator")
    ranked = sorted(eligible, key=lambda v: (-election_key(seed, v.public, v.reputation), v.public))
    return tuple(sorted(v.public for v in ranked[:size]))


# --- reputation ----------------------------------------------------------------------------------


def update_reputation(
    validators: Sequence[Validator],
    committee: Collection[bytes],
    proposer: bytes | None,
    signers: Collection[bytes],
    policy: ReputationPolicy,
    evidence_offenders: Collection[bytes] = (),
) -> tuple[Validator, ...]:
    """Apply one committed block's reputation changes; same order as ``validators``.

    The proposer gains ``proposal_bonus``; committee members whose precommit is in the
    certificate (``signers``) gain ``vote_bonus``; committee members absent from it lose
    ``missed_penalty``; results are clamped to ``[floor, cap]``. Non-members are untouched
    (signers outside the committee are ignored). ``proposer`` None gives no proposal
    bonus (CometBFT reports a block's signers and the next block's proposer, who may sit
    in another validator set at an epoch boundary). Offenders named by evidence get reputation
    0 and ``ejected=True``, and ejected validators never gain reputation again.
    """
    _unique(validators)
    members = set(committee)
    known = {v.public for v in validators}
    if not members <= known:
        raise ValueError("committee member is not a known validator")
    if proposer is not None and proposer not in members:
        raise ValueError("proposer is not a committee member")
    signed = set(signers)
    offenders = set(evidence_offenders)
    out: list[Validator] = []
    for v in validators:
        if v.public in offenders:
            out.append(replace(v, reputation=0, ejected=True))
            continue
        if v.ejected or v.public not in members:
            out.append(v)
            continue
        delta = policy.proposal_bonus if v.public == proposer else 0
        delta += policy.vote_bonus if v.public in signed else -policy.missed_penalty
        reputation = min(policy.cap, max(policy.floor, v.reputation + delta))
        out.append(replace(v, reputation=reputation))
    return tuple(out)


def eject(validators: Sequence[Validator], offenders: Collection[bytes]) -> tuple[Validator, ...]:
    """Evidence committed on chain: each offender's reputation is zeroed and it is ejected."""
    bad = set(offenders)
    return tuple(
        replace(v, reputation=0, ejected=True) if v.public in bad else v for v in validators
    )


# --- state encoding ------------------------------------------------------------------------------


def state_json(validators: Sequence[Validator]) -> list[dict]:
    """JSON form of the validator set, in the given order (hex keys)."""
    _unique(validators)
    return [
        {"public": v.public.hex(), "name": v.name, "reputation": v.reputation, "ejected": v.ejected}
        for v in validators
    ]


def state_canonical(validators: Sequence[Validator]) -> bytes:
    """``canonical(state_json(validators))``, joined from each validator's cached bytes
    (an RFC 8785 array is its elements' canonical forms, comma-separated, in brackets)."""
    _unique(validators)
    return b"[" + b",".join(v.canonical_json for v in validators) + b"]"


def from_state_json(doc: object) -> tuple[Validator, ...]:
    """Inverse of :func:`state_json`; raises :class:`LedgerFormatError` on bad input."""
    if not isinstance(doc, list):
        raise LedgerFormatError("validator state must be a list")
    out: list[Validator] = []
    for item in doc:
        if not isinstance(item, dict) or set(item) != {"public", "name", "reputation", "ejected"}:
            raise LedgerFormatError(
                "validator entry needs exactly public, name, reputation, ejected"
            )
        public = item["public"]
        if not isinstance(public, str) or len(public) != 2 * PUBLIC_KEY_BYTES:
            raise LedgerFormatError("public must be 32 bytes of lower-case hex")
        try:
            raw = bytes.fromhex(public)
        except ValueError:
            raise LedgerFormatError("public is not hex") from None
        if raw.hex() != public:
            raise LedgerFormatError("public must be lower-case hex")
        try:
            out.append(Validator(raw, item["name"], item["reputation"], item["ejected"]))
        except ValueError as exc:
            raise LedgerFormatError(str(exc)) from None
    try:
        _unique(out)
    except ValueError as exc:
        raise LedgerFormatError(str(exc)) from None
    return tuple(out)


def state_digest(validators: Sequence[Validator]) -> str:
    """SHA-256 hex of the canonical (RFC 8785) validator state, for the state root."""
    return digest_hex(state_canonical(validators))
