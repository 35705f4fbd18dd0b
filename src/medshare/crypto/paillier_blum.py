"""Π^mod: a non-interactive proof that a Paillier modulus is a Paillier–Blum modulus.

**What it proves.** For a public ``N``, that ``N = p·q`` for two primes
``p ≡ q ≡ 3 (mod 4)`` with ``gcd(N, φ(N)) = 1`` — without revealing ``p`` or ``q``.

**Why we need it.** During key issuance (:mod:`medshare.crypto.issuance`) the user
computes on Paillier ciphertexts under the *authority's* modulus and trusts a range proof
the authority gives about its Paillier plaintexts. Both rest on ``N`` being an honest
Paillier modulus, and the authority, who picked ``N``, could have built it with
structure. If ``gcd(N, φ(N)) ≠ 1`` (e.g. ``N = p²·q``) the encryption map
``(m, r) ↦ (1+N)^m · r^N mod N²`` is not a bijection: a ciphertext has no single
plaintext, so "the plaintext is in range" is not a well-defined statement and the range
proof's soundness argument does not apply, and ``r^N`` no longer hides what the user
adds. A modulus with more than two prime factors, or factors that are not ``≡ 3 mod 4``,
likewise falls outside the assumptions under which the range proof was shown sound. So
the user must see this proof (once per modulus) before answering any ciphertext.

**Source.** Canetti, Gennaro, Goldfeder, Makriyannis, Peled, "UC Non-Interactive,
Proactive, Threshold ECDSA with Identifiable Aborts", CCS 2020 / ePrint 2021/060, §4,
Figure 16 ("Paillier-Blum Modulus ZK"), made non-interactive with Fiat–Shamir. Written
from the paper's description.

**The proof.** The prover picks ``w ∈ Z_N`` with Jacobi symbol ``(w/N) = −1``. Challenges
``y_1..y_m`` come from SHAKE-256 over ``(medshare/paillier-blum/v1, context, N, w, m, i)``
(each part length-prefixed), expanded to ``|N| + 128`` bits and reduced mod ``N``, so the
verifier recomputes them. For each ``i`` the prover sends

* ``x_i``, the fourth root of ``y'_i = (−1)^{a_i} w^{b_i} y_i mod N``, where ``a_i, b_i``
  are the unique bits making ``y'_i`` a square mod ``p`` and mod ``q`` (``−1`` is a
  non-square mod both primes and ``w`` is a square mod exactly one, so the four choices
  cover the four residuosity patterns). Mod a prime ``p ≡ 3 mod 4``,
  ``y'^((p+1)/4)`` is the square root that is itself a square, and repeating the step
  gives a fourth root; the two are combined by CRT. The root published is always this
  principal one (a square mod ``p`` and mod ``q``), a function of ``y'_i``, so the prover
  can never publish two different fourth roots of one value (which would factor ``N``).
* ``z_i = y_i^(N⁻¹ mod φ(N)) mod N``, the ``N``-th root of ``y_i``.

The verifier checks that ``N`` is odd, composite (``gmpy2.is_prime``) and at least
``min_bits`` long; that ``w`` and every ``x_i``, ``z_i`` lie in ``[1, N)`` and are
coprime to ``N``; that ``(w/N) = −1``; and that ``z_i^N ≡ y_i`` and
``x_i^4 ≡ (−1)^{a_i} w^{b_i} y_i (mod N)`` for every ``i``. The ``N``-th roots exist for
random ``y_i`` only if ``x ↦ x^N`` is a permutation, i.e. ``gcd(N, φ(N)) = 1`` (this
rules out prime powers such as ``p²·q``); the fourth roots of ``±w^{0/1}·y_i`` exist for
every ``y_i`` only for a Blum integer with two prime factors.

**Soundness.** If ``N`` is not a Paillier–Blum modulus, each round can be answered for at
most half of the ``y_i``, so a cheating prover succeeds with probability at most
``2^-m`` per hash query (``m = 80`` by default). The proof is honest-verifier zero
knowledge in the random-oracle model. It does *not* show that ``p`` and ``q`` are of
similar size or large (CGGMP's separate Π^fac does); ``min_bits`` only bounds ``|N|``.

**Malleability.** ``N − x_i`` is also a valid fourth root, so anyone can change a valid
proof into another valid one. That is harmless: the proof certifies a property of ``N``
(bound to ``context``), not who made it.

**Cost** at 3072 bits, ``m = 80``, one core (gmpy2), measured with ``time.perf_counter``:
proving ≈ 0.6 s (CRT, including a self-check of every output, so a computation fault
never publishes a root that is right mod one prime only, which would reveal it);
verifying ≈ 0.7 s, dominated by the ``m`` full-size exponentiations ``z_i^N``; key
generation (:func:`generate_blum_primes`) ≈ 0.2 s. The proof is ``2m + 1`` residues
(≈ 62 KB; ≈ 126 KB as JSON). The authority proves once per key; a user verifies once per
modulus.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import gmpy2

from medshare.crypto.errors import InvalidEncoding

ROUNDS = 80  # soundness error 2^-ROUNDS
MIN_BITS = 3071  # the smallest |N| verify_modulus accepts by default
MAX_MODULUS_BITS = 16384  # larger moduli (and proof values) are refused outright
MAX_ROUNDS = 1024
FORMAT_VERSION = 1

_DST = b"medshare/paillier-blum/v1"
_EXPANSION_BITS = 128  # extra hash bits so y_i mod N is statistically uniform
_MAX_HEX_DIGITS = MAX_MODULUS_BITS // 4
# Canonical hex: lowercase, no sign, no prefix, no leading zeros, never zero.
_HEX = re.compile(r"[1-9a-f][0-9a-f]*")
_DOC_KEYS = frozenset({"version", "w", "rounds"})
_ROUND_KEYS = frozenset({"x", "a", "b", "z"})
_MPZ = type(gmpy2.mpz(0))


class ModulusRound(NamedTuple):
    """One round: ``x^4 ≡ (−1)^a · w^b · y`` and ``z^N ≡ y (mod N)``."""

    x: int
    a: int
    b: int
    z: int


@dataclass(frozen=True)
class ModulusProof:
    """Π^mod for one modulus: the non-residue ``w`` and ``m`` rounds ``(x_i, a_i, b_i, z_i)``."""

    w: int
    rounds: tuple[ModulusRound, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: residues as lowercase hex strings, ``a``/``b`` as 0 or 1."""
        return {
            "version": FORMAT_VERSION,
            "w": format(self.w, "x"),
            "rounds": [
                {"x": format(r.x, "x"), "a": int(r.a), "b": int(r.b), "z": format(r.z, "x")}
                for r in self.rounds
            ],
        }

    @classmethod
    def from_json(cls, doc: object, *, rounds: int = ROUNDS) -> ModulusProof:
        """Parse :meth:`to_json`'s output, strictly: exactly ``rounds`` rounds, exactly the
        expected keys, canonical hex of at most ``MAX_MODULUS_BITS`` bits, bits that are the
        JSON integers 0 or 1. Anything else raises :class:`InvalidEncoding`. Whether the
        values fit a given ``N`` is :func:`verify_modulus`'s business."""
        _check_rounds(rounds)
        if type(doc) is not dict:
            raise InvalidEncoding("a modulus proof must be a JSON object")
        if set(doc) != _DOC_KEYS:
            raise InvalidEncoding(f"a modulus proof has exactly the keys {sorted(_DOC_KEYS)}")
        version = doc["version"]
        if type(version) is not int or version != FORMAT_VERSION:
            raise InvalidEncoding(f"unsupported modulus proof version {version!r}")
        w = _hex_int(doc["w"], "w")
        items = doc["rounds"]
        if type(items) is not list or len(items) != rounds:
            raise InvalidEncoding(f"a modulus proof has a list of exactly {rounds} rounds")
        parsed = []
        for i, item in enumerate(items):
            if type(item) is not dict or set(item) != _ROUND_KEYS:
                raise InvalidEncoding(f"round {i} must be an object with keys a, b, x, z")
            a, b = _bit(item["a"], i, "a"), _bit(item["b"], i, "b")
            x, z = _hex_int(item["x"], f"rounds[{i}].x"), _hex_int(item["z"], f"rounds[{i}].z")
            parsed.append(ModulusRound(x, a, b, z))
        return cls(w, tuple(parsed))


