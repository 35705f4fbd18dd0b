"""Zero-knowledge proof that a Paillier plaintext is a small integer (cut-and-choose).

Why: in accountable issuance (:mod:`medshare.crypto.issuance`) the authority sends
``Enc(a + c)`` and the user answers ``Enc(ρ(a + c + k) + p·δ)``, which the authority
decrypts. The mask ``p·δ`` hides ``ρ`` only if the authority's plaintext is as small as
promised; an authority that encrypted ``a + c + 2^1000`` would read ``ρ`` off the high
bits and solve for the user's ``k``. With this proof the user checks, before answering,
that the plaintext is congruent to an integer in ``(−ℓ, 2ℓ)`` (``ℓ = 2^bits``) and sizes
``δ`` for that bound.

The protocol is the classic interval proof with binary challenges and slack 3 (Boudot,
EUROCRYPT 2000, §1.2.2; as used for Paillier by Lindell, CRYPTO 2017, "Fast Secure
Two-Party ECDSA Signing", the range proof of its appendix). The prover knows
``m ∈ [0, ℓ)`` and ``r`` with ``c = Enc(m; r)``. For each of ``t`` rounds it draws
``w ∈ [ℓ, 2ℓ)``, encrypts ``w`` and ``w − ℓ`` in random order and sends the pair. For
challenge bit 0 it opens both (the verifier sees a pair ``{w, w − ℓ}`` with
``w ∈ [ℓ, 2ℓ)``); for bit 1 it opens ``z = m + w_j ∈ [ℓ, 2ℓ)`` for the one ``j`` that
lands there, with randomness ``r·r_j`` (the verifier checks ``c·c_j = Enc(z; r r_j)``).

* Completeness: one of ``m + w − ℓ`` and ``m + w`` always lies in ``[ℓ, 2ℓ)``.
* Zero knowledge (honest verifier): ``z`` is uniform on ``[ℓ, 2ℓ)`` whatever ``m`` is,
  and ``j`` is uniform (the pair is shuffled).
* Soundness: answering both bits of a round gives ``m ≡ z − w_j`` with
  ``z − w_j ∈ (−ℓ, 2ℓ)``; a prover whose plaintext is outside is caught with
  probability 1/2 per round, ``1 − 2^-t`` in all. The challenge comes from the verifier
  after the commitments (interactive, as issuance already is): a failed attempt is
  caught, not retried offline, so ``t = 40`` suffices.

The verifier checks all encryptions of a proof at once with random 128-bit exponents
(small-exponent batch verification): ``Π X_i^{λ_i} = (1+N)^{Σ λ_i u_i}·(Π s_i^{λ_i})^N``.
A wrong equation survives only if its quotient's plaintext part has an order dividing
``λ``, i.e. with probability about ``1/p_min`` for the smallest prime factor of ``N``.
The modulus proof (:mod:`medshare.crypto.paillier_blum`) shows ``N = p·q`` but not that
both primes are large, so the verifier refuses a modulus with a factor below
:data:`SMALL_FACTOR_BOUND` (one gcd with their product): the error per attempt is then
below ``2^-20``, each failed attempt is caught, and a modulus with a factor that small
would also expose the prover's own Paillier key. Randomness is injectable
(``randbits``), as in the rest of :mod:`medshare.crypto`.
"""

from __future__ import annotations

import collections
import functools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gmpy2

from medshare.crypto.errors import InvalidEncoding

ROUNDS = 40
BATCH_BITS = 128
SMALL_FACTOR_BOUND = 1 << 20
MAX_HEX = 2048  # a 6144-bit number is 1,536 hex digits

RandBits = Callable[[int], int]


def encrypt(n: int, m: int, r: int) -> int:
    """``Enc(m; r) = (1 + m·N)·r^N mod N²`` (Paillier with ``g = N + 1``, as ``phe``)."""
    n2 = n * n
    return int((1 + (m % n) * n) * gmpy2.powmod(r, n, n2) % n2)


def random_unit(n: int, randbits: RandBits = secrets.randbits) -> int:
    """Paillier randomness: a uniform unit of ``Z_N`` (from ``|N| + 64`` random bits)."""
    while True:
        r = randbits(n.bit_length() + 64) % n
        if r > 0 and gmpy2.gcd(r, n) == 1:
            return r


class _Encryptor:
    """Encryption with the secret factors: ``r^N`` by CRT, about twice as fast."""

    def __init__(self, p: int, q: int) -> None:
        self.n = p * q
        self._p2, self._q2 = p * p, q * q
        self._ep, self._eq = self.n % (p * (p - 1)), self.n % (q * (q - 1))
        self._q2_inv = int(gmpy2.invert(self._q2, self._p2))

    def r_to_n(self, r: int) -> int:
        a = gmpy2.powmod(r, self._ep, self._p2)
        b = gmpy2.powmod(r, self._eq, self._q2)
        return int(b + self._q2 * ((a - b) * self._q2_inv % self._p2))

    def encrypt(self, m: int, r: int, r_to_n: int | None = None) -> int:
        """``Enc(m; r)``; ``r_to_n`` is ``r^N mod N²`` when it was computed ahead."""
        n2 = self.n * self.n
        rn = self.r_to_n(r) if r_to_n is None else r_to_n
        return (1 + (m % self.n) * self.n) * rn % n2


