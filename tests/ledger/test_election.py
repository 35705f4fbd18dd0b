"""Tests of reputation-weighted committee election (medshare.ledger.election)."""

from __future__ import annotations

import hashlib
from collections import Counter
from decimal import Context, Decimal
from functools import cmp_to_key

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.ledger.election import (
    ReputationPolicy,
    Validator,
    committee_size,
    elect,
    election_key,
    epoch_end,
    epoch_of,
    epoch_start,
    from_state_json,
    max_faults,
    proposer,
    state_digest,
    state_json,
    ticket,
    update_reputation,
)
from medshare.ledger.types import LedgerFormatError


def key(i: int) -> bytes:
    return hashlib.sha256(b"validator-%d" % i).digest()


def seed(i: int) -> bytes:
    return hashlib.sha256(b"seed-%d" % i).digest()


def make(reputations: list[int], ejected: frozenset[int] = frozenset()) -> list[Validator]:
    return [Validator(key(i), f"node{i}", r, i in ejected) for i, r in enumerate(reputations)]


def tally(validators: list[Validator], size: int, seeds: int) -> Counter[bytes]:
    counts: Counter[bytes] = Counter()
    for s in range(seeds):
        counts.update(elect(validators, seed(s), size))
    return counts


# --- determinism ---------------------------------------------------------------------------------


def test_same_inputs_same_committee() -> None:
    vs = make([1000] * 10)
    assert elect(vs, seed(1), 4) == elect(list(vs), seed(1), 4)
    assert len(elect(vs, seed(1), 4)) == 4


def test_different_seeds_give_different_committees() -> None:
    vs = make([1000] * 10)
    committees = {elect(vs, seed(s), 4) for s in range(20)}
    assert len(committees) >= 10


def test_input_order_is_irrelevant() -> None:
    vs = make([500, 1000, 1500, 2000, 2500, 3000, 3500, 4000])
    for s in range(20):
        expected = elect(vs, seed(s), 4)
        assert elect(list(reversed(vs)), seed(s), 4) == expected
        assert elect(vs[3:] + vs[:3], seed(s), 4) == expected


def test_committee_is_sorted_by_public_key() -> None:
    vs = make([1000] * 10)
    for s in range(10):
        committee = elect(vs, seed(s), 7)
        assert list(committee) == sorted(committee)


def test_ticket_and_key_are_pinned() -> None:
    # Any change of the hash input layout or of the key arithmetic changes elections on a
    # live network: pin the values.
    expected = hashlib.sha256(b"medshare/election/v1" + seed(0) + key(0)).digest()
    assert ticket(seed(0), key(0)) == int.from_bytes(expected, "big")
    k = election_key(seed(0), key(0), 1)
    assert k == Decimal(
        "-0.09622438155716702691005024535911921538665710118458369136639828381975541162761300500042338767388922874"
    )
    assert election_key(seed(0), key(0), 4) == Context(prec=100).divide(k, 4)


# --- weighting -----------------------------------------------------------------------------------


def test_higher_reputation_is_elected_more_often() -> None:
    vs = make([4000, 1000] + [2000] * 8)
    counts = tally(vs, 4, 2000)
    heavy, light = counts[key(0)], counts[key(1)]
    medium = [counts[key(i)] for i in range(2, 10)]
    assert heavy > 2 * light
    assert heavy > max(medium)
    assert light < min(medium)
    assert sum(counts.values()) == 4 * 2000


def test_single_seat_probability_is_proportional_to_weight() -> None:
    # Efraimidis–Spirakis with one seat picks i with probability exactly w_i / Σw.
    vs = make([1000, 2000, 3000, 4000])
    counts = tally(vs, 1, 2000)
    for i, expected in enumerate([200, 400, 600, 800]):
        assert abs(counts[key(i)] - expected) < 70, (i, counts[key(i)])


def test_zero_reputation_and_ejected_are_never_elected() -> None:
    vs = make([0, 5000, 1000, 1000, 1000, 1000, 1000], ejected=frozenset({1}))
    counts = tally(vs, 3, 300)
    assert counts[key(0)] == 0
    assert counts[key(1)] == 0
    assert set(counts) == {key(i) for i in range(2, 7)}