def _hex_int(value: object, where: str) -> int:
    if type(value) is not str or not 0 < len(value) <= _MAX_HEX_DIGITS:
        raise InvalidEncoding(f"{where} must be a hex string of 1 to {_MAX_HEX_DIGITS} digits")
    if _HEX.fullmatch(value) is None:
        raise InvalidEncoding(f"{where} must be canonical lowercase hex (no prefix or 0s)")
    return int(value, 16)


def _bit(value: object, index: int, name: str) -> int:
    if type(value) is not int or value not in (0, 1):
        raise InvalidEncoding(f"rounds[{index}].{name} must be 0 or 1")
    return value


def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be an integer in [1, {MAX_ROUNDS}]")


def _check_context(context: bytes) -> bytes:
    if not isinstance(context, bytes | bytearray | memoryview):
        raise TypeError("context must be bytes")
    return bytes(context)


# --- Fiat–Shamir challenges ---------------------------------------------------------------------


def _challenges(n: int, w: int, context: bytes, rounds: int) -> list[int]:
    """``y_1..y_m``: SHAKE-256 of the length-prefixed (tag, context, N, w, m, i), |N|+128 bits,
    reduced mod N."""
    width = (n.bit_length() + 7) // 8
    prefix = hashlib.shake_256()
    for part in (_DST, context, n.to_bytes(width, "big"), w.to_bytes(width, "big")):
        prefix.update(len(part).to_bytes(8, "big") + part)
    prefix.update(rounds.to_bytes(4, "big"))
    out_len = (n.bit_length() + _EXPANSION_BITS + 7) // 8
    ys = []
    for i in range(1, rounds + 1):
        h = prefix.copy()
        h.update(i.to_bytes(4, "big"))
        ys.append(int.from_bytes(h.digest(out_len), "big") % n)
    return ys


