"""The ledger application's rules, as pure functions (no CometBFT, no I/O)."""

from __future__ import annotations

import hashlib

import pytest
from appkit import NODE_KEYS, make_genesis
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto import group, issuance
from medshare.crypto.signing import SigningKey
from medshare.ledger.app import rules
from medshare.ledger.app.genesis import MEMBER_POWER, Genesis
from medshare.ledger.app.rules import Code, CommitReport, DecidedBlock, TxRejected
from medshare.ledger.app.state import LedgerState
from medshare.ledger.types import LedgerFormatError, Tx, TxKind


def tx(kind: TxKind, body: dict, nonce: int, key: SigningKey, genesis: Genesis) -> Tx:
    return Tx.create(kind, body, nonce, key, chain=genesis.chain_id)


def block(
    state: LedgerState, height: int, txs: list[Tx], *, signed=None, misbehaving=()
) -> DecidedBlock:
    members = state.committee
    signers = set(members if signed is None else signed)
    votes = tuple((rules.address(m), m in signers) for m in members)
    return DecidedBlock(
        height,
        hashlib.sha256(b"block %d" % height).digest(),
        CommitReport(votes, rules.address(members[0])),
        tuple(rules.address(m) for m in misbehaving),
        tuple(t.encode() for t in txs),
    )


@pytest.fixture
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture
def state(genesis: Genesis) -> LedgerState:
    return LedgerState.initial(genesis)


def register(state: LedgerState, who: SigningKey, nonce: int = 0) -> Tx:
    body = {"identity": "dr.wang@H001", "key": who.public.hex()}
    return tx(TxKind.REGISTER_IDENTITY, body, nonce, NODE_KEYS[0], state.genesis)


def access(state: LedgerState, who: SigningKey, nonce: int) -> Tx:
    body = {"record": "r1", "actor": "dr.wang@H001", "area": "institution"}
    return tx(TxKind.ACCESS, body, nonce, who, state.genesis)


# --- admission ------------------------------------------------------------------------------


def test_decode_requires_the_canonical_bytes(state: LedgerState) -> None:
    t = register(state, SigningKey.generate())
    assert rules.decode(t.encode()) == t
    spaced = t.encode().replace(b",", b", ", 1)
    with pytest.raises(TxRejected) as err:
        rules.decode(spaced)
    assert err.value.code is Code.MALFORMED
    for junk in (b"", b"\xff\xfe", b"[]", b'{"kind": "access"}', b"x" * 70_000):
        with pytest.raises(TxRejected) as err:
            rules.decode(junk)
        assert err.value.code is Code.MALFORMED


def test_a_node_registers_an_identity_which_may_then_send(state: LedgerState) -> None:
    alice = SigningKey.generate()
    outcome = rules.finalize(
        state, block(state, 1, [register(state, alice), access(state, alice, 0)])
    )
    assert outcome.results == ((0, ""), (0, ""))
    assert state.identities == {alice.public.hex(): "dr.wang@H001"}
    assert state.next_nonce(alice.public) == 1
    assert state.next_nonce(NODE_KEYS[0].public) == 1


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (TxKind.ACCESS, {"record": "r", "actor": "a", "area": "x"}),
        (TxKind.REGISTER_IDENTITY, {"identity": "me", "key": "00" * 32}),
        (TxKind.ANCHOR_RECORD, {"record": "r", "patient": "p", "dept": "03", "digest": "00"}),
    ],
)
def test_unregistered_keys_may_send_nothing(state: LedgerState, kind: TxKind, body: dict) -> None:
    stranger = SigningKey.generate()
    with pytest.raises(TxRejected) as err:
        rules.admit(state, tx(kind, body, 0, stranger, state.genesis), 0)
    assert err.value.code is Code.NOT_PERMITTED


def test_a_registered_identity_may_not_send_node_kinds(state: LedgerState) -> None:
    alice = SigningKey.generate()
    rules.finalize(state, block(state, 1, [register(state, alice)]))
    body = {"identity": "eve", "key": SigningKey.generate().public.hex()}
    with pytest.raises(TxRejected) as err:
        rules.admit(state, tx(TxKind.REGISTER_IDENTITY, body, 0, alice, state.genesis), 0)
    assert err.value.code is Code.NOT_PERMITTED