def test_matches_exact_rational_comparison() -> None:
    # u_i^(1/w_i) > u_j^(1/w_j)  <=>  a_i^w_j · D^w_i > a_j^w_i · D^w_j  with u = a / D.
    d = 2**256 + 1
    vs = make([1, 2, 3, 5, 8, 13, 21, 34, 55])

    def cmp(v: Validator, w: Validator, s: bytes) -> int:
        a_v, a_w = ticket(s, v.public) + 1, ticket(s, w.public) + 1
        left = a_v**w.reputation * d**v.reputation
        right = a_w**v.reputation * d**w.reputation
        return -1 if left > right else 1 if left < right else 0

    for s in range(40):
        ranked = sorted(vs, key=cmp_to_key(lambda v, w, s=s: cmp(v, w, seed(s))))
        for size in (1, 4, 7):
            assert elect(vs, seed(s), size) == tuple(sorted(v.public for v in ranked[:size]))


# --- size handling and errors --------------------------------------------------------------------


def test_fewer_eligible_than_size_returns_all_eligible() -> None:
    vs = make([1000, 0, 2000, 3000], ejected=frozenset({3}))
    assert elect(vs, seed(0), 10) == tuple(sorted([key(0), key(2)]))


def test_errors() -> None:
    vs = make([1000, 1000])
    with pytest.raises(ValueError):
        elect(vs, seed(0), 0)
    with pytest.raises(ValueError):
        elect(vs, seed(0), -1)
    with pytest.raises(ValueError):
        elect(make([0, 1000], ejected=frozenset({1})), seed(0), 1)
    with pytest.raises(ValueError):
        elect([], seed(0), 1)
    with pytest.raises(ValueError):
        elect([*vs, Validator(key(0), "dup", 5)], seed(0), 1)
    with pytest.raises(ValueError):
        Validator(b"short", "x", 1)
    with pytest.raises(ValueError):
        Validator(key(0), "x", -1)
    with pytest.raises(ValueError):
        ReputationPolicy(floor=0)


def test_committee_arithmetic() -> None:
    assert [committee_size(f) for f in range(4)] == [1, 4, 7, 10]
    assert [max_faults(n) for n in (1, 3, 4, 6, 7, 10)] == [0, 0, 1, 1, 2, 3]
    for f in range(10):
        assert max_faults(committee_size(f)) == f
    with pytest.raises(ValueError):
        max_faults(0)


def test_epochs() -> None:
    assert epoch_of(0, 10) == 0
    assert [epoch_of(h, 10) for h in (1, 10, 11, 20, 21)] == [0, 0, 1, 1, 2]
    for e in range(5):
        assert epoch_of(epoch_start(e, 10), 10) == e
        assert epoch_of(epoch_end(e, 10), 10) == e
        assert epoch_of(epoch_end(e, 10) + 1, 10) == e + 1
    assert epoch_start(0, 10) == 1
    with pytest.raises(ValueError):
        epoch_of(5, 0)


# --- proposer rotation ---------------------------------------------------------------------------


def test_proposer_rotation_covers_committee() -> None:
    committee = elect(make([1000] * 10), seed(0), 7)
    for start in range(0, 30, 7):
        for rnd in range(3):
            picked = {proposer(committee, h, rnd) for h in range(start, start + len(committee))}
            assert picked == set(committee)
    assert proposer(committee, 5, 1) == proposer(committee, 6, 0)
    assert proposer(committee, 5, 0) != proposer(committee, 5, 1)
    with pytest.raises(ValueError):
        proposer((), 1, 0)


def test_a_proposer_run_keeps_one_leader_for_run_heights_and_rounds_still_rotate() -> None:
    committee = elect(make([1000] * 10), seed(0), 7)
    assert all(proposer(committee, h, r, 1) == proposer(committee, h, r) for h in range(20)
               for r in range(3))  # fmt: skip
    leaders = [proposer(committee, h, 0, run=4) for h in range(4, 32)]
    runs = [leaders[i : i + 4] for i in range(0, len(leaders), 4)]
    assert all(len(set(run)) == 1 for run in runs)  # one leader per run of 4 heights
    assert [run[0] for run in runs] == [committee[(1 + i) % 7] for i in range(7)]
    for h in range(4, 8):  # a failed round hands the height to the next member
        assert proposer(committee, h, 1, run=4) == committee[2]
    for bad in (0, -1, True):
        with pytest.raises(ValueError):
            proposer(committee, 5, 0, run=bad)


# --- reputation updates --------------------------------------------------------------------------


def test_update_reputation_bonus_and_penalty() -> None:
    policy = ReputationPolicy()
    vs = make([1000] * 6)
    committee = [key(0), key(1), key(2), key(3)]
    out = update_reputation(vs, committee, key(1), [key(0), key(1), key(2)], policy)
    assert [v.public for v in out] == [v.public for v in vs]
    assert [v.reputation for v in out] == [1010, 1030, 1010, 950, 1000, 1000]
    assert not any(v.ejected for v in out)


