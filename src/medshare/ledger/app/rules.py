"""The ledger's rules, as pure functions over :class:`~medshare.ledger.app.state.LedgerState`.

CometBFT orders transactions and commits blocks; these functions say which transactions
are valid and how a decided block changes the state:

* **Admission** (``CheckTx`` and again when a block is applied): the bytes must be one
  canonical (RFC 8785) signed :class:`~medshare.ledger.types.Tx` for this chain, the
  signature must verify, the nonce must be the sender's next one, and the sender must be
  allowed to send that kind (:data:`SENDERS`). Invalid transactions inside a decided block
  are skipped with a non-zero code, deterministically on every node.
* **Reputation** from what CometBFT reports about the previous block: every member of the
  validator set that signed it (``decided_last_commit``) gains, every member that did not
  loses; the proposer of this block gains when it sat in that set.
* **Misbehaviour** (duplicate votes, light-client attacks, reported by CometBFT with the
  offender's address): the offender's reputation is zeroed, it is ejected for good, and if
  it holds a committee seat the seat goes at once to a newly elected non-member (the
  committee shrinks when there is none, but never to zero).
* **Election** at the end of every epoch (heights E, 2E, …): a fresh committee is drawn
  from the committed reputations (Efraimidis–Spirakis, :mod:`medshare.ledger.election`),
  seeded by that block's hash. The app returns the difference to CometBFT as validator
  updates, which take effect at height H+2.

Timing and small committees. CometBFT fixes the validator set of height H+1 before H is
finalized, so updates returned by block H (an election, or an ejection) first vote on
H+2; an offender caught at H can still sign H+1, and its evidence is already committed.
A committee of m = 3f+1 members tolerates f Byzantine ones. When fewer than m nodes are
eligible (ejections, zero reputation), the committee is every eligible node; below 4 it
tolerates none (f = 0), and CometBFT stops deciding blocks — without forking — while
more than a third of the committee's power is down. Registering nodes (``register_node``,
approved by more than 2/3 of the active nodes) and the next election restore the size,
but only while blocks are still decided: if more than a third of the committee is gone
for good, no block comes, so no election and no registration either; the consortium must
then restart from a new genesis carrying the last state (not automated yet). The
committee is never emptied.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from medshare.crypto import issuance, signing
from medshare.ledger import election
from medshare.ledger.app import published
from medshare.ledger.app.genesis import MEMBER_POWER
from medshare.ledger.app.state import BlockChanges, LedgerState
from medshare.ledger.types import LedgerFormatError, Tx, TxKind

ADDRESS_BYTES = 20


class Code(int, Enum):
    """``CheckTx`` / ``ExecTxResult`` codes (0 is success)."""

    OK = 0
    MALFORMED = 1
    WRONG_CHAIN = 2
    BAD_SIGNATURE = 3
    BAD_NONCE = 4
    NOT_PERMITTED = 5
    REJECTED = 6


class TxRejected(Exception):
    def __init__(self, code: Code, log: str) -> None:
        super().__init__(log)
        self.code = code
        self.log = log


class Sender(Enum):
    NODE = "node"  # a consortium node (its CometBFT validator key)
    REGISTERED = "registered"  # a node, or an identity a node registered
    ENGINE = "engine"  # reported by CometBFT or decided by the app: never a transaction


# Who may send each kind. Unregistered keys may send nothing: a person's identity key is
# registered by a node first (``register_identity``), so every transaction on the chain is
# signed by a key some hospital vouched for. Evidence comes from CometBFT's own
# ``misbehavior`` reports and committees from the election, so neither is a transaction.
SENDERS: Mapping[TxKind, Sender] = {
    TxKind.REGISTER_NODE: Sender.NODE,
    TxKind.REGISTER_IDENTITY: Sender.NODE,
    TxKind.ANCHOR_RECORD: Sender.NODE,
    TxKind.TRACE_VERDICT: Sender.NODE,
    TxKind.REGISTER_KEY_TAG: Sender.REGISTERED,
    TxKind.PUBLISH_KEY: Sender.REGISTERED,
    TxKind.GRANT: Sender.REGISTERED,
    TxKind.REVOKE: Sender.REGISTERED,
    TxKind.ACCESS: Sender.REGISTERED,
    TxKind.BREAK_GLASS: Sender.REGISTERED,
    TxKind.EVIDENCE: Sender.ENGINE,
    TxKind.COMMITTEE_CHANGE: Sender.ENGINE,
}
MAX_IDENTITY_NAME = 256
# How long a node registration waits for its approvals (blocks; an idle chain makes about
# one a second, a busy one a few: one to a few days).
CANDIDATE_TTL_BLOCKS = 100_000
IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+\-]{0,255}")
MAX_TAG_HEX = 256  # a compressed G1 point is 96 hex digits
KEY_TAG_FIELDS = frozenset({"identity", "tag", "R", "authority", "attributes", "proof"})
MAX_TAG_ATTRIBUTES = 64
MAX_ATTRIBUTE = 256


def address(public: bytes) -> bytes:
    """CometBFT's validator address of an Ed25519 key: the first 20 bytes of SHA-256."""
    return hashlib.sha256(public).digest()[:ADDRESS_BYTES]