@pytest.mark.parametrize("kind", [TxKind.EVIDENCE, TxKind.COMMITTEE_CHANGE])
def test_engine_kinds_are_never_transactions(state: LedgerState, kind: TxKind) -> None:
    body = {"offender": "00", "kind": "x", "proof": {}, "epoch": 1, "committee": []}
    with pytest.raises(TxRejected) as err:
        rules.admit(state, tx(kind, body, 0, NODE_KEYS[0], state.genesis), 0)
    assert err.value.code is Code.NOT_PERMITTED


def test_wrong_chain_bad_signature_and_bad_nonce(state: LedgerState) -> None:
    other = make_genesis(epoch=7)
    good = register(state, SigningKey.generate())
    foreign = tx(good.kind, dict(good.body), 0, NODE_KEYS[0], other)
    forged = Tx(good.kind, good.sender, good.nonce, good.body, bytes(64), good.chain)
    cases = [
        (foreign, 0, Code.WRONG_CHAIN),
        (forged, 0, Code.BAD_SIGNATURE),
        (good, 1, Code.BAD_NONCE),
    ]
    for t, expected_nonce, code in cases:
        with pytest.raises(TxRejected) as err:
            rules.admit(state, t, expected_nonce)
        assert err.value.code is code


def test_a_replayed_transaction_is_skipped_in_a_block(state: LedgerState) -> None:
    t = register(state, SigningKey.generate())
    rules.finalize(state, block(state, 1, [t]))
    outcome = rules.finalize(state, block(state, 2, [t]))
    assert outcome.results[0][0] == Code.BAD_NONCE
    assert len(state.identities) == 1


def test_register_identity_rejects_bad_keys_and_duplicates(state: LedgerState) -> None:
    alice = SigningKey.generate()
    bad_bodies = [
        {"identity": "x", "key": "zz" * 32},
        {"identity": "x", "key": "AB" * 32},
        {"identity": "", "key": alice.public.hex()},
        {"identity": "x" * 300, "key": alice.public.hex()},
        {"identity": "x", "key": NODE_KEYS[1].public.hex()},
    ]
    # Each is rejected, so none consumes nonce 0.
    txs = [tx(TxKind.REGISTER_IDENTITY, b, 0, NODE_KEYS[0], state.genesis) for b in bad_bodies]
    outcome = rules.finalize(state, block(state, 1, txs))
    assert [code for code, _ in outcome.results] == [Code.REJECTED] * len(bad_bodies)
    assert state.identities == {}
    # A rejected transaction does not consume its nonce.
    assert state.next_nonce(NODE_KEYS[0].public) == 0


def test_a_node_joins_only_when_more_than_two_thirds_of_active_nodes_approve(
    state: LedgerState,
) -> None:
    newcomer = SigningKey.generate()
    body = {"node": newcomer.public.hex(), "name": "H009"}
    approvals = [tx(TxKind.REGISTER_NODE, body, 0, key, state.genesis) for key in NODE_KEYS]
    # 6 active nodes: 4 approvals are 2/3, not more; the 5th admits the node.
    outcome = rules.finalize(state, block(state, 1, approvals[:4]))
    assert outcome.results == ((0, ""),) * 4
    assert state.node(newcomer.public) is None
    again = tx(TxKind.REGISTER_NODE, body, 1, NODE_KEYS[0], state.genesis)
    # Node 0 has its proposal pending: it may not open another (under another name).
    renamed = tx(TxKind.REGISTER_NODE, {**body, "name": "H010"}, 1, NODE_KEYS[0], state.genesis)
    outcome = rules.finalize(state, block(state, 2, [again, renamed, approvals[4]]))
    assert [code for code, _ in outcome.results] == [Code.REJECTED, Code.REJECTED, 0]
    added = state.node(newcomer.public)
    assert added is not None and added.reputation == state.genesis.policy.initial
    assert state.candidates == {}


