"""The chain's rules for identities, key tags and revocations (pure functions, no I/O).

Resisted: a tag in someone else's name, a second key for a taken name through another
node, malformed tags, a transaction replayed on another chain or twice.
Also resisted (fixed after review): a ``revoke`` of ``key/<authority>/<tag>`` — which
tracing takes as "this key is revoked" — from anyone but that authority's enrolled
identity; a ``publish_key`` in someone else's name, or replacing a published key.
"""

from __future__ import annotations

import hashlib

import pytest

from medshare.crypto import group, issuance
from medshare.crypto.signing import SigningKey
from medshare.ledger import election
from medshare.ledger.app import rules
from medshare.ledger.app.genesis import Genesis
from medshare.ledger.app.rules import Code, CommitReport, DecidedBlock
from medshare.ledger.app.state import LedgerState
from medshare.ledger.types import Tx, TxKind

NODES = tuple(SigningKey(bytes([i + 1]) * 32) for i in range(4))
TAG = "ab" * 48


@pytest.fixture
def state() -> LedgerState:
    genesis = Genesis(
        "chain-a",
        tuple(election.Validator(k.public, f"node-{i}", 1000) for i, k in enumerate(NODES)),
        epoch_length=50,
        committee_size=4,
    )
    return LedgerState.initial(genesis)


def _tx(state, kind, body, nonce, key, chain=None) -> Tx:
    return Tx.create(kind, body, nonce, key, chain=chain or state.genesis.chain_id)


def _apply(state: LedgerState, txs: list[Tx]) -> list[int]:
    members = state.committee
    block = DecidedBlock(
        state.height + 1,
        hashlib.sha256(b"%d" % state.height).digest(),
        CommitReport(tuple((rules.address(m), True) for m in members), rules.address(members[0])),
        (),
        tuple(t.encode() for t in txs),
    )
    return [code for code, _ in rules.finalize(state, block).results]


def _enrol(state, people: dict[str, SigningKey], node: int = 0) -> None:
    first = state.next_nonce(NODES[node].public)
    txs = [
        _tx(
            state,
            TxKind.REGISTER_IDENTITY,
            {"identity": n, "key": k.public.hex()},
            first + i,
            NODES[node],
        )
        for i, (n, k) in enumerate(people.items())
    ]
    assert _apply(state, txs) == [Code.OK] * len(txs)


def test_resisted_tags_in_other_names_second_keys_and_malformed_tags(state):
    alice, mallory, second = (SigningKey.generate() for _ in range(3))
    _enrol(state, {"alice@H001": alice, "mallory@H001": mallory})
    body = {"identity": "alice@H001", "tag": TAG, "authority": "H001"}
    malformed = ["AB" * 48, "abc", "0x" + TAG, "ab" * 129, "", 12, ["ab"], None, "zz" * 48]
    txs = [
        _tx(state, TxKind.REGISTER_KEY_TAG, body, 0, mallory),  # her key, alice's name
        _tx(state, TxKind.REGISTER_KEY_TAG, body, 2, NODES[0]),  # a node
        _tx(  # another node enrols a second key under alice's name
            state,
            TxKind.REGISTER_IDENTITY,
            {"identity": "alice@H001", "key": second.public.hex()},
            0,
            NODES[1],
        ),
    ]
    txs += [
        _tx(state, TxKind.REGISTER_KEY_TAG, {**body, "tag": bad}, 0, alice) for bad in malformed
    ]
    codes = _apply(state, txs)
    assert codes[:3] == [Code.NOT_PERMITTED, Code.NOT_PERMITTED, Code.REJECTED]
    assert codes[3:] == [Code.REJECTED] * len(malformed)
    # the second key cannot speak for alice either
    later = _tx(state, TxKind.REGISTER_KEY_TAG, body, 0, second)
    assert _apply(state, [later]) == [Code.NOT_PERMITTED]


