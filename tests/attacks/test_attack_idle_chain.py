"""Adversarial review of two recent changes (pure in-process, no CometBFT, no network).

1. The idle chain: ``LedgerState.seal`` keeps the app hash of a block whose
   ``BlockChanges`` are empty; reputation credited from every block's commit is kept at
   once and sealed into the hash at the epoch's end (a first version credited only
   blocks with transactions, which the two stuffing tests below broke).
2. Issuance: the user checks the authority's Paillier–Blum modulus proof in
   ``IssuanceUser.range_challenge`` (when the offer comes), no longer in ``registration``.

Tests named ``test_resisted_*`` pass: the code resists the attack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest

from medshare.crypto import abe, group, issuance
from medshare.crypto.errors import ProtocolError
from medshare.crypto.signing import SigningKey
from medshare.ledger import election
from medshare.ledger.app import rules
from medshare.ledger.app.abci import LedgerApplication
from medshare.ledger.app.genesis import Genesis
from medshare.ledger.app.rules import Code, CommitReport, DecidedBlock
from medshare.ledger.app.state import LedgerState
from medshare.ledger.app.store import StateStore
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.types import Tx, TxKind

KEYS = tuple(SigningKey(bytes([0x40 + i]) * 32) for i in range(6))
ANCHOR_BODY = {"record": "r", "patient": "p", "dept": "03", "digest": "00"}


def _genesis(nodes: int = 4, committee: int = 4, epoch: int = 10_000) -> Genesis:
    return Genesis(
        "idle-chain",
        tuple(election.Validator(k.public, f"node-{i}", 1000) for i, k in enumerate(KEYS[:nodes])),
        epoch_length=epoch,
        committee_size=committee,
    )


def _key(public: bytes) -> SigningKey:
    return next(k for k in KEYS if k.public == public)


def _block(
    state: LedgerState,
    height: int,
    txs: list[bytes],
    *,
    proposer: bytes | None = None,
    omit: bytes | None = None,
    misbehaving: tuple[bytes, ...] = (),
) -> DecidedBlock:
    members = state.committee
    votes = tuple((rules.address(m), m != omit) for m in members)
    return DecidedBlock(
        height,
        hashlib.sha256(b"idle block %d" % height).digest(),
        CommitReport(votes, rules.address(proposer if proposer is not None else members[0])),
        tuple(rules.address(m) for m in misbehaving),
        tuple(txs),
    )


def _anchor_tx(state: LedgerState, sender: SigningKey, nonce: int) -> Tx:
    return Tx.create(TxKind.ANCHOR_RECORD, ANCHOR_BODY, nonce, sender, chain=state.genesis.chain_id)


def _reputation(state: LedgerState) -> dict[bytes, int]:
    return {v.public: v.reputation for v in state.validators}


# --- 1. the idle chain: who decides whether a block's commit is credited -----------------------


def _app_with_one_committed_tx() -> tuple[LedgerApplication, bytes]:
    """A node's ABCI application after block 1, which committed one honest transaction;
    returns the app and that transaction's bytes (public: anyone reading the chain has them)."""
    store = StateStore(Path(":memory:"))
    app = LedgerApplication(store)
    genesis = _genesis()
    app.init_chain(
        abci.RequestInitChain(chain_id="c", app_state_bytes=json.dumps(genesis.to_json()).encode())
    )
    state = app._committed()
    honest = _anchor_tx(state, _key(state.committee[1]), 0).encode()
    response = app.finalize_block(
        abci.RequestFinalizeBlock(
            txs=[honest],
            hash=hashlib.sha256(b"idle block 1").digest(),
            height=1,
            proposer_address=rules.address(state.committee[1]),
        )
    )
    assert response.tx_results[0].code == Code.OK
    app.commit(abci.RequestCommit())
    return app, honest