def test_a_pending_node_registration_outlives_epochs_then_expires(
    state: LedgerState, monkeypatch
) -> None:
    """Members approve a newcomer by hand on their own machines, so a proposal waits
    across epoch ends (5 blocks here) and expires only CANDIDATE_TTL_BLOCKS after it was
    opened; a later approval then opens a new proposal instead of completing the old."""
    monkeypatch.setattr(rules, "CANDIDATE_TTL_BLOCKS", 12)
    newcomer = SigningKey.generate()
    body = {"node": newcomer.public.hex(), "name": "H009"}
    rules.finalize(state, block(state, 1, [tx(TxKind.REGISTER_NODE, body, 0, NODE_KEYS[0],
                                             state.genesis)]))  # fmt: skip
    for h in range(2, 12):  # epoch ends at 5 and 10: still pending
        rules.finalize(state, block(state, h, []))
    assert list(state.candidates) == [f"{newcomer.public.hex()}/H009"]
    for h in range(12, 16):  # the epoch end at 15 is 14 blocks after it was opened
        rules.finalize(state, block(state, h, []))
    assert state.candidates == {}
    late = tx(TxKind.REGISTER_NODE, body, 0, NODE_KEYS[1], state.genesis)
    rules.finalize(state, block(state, 16, [late]))
    (entry,) = state.candidates.values()
    assert entry[1] == frozenset({NODE_KEYS[1].public.hex()}) and entry[2] == 16


# --- what CometBFT reports ------------------------------------------------------------------


def test_reputation_follows_the_commit_report(state: LedgerState) -> None:
    members = state.committee
    absent = members[-1]
    before = {v.public: v.reputation for v in state.validators}
    rules.finalize(state, block(state, 1, [], signed=members[:-1]))
    after = {v.public: v.reputation for v in state.validators}
    policy = state.genesis.policy
    assert after[absent] == before[absent] - policy.missed_penalty
    assert after[members[0]] == before[members[0]] + policy.vote_bonus + policy.proposal_bonus
    assert after[members[1]] == before[members[1]] + policy.vote_bonus
    outsiders = [v.public for v in state.validators if v.public not in members]
    assert all(after[o] == before[o] for o in outsiders)


def test_reputation_enters_the_app_hash_at_the_epochs_end(genesis: Genesis) -> None:
    """A block that changes nothing but reputation keeps the app hash (so CometBFT needs no
    proof block after it and an idle chain idles); the reputation is kept at once and is
    sealed into the hash at the epoch's end, with the election that reads it."""
    state = LedgerState.initial(genesis)
    before, app_hash = state.validators, state.app_hash
    length = genesis.epoch_length
    for h in range(1, length):
        outcome = rules.finalize(state, block(state, h, []))
        assert outcome.changes.empty and outcome.changes.reputation
        assert state.app_hash == app_hash and state.height == h
    assert state.validators != before  # credited, not yet hashed
    rules.finalize(state, block(state, length, []))
    assert state.app_hash != app_hash
    # every verifier agrees: the same blocks give the same hash whatever the history
    again = LedgerState.initial(genesis)
    for h in range(1, length + 1):
        rules.finalize(again, block(again, h, []))
    assert again.app_hash == state.app_hash and again.validators == state.validators
    # a transaction changes the hash at once (its reputation rides along only at the end)
    sealed = state.app_hash
    rules.finalize(state, block(state, length + 1, [register(state, SigningKey.generate())]))
    assert state.app_hash != sealed


def test_misbehaviour_ejects_and_refills_the_seat_at_once(state: LedgerState) -> None:
    offender = state.committee[1]
    outcome = rules.finalize(state, block(state, 1, [], misbehaving=[offender]))
    node = state.node(offender)
    assert node is not None and node.ejected and node.reputation == 0
    assert offender not in state.committee
    assert len(state.committee) == state.genesis.committee_size
    removed = [m for m, power in outcome.updates if power == 0]
    added = [m for m, power in outcome.updates if power == MEMBER_POWER]
    assert removed == [offender] and len(added) == 1 and added[0] in state.committee
    # An ejected node is never elected again.
    for h in range(2, 3 * state.genesis.epoch_length):
        rules.finalize(state, block(state, h, []))
        assert offender not in state.committee