# --- admission -----------------------------------------------------------------------------


def decode(raw: bytes) -> Tx:
    """The transaction in ``raw``, which must be its canonical signed encoding (so the
    CometBFT tx hash, SHA-256 of the bytes, is the transaction id)."""
    try:
        tx = Tx.decode(raw)
    except (LedgerFormatError, ValueError, RecursionError) as exc:
        raise TxRejected(Code.MALFORMED, str(exc)) from None
    if tx.encode() != raw:
        raise TxRejected(Code.MALFORMED, "transaction bytes are not canonical (RFC 8785)")
    return tx


def admit(
    state: LedgerState,
    tx: Tx,
    expected_nonce: int,
    *,
    verified: Callable[[Tx], bool] | None = None,
) -> None:
    """Raise :class:`TxRejected` unless ``tx`` may be applied when the sender's next nonce
    is ``expected_nonce``. ``verified`` lets a caller skip a signature it already checked."""
    if tx.chain != state.genesis.chain_id:
        raise TxRejected(Code.WRONG_CHAIN, "transaction signed for another chain")
    sender = SENDERS.get(tx.kind, Sender.ENGINE)
    if sender is Sender.ENGINE:
        raise TxRejected(Code.NOT_PERMITTED, f"{tx.kind.value} is not accepted as a transaction")
    node = state.node(tx.sender)
    is_node = node is not None and not node.ejected  # an ejected node loses every privilege
    if sender is Sender.NODE and not is_node:
        raise TxRejected(
            Code.NOT_PERMITTED, f"only an active consortium node may send {tx.kind.value}"
        )
    if sender is Sender.REGISTERED and not is_node and tx.sender.hex() not in state.identities:
        raise TxRejected(Code.NOT_PERMITTED, "sender key is not registered by a node")
    if tx.nonce != expected_nonce:
        raise TxRejected(
            Code.BAD_NONCE, f"nonce {tx.nonce}, expected {expected_nonce} (replay or gap)"
        )
    if verified is None or not verified(tx):
        try:
            tx.verify()
        except signing.InvalidSignature:
            raise TxRejected(Code.BAD_SIGNATURE, "invalid signature") from None