@pytest.mark.parametrize("junk", ["replayed-committed-tx", "own-valid-tx"])
def test_resisted_a_proposer_cannot_choose_whether_its_block_earns_reputation(junk) -> None:
    """Found against the first idle-chain rule (credit only ``if block.txs``): on an idle
    chain a Byzantine member put one transaction in every block it proposed (a replayed
    one, free and accepted by ``ProcessProposal``; or its own valid anchor), so only its
    blocks earned: ~2x everyone's reputation after 400 blocks, and the election is
    weighted by reputation. Resisted now: every block's commit is credited, whatever it
    carries, so all members that proposed and signed alike end equal."""
    app, honest_raw = _app_with_one_committed_tx()
    # Every honest validator accepts a proposal that carries only a replayed transaction.
    replay = app.process_proposal(abci.RequestProcessProposal(txs=[honest_raw], height=2))
    assert replay.status == abci.ResponseProcessProposal.ACCEPT
    state = app._committed().clone()
    members = state.committee
    byzantine = members[0]
    nonce = state.next_nonce(byzantine)
    for h in range(2, 402):
        proposer = members[h % len(members)]
        txs: list[bytes] = []
        if proposer == byzantine:
            if junk == "replayed-committed-tx":
                txs = [honest_raw]
            else:
                txs = [_anchor_tx(state, _key(byzantine), nonce).encode()]
                nonce += 1
        outcome = rules.finalize(state, _block(state, h, txs, proposer=proposer))
        if txs and junk == "replayed-committed-tx":
            assert outcome.results == ((int(Code.BAD_NONCE), outcome.results[0][1]),)
            assert not outcome.changes.nonces  # the block changed nothing but reputation
    rep = _reputation(state)
    honest_best = max(rep[m] for m in members if m != byzantine)
    # Every member proposed 100 blocks and signed every block: all should be equal.
    bonus = state.genesis.policy.proposal_bonus
    assert rep[byzantine] <= honest_best + bonus, (
        f"the stuffing proposer has {rep[byzantine]}, honest members at most {honest_best}"
    )


def test_resisted_an_idle_chain_does_not_worsen_the_known_commit_omission() -> None:
    """Found against the first idle-chain rule: a proposer that leaves a victim's
    precommit out (the known xfail of ``test_attack_rules``) and stuffs a transaction in
    those blocks only sank the victim to the floor on an idle chain (its blocks were the
    only ones credited). Resisted now: idle or busy, the victim ends where the known
    attack leaves it on a busy chain."""

    def run(idle: bool) -> int:
        state = LedgerState.initial(_genesis())
        members = state.committee
        byzantine, victim = members[0], members[1]
        for h in range(1, 401):
            proposer = members[h % len(members)]
            attacking = proposer == byzantine
            txs = [b"work"] if (attacking or not idle) else []
            rules.finalize(
                state,
                _block(state, h, txs, proposer=proposer, omit=victim if attacking else None),
            )
        return _reputation(state)[victim]

    busy, idle = run(idle=False), run(idle=True)
    assert busy == 1000  # the known attack on a busy chain: the victim stays flat
    assert idle >= busy, f"on an idle chain the victim sinks to {idle} (busy chain: {busy})"


# --- 1b. the idle chain: app hashes shared by several heights ----------------------------------


def _snapshot(state: LedgerState, *, reputation: bool = False) -> tuple:
    """Everything the app hash commits to at once (the height excepted); reputation only
    with ``reputation`` (it enters the hash at an epoch's end or with an ejection)."""
    validators = election.state_json(state.validators)
    if not reputation:
        validators = [{k: v for k, v in entry.items() if k != "reputation"} for entry in validators]
    return (
        json.dumps(validators),
        tuple(state.committee),
        tuple(sorted(state.nonces.items())),
        tuple(sorted(state.identities.items())),
        json.dumps(state.candidates_json()),
        tuple(sorted(state.published.items())),
    )