class RandomizerPool:
    """Paillier randomness made ahead of time: pairs ``(r, r^N mod N²)``, each handed out
    once.

    Why: almost all of an encryption's cost is ``r^N``, which does not depend on the
    message, so a prover that encrypts often (the issuing authority: 81 encryptions per
    key) can compute the powers while idle and encrypt with one multiplication when a
    request comes (the "offline/online" split of Even–Goldreich–Micali, CRYPTO 1989, as
    Paillier implementations commonly use it). A pair is never reused: :meth:`take` pops
    it, and an empty pool computes a fresh one, so a pool only ever moves work earlier."""

    def __init__(self, p: int, q: int, *, randbits: RandBits = secrets.randbits) -> None:
        self._enc = _Encryptor(p, q)
        self._randbits = randbits
        self._ready: collections.deque[tuple[int, int]] = collections.deque()

    def __len__(self) -> int:
        return len(self._ready)

    def fill(self, count: int) -> None:
        """Compute ``count`` more pairs (the offline work)."""
        for _ in range(count):
            self._ready.append(self._fresh())

    def take(self) -> tuple[int, int]:
        """One unused pair: a precomputed one if any is left, else a fresh one."""
        return self._ready.popleft() if self._ready else self._fresh()

    def _fresh(self) -> tuple[int, int]:
        r = random_unit(self._enc.n, self._randbits)
        return r, self._enc.r_to_n(r)


@dataclass(frozen=True)
class RangeCommitment:
    """Prover → verifier: one pair of ciphertexts per round."""

    pairs: tuple[tuple[int, int], ...]

    def to_json(self) -> list[list[str]]:
        return [[format(a, "x"), format(b, "x")] for a, b in self.pairs]

    @classmethod
    def from_json(cls, doc: object, rounds: int = ROUNDS) -> RangeCommitment:
        if not isinstance(doc, list) or len(doc) != rounds:
            raise InvalidEncoding(f"a range commitment has {rounds} pairs")
        pairs = []
        for pair in doc:
            if not isinstance(pair, list) or len(pair) != 2:
                raise InvalidEncoding("a range commitment pair has two ciphertexts")
            pairs.append((_hex(pair[0]), _hex(pair[1])))
        return cls(tuple(pairs))


@dataclass(frozen=True)
class Opening:
    """One round's answer: bit 0 → both ``(w, r)`` of the pair; bit 1 → ``(j, z, s)``."""

    values: tuple[int, ...]


@dataclass(frozen=True)
class RangeOpening:
    """Prover → verifier, after the challenge."""

    rounds: tuple[Opening, ...]

    def to_json(self) -> list[list[str]]:
        return [[format(v, "x") for v in o.values] for o in self.rounds]

    @classmethod
    def from_json(cls, doc: object, rounds: int = ROUNDS) -> RangeOpening:
        if not isinstance(doc, list) or len(doc) != rounds:
            raise InvalidEncoding(f"a range opening has {rounds} rounds")
        out = []
        for entry in doc:
            if not isinstance(entry, list) or len(entry) not in (3, 4):
                raise InvalidEncoding("a range opening round has 3 or 4 numbers")
            out.append(Opening(tuple(_hex(v) for v in entry)))
        return cls(tuple(out))


def _hex(value: object) -> int:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_HEX:
        raise InvalidEncoding("expected a hex number")
    try:
        return int(value, 16)
    except ValueError:
        raise InvalidEncoding("expected a hex number") from None