def _register_node(state: LedgerState, tx: Tx, changes: BlockChanges) -> None:
    """One active node's approval of a new node (key and name). The newcomer joins (with
    the initial reputation, eligible at the next election) once more than 2/3 of the
    nodes active now approved that same key and name: no single member — possibly the
    Byzantine one the committee is sized to tolerate — can fill the consortium with keys
    of its own, or block a newcomer by proposing it under another name. Each node may
    have opened at most one proposal still pending, so the proposals kept in the state
    stay as few as the nodes; a proposal expires at the first epoch end
    :data:`CANDIDATE_TTL_BLOCKS` after it was opened (the members' IT approve by hand,
    on their own machines: an epoch of 100 blocks is seconds)."""
    sponsor = state.node(tx.sender)
    if sponsor is None or sponsor.ejected:
        raise TxRejected(Code.NOT_PERMITTED, "only an active node may register a node")
    public = _public_key(tx.body.get("node"), "node")
    if state.node(public) is not None or public.hex() in state.identities:
        raise TxRejected(Code.REJECTED, "node already registered")
    name = tx.body.get("name")
    if not isinstance(name, str) or not IDENTITY_NAME.fullmatch(name):
        raise TxRejected(Code.REJECTED, "node name must be 1-256 ASCII letters, digits or ._@:+-")
    if any(v.name.casefold() == name.casefold() for v in state.validators):
        # a name tells whose node it is (``H001-a`` is H001's): never a second key for it
        raise TxRejected(Code.REJECTED, f"a node is named {name!r} already")
    key = f"{public.hex()}/{name}"
    me = tx.sender.hex()
    if key in state.candidates:
        opener, approvals, opened = state.candidates[key]
        if me in approvals:
            raise TxRejected(Code.REJECTED, "this node already approved that registration")
    else:
        if any(entry[0] == me for entry in state.candidates.values()):
            raise TxRejected(Code.REJECTED, "this node already has a registration pending")
        opener, approvals, opened = me, frozenset(), state.height + 1
    approvals = approvals | {me}
    active = {v.public.hex() for v in state.validators if not v.ejected}
    changes.candidates = True
    if 3 * len(approvals & active) <= 2 * len(active):
        state.candidates[key] = (opener, approvals, opened)
        return
    for other in [k for k in state.candidates if k.startswith(public.hex() + "/")]:
        del state.candidates[other]
    new = election.Validator(public, name, state.genesis.policy.initial)
    state.validators = (*state.validators, new)
    changes.validators = True


def _register_identity(state: LedgerState, tx: Tx, changes: BlockChanges) -> None:
    """A node vouches for a person's identity key. One key per name, and a name of a
    member organisation (``…@H001``) only from that member's own nodes; names of
    organisations without a node (``researcher@uni``) and names without one
    (``patient:<id>``) from any node."""
    sponsor = state.node(tx.sender)
    if sponsor is None or sponsor.ejected:
        raise TxRejected(Code.NOT_PERMITTED, "only an active node may register an identity")
    public = _public_key(tx.body.get("key"), "key")
    name = tx.body.get("identity")
    if not isinstance(name, str) or not IDENTITY_NAME.fullmatch(name):
        # Plain ASCII only: a look-alike of a member's name (a trailing space, a Cyrillic
        # letter, a zero-width space) would escape the organisation rule below and be
        # printed by tracing as if it were that member's person.
        raise TxRejected(
            Code.REJECTED,
            "identity must be 1-256 ASCII letters, digits or . _ @ : + - (starting with a "
            "letter or digit)",
        )
    if public.hex() in state.identities or state.node(public) is not None:
        raise TxRejected(Code.REJECTED, "key already registered")
    organisation = identity_organisation(name)
    members = {node_organisation(v.name) for v in state.validators}
    if organisation in members and node_organisation(sponsor.name) != organisation:
        # Names of a member organisation are that member's to give: another member's node
        # could otherwise take a name before its holder is enrolled and register tags in
        # it, and tracing would blame that person for keys they never held.
        raise TxRejected(
            Code.NOT_PERMITTED,
            f"only {name.rpartition('@')[2]}'s nodes may enrol {name!r} (sender is {sponsor.name})",
        )
    if state.holder(name) is not None:
        # One key per identity: tracing names the holder of a leaked key through this
        # binding, so a second key under a taken name would let its holder (or the node
        # that enrolled it) speak for someone else.
        raise TxRejected(Code.REJECTED, f"identity {name!r} already has an enrolled key")
    state.enrol(public.hex(), name)
    changes.identities[public.hex()] = name


def node_organisation(node_name: str) -> str:
    """Who runs a node, from its genesis name: ``H001-a`` → ``h001`` (``regulator`` →
    ``regulator``); case-folded, so ``…@h001`` is H001's too."""
    return (node_name.rpartition("-")[0] or node_name).casefold()