def test_resisted_two_heights_share_an_app_hash_only_when_their_states_are_equal() -> None:
    """Empty blocks keep the app hash, so it is no longer unique per height. Resisted: a
    random chain of empty blocks, rejected-only blocks, valid transactions, epoch ends,
    node registrations and evidence never gives one app hash to two different states,
    and every change of the state changes the hash (nothing is mutated without a flag
    in ``BlockChanges``). The proofs and anchors bind heights through headers and block
    hashes, not through the app hash (see the checkpoint test below)."""
    rng = random.Random(1)
    state = LedgerState.initial(_genesis(nodes=6, committee=4, epoch=7))
    hashed_reputation = _snapshot(state, reputation=True)[0]
    seen: dict[bytes, tuple] = {state.app_hash: (_snapshot(state), hashed_reputation)}
    replayable: list[bytes] = []
    ejected = False
    for h in range(1, 200):
        before_hash, before = state.app_hash, _snapshot(state)
        members = state.committee
        proposer = members[h % len(members)]
        choice = rng.choice(["empty", "empty", "empty", "tx", "replay", "register", "evidence"])
        txs: list[bytes] = []
        misbehaving: tuple[bytes, ...] = ()
        if choice == "tx":
            sender = _key(rng.choice(members))
            raw = _anchor_tx(state, sender, state.next_nonce(sender.public)).encode()
            txs, replayable = [raw], [*replayable, raw]
        elif choice == "replay" and replayable:
            txs = [rng.choice(replayable)]
        elif choice == "register":
            sender = _key(rng.choice(members))
            body = {"node": SigningKey.generate().public.hex(), "name": f"new-{h}"}
            tx = Tx.create(
                TxKind.REGISTER_NODE, body, state.next_nonce(sender.public), sender,
                chain=state.genesis.chain_id,
            )  # fmt: skip
            txs = [tx.encode()]
        elif choice == "evidence" and not ejected:
            misbehaving, ejected = (members[-1],), True
        rules.finalize(state, _block(state, h, txs, proposer=proposer, misbehaving=misbehaving))
        after = _snapshot(state)
        sealed = h % state.genesis.epoch_length == 0 or bool(misbehaving)
        unchanged = after == before and not sealed
        assert unchanged == (state.app_hash == before_hash), f"height {h} ({choice})"
        if sealed:  # the reputation as of now is in the hash
            hashed_reputation = _snapshot(state, reputation=True)[0]
        hashed = (after, hashed_reputation)
        assert seen.setdefault(state.app_hash, hashed) == hashed, f"height {h}: hash collision"
    assert len(seen) > 20  # the run did change the state many times


def test_resisted_epoch_election_evidence_and_candidate_expiry_run_in_empty_blocks() -> None:
    """Idle blocks still run what the rules do by height: the election at each epoch end
    (seeded by the block hash) changes the committee, returns validator updates and
    changes the app hash; evidence in an empty block ejects; a pending node registration
    expires at the first epoch end ``CANDIDATE_TTL_BLOCKS`` after it was opened."""
    state = LedgerState.initial(_genesis(nodes=6, committee=4, epoch=5))
    changed = 0
    for h in range(1, 101):
        before, before_hash = state.committee, state.app_hash
        outcome = rules.finalize(state, _block(state, h, []))
        if not rules.epoch_ends(state, h):
            assert state.app_hash == before_hash and not outcome.updates
            continue
        expected = election.elect(state.validators, _block(state, h, []).hash, 4)
        assert state.committee == expected
        if expected != before:
            changed += 1
            assert outcome.updates and state.app_hash != before_hash
    assert changed >= 3
    # evidence in an empty block
    offender = state.committee[0]
    before_hash = state.app_hash
    rules.finalize(state, _block(state, 101, [], misbehaving=(offender,)))
    assert state.node(offender).ejected and offender not in state.committee
    assert state.app_hash != before_hash

    # candidate expiry, over empty blocks (an empty block changes nothing but the height,
    # as the test above checks, so the long idle stretch is skipped by setting the height)
    state = LedgerState.initial(_genesis(nodes=6, committee=4, epoch=1000))
    sponsor = _key(state.committee[0])
    body = {"node": SigningKey.generate().public.hex(), "name": "newcomer"}
    tx = Tx.create(TxKind.REGISTER_NODE, body, 0, sponsor, chain=state.genesis.chain_id)
    rules.finalize(state, _block(state, 1, [tx.encode()]))
    assert len(state.candidates) == 1
    state.height = rules.CANDIDATE_TTL_BLOCKS - 1
    rules.finalize(state, _block(state, rules.CANDIDATE_TTL_BLOCKS, []))
    assert len(state.candidates) == 1  # opened at 1: 99,999 blocks, not expired yet
    state.height = rules.CANDIDATE_TTL_BLOCKS + 999
    before_hash = state.app_hash
    outcome = rules.finalize(state, _block(state, rules.CANDIDATE_TTL_BLOCKS + 1000, []))
    assert not state.candidates and outcome.changes.candidates
    assert state.app_hash != before_hash