class RangeProver:
    """The prover's side for ``c = Enc(m; r)`` under its own key ``N = p·q``."""

    def __init__(
        self,
        p: int,
        q: int,
        m: int,
        r: int,
        bits: int,
        *,
        rounds: int = ROUNDS,
        randbits: RandBits = secrets.randbits,
        pool: RandomizerPool | None = None,
        r_to_n: int | None = None,
    ) -> None:
        """``r_to_n``: ``r^N mod N²`` if known already; ``pool``: where the commitments'
        randomness comes from (precomputed), fresh randomness otherwise."""
        if not 0 <= m < 1 << bits:
            raise ValueError("the plaintext is outside the range this proof shows")
        self._enc = _Encryptor(p, q)
        self._m, self._r, self._r_to_n, self._bits, self._rounds = m, r, r_to_n, bits, rounds
        self._randbits = randbits
        self._pool = pool if pool is not None else RandomizerPool(p, q, randbits=randbits)
        self._secrets: list[tuple[int, int, int, int]] | None = None

    def encrypt_plaintext(self) -> int:
        """``c = Enc(m; r)``, the ciphertext this proof is about."""
        return self._enc.encrypt(self._m, self._r, self._r_to_n)

    def commit(self) -> RangeCommitment:
        ell = 1 << self._bits
        pairs, kept = [], []
        for _ in range(self._rounds):
            w = ell + self._randbits(self._bits)
            (r1, r1n), (r2, r2n) = self._pool.take(), self._pool.take()
            first, second = (w, w - ell) if self._randbits(1) else (w - ell, w)
            pairs.append((self._enc.encrypt(first, r1, r1n), self._enc.encrypt(second, r2, r2n)))
            kept.append((first, r1, second, r2))
        self._secrets = kept
        return RangeCommitment(tuple(pairs))

    def open(self, challenge: int) -> RangeOpening:
        """Answer ``challenge`` (one bit per round, round i = bit i). Once only."""
        if self._secrets is None:
            raise ValueError("commit first; each commitment is answered once")
        kept, self._secrets = self._secrets, None
        ell, n = 1 << self._bits, self._enc.n
        out = []
        for i, (w1, r1, w2, r2) in enumerate(kept):
            if not (challenge >> i) & 1:
                out.append(Opening((w1, r1, w2, r2)))
                continue
            j, w, rj = (0, w1, r1) if ell <= self._m + w1 < 2 * ell else (1, w2, r2)
            out.append(Opening((j, self._m + w, self._r * rj % n)))
        return RangeOpening(tuple(out))


def challenge(rounds: int = ROUNDS, randbits: RandBits = secrets.randbits) -> int:
    """The verifier's challenge: one random bit per round."""
    return randbits(rounds)


def verify(
    n: int,
    c: int,
    bits: int,
    commitment: RangeCommitment,
    challenge_bits: int,
    opening: RangeOpening,
    *,
    rounds: int = ROUNDS,
    randbits: RandBits = secrets.randbits,
) -> bool:
    """Whether ``opening`` answers ``challenge_bits`` for ``commitment`` and shows that
    ``c``'s plaintext is congruent mod ``N`` to an integer in ``(−2^bits, 2^(bits+1))``."""
    ell, n2 = 1 << bits, n * n
    if len(commitment.pairs) != rounds or len(opening.rounds) != rounds:
        return False
    if has_small_factor(n):
        return False
    if not _unit(c, n2):
        return False
    # Every checked equation as (left side, plaintext u, randomness s): left = Enc(u; s).
    equations: list[tuple[int, int, int]] = []
    for i, ((c1, c2), answer) in enumerate(zip(commitment.pairs, opening.rounds, strict=True)):
        if not (_unit(c1, n2) and _unit(c2, n2)):
            return False
        values = answer.values
        if not (challenge_bits >> i) & 1:
            if len(values) != 4:
                return False
            w1, r1, w2, r2 = values
            low, high = sorted((w1, w2))
            if not (ell <= high < 2 * ell and low == high - ell):
                return False
            if not (_unit(r1, n) and _unit(r2, n)):
                return False
            equations += [(c1, w1, r1), (c2, w2, r2)]
        else:
            if len(values) != 3:
                return False
            j, z, s = values
            if j not in (0, 1) or not ell <= z < 2 * ell or not _unit(s, n):
                return False
            equations.append((c * (c1, c2)[j] % n2, z, s))
    return _batch_holds(n, equations, randbits)


@functools.cache
def _small_primes_product() -> int:
    """The product of all primes below :data:`SMALL_FACTOR_BOUND` (computed once: a sieve,
    then a balanced product tree)."""
    sieve = bytearray([1]) * SMALL_FACTOR_BOUND
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(SMALL_FACTOR_BOUND**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, SMALL_FACTOR_BOUND, i)))
    level = [gmpy2.mpz(i) for i, flag in enumerate(sieve) if flag]
    while len(level) > 1:
        level = [a * b for a, b in zip(level[::2], level[1::2], strict=False)] + (
            [level[-1]] if len(level) % 2 else []
        )
    return int(level[0])


def has_small_factor(n: int) -> bool:
    """Whether ``n`` has a prime factor below :data:`SMALL_FACTOR_BOUND`."""
    return gmpy2.gcd(n, _small_primes_product()) != 1


def _unit(x: int, modulus: int) -> bool:
    return 0 < x < modulus and gmpy2.gcd(x, modulus) == 1


def _batch_holds(n: int, equations: Sequence[tuple[int, int, int]], randbits: RandBits) -> bool:
    n2 = n * n
    left, plain, rand = gmpy2.mpz(1), 0, gmpy2.mpz(1)
    for x, u, s in equations:
        weight = randbits(BATCH_BITS) | 1
        left = left * gmpy2.powmod(x, weight, n2) % n2
        plain += weight * u
        rand = rand * gmpy2.powmod(s, weight, n2) % n2
    right = (1 + (plain % n) * n) * gmpy2.powmod(rand, n, n2) % n2
    return bool(left == right)
