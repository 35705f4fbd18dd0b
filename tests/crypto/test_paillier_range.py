"""The Paillier range proof: honest proofs verify, out-of-range plaintexts are caught."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import secrets

import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto import paillier_range as pr
from medshare.crypto.errors import InvalidEncoding

BITS = 256


@pytest.fixture(scope="module")
def key() -> tuple[int, int, int]:
    _, private = phe.generate_paillier_keypair(n_length=1024)
    return private.p, private.q, private.p * private.q


def _proof(key, m: int, *, challenge: int | None = None, rounds: int = pr.ROUNDS):
    p, q, n = key
    r = secrets.randbelow(n - 2) + 1
    c = pr.encrypt(n, m, r)
    prover = pr.RangeProver(p, q, m, r, BITS, rounds=rounds)
    commitment = prover.commit()
    bits = pr.challenge(rounds) if challenge is None else challenge
    return c, commitment, bits, prover.open(bits)


@pytest.mark.parametrize("m", [0, 1, 2**255, 2**256 - 1])
@pytest.mark.parametrize("challenge", [0, 2**pr.ROUNDS - 1, None])
def test_an_honest_proof_verifies(key, m: int, challenge: int | None) -> None:
    c, commitment, bits, opening = _proof(key, m, challenge=challenge)
    assert pr.verify(key[2], c, BITS, commitment, bits, opening)


def test_the_prover_refuses_a_plaintext_outside_its_range(key) -> None:
    p, q, _ = key
    with pytest.raises(ValueError, match="outside"):
        pr.RangeProver(p, q, 2**256, 1, BITS)


def test_a_proof_is_bound_to_its_ciphertext_and_challenge(key) -> None:
    c, commitment, bits, opening = _proof(key, 12345)
    n = key[2]
    other = pr.encrypt(n, 12345, 7)
    assert not pr.verify(n, other, BITS, commitment, bits, opening)
    assert not pr.verify(n, c, BITS, commitment, bits ^ 1, opening)
    assert not pr.verify(n, c, BITS - 1, commitment, bits, opening)


class _CheatingProver:
    """Knows the factors and a plaintext far outside the range; answers each round as
    well as it can (for bit 0 honestly, for bit 1 with whatever lands in range)."""

    def __init__(self, key, m: int, r: int, guess: int) -> None:
        self.p, self.q, self.n = key
        self.m, self.r, self.guess = m, r, guess
        self.enc = pr._Encryptor(self.p, self.q)

    def commit(self):
        ell = 1 << BITS
        self.kept, pairs = [], []
        for i in range(pr.ROUNDS):
            r1, r2 = secrets.randbelow(self.n - 2) + 1, secrets.randbelow(self.n - 2) + 1
            if (self.guess >> i) & 1:  # prepares to answer bit 1: w so that m + w lands
                w = (ell + secrets.randbelow(ell) - self.m) % self.n
                first, second = w, w
            else:
                w = ell + secrets.randbelow(ell)
                first, second = w, w - ell
            pairs.append((self.enc.encrypt(first, r1), self.enc.encrypt(second, r2)))
            self.kept.append((first, r1, second, r2))
        return pr.RangeCommitment(tuple(pairs))

    def open(self, bits: int):
        out = []
        for i, (w1, r1, w2, r2) in enumerate(self.kept):
            if (bits >> i) & 1:
                out.append(pr.Opening((0, (self.m + w1) % self.n, self.r * r1 % self.n)))
            else:
                out.append(pr.Opening((w1, r1, w2, r2)))
        return pr.RangeOpening(tuple(out))


def test_an_authority_hiding_a_huge_plaintext_is_caught(key) -> None:
    """The attack the proof exists for: ``a + c + 2^1000`` instead of ``a + c``."""
    n = key[2]
    m = 2**700 + 5  # the key is 1024 bits here; the plaintext is far outside 2^256
    r = secrets.randbelow(n - 2) + 1
    c = pr.encrypt(n, m, r)
    for _ in range(3):
        cheat = _CheatingProver(key, m, r, guess=secrets.randbits(pr.ROUNDS))
        commitment = cheat.commit()
        bits = pr.challenge()
        assert not pr.verify(n, c, BITS, commitment, bits, cheat.open(bits))
    # It passes only when it guessed every challenge bit (2^-40 each time).
    lucky = _CheatingProver(key, m, r, guess=12345)
    commitment = lucky.commit()
    assert pr.verify(n, c, BITS, commitment, 12345, lucky.open(12345))


def test_tampered_openings_fail(key) -> None:
    c, commitment, _, opening = _proof(key, 99, challenge=0b1010)
    n = key[2]
    for i in range(4):
        values = list(opening.rounds[i].values)
        values[-1] = values[-1] * 2 % n or 3
        rounds = list(opening.rounds)
        rounds[i] = pr.Opening(tuple(values))
        bad = dataclasses.replace(opening, rounds=tuple(rounds))
        assert not pr.verify(n, c, BITS, commitment, 0b1010, bad)


def test_a_seeded_prover_is_deterministic(key) -> None:
    p, q, _ = key
    a = pr.RangeProver(p, q, 5, 3, BITS, randbits=random.Random(1).getrandbits).commit()
    b = pr.RangeProver(p, q, 5, 3, BITS, randbits=random.Random(1).getrandbits).commit()
    assert a == b


@settings(max_examples=60, deadline=None)
@given(
    doc=st.recursive(
        st.one_of(st.text(max_size=8), st.integers(), st.none()),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=20,
    )
)
def test_decoders_refuse_malformed_documents(doc) -> None:
    """Anything but a well-formed document is InvalidEncoding (never another error)."""
    for decode in (pr.RangeCommitment.from_json, pr.RangeOpening.from_json):
        with contextlib.suppress(InvalidEncoding):
            decode(doc, 2)


def test_documents_round_trip(key) -> None:
    c, commitment, bits, opening = _proof(key, 7)
    assert pr.RangeCommitment.from_json(commitment.to_json()) == commitment
    again = pr.RangeOpening.from_json(opening.to_json())
    assert pr.verify(key[2], c, BITS, commitment, bits, again)


def test_a_modulus_with_a_small_factor_is_refused(key) -> None:
    """Batched verification is only as sound as N's smallest factor is large."""
    _, q, n = key
    assert not pr.has_small_factor(n)
    small = 1_000_003  # a prime below 2^20
    assert pr.has_small_factor(small * q)
    c, commitment, bits, opening = _proof(key, 3)
    assert pr.verify(n, c, BITS, commitment, bits, opening)
    assert not pr.verify(small * q, c, BITS, commitment, bits, opening)


def test_a_randomizer_pool_hands_out_each_pair_once_and_proofs_still_verify(key):
    """Precomputed (r, r^N) pairs are popped, never reused, and a proof made from them
    verifies exactly like one made with fresh randomness."""
    p, q, n = key
    pool = pr.RandomizerPool(p, q)
    pool.fill(2 * pr.ROUNDS + 1)
    taken = {pool.take()[0] for _ in range(3)}
    assert len(taken) == 3 and len(pool) == 2 * pr.ROUNDS - 2
    r, rn = pool.take()
    assert rn == pow(r, n, n * n)
    m, bits = 12345, 64
    prover = pr.RangeProver(p, q, m, r, bits, pool=pool, r_to_n=rn)
    c = prover.encrypt_plaintext()
    assert c == pr.encrypt(n, m, r)
    commitment = prover.commit()
    assert len(pool) == 0  # the commitments took the rest; more would be computed afresh
    bits_asked = pr.challenge()
    opening = prover.open(bits_asked)
    assert pr.verify(n, c, bits, commitment, bits_asked, opening)
    pool.take()  # an empty pool computes a fresh pair instead of failing