# --- key generation ------------------------------------------------------------------------------


def generate_blum_primes(
    bits: int, *, randbits: Callable[[int], int] = secrets.randbits
) -> tuple[int, int]:
    """Two distinct primes ``≡ 3 (mod 4)`` of ``bits/2`` bits each whose product has exactly
    ``bits`` bits. Each is the first prime ``≡ 3 mod 4`` after a random ``bits/2``-bit
    start whose two top bits are set; ``randbits`` is injectable for known-answer tests."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 16 or bits % 2:
        raise ValueError("bits must be an even integer of at least 16")
    half = bits // 2
    while True:
        p, q = _blum_prime(half, randbits), _blum_prime(half, randbits)
        n = p * q
        if p != q and n.bit_length() == bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            return p, q


def _blum_prime(bits: int, randbits: Callable[[int], int]) -> int:
    mask = (1 << bits) - 1
    top = 3 << (bits - 2)  # so the product of two has 2·bits bits
    while True:
        candidate = gmpy2.next_prime(((int(randbits(bits)) & mask) | top | 3) - 1)
        while candidate % 4 != 3:
            candidate = gmpy2.next_prime(candidate)
        if candidate.bit_length() == bits:
            return int(candidate)


# --- prover --------------------------------------------------------------------------------------


def prove_modulus(
    p: int,
    q: int,
    context: bytes,
    *,
    rounds: int = ROUNDS,
    randbits: Callable[[int], int] = secrets.randbits,
) -> ModulusProof:
    """Π^mod for ``N = p·q``, bound to ``context`` (e.g. the authority's key fingerprint).

    Raises :class:`ValueError` unless ``p`` and ``q`` are distinct primes ``≡ 3 mod 4``
    with ``gcd(N, φ(N)) = 1``; only such a modulus has a proof."""
    _check_rounds(rounds)
    context = _check_context(context)
    if any(isinstance(v, bool) or not isinstance(v, int | _MPZ) for v in (p, q)):
        raise TypeError("p and q must be integers")
    p, q = int(p), int(q)
    if p == q or not all(v > 2 and v % 4 == 3 and gmpy2.is_prime(v) for v in (p, q)):
        raise ValueError("p and q must be distinct primes ≡ 3 (mod 4)")
    n, phi = p * q, (p - 1) * (q - 1)
    if gmpy2.gcd(n, phi) != 1:
        raise ValueError("gcd(N, φ(N)) ≠ 1")
    mp, mq, mn = gmpy2.mpz(p), gmpy2.mpz(q), gmpy2.mpz(n)
    n_inv = gmpy2.invert(mn, phi)
    z_exp = (n_inv % (p - 1), n_inv % (q - 1))
    # Fourth root of a square s mod a prime ≡ 3 mod 4: (s^((p+1)/4))^((p+1)/4).
    root_exp = (((p + 1) // 4) ** 2 % (p - 1), ((q + 1) // 4) ** 2 % (q - 1))
    q_inv = gmpy2.invert(mq, mp)

    def crt(rp: Any, rq: Any) -> int:
        return int(rq + mq * (((rp - rq) * q_inv) % mp))

    while True:
        w = _sample_w(n, randbits)
        ys = _challenges(n, w, context, rounds)
        if all(gmpy2.gcd(y, n) == 1 for y in ys):  # fails with probability ~2^-1500
            break
    w_sym = (gmpy2.legendre(w, mp), gmpy2.legendre(w, mq))
    out = []
    for y in ys:
        y_sym = (gmpy2.legendre(y, mp), gmpy2.legendre(y, mq))
        # −1 is a non-residue mod both primes; w is a non-residue mod exactly one.
        a, b = next(
            (a, b)
            for a in (0, 1)
            for b in (0, 1)
            if all((-1) ** a * w_sym[k] ** b * y_sym[k] == 1 for k in (0, 1))
        )
        y_prime = ((-1) ** a * pow(w, b, n) * y) % n
        x = crt(
            gmpy2.powmod(y_prime % mp, root_exp[0], mp),
            gmpy2.powmod(y_prime % mq, root_exp[1], mq),
        )
        z = crt(gmpy2.powmod(y % mp, z_exp[0], mp), gmpy2.powmod(y % mq, z_exp[1], mq))
        out.append(ModulusRound(x, a, b, z))
    # Never publish a faulty CRT result: a root right mod p only would reveal p. The final
    # values are checked against every y_i, mod p and mod q with reduced exponents.
    n_mod = (n % (p - 1), n % (q - 1))
    for (x, a, b, z), y in zip(out, ys, strict=True):
        ok = gmpy2.powmod(x, 4, mn) == ((-1) ** a * pow(w, b, n) * y) % n and all(
            gmpy2.powmod(z % m, n_mod[k], m) == y % m for k, m in enumerate((mp, mq))
        )
        if not ok:
            raise RuntimeError("internal error: the modulus proof failed its self-check")
    return ModulusProof(w, tuple(out))


def _sample_w(n: int, randbits: Callable[[int], int]) -> int:
    bits = n.bit_length()
    while True:
        w = int(randbits(bits))
        if 0 < w < n and gmpy2.jacobi(w, n) == -1:
            return w


# --- verifier ------------------------------------------------------------------------------------


def verify_modulus(
    n: int,
    proof: ModulusProof,
    context: bytes,
    *,
    rounds: int = ROUNDS,
    min_bits: int = MIN_BITS,
) -> bool:
    """True iff ``proof`` shows that ``n`` is a Paillier–Blum modulus of at least ``min_bits``
    bits (and at most ``MAX_MODULUS_BITS``), for this ``context`` and this many rounds.

    Returns False for any failed check, including values of the wrong type or range; raises
    only for a bad ``rounds`` (ValueError) or a ``context`` that is not bytes (TypeError)."""
    _check_rounds(rounds)
    context = _check_context(context)
    if not _is_int(n) or not isinstance(proof, ModulusProof):
        return False
    n = int(n)
    if n <= 1 or n % 2 == 0 or not min_bits <= n.bit_length() <= MAX_MODULUS_BITS:
        return False
    if gmpy2.is_prime(n):
        return False
    w = proof.w
    if not _is_int(w) or not 0 < w < n or gmpy2.jacobi(w, n) != -1:  # Jacobi −1 ⇒ coprime
        return False
    w = int(w)
    if not isinstance(proof.rounds, tuple | list) or len(proof.rounds) != rounds:
        return False
    mn = gmpy2.mpz(n)
    w_pow = (1, w)  # w^b for b = 0, 1
    for r, y in zip(proof.rounds, _challenges(n, w, context, rounds), strict=True):
        if not isinstance(r, tuple) or len(r) != 4:
            return False
        x, a, b, z = r
        if not all(_is_int(v) for v in r) or a not in (0, 1) or b not in (0, 1):
            return False
        if not (0 < x < n and 0 < z < n) or gmpy2.gcd(x, mn) != 1 or gmpy2.gcd(z, mn) != 1:
            return False
        target = ((-1) ** int(a) * w_pow[int(b)] * y) % n
        if gmpy2.powmod(x, 4, mn) != target:
            return False
        if gmpy2.powmod(z, mn, mn) != y:
            return False
    return True


def _is_int(value: object) -> bool:
    return isinstance(value, int | _MPZ) and not isinstance(value, bool)