def test_evidence_against_unknown_addresses_changes_nothing(genesis: Genesis) -> None:
    plain, state = LedgerState.initial(genesis), LedgerState.initial(genesis)
    b = block(state, 1, [])
    rules.finalize(plain, b)
    outcome = rules.finalize(state, DecidedBlock(1, b.hash, b.report, (b"\x01" * 20,), ()))
    assert (state.validators, state.committee) == (plain.validators, plain.committee)
    assert outcome.updates == ()


def test_the_committee_is_reelected_at_epoch_ends_only(genesis: Genesis) -> None:
    state = LedgerState.initial(genesis)
    first = state.committee
    changed_at = []
    for h in range(1, 6 * genesis.epoch_length + 1):
        before = state.committee
        outcome = rules.finalize(state, block(state, h, []))
        if state.committee != before:
            changed_at.append(h)
            assert {m for m, p in outcome.updates if p} == set(state.committee) - set(before)
            assert {m for m, p in outcome.updates if not p} == set(before) - set(state.committee)
        else:
            assert outcome.updates == ()
    assert all(h % genesis.epoch_length == 0 for h in changed_at)
    assert len(state.committee) == genesis.committee_size
    assert changed_at, f"six elections of 4 of 6 nodes never changed the committee {first}"


def test_validator_updates_are_sorted_and_minimal() -> None:
    a, b, c = (bytes([i]) * 32 for i in (3, 1, 2))
    assert rules.validator_updates((a, b), (b, c)) == [(c, MEMBER_POWER), (a, 0)]
    assert rules.validator_updates((a,), (a,)) == []


# --- determinism and the app hash --------------------------------------------------------------


def test_two_replicas_agree_and_any_change_moves_the_app_hash(genesis: Genesis) -> None:
    alice = SigningKey.generate()
    one, two = LedgerState.initial(genesis), LedgerState.initial(genesis)
    blocks = [block(one, 1, [register(one, alice)]), block(one, 2, [access(one, alice, 0)])]
    for b in blocks:
        rules.finalize(one, b)
        rules.finalize(two, b)
    assert one.app_hash == two.app_hash
    three = LedgerState.initial(genesis)
    rules.finalize(three, blocks[0])
    rules.finalize(three, DecidedBlock(2, blocks[1].hash, blocks[1].report, (), ()))
    assert three.app_hash != one.app_hash


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=12))
def test_replay_is_deterministic(steps: list[tuple[int, bool]]) -> None:
    """Any sequence of blocks (absent signers, evidence) gives equal states on two replicas."""
    genesis = make_genesis()
    one, two = LedgerState.initial(genesis), LedgerState.initial(genesis)
    for height, (who, misbehave) in enumerate(steps, start=1):
        node = NODE_KEYS[who].public
        b = block(
            one,
            height,
            [],
            signed=[m for m in one.committee if m != node],
            misbehaving=[node] if misbehave else [],
        )
        out_one, out_two = rules.finalize(one, b), rules.finalize(two, b)
        assert out_one.updates == out_two.updates
        assert one.app_hash == two.app_hash and one.committee == two.committee
        assert one.committee, "the committee is never empty"


def test_genesis_round_trips_and_rejects_garbage(genesis: Genesis) -> None:
    assert Genesis.from_json(genesis.to_json()) == genesis
    for bad in (None, [], {"chain": "x"}, {**genesis.to_json(), "committee_size": 0}):
        with pytest.raises(LedgerFormatError):
            Genesis.from_json(bad)


def test_blocks_out_of_order_halt_instead_of_forking(state: LedgerState) -> None:
    rules.finalize(state, block(state, 1, []))
    with pytest.raises(RuntimeError):
        rules.finalize(state, block(state, 3, []))
    with pytest.raises(RuntimeError):
        rules.finalize(state, block(state, 1, []))


# --- key tags: who may say "this CP-ABE key is mine" (issue 12, finding 1) ----------------