def _authority_publishes(state, hospital: str = "H001") -> None:
    """The authority enrols and publishes its CP-ABE key: tags may name it from then on."""
    authority = SigningKey.generate()
    _enrol(state, {f"authority@{hospital}": authority})
    body = {"key": f"authority/{hospital}/abe", "digest": "ab" * 32}
    assert _apply(state, [_tx(state, TxKind.PUBLISH_KEY, body, 0, authority)]) == [Code.OK]


def test_resisted_tags_under_no_authority_or_with_extra_fields(state):
    """A tag must name an authority that published its key (else tracing that
    authority's keys never finds it and blames the authority), with known fields only
    and a bounded attribute list."""
    alice = SigningKey.generate()
    _enrol(state, {"alice@H001": alice})
    _authority_publishes(state)
    context = issuance.key_tag_context(state.genesis.chain_id, "alice@H001", alice.public)
    k_prime = 777
    tag = group.encode_g1(group.mul(group.g1(), k_prime)).hex()
    good = {"identity": "alice@H001", "tag": tag, "authority": "H001",
            "proof": issuance.prove_key_tag(k_prime, context)}  # fmt: skip
    bad = [
        {**good, "authority": "H999"},
        {**good, "authority": "H001/abe"},
        {**good, "padding": "x" * 1000},
        {**good, "attributes": ["x" * 1000]},
        {**good, "attributes": ["a"] * 65},
    ]
    codes = _apply(state, [_tx(state, TxKind.REGISTER_KEY_TAG, b, 0, alice) for b in bad])
    assert codes == [Code.REJECTED] * len(bad)
    assert _apply(state, [_tx(state, TxKind.REGISTER_KEY_TAG, good, 0, alice)]) == [Code.OK]


def test_resisted_replay_on_another_chain_and_twice(state):
    alice = SigningKey.generate()
    _enrol(state, {"alice@H001": alice})
    _authority_publishes(state)
    k_prime = 4242
    tag = group.encode_g1(group.mul(group.g1(), k_prime)).hex()
    context = issuance.key_tag_context(state.genesis.chain_id, "alice@H001", alice.public)
    proof = issuance.prove_key_tag(k_prime, context)
    body = {"identity": "alice@H001", "tag": tag, "authority": "H001", "proof": proof}
    elsewhere = _tx(state, TxKind.REGISTER_KEY_TAG, body, 0, alice, chain="00" * 16)
    here = _tx(state, TxKind.REGISTER_KEY_TAG, body, 0, alice)
    assert _apply(state, [elsewhere, here, here]) == [Code.WRONG_CHAIN, Code.OK, Code.BAD_NONCE]
    assert _apply(state, [here]) == [Code.BAD_NONCE]


def test_resisted_a_key_revocation_filed_by_anyone_but_the_authority(state):
    """Tracing answers ``already_revoked`` for a REVOKE naming ``key/<authority>/<tag>``
    (service.area_keys._revoked_on_ledger); the chain takes one only from the authority's
    enrolled identity, not from the key's holder nor from a node."""
    mallory, authority = SigningKey.generate(), SigningKey.generate()
    _enrol(state, {"mallory@H001": mallory, "authority@H001": authority})
    fake = {"grant": f"key/H001/{TAG}", "reason": "key of mallory@H001 revoked"}
    codes = _apply(
        state,
        [
            _tx(state, TxKind.REVOKE, fake, 0, mallory),
            _tx(state, TxKind.REVOKE, fake, 2, NODES[0]),
            _tx(state, TxKind.REVOKE, {**fake, "grant": f"key/H002/{TAG}"}, 0, authority),
            _tx(state, TxKind.REVOKE, {**fake, "grant": "key/H001"}, 0, authority),
            _tx(state, TxKind.REVOKE, fake, 0, authority),
            _tx(state, TxKind.REVOKE, {"grant": "grant-42"}, 0, mallory),  # not a key: service's
        ],
    )
    assert codes == [
        Code.NOT_PERMITTED,
        Code.NOT_PERMITTED,
        Code.NOT_PERMITTED,
        Code.REJECTED,
        Code.OK,
        Code.OK,
    ]