def test_resisted_checkpoint_of_an_idle_height_replayed_for_another() -> None:
    """On an idle chain heights h and h' have the same state root (app hash of header
    h+1). A node that serves block h' as the checkpoint of h (same state root) is still
    caught: a checkpoint is (height, block hash, state root) and block hashes are unique
    per height (the header carries its height and the previous block id)."""
    from medshare.ledger import anchor

    root = hashlib.sha256(b"idle state").hexdigest()
    hash_h, hash_h2 = (hashlib.sha256(b"header %d" % h).hexdigest() for h in (10, 20))
    anchored = [anchor.Checkpoint(10, hash_h, root), anchor.Checkpoint(20, hash_h2, root)]
    honest = anchor.compare(anchored, {10: (hash_h, root), 20: (hash_h2, root)})
    assert honest.ok
    swapped = anchor.compare(anchored, {10: (hash_h2, root), 20: (hash_h2, root)})
    assert not swapped.ok and swapped.first_mismatch == 10


def test_resisted_process_proposal_rejects_unsigned_or_malformed_junk() -> None:
    """The stuffing above needs a well-signed transaction: bytes that do not decode, or a
    transaction with a broken signature, make every honest validator REJECT the block."""
    app, honest_raw = _app_with_one_committed_tx()
    tx = Tx.decode(honest_raw)
    forged = dataclasses.replace(tx, nonce=tx.nonce + 1)  # signature no longer matches
    for junk in (b"work", b"{}", forged.encode()):
        answer = app.process_proposal(abci.RequestProcessProposal(txs=[junk], height=2))
        assert answer.status == abci.ResponseProcessProposal.REJECT, junk[:40]


# --- 2. issuance: the modulus proof checked when the offer comes -------------------------------

ATTRS = ("hospital:H001", "role:physician")


@pytest.fixture(scope="module")
def keys() -> issuance.AuthorityKeys:
    return issuance.AuthorityKeys.generate()


@pytest.fixture(scope="module")
def authority(keys) -> issuance.IssuanceAuthority:
    return issuance.IssuanceAuthority(keys)


@pytest.fixture(scope="module")
def verified(keys) -> set:
    """A wallet's cache holding the authority's modulus, checked once for real."""
    seen: set = set()
    challenge = issuance.IssuanceAuthority(keys).challenge()
    user = issuance.IssuanceUser(keys.master.public, "seed", verified_moduli=seen)
    user.registration(challenge)
    user._check_modulus()
    assert seen == {(challenge.authority, challenge.paillier_n)}
    return seen


def _broken(challenge: issuance.IssuanceChallenge) -> issuance.IssuanceChallenge:
    proof = challenge.modulus_proof
    return dataclasses.replace(challenge, modulus_proof=dataclasses.replace(proof, w=proof.w + 1))


def test_resisted_nothing_sent_before_the_offer_depends_on_the_modulus(keys, authority) -> None:
    """What the user sends before ``range_challenge`` (``R = g1^k``, a Schnorr proof bound
    to identity/session/authority, the identity signature) is the same whatever modulus
    the challenge names; a bad modulus is refused at the offer, and ``respond`` (the only
    message under the modulus) cannot run without a range challenge."""
    public = keys.master.public
    user = issuance.IssuanceUser(public, "nell")
    good = authority.challenge()
    bad = _broken(good)
    r_good = user.registration(good)
    r_bad = user.registration(bad)
    assert r_good.R == r_bad.R == group.mul(group.g1(), user._k)
    assert r_good.identity_signature == r_bad.identity_signature
    for request in (r_good, r_bad):
        blob = request.to_bytes()
        assert format(good.paillier_n, "x").encode() not in blob
        assert str(good.paillier_n).encode() not in blob
    offer = authority.offer(r_bad, ATTRS)
    with pytest.raises(ProtocolError, match="not proven well formed"):
        user.range_challenge(offer)
    assert user._offer is None and user._range_bits is None
    with pytest.raises(ProtocolError, match="does not belong"):
        user.respond(issuance.RangeAnswer(offer.session, None))
    fresh = issuance.IssuanceUser(public, "nell")
    with pytest.raises(ProtocolError, match="no challenge"):
        fresh._check_modulus()
    with pytest.raises(ProtocolError, match="not the one proven"):
        fresh.range_challenge(offer)  # an offer without any challenge answered


