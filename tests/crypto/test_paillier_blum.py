"""Tests of Π^mod, the Paillier–Blum modulus proof (medshare.crypto.paillier_blum)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
from collections.abc import Callable

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto import paillier_blum as pb
from medshare.crypto.errors import InvalidEncoding
from medshare.crypto.paillier_blum import (
    ModulusProof,
    ModulusRound,
    generate_blum_primes,
    prove_modulus,
    verify_modulus,
)

CONTEXT = b"medshare/test/paillier-blum"
SMALL = 1000  # min_bits for the 1024-bit moduli used in most tests


def _powmod(base: int, exponent: int, modulus: int) -> int:
    return int(gmpy2.powmod(base, exponent, modulus))


def _rng(seed: int) -> Callable[[int], int]:
    return random.Random(seed).getrandbits


@pytest.fixture(scope="module")
def key1024() -> tuple[int, int]:
    return generate_blum_primes(1024, randbits=_rng(1))


@pytest.fixture(scope="module")
def proof1024(key1024: tuple[int, int]) -> ModulusProof:
    return prove_modulus(*key1024, CONTEXT, randbits=_rng(2))


@pytest.fixture(scope="module")
def n1024(key1024: tuple[int, int]) -> int:
    return key1024[0] * key1024[1]


# --- helpers for the cheating provers -------------------------------------------------------------


def _prime(bits: int, residue: int, modulus: int, seed: int) -> int:
    """A ``bits``-bit prime ≡ residue (mod modulus), deterministic in ``seed``."""
    rng = random.Random(seed)
    while True:
        p = gmpy2.next_prime(rng.getrandbits(bits) | (3 << (bits - 2)))
        while p % modulus != residue:
            p = gmpy2.next_prime(p)
        if p.bit_length() == bits:
            return int(p)


def _nonresidue_w(n: int, seed: int, extra: Callable[[int], bool] = lambda w: True) -> int:
    rng = random.Random(seed)
    while True:
        w = rng.randrange(2, n)
        if gmpy2.jacobi(w, n) == -1 and extra(w):
            return w


def _sqrt_mod(a: int, p: int) -> int | None:
    """Tonelli–Shanks: a square root of ``a`` mod an odd prime ``p``, or None."""
    a %= p
    if a == 0:
        return 0
    if _powmod(a, (p - 1) // 2, p) != 1:
        return None
    s, q = 0, p - 1
    while q % 2 == 0:
        s, q = s + 1, q // 2
    z = 2
    while _powmod(z, (p - 1) // 2, p) != p - 1:
        z += 1
    m, c, t, r = s, _powmod(z, q, p), _powmod(a, q, p), _powmod(a, (q + 1) // 2, p)
    while t != 1:
        i, t2 = 0, t
        while t2 != 1:
            t2, i = t2 * t2 % p, i + 1
        b = _powmod(c, 1 << (m - i - 1), p)
        m, c, t, r = i, b * b % p, t * b * b % p, r * b % p
    return r


def _fourth_root_mod(a: int, p: int) -> int | None:
    r = _sqrt_mod(a, p)
    if r is None:
        return None
    for s in (r, (p - r) % p):
        t = _sqrt_mod(s, p)
        if t is not None:
            return t
    return None


def _crt(rp: int, p: int, rq: int, q: int) -> int:
    return (rq + q * ((rp - rq) * pow(q, -1, p) % p)) % (p * q)


def _target(n: int, w: int, y: int, a: int, b: int) -> int:
    return ((-1) ** a * _powmod(w, b, n) * y) % n


# --- honest proofs --------------------------------------------------------------------------------


def test_honest_proof_verifies(n1024: int, proof1024: ModulusProof) -> None:
    assert len(proof1024.rounds) == pb.ROUNDS == 80
    assert verify_modulus(n1024, proof1024, CONTEXT, min_bits=SMALL)


def test_roundtrip_3072_bits_with_default_parameters() -> None:
    p, q = generate_blum_primes(3072, randbits=_rng(3072))
    n = p * q
    assert n.bit_length() == 3072
    proof = prove_modulus(p, q, CONTEXT)
    wire = json.dumps(proof.to_json())
    decoded = ModulusProof.from_json(json.loads(wire))
    assert decoded == proof
    assert verify_modulus(n, decoded, CONTEXT)


def test_2048_bits_json_roundtrip() -> None:
    p, q = generate_blum_primes(2048, randbits=_rng(2048))
    proof = prove_modulus(p, q, CONTEXT, rounds=16)
    decoded = ModulusProof.from_json(json.loads(json.dumps(proof.to_json())), rounds=16)
    assert decoded == proof
    assert verify_modulus(p * q, decoded, CONTEXT, rounds=16, min_bits=2048)
    assert not verify_modulus(p * q, decoded, CONTEXT, rounds=16, min_bits=2049)


def test_bits_a_b_follow_the_residuosity_of_y(
    key1024: tuple[int, int], n1024: int, proof1024: ModulusProof
) -> None:
    p, q = key1024
    w = proof1024.w
    ys = pb._challenges(n1024, w, CONTEXT, pb.ROUNDS)
    for r, y in zip(proof1024.rounds, ys, strict=True):
        target = _target(n1024, w, y, r.a, r.b)
        assert gmpy2.legendre(target, p) == gmpy2.legendre(target, q) == 1
        # the published root is the principal one: a square mod both primes
        assert gmpy2.legendre(r.x, p) == gmpy2.legendre(r.x, q) == 1
    assert {(r.a, r.b) for r in proof1024.rounds} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_known_answer() -> None:
    """Pins key generation and the Fiat–Shamir encoding: a change breaks published proofs."""
    p, q = generate_blum_primes(1024, randbits=_rng(1))
    digest = hashlib.sha256(f"{p:x}:{q:x}".encode()).hexdigest()
    assert digest == "3e25e211a1961c9319feac0fa4165ca87faeb1db5cc875cdcc25da98530f6535"
    proof = prove_modulus(p, q, b"medshare/test/kat", randbits=_rng(2))
    doc = json.dumps(proof.to_json(), sort_keys=True, separators=(",", ":")).encode()
    assert (
        hashlib.sha256(doc).hexdigest()
        == "3a123b6e1bb14fdd1fd5b76b7e0c1d635210c5290e8c3a4db3332c312eb5f745"
    )


@settings(max_examples=40, deadline=None, database=None)
@given(bits=st.integers(8, 160).map(lambda k: 2 * k), seed=st.integers(0, 2**32))
def test_generate_blum_primes_shape(bits: int, seed: int) -> None:
    p, q = generate_blum_primes(bits, randbits=_rng(seed))
    assert p != q
    assert p % 4 == q % 4 == 3
    assert gmpy2.is_prime(p) and gmpy2.is_prime(q)
    assert p.bit_length() == q.bit_length() == bits // 2
    assert (p * q).bit_length() == bits
    assert gmpy2.gcd(p * q, (p - 1) * (q - 1)) == 1


@pytest.mark.parametrize("bits", [0, 15, 1023, True])
def test_generate_blum_primes_rejects_bad_sizes(bits: int) -> None:
    with pytest.raises(ValueError):
        generate_blum_primes(bits)


# --- wrong statement ------------------------------------------------------------------------------


def test_wrong_context_fails(n1024: int, proof1024: ModulusProof) -> None:
    assert not verify_modulus(n1024, proof1024, CONTEXT + b"!", min_bits=SMALL)
    assert not verify_modulus(n1024, proof1024, b"", min_bits=SMALL)


def test_proof_for_another_modulus_fails(n1024: int, proof1024: ModulusProof) -> None:
    p2, q2 = generate_blum_primes(1024, randbits=_rng(99))
    other = prove_modulus(p2, q2, CONTEXT, randbits=_rng(100))
    assert verify_modulus(p2 * q2, other, CONTEXT, min_bits=SMALL)
    assert not verify_modulus(p2 * q2, proof1024, CONTEXT, min_bits=SMALL)
    assert not verify_modulus(n1024, other, CONTEXT, min_bits=SMALL)


def test_round_count_and_size_are_part_of_the_statement(
    n1024: int, proof1024: ModulusProof
) -> None:
    assert not verify_modulus(n1024, proof1024, CONTEXT)  # 1024 < 3071 bits
    assert not verify_modulus(n1024, proof1024, CONTEXT, rounds=79, min_bits=SMALL)
    truncated = dataclasses.replace(proof1024, rounds=proof1024.rounds[:40])
    assert not verify_modulus(n1024, truncated, CONTEXT, rounds=40, min_bits=SMALL)
    assert not verify_modulus(n1024, truncated, CONTEXT, min_bits=SMALL)


def test_prover_refuses_non_blum_factors() -> None:
    q = _prime(512, 3, 4, 11)
    with pytest.raises(ValueError):
        prove_modulus(_prime(512, 1, 4, 10), q, CONTEXT)
    with pytest.raises(ValueError):
        prove_modulus(q, q, CONTEXT)
    with pytest.raises(ValueError):
        prove_modulus(q, 63, CONTEXT)  # 63 ≡ 3 (mod 4) but composite


def test_p_1_mod_4_best_effort_prover_fails() -> None:
    """N = p·q with p ≡ 1 (mod 4) (here ≡ 5 mod 8): gcd(N, φ(N)) = 1, so every N-th root
    exists, but for about half of the y_i no choice of (a, b) makes (−1)^a w^b y_i a fourth
    power mod p; a cheater who computes every fourth root that exists (Tonelli–Shanks) and
    tries several w still fails."""
    p, q = _prime(512, 5, 8, 10), _prime(512, 3, 4, 11)
    n, phi = p * q, (p - 1) * (q - 1)
    assert gmpy2.gcd(n, phi) == 1
    d = pow(n, -1, phi)
    for seed in range(3):  # the cheater may grind over w
        w = _nonresidue_w(n, seed)
        ys = pb._challenges(n, w, CONTEXT, pb.ROUNDS)
        rounds, answered = [], 0
        for y in ys:
            x, a, b = 1 + y % (n - 1), 0, 0  # a guess, for rounds with no fourth root
            for a_, b_ in ((0, 0), (0, 1), (1, 0), (1, 1)):
                t = _target(n, w, y, a_, b_)
                # t is a fourth power mod p iff t^((p−1)/4) ≡ 1, and mod q iff a square
                if _powmod(t, (p - 1) // 4, p) == 1 and gmpy2.legendre(t, q) == 1:
                    rp, rq = _fourth_root_mod(t, p), _powmod(t, ((q + 1) // 4) ** 2, q)
                    assert rp is not None
                    x, a, b = _crt(rp, p, rq, q), a_, b_
                    assert _powmod(x, 4, n) == t
                    answered += 1
                    break
            rounds.append(ModulusRound(x, a, b, _powmod(y, d, n)))
        assert all(_powmod(r.z, n, n) == y for r, y in zip(rounds, ys, strict=True))
        assert 0 < answered < 70  # about half
        assert not verify_modulus(n, ModulusProof(w, tuple(rounds)), CONTEXT, min_bits=SMALL)


def test_three_blum_factors_cannot_be_answered() -> None:
    """N = p·q·r, all ≡ 3 (mod 4): the four (a, b) cover 4 of the 8 residuosity patterns."""
    p, q, r = (_prime(384, 3, 4, s) for s in (20, 21, 22))
    n = p * q * r
    w = _nonresidue_w(n, 5)
    answerable = 0
    for y in pb._challenges(n, w, CONTEXT, pb.ROUNDS):
        ok = [
            all(gmpy2.legendre(_target(n, w, y, a, b), f) == 1 for f in (p, q, r))
            for a in (0, 1)
            for b in (0, 1)
        ]
        answerable += any(ok)
    assert 10 < answerable < 70


def test_prime_power_factor_is_caught_by_the_nth_roots() -> None:
    """N = p²·q: fourth roots exist (Hensel-lifted from mod p), but gcd(N, φ(N)) = p, so
    no y_i is an N-th power mod p² and the z_i check fails."""
    p, q = _prime(512, 3, 4, 30), _prime(512, 3, 4, 31)
    p2 = p * p
    n = p2 * q
    w = _nonresidue_w(n, 6, lambda w: gmpy2.legendre(w, p) == 1)  # (w/q) = −1
    ys = pb._challenges(n, w, CONTEXT, pb.ROUNDS)
    d = pow(n, -1, (p - 1) * (q - 1))
    rounds = []
    for y in ys:
        a, b = next(
            (a, b)
            for a in (0, 1)
            for b in (0, 1)
            if all(gmpy2.legendre(_target(n, w, y, a, b), f) == 1 for f in (p, q))
        )
        t = _target(n, w, y, a, b)
        xp = _powmod(t, ((p + 1) // 4) ** 2, p)
        xp = (xp - (pow(xp, 4, p2) - t) * pow(4 * pow(xp, 3, p2), -1, p2)) % p2  # Hensel
        xq = _powmod(t, ((q + 1) // 4) ** 2, q)
        x = _crt(xp, p2, xq, q)
        assert _powmod(x, 4, n) == t
        assert _powmod(y, p - 1, p2) != 1  # y is not an N-th power mod p²: no z exists
        rounds.append(ModulusRound(x, a, b, _powmod(y, d, n)))
    assert not verify_modulus(n, ModulusProof(w, tuple(rounds)), CONTEXT, min_bits=SMALL)


def test_prime_modulus_is_rejected_although_every_equation_holds() -> None:
    big = _prime(1024, 3, 4, 40)
    w = _nonresidue_w(big, 7)
    d = pow(big, -1, big - 1)
    rounds = []
    for y in pb._challenges(big, w, CONTEXT, pb.ROUNDS):
        a = 0 if gmpy2.legendre(y, big) == 1 else 1
        t = _target(big, w, y, a, 0)
        x = _powmod(t, ((big + 1) // 4) ** 2, big)
        assert _powmod(x, 4, big) == t
        z = _powmod(y, d, big)
        assert _powmod(z, big, big) == y
        rounds.append(ModulusRound(x, a, 0, z))
    assert not verify_modulus(big, ModulusProof(w, tuple(rounds)), CONTEXT, min_bits=SMALL)


def test_even_and_tiny_moduli_are_rejected(n1024: int, proof1024: ModulusProof) -> None:
    for n in (2 * n1024, n1024 + 1, 0, 1, -n1024, 15):
        assert not verify_modulus(n, proof1024, CONTEXT, min_bits=0)


# --- tampering ------------------------------------------------------------------------------------


def _with_round(proof: ModulusProof, i: int, **changes: int) -> ModulusProof:
    rounds = list(proof.rounds)
    rounds[i] = rounds[i]._replace(**changes)
    return dataclasses.replace(proof, rounds=tuple(rounds))


def test_flipped_w_fails(n1024: int, proof1024: ModulusProof) -> None:
    for bit in (0, 1, 100, 1000):
        forged = dataclasses.replace(proof1024, w=proof1024.w ^ (1 << bit))
        assert not verify_modulus(n1024, forged, CONTEXT, min_bits=SMALL)


@pytest.mark.parametrize("i", [0, 41, 79])
@pytest.mark.parametrize("name", ["x", "z"])
def test_flipped_residue_fails(n1024: int, proof1024: ModulusProof, i: int, name: str) -> None:
    value = getattr(proof1024.rounds[i], name)
    for bit in (0, 517):
        forged = _with_round(proof1024, i, **{name: value ^ (1 << bit)})
        assert not verify_modulus(n1024, forged, CONTEXT, min_bits=SMALL)


@pytest.mark.parametrize("i", [0, 41, 79])
def test_flipped_or_swapped_bits_fail(n1024: int, proof1024: ModulusProof, i: int) -> None:
    r = proof1024.rounds[i]
    for a, b in ((r.a ^ 1, r.b), (r.a, r.b ^ 1), (r.a ^ 1, r.b ^ 1)):
        assert not verify_modulus(
            n1024, _with_round(proof1024, i, a=a, b=b), CONTEXT, min_bits=SMALL
        )
    j = next(k for k, s in enumerate(proof1024.rounds) if s.a != s.b)
    s = proof1024.rounds[j]
    swapped = _with_round(proof1024, j, a=s.b, b=s.a)
    assert not verify_modulus(n1024, swapped, CONTEXT, min_bits=SMALL)


def test_reordered_or_foreign_rounds_fail(n1024: int, proof1024: ModulusProof) -> None:
    rounds = list(proof1024.rounds)
    rounds[0], rounds[1] = rounds[1], rounds[0]
    assert not verify_modulus(
        n1024, dataclasses.replace(proof1024, rounds=tuple(rounds)), CONTEXT, min_bits=SMALL
    )


def test_out_of_range_or_shared_factor_values_fail(
    key1024: tuple[int, int], n1024: int, proof1024: ModulusProof
) -> None:
    p, _ = key1024
    r = proof1024.rounds[3]
    for changes in (
        {"x": r.x + n1024},
        {"z": r.z + n1024},
        {"x": 0},
        {"z": -r.z},
        {"x": p},
        {"z": p},
        {"a": 2},
        {"b": -1},
        {"a": True},
    ):
        forged = _with_round(proof1024, 3, **changes)
        assert not verify_modulus(n1024, forged, CONTEXT, min_bits=SMALL), changes
    for w in (0, n1024, n1024 + proof1024.w, p, -proof1024.w):
        forged = dataclasses.replace(proof1024, w=w)
        assert not verify_modulus(n1024, forged, CONTEXT, min_bits=SMALL)


def test_negated_root_is_also_accepted(n1024: int, proof1024: ModulusProof) -> None:
    """Documented malleability: N − x_i is a fourth root too. Harmless: the proof is about N."""
    r = proof1024.rounds[5]
    assert verify_modulus(n1024, _with_round(proof1024, 5, x=n1024 - r.x), CONTEXT, min_bits=SMALL)


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_verify_never_raises_on_well_typed_garbage(
    n1024: int, proof1024: ModulusProof, data: st.DataObject
) -> None:
    ints = st.one_of(
        st.integers(-(2**1100), 2**1100), st.sampled_from([0, 1, -1, n1024, n1024 - 1])
    )
    i = data.draw(st.integers(0, 79))
    choice = data.draw(st.sampled_from(["w", "x", "a", "b", "z", "n", "rounds"]))
    n, proof = n1024, proof1024
    if choice == "w":
        proof = dataclasses.replace(proof, w=data.draw(ints))
    elif choice == "n":
        n = data.draw(ints)
    elif choice == "rounds":
        proof = dataclasses.replace(proof, rounds=proof.rounds[: data.draw(st.integers(0, 81))])
    else:
        proof = _with_round(proof, i, **{choice: data.draw(ints)})
    assert verify_modulus(n, proof, CONTEXT, min_bits=SMALL) in (True, False)


def test_verify_returns_false_for_wrong_types(n1024: int, proof1024: ModulusProof) -> None:
    assert not verify_modulus(n1024, None, CONTEXT, min_bits=SMALL)  # type: ignore[arg-type]
    assert not verify_modulus(str(n1024), proof1024, CONTEXT)  # type: ignore[arg-type]
    assert not verify_modulus(float(5), proof1024, CONTEXT)  # type: ignore[arg-type]
    bad = dataclasses.replace(proof1024, rounds=(*proof1024.rounds[:79], ("x", 0, 0, "z")))
    assert not verify_modulus(n1024, bad, CONTEXT, min_bits=SMALL)  # type: ignore[arg-type]


# --- encoding -------------------------------------------------------------------------------------


def test_to_json_shape(proof1024: ModulusProof) -> None:
    doc = proof1024.to_json()
    assert set(doc) == {"version", "w", "rounds"} and doc["version"] == 1
    assert doc["w"] == format(proof1024.w, "x")
    assert len(doc["rounds"]) == 80
    assert all(set(r) == {"x", "a", "b", "z"} and r["a"] in (0, 1) for r in doc["rounds"])
    assert ModulusProof.from_json(doc) == proof1024


def _mutations(doc: dict) -> list[tuple[str, object]]:
    r0 = doc["rounds"][0]
    return [
        ("not a dict", [doc]),
        ("missing w", {k: v for k, v in doc.items() if k != "w"}),
        ("extra key", {**doc, "extra": 1}),
        ("version string", {**doc, "version": "1"}),
        ("version bool", {**doc, "version": True}),
        ("version 2", {**doc, "version": 2}),
        ("w int", {**doc, "w": int(doc["w"], 16)}),
        ("w zero", {**doc, "w": "0"}),
        ("w prefix", {**doc, "w": "0x" + doc["w"]}),
        ("w upper", {**doc, "w": doc["w"].upper()}),
        ("w leading zero", {**doc, "w": "0" + doc["w"]}),
        ("w space", {**doc, "w": " " + doc["w"]}),
        ("w newline", {**doc, "w": doc["w"] + "\n"}),
        ("w underscore", {**doc, "w": doc["w"][:4] + "_" + doc["w"][4:]}),
        ("w sign", {**doc, "w": "-" + doc["w"]}),
        ("w non-ascii digit", {**doc, "w": "١" + doc["w"]}),
        ("w too long", {**doc, "w": "f" * (pb._MAX_HEX_DIGITS + 1)}),
        ("w empty", {**doc, "w": ""}),
        ("rounds dict", {**doc, "rounds": dict(enumerate(doc["rounds"]))}),
        ("rounds tuple", {**doc, "rounds": tuple(doc["rounds"])}),
        ("79 rounds", {**doc, "rounds": doc["rounds"][:79]}),
        ("81 rounds", {**doc, "rounds": [*doc["rounds"], r0]}),
        ("round list", {**doc, "rounds": [list(r0.values()), *doc["rounds"][1:]]}),
        ("a bool", {**doc, "rounds": [{**r0, "a": True}, *doc["rounds"][1:]]}),
        ("a float", {**doc, "rounds": [{**r0, "a": 1.0}, *doc["rounds"][1:]]}),
        ("a two", {**doc, "rounds": [{**r0, "a": 2}, *doc["rounds"][1:]]}),
        ("b string", {**doc, "rounds": [{**r0, "b": "1"}, *doc["rounds"][1:]]}),
        ("x missing", {**doc, "rounds": [{"a": 0, "b": 0, "z": r0["z"]}, *doc["rounds"][1:]]}),
        ("z none", {**doc, "rounds": [{**r0, "z": None}, *doc["rounds"][1:]]}),
    ]


def test_from_json_rejects_malformed_documents(proof1024: ModulusProof) -> None:
    for name, bad in _mutations(proof1024.to_json()):
        with pytest.raises(InvalidEncoding):
            ModulusProof.from_json(bad)
        assert name


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.text("0123456789abcdefABCDEFx_- ", max_size=20)
    | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=250, deadline=None, database=None)
@given(data=st.data())
def test_from_json_mutated_documents_only_raise_invalid_encoding(
    proof1024: ModulusProof, data: st.DataObject
) -> None:
    doc: object = copy.deepcopy(proof1024.to_json())
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.integers(0, 19)) == 0:
            doc = data.draw(_JSONISH)
            continue
        if not isinstance(doc, dict | list):
            break
        # walk down to a random container, then replace, delete or add one entry there
        node = doc
        while node and data.draw(st.booleans()):
            keys = sorted(node, key=repr) if isinstance(node, dict) else range(len(node))
            child = node[data.draw(st.sampled_from(list(keys)))]
            if not isinstance(child, dict | list):
                break
            node = child
        keys = sorted(node, key=repr) if isinstance(node, dict) else list(range(len(node)))
        op = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "add" or not keys:
            if isinstance(node, dict):
                node[data.draw(st.text(max_size=3))] = data.draw(_JSONISH)
            else:
                node.append(data.draw(_JSONISH))
        else:
            key = data.draw(st.sampled_from(keys))
            if op == "delete":
                del node[key]
            else:
                node[key] = data.draw(_JSONISH | st.text("0123456789abcdef", min_size=1))
    try:
        parsed = ModulusProof.from_json(doc)
    except InvalidEncoding:
        return
    assert parsed.to_json() == doc  # only canonical documents are accepted


@pytest.mark.parametrize("rounds", [0, -1, pb.MAX_ROUNDS + 1])
def test_bad_round_counts_are_programming_errors(
    key1024: tuple[int, int], proof1024: ModulusProof, rounds: int
) -> None:
    with pytest.raises(ValueError):
        prove_modulus(*key1024, CONTEXT, rounds=rounds)
    with pytest.raises(ValueError):
        verify_modulus(key1024[0] * key1024[1], proof1024, CONTEXT, rounds=rounds)