def identity_organisation(identity: str) -> str | None:
    """The organisation an identity name belongs to, case-folded: ``dr.wang@H001`` →
    ``h001``; None for names without one (``patient:<id>``)."""
    _, at, organisation = identity.rpartition("@")
    return organisation.casefold() if at and organisation else None


def _register_key_tag(state: LedgerState, tx: Tx, changes: BlockChanges) -> None:
    """The public tag of a CP-ABE key, registered by its holder at issuance: the sender
    must be the key enrolled under the named identity, and the body must prove knowledge
    of ``K'`` for the tag (a Schnorr proof bound to chain, identity and sender). Tracing
    blames a leaked key on the identity whose enrolled key registered its tag, so nobody
    — not a node, not another person — can register a tag in someone else's name, nor
    copy someone's tag into their own name."""
    holder = state.identities.get(tx.sender.hex())
    if holder is None:
        raise TxRejected(
            Code.NOT_PERMITTED, "a key tag is registered by its holder's enrolled identity key"
        )
    identity = tx.body.get("identity")
    if identity != holder:
        raise TxRejected(
            Code.NOT_PERMITTED, f"the sender's key is enrolled as {holder!r}, not {identity!r}"
        )
    tag = tx.body.get("tag")
    if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_HEX:
        raise TxRejected(Code.REJECTED, "tag must be a short hex string")
    try:
        if bytes.fromhex(tag).hex() != tag:
            raise ValueError
    except ValueError:
        raise TxRejected(Code.REJECTED, "tag must be lower-case hex") from None
    extra = set(tx.body) - KEY_TAG_FIELDS
    if extra:
        raise TxRejected(Code.REJECTED, f"unknown key-tag fields: {sorted(extra)[:4]}")
    authority = tx.body.get("authority")
    if not isinstance(authority, str) or published.authority_key_name(authority) is None:
        raise TxRejected(Code.REJECTED, "authority must name an authority")
    if published.authority_key_name(authority) not in state.published:
        # a tag filed under an authority that publishes no key would never be found by
        # tracing that authority's keys: the leak would be blamed on the authority
        raise TxRejected(Code.REJECTED, f"authority {authority!r} has published no key")
    attributes = tx.body.get("attributes", [])
    if (
        not isinstance(attributes, list)
        or len(attributes) > MAX_TAG_ATTRIBUTES
        or not all(isinstance(a, str) and 0 < len(a) <= MAX_ATTRIBUTE for a in attributes)
    ):
        raise TxRejected(Code.REJECTED, "attributes must be a short list of short strings")
    context = issuance.key_tag_context(tx.chain, holder, tx.sender)
    if not issuance.verify_key_tag(tag, tx.body.get("proof"), context):
        raise TxRejected(
            Code.REJECTED, "no proof that the sender holds the key of this tag (copied tag?)"
        )


def _publish_key(state: LedgerState, tx: Tx, changes: BlockChanges) -> None:
    """The digest of a public key, published once by its owner
    (:mod:`medshare.ledger.app.published`): the sender must be the key enrolled under the
    identity the name belongs to, and the name must be new."""
    name = tx.body.get("key")
    owner = published.owner(name)
    if owner is None:
        raise TxRejected(Code.REJECTED, "key must be a published-key name (see published.py)")
    if state.identities.get(tx.sender.hex()) != owner:
        raise TxRejected(Code.NOT_PERMITTED, f"only {owner}'s enrolled key may publish {name}")
    value = tx.body.get("digest")
    if not published.is_digest(value):
        raise TxRejected(Code.REJECTED, "digest must be a SHA-256 in lower-case hex")
    if name in state.published:
        raise TxRejected(Code.REJECTED, f"{name} is already published (keys are never replaced)")
    state.published[name] = value
    changes.published[name] = value


KEY_REVOCATION_PREFIX = "key/"