def test_resisted_modulus_swapped_between_challenge_and_offer(keys, authority, verified) -> None:
    """An authority that proves one modulus in the challenge and offers under another
    (first offer, or a second offer after the user answered a first) is refused, and
    ``respond`` only ever uses an offer whose modulus was checked."""
    public = keys.master.public
    user = issuance.IssuanceUser(public, "otto", verified_moduli=verified)
    challenge = authority.challenge()
    request = user.registration(challenge)
    offer = authority.offer(request, ATTRS)
    other_n = challenge.paillier_n + 2  # any other modulus (unproven)
    with pytest.raises(ProtocolError, match="not the one proven"):
        user.range_challenge(dataclasses.replace(offer, paillier_n=other_n))
    asked = user.range_challenge(offer)  # the proven one: fine (cached)
    with pytest.raises(ProtocolError, match="not the one proven"):
        user.range_challenge(dataclasses.replace(offer, paillier_n=other_n))
    # a second registration, to a challenge naming another modulus, after the offer: a
    # new offer under it is checked (and refused); the offer in hand keeps the checked one
    user.registration(dataclasses.replace(challenge, paillier_n=other_n))
    with pytest.raises(ProtocolError, match="not proven well formed"):
        user.range_challenge(dataclasses.replace(offer, paillier_n=other_n))
    assert user._offer is offer and user._offer.paillier_n == challenge.paillier_n
    response = user.respond(authority.open_range(asked))
    assert response.session == offer.session


def test_resisted_modulus_cache_cannot_be_poisoned(keys, authority, verified) -> None:
    """The cache is keyed by (authority fingerprint, N) and written only after a proof of
    that N under that authority's context verified. A challenge for a cached N with a
    different (broken) proof passes (the modulus *is* proven — only N matters), but with
    the ledger's published digest, which covers the proof, it is refused at registration;
    another authority cannot borrow a cached N; a failed check caches nothing."""
    public = keys.master.public
    challenge = authority.challenge()
    broken = _broken(challenge)
    user = issuance.IssuanceUser(public, "pam", verified_moduli=verified)
    user.range_challenge(authority.offer(user.registration(broken), ATTRS))  # benign
    published = issuance.modulus_digest(challenge.paillier_n, challenge.modulus_proof)
    pinned = issuance.IssuanceUser(
        public, "pam", verified_moduli=verified, published_modulus=published
    )
    with pytest.raises(ProtocolError, match="not the one it published"):
        pinned.registration(broken)
    # another authority (another ABE key) naming the same, cached, N and the same proof
    other = abe.setup().public
    shared = set(verified)
    borrowed = dataclasses.replace(challenge, authority=other.fingerprint())
    thief = issuance.IssuanceUser(other, "pam", verified_moduli=shared)
    thief.registration(borrowed)
    honest = issuance.IssuanceUser(public, "pam").registration(authority.challenge())
    offer = authority.offer(honest, ATTRS)  # an offer under that N, for "pam"
    with pytest.raises(ProtocolError, match="not proven well formed"):
        thief.range_challenge(offer)
    assert shared == verified  # nothing cached by the failure


class _FakeServer:
    """The hospital server as ``obtain_key`` sees it, relaying an authority that
    published (and serves) a modulus whose proof does not verify."""

    def __init__(self, keys: issuance.AuthorityKeys, authority: issuance.IssuanceAuthority):
        self.public = keys.master.public
        self.authority = authority
        self.challenge = _broken(authority.challenge())
        self.posted: list[str] = []

    def authority_public(self, code: str) -> abe.AbePublicKey:
        return self.public

    def get(self, path: str, params=None):
        digest = issuance.modulus_digest(self.challenge.paillier_n, self.challenge.modulus_proof)
        return {"paillier_digest": digest.hex()}

    def post_message(self, path: str, body: bytes = b"") -> bytes:
        self.posted.append(path.rsplit("/", 1)[1])
        if path.endswith("/challenge"):
            return self.challenge.to_bytes()
        if path.endswith("/offer"):
            request = issuance.RegistrationRequest.from_bytes(body)
            return self.authority.offer(request, ATTRS).to_bytes()
        raise AssertionError(f"the wallet sent {path} under an unproven modulus")


def test_resisted_wallet_checks_the_modulus_before_sending_the_range_challenge(
    keys, authority
) -> None:
    """``wallet.keys.obtain_key`` runs registration → range_challenge → respond in that
    order: against an authority whose published modulus proof is broken, it stops at the
    offer, before posting the range challenge or anything encrypted under the modulus."""
    from medshare.wallet import keys as wallet_keys

    server = _FakeServer(keys, authority)
    with pytest.raises(ProtocolError, match="not proven well formed"):
        wallet_keys.obtain_key(
            server, "quentin@H001", SigningKey.generate(), "H001", verified_moduli=set()
        )
    assert server.posted == ["challenge", "offer"]