DIGEST = "cd" * 32


def test_resisted_publishing_a_key_in_someone_elses_name_or_twice(state):
    """``publish_key``: only the name's owner publishes, once; malformed names and
    digests are refused, and a published digest is never replaced."""
    patient, authority, mallory = (SigningKey.generate() for _ in range(3))
    _enrol(
        state,
        {"patient:P1": patient, "authority@H001": authority, "mallory@H001": mallory},
    )

    def publish(key, name, nonce, digest=DIGEST):
        return _tx(state, TxKind.PUBLISH_KEY, {"key": name, "digest": digest}, nonce, key)

    txs = [
        publish(mallory, "patient/P1/block/0", 0),  # not hers
        publish(
            NODES[0], "authority/H001/abe", state.next_nonce(NODES[0].public)
        ),  # a node is not the authority
        publish(authority, "authority/H002/abe", 0),  # another hospital's authority
        publish(patient, "patient/P1/block/01", 0),  # not canonical
        publish(patient, "patient/P1/block/1048576", 0),  # beyond the last block
        publish(patient, "patient/P1/extra/0", 0),
        publish(patient, "patient/P1/block/0", 0, digest="CD" * 32),
        publish(patient, "patient/P1/block/0", 0, digest="cd" * 31),
        publish(patient, "patient/P1/block/0", 0),
        publish(authority, "authority/H001/abe", 0),
        publish(authority, "authority/H001/paillier", 1, digest="ef" * 32),
        publish(patient, "patient/P1/block/0", 1, digest="ef" * 32),  # replace: refused
    ]
    codes = _apply(state, txs)
    assert codes == [
        Code.NOT_PERMITTED,
        Code.NOT_PERMITTED,
        Code.NOT_PERMITTED,
        *[Code.REJECTED] * 5,
        Code.OK,
        Code.OK,
        Code.OK,
        Code.REJECTED,
    ]
    assert state.published == {
        "patient/P1/block/0": DIGEST,
        "authority/H001/abe": DIGEST,
        "authority/H001/paillier": "ef" * 32,
    }


def test_resisted_a_member_node_enrolling_a_name_of_another_member():
    """Genesis names nodes after their operators (``H001-a``): ``…@H001`` names come only
    from H001's nodes; names of organisations without a node and names without one from
    any node."""
    names = ("H001-a", "H002-a", "H001-b", "regulator")
    genesis = Genesis(
        "chain-b",
        tuple(election.Validator(k.public, n, 1000) for k, n in zip(NODES, names, strict=True)),
        epoch_length=50,
        committee_size=4,
    )
    state = LedgerState.initial(genesis)
    people = {n: SigningKey.generate() for n in ("a@H001", "b@H001", "c@uni", "patient:P9")}

    def enrol(node: int, name: str) -> Tx:
        body = {"identity": name, "key": people[name].public.hex()}
        return _tx(
            state, TxKind.REGISTER_IDENTITY, body, state.next_nonce(NODES[node].public), NODES[node]
        )

    assert _apply(state, [enrol(1, "a@H001")]) == [Code.NOT_PERMITTED]  # H002's node
    assert _apply(state, [enrol(3, "a@H001")]) == [Code.NOT_PERMITTED]  # the regulator's
    assert _apply(state, [enrol(2, "a@H001")]) == [Code.OK]  # H001's second node
    assert _apply(state, [enrol(0, "b@H001")]) == [Code.OK]
    assert _apply(state, [enrol(1, "c@uni")]) == [Code.OK]
    assert _apply(state, [enrol(3, "patient:P9")]) == [Code.OK]
    assert rules.node_organisation("H001-a") == "h001" and rules.node_organisation("x") == "x"
    assert rules.identity_organisation("a@b@H001") == "h001"  # case-folded
    assert rules.identity_organisation("patient:P9") is None
    assert rules.identity_organisation("trailing@") is None