def _revoke(state: LedgerState, tx: Tx, changes: BlockChanges) -> None:
    """A revocation of a CP-ABE key (``key/<authority>/<tag>``) is the authority's alone:
    tracing takes it as "this key is revoked already", so one filed by anybody else — the
    leaker first of all — would spare a guilty key its rotation. Revocations of grants
    are the service's business (it checks who may revoke which grant)."""
    grant = tx.body.get("grant")
    if not isinstance(grant, str) or not grant.startswith(KEY_REVOCATION_PREFIX):
        return
    authority, _, tag = grant[len(KEY_REVOCATION_PREFIX) :].partition("/")
    if not authority or not tag:
        raise TxRejected(Code.REJECTED, "a key revocation names key/<authority>/<tag>")
    signer = published.authority_identity(authority)
    if state.identities.get(tx.sender.hex()) != signer:
        raise TxRejected(Code.NOT_PERMITTED, f"only {signer} may revoke its keys")


def _public_key(value: object, name: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != signing.PUBLIC_KEY_BYTES or raw.hex() != value:
        raise TxRejected(Code.REJECTED, f"{name} must be a lower-case hex Ed25519 public key")
    if not signing.is_sound_public_key(raw):
        raise TxRejected(Code.REJECTED, f"{name} is not a sound Ed25519 key (small order?)")
    return raw


_KIND_RULES: Mapping[TxKind, Callable[[LedgerState, Tx, BlockChanges], None]] = {
    TxKind.REGISTER_NODE: _register_node,
    TxKind.REGISTER_IDENTITY: _register_identity,
    TxKind.REGISTER_KEY_TAG: _register_key_tag,
    TxKind.PUBLISH_KEY: _publish_key,
    TxKind.REVOKE: _revoke,
}


def apply_tx(
    state: LedgerState,
    tx: Tx,
    changes: BlockChanges,
    *,
    verified: Callable[[Tx], bool] | None = None,
) -> None:
    """Apply one transaction of a decided block; :class:`TxRejected` leaves the state as it
    was (kind rules check before they write)."""
    admit(state, tx, state.next_nonce(tx.sender), verified=verified)
    rule = _KIND_RULES.get(tx.kind)
    if rule is not None:
        rule(state, tx, changes)
    nonce = tx.nonce + 1
    state.nonces[tx.sender.hex()] = nonce
    changes.nonces[tx.sender.hex()] = nonce


# --- what CometBFT reports ------------------------------------------------------------------


@dataclass(frozen=True)
class CommitReport:
    """``decided_last_commit``: the previous block's validator set, by address, and who
    signed it; plus this block's proposer address."""

    votes: tuple[tuple[bytes, bool], ...]
    proposer: bytes


def _by_address(state: LedgerState) -> dict[bytes, bytes]:
    return {address(v.public): v.public for v in state.validators}


def credit(state: LedgerState, report: CommitReport, changes: BlockChanges) -> None:
    """Reputation from one commit report (unknown addresses are ignored: CometBFT reports
    only validators the app put there, so one would mean a bug, not an attack)."""
    known = _by_address(state)
    members = [known[a] for a, _ in report.votes if a in known]
    if not members:
        return
    signers = [known[a] for a, signed in report.votes if signed and a in known]
    proposer = known.get(report.proposer)
    updated = election.update_reputation(
        state.validators,
        members,
        proposer if proposer in members else None,
        signers,
        state.genesis.policy,
    )
    if updated != state.validators:
        state.validators = updated
        changes.reputation = True


def punish(
    state: LedgerState, offenders: Iterable[bytes], seed: bytes, changes: BlockChanges
) -> None:
    """Eject the validators at these addresses; their committee seats go to non-members
    elected with ``seed`` (the block's hash), so the committee keeps its size while there
    are eligible nodes."""
    known = _by_address(state)
    bad = {known[a] for a in offenders if a in known}
    if not bad:
        return
    state.validators = election.eject(state.validators, bad)
    changes.validators = True
    seats = [m for m in state.committee if m not in bad]
    if len(seats) != len(state.committee):
        refilled = _fill(state, seats, seed)
        # CometBFT cannot run without validators: when every member is an offender and
        # nobody is left to elect, the seats stay (ejected, never re-elected) until a node
        # is registered; the chain keeps its liveness, the offenders lose everything else.
        if refilled:
            state.committee = refilled
            changes.committee = True


def _fill(state: LedgerState, seats: Sequence[bytes], seed: bytes) -> tuple[bytes, ...]:
    missing = state.genesis.committee_size - len(seats)
    outsiders = [v for v in state.validators if v.eligible and v.public not in seats]
    if missing > 0 and outsiders:
        seats = [*seats, *election.elect(outsiders, seed, min(missing, len(outsiders)))]
    return tuple(sorted(seats))


def epoch_ends(state: LedgerState, height: int) -> bool:
    return height % state.genesis.epoch_length == 0


def elect_next(state: LedgerState, seed: bytes, changes: BlockChanges) -> None:
    """At an epoch's last block: the next committee, from the committed reputations; node
    registrations pending for :data:`CANDIDATE_TTL_BLOCKS` or more expire."""
    height = state.height + 1  # the block being finalized
    live = {
        key: entry
        for key, entry in state.candidates.items()
        if height - entry[2] < CANDIDATE_TTL_BLOCKS
    }
    if live != state.candidates:
        state.candidates = live
        changes.candidates = True
    try:
        committee = election.elect(state.validators, seed, state.genesis.committee_size)
    except ValueError:
        return  # nobody eligible: keep the committee rather than halt the chain
    if committee != state.committee:
        state.committee = committee
        changes.committee = True


@dataclass(frozen=True)
class DecidedBlock:
    """What ``FinalizeBlock`` tells the app about a decided block (also what a verifier
    reads back from a node's RPC to replay the chain)."""

    height: int
    hash: bytes
    report: CommitReport
    misbehaving: tuple[bytes, ...]  # validator addresses CometBFT has evidence against
    txs: tuple[bytes, ...]


@dataclass(frozen=True)
class BlockOutcome:
    results: tuple[tuple[int, str], ...]  # (code, log) per transaction
    updates: tuple[tuple[bytes, int], ...]  # (public key, power), CometBFT validator updates
    changes: BlockChanges


def finalize(
    state: LedgerState,
    block: DecidedBlock,
    *,
    decode: Callable[[bytes], Tx] = decode,
    verified: Callable[[Tx], bool] | None = None,
) -> BlockOutcome:
    """Apply one decided block to ``state`` (in place) in the one order every node and
    every verifier uses: reputation from the previous block's commit, ejection on
    evidence, the transactions, the election at an epoch's end, then the app hash.

    Reputation credited from a commit is kept (and persisted) at once but enters the app
    hash at the epoch's end, with the election that reads it (or sooner, with an
    ejection): a block that changes nothing else keeps the app hash, so CometBFT makes no
    proof block after it and an idle chain idles. Every block's commit counts, whoever
    proposed it and whatever it carries."""
    if block.height != state.height + 1:
        # CometBFT hands blocks over in order; anything else means the app's store and the
        # engine's disagree, and going on would sign a state nobody else has.
        raise RuntimeError(f"block {block.height} applied to the state after {state.height}")
    before = state.committee
    changes = BlockChanges()
    credit(state, block.report, changes)
    punish(state, block.misbehaving, block.hash, changes)
    results = []
    for raw in block.txs:
        try:
            apply_tx(state, decode(raw), changes, verified=verified)
        except TxRejected as exc:
            results.append((int(exc.code), exc.log))
        except (LedgerFormatError, ValueError) as exc:
            # A rule that failed in an unforeseen way: skip the transaction on every node
            # alike rather than halt the chain on input an attacker chose.
            results.append((int(Code.REJECTED), f"rejected: {exc}"))
        else:
            results.append((int(Code.OK), ""))
    if epoch_ends(state, block.height):
        changes.validators = True  # the epoch's reputation, sealed with its election
        elect_next(state, block.hash, changes)
    updates = tuple(validator_updates(before, state.committee))
    state.seal(block.height, changes)
    return BlockOutcome(tuple(results), updates, changes)


def validator_updates(
    before: Collection[bytes], after: Collection[bytes]
) -> list[tuple[bytes, int]]:
    """CometBFT validator updates turning the set ``before`` into ``after``: power 0
    removes a validator. Sorted by key, so every node returns the same list."""
    removed = [(m, 0) for m in before if m not in after]
    added = [(m, MEMBER_POWER) for m in after if m not in before]
    return sorted(removed + added)