def _tag_body(identity: str, sender: SigningKey, genesis: Genesis, k_prime: int = 12345) -> dict:
    """A key-tag registration: the tag g1^{K'} with the holder's proof of knowledge."""
    context = issuance.key_tag_context(genesis.chain_id, identity, sender.public)
    tag = group.encode_g1(group.mul(group.g1(), k_prime)).hex()
    return {
        "identity": identity,
        "tag": tag,
        "R": "cd" * 48,
        "authority": "H001",
        "proof": issuance.prove_key_tag(k_prime, context),
    }


def test_only_the_enrolled_key_registers_a_tag_in_its_name(state: LedgerState) -> None:
    """Regression: the first ``register_key_tag`` naming an identity used to be trusted
    whoever sent it, so a colleague (or the person, with a throwaway key) could claim a
    name before its real key was issued and have later leaks blamed on the authority.
    Regression (adversarial review): a tag copied from someone else's registration, with
    no proof of knowledge of its K', is refused."""
    alice, mallory, authority = (SigningKey.generate() for _ in range(3))
    g = state.genesis
    enrol = [
        tx(
            TxKind.REGISTER_IDENTITY,
            {"identity": who, "key": key.public.hex()},
            i,
            NODE_KEYS[0],
            g,
        )
        for i, (who, key) in enumerate(
            (("alice", alice), ("mallory", mallory), ("authority@H001", authority))
        )
    ]
    # tags name an authority that published its key (else tracing it would never find them)
    publish = {"key": "authority/H001/abe", "digest": "ab" * 32}
    enrol.append(tx(TxKind.PUBLISH_KEY, publish, 0, authority, g))
    assert [c for c, _ in rules.finalize(state, block(state, 1, enrol)).results] == [0] * 4
    alices = _tag_body("alice", alice, g)
    copied = {**alices, "identity": "mallory"}  # alice's tag and proof, in mallory's name
    bad_hex = {**alices, "tag": alices["tag"].upper()}
    claims = [
        tx(TxKind.REGISTER_KEY_TAG, _tag_body("alice", mallory, g), 0, mallory, g),
        tx(TxKind.REGISTER_KEY_TAG, _tag_body("alice", NODE_KEYS[0], g), 3, NODE_KEYS[0], g),
        tx(TxKind.REGISTER_KEY_TAG, bad_hex, 0, alice, g),
        tx(TxKind.REGISTER_KEY_TAG, copied, 0, mallory, g),
        tx(TxKind.REGISTER_KEY_TAG, {**alices, "proof": ["1", "2"]}, 0, alice, g),
        tx(TxKind.REGISTER_KEY_TAG, alices, 0, alice, g),
    ]
    outcome = rules.finalize(state, block(state, 2, claims))
    assert [code for code, _ in outcome.results] == [
        Code.NOT_PERMITTED,  # another person's enrolled key
        Code.NOT_PERMITTED,  # a node
        Code.REJECTED,  # malformed tag
        Code.REJECTED,  # a copied tag: the proof is bound to alice, not mallory
        Code.REJECTED,  # a proof that does not verify
        Code.OK,  # the holder's own enrolled key, with its proof
    ]


def test_an_identity_name_is_enrolled_once(state: LedgerState) -> None:
    """A second key under a taken name would speak for its first holder."""
    first, second = SigningKey.generate(), SigningKey.generate()
    txs = [
        tx(
            TxKind.REGISTER_IDENTITY,
            {"identity": "alice", "key": k.public.hex()},
            i,
            NODE_KEYS[i],
            state.genesis,
        )
        for i, k in enumerate((first, second))
    ]
    txs[1] = tx(
        TxKind.REGISTER_IDENTITY,
        {"identity": "alice", "key": second.public.hex()},
        0,
        NODE_KEYS[1],
        state.genesis,
    )
    outcome = rules.finalize(state, block(state, 1, txs))
    assert [code for code, _ in outcome.results] == [Code.OK, Code.REJECTED]
    assert state.holder("alice") == first.public.hex()
    copy = state.clone()
    assert copy.holder("alice") == first.public.hex()