def test_update_reputation_floor_and_cap() -> None:
    policy = ReputationPolicy(cap=1025, floor=5, initial=100)
    vs = make([1020, 30, 1000])
    committee = [key(0), key(1), key(2)]
    out = update_reputation(vs, committee, key(0), [key(0), key(2)], policy)
    assert [v.reputation for v in out] == [1025, 5, 1010]
    out = update_reputation(out, committee, key(0), [key(0), key(2)], policy)
    assert [v.reputation for v in out] == [1025, 5, 1020]


def test_crashed_member_decays_to_floor_and_can_recover() -> None:
    policy = ReputationPolicy()
    vs: tuple[Validator, ...] = tuple(make([1000] * 4))
    committee = [v.public for v in vs]
    for _ in range(100):
        vs = update_reputation(vs, committee, key(0), committee[:3], policy)
    assert vs[3].reputation == policy.floor
    assert not vs[3].ejected
    assert key(3) in elect(vs, seed(0), 4)


def test_update_reputation_ejects_offenders_for_good() -> None:
    policy = ReputationPolicy()
    vs = make([5000, 1000, 1000, 1000, 1000, 1000])
    committee = [key(0), key(1), key(2), key(3)]
    out = update_reputation(vs, committee, key(0), committee, policy, evidence_offenders={key(0)})
    assert out[0].reputation == 0 and out[0].ejected
    assert [v.reputation for v in out[1:]] == [1010, 1010, 1010, 1000, 1000]
    # Still a member for the rest of the epoch, signing again: no way back.
    for _ in range(5):
        out = update_reputation(out, committee, key(0), committee, policy)
    assert out[0].reputation == 0 and out[0].ejected
    for s in range(300):
        assert key(0) not in elect(out, seed(s), 4)


def test_update_reputation_ignores_non_members_and_checks_inputs() -> None:
    policy = ReputationPolicy()
    vs = make([1000] * 5)
    out = update_reputation(vs, [key(0), key(1)], key(0), [key(0), key(1), key(4)], policy)
    assert out[4] == vs[4]
    assert out[2] == vs[2]
    with pytest.raises(ValueError):
        update_reputation(vs, [key(0), key(1)], key(2), [], policy)
    with pytest.raises(ValueError):
        update_reputation(vs, [key(0), key(99)], key(0), [], policy)


# --- state encoding ------------------------------------------------------------------------------


def test_state_json_round_trip_and_digest() -> None:
    vs = tuple(make([1000, 0, 2500], ejected=frozenset({1})))
    doc = state_json(vs)
    assert doc[0] == {"public": key(0).hex(), "name": "node0", "reputation": 1000, "ejected": False}
    assert from_state_json(doc) == vs
    assert state_digest(vs) == state_digest(from_state_json(doc))
    changed = update_reputation(vs, [key(0)], key(0), [key(0)], ReputationPolicy())
    assert state_digest(changed) != state_digest(vs)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        [{"public": "zz" * 32, "name": "a", "reputation": 1, "ejected": False}],
        [{"public": key(0).hex().upper(), "name": "a", "reputation": 1, "ejected": False}],
        [{"public": key(0).hex(), "name": "a", "reputation": -1, "ejected": False}],
        [{"public": key(0).hex(), "name": "a", "reputation": True, "ejected": False}],
        [{"public": key(0).hex(), "name": "a", "reputation": 1}],
        [{"public": key(0).hex(), "name": "a", "reputation": 1, "ejected": False}] * 2,
    ],
)
def test_from_state_json_rejects_malformed(doc: object) -> None:
    with pytest.raises(LedgerFormatError):
        from_state_json(doc)


# --- property ------------------------------------------------------------------------------------

validator_sets = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 10_000), st.booleans()),
    max_size=12,
    unique_by=lambda t: t[0],
).map(lambda rows: [Validator(pk, pk.hex()[:8], rep, ej) for pk, rep, ej in rows])


@settings(max_examples=150, deadline=None)
@given(vs=validator_sets, seed_=st.binary(max_size=40), size=st.integers(1, 15))
def test_committee_is_subset_of_eligible(vs: list[Validator], seed_: bytes, size: int) -> None:
    eligible = {v.public for v in vs if not v.ejected and v.reputation > 0}
    if not eligible:
        with pytest.raises(ValueError):
            elect(vs, seed_, size)
        return
    committee = elect(vs, seed_, size)
    assert set(committee) <= eligible
    assert len(set(committee)) == len(committee) == min(size, len(eligible))
    assert list(committee) == sorted(committee)
    assert elect(list(reversed(vs)), seed_, size) == committee
