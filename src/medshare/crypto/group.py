"""The group facade: the only module that imports the pairing library.

BLS12-381 (Type-3 pairing, ~128-bit security) through ``py-arkworks-bls12381``.
Everything else in medshare sees group elements only through the names exported
here, so a backend can be swapped and benchmarked by rewriting this one file.

Conventions, chosen to make the pitfalls of the backend impossible to hit by accident:

* Scalars are plain Python ``int`` in ``[0, ORDER)``; :func:`mul` reduces and converts.
  (``Scalar(int)`` silently reduces values >= p and raises on negatives.)
* Points are decoded only by :func:`decode_g1` / :func:`decode_g2`, which check the
  length, the encoding and the prime-order subgroup and raise :class:`InvalidEncoding`.
* ``GT`` is used only multiplicatively. Its ``+``/``-`` are Fp12 *field* operations,
  not the group law, and GT values cannot be decoded, so they are never sent: they are
  turned into KDF input with :func:`gt_to_bytes` and nothing else.
* :func:`multiexp` and :func:`multi_pairing` refuse lists of unequal length
  (the backend's ``multiexp_unchecked`` silently truncates to the shorter one).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from py_arkworks_bls12381 import GT, G1Point, G2Point, Scalar

from medshare.crypto.errors import InvalidEncoding

__all__ = [
    "BACKEND",
    "G1",
    "G1_BYTES",
    "G2",
    "G2_BYTES",
    "GT",
    "GT_BYTES",
    "ORDER",
    "SCALAR_BYTES",
    "FixedBase",
    "FixedBaseGT",
    "decode_g1",
    "decode_g2",
    "decode_scalar",
    "encode_g1",
    "encode_g2",
    "encode_scalar",
    "g1",
    "g2",
    "gt_one",
    "gt_pow",
    "gt_to_bytes",
    "hash_to_g1",
    "hash_to_g2",
    "hash_to_zp",
    "identity_g1",
    "identity_g2",
    "inverse",
    "mul",
    "multi_pairing",
    "multiexp",
    "pair",
    "pairing_check",
    "random_scalar",
]

G1 = G1Point
G2 = G2Point

BACKEND = "py-arkworks-bls12381 0.5.0 (BLS12-381)"
ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
G1_BYTES = 48
G2_BYTES = 96
GT_BYTES = 576
SCALAR_BYTES = 32

P = TypeVar("P", G1Point, G2Point)


# --- generators, identities, scalars -------------------------------------------------------


def g1() -> G1Point:
    """The standard generator of G1."""
    return G1Point()


def g2() -> G2Point:
    """The standard generator of G2."""
    return G2Point()


def identity_g1() -> G1Point:
    return G1Point.identity()


def identity_g2() -> G2Point:
    return G2Point.identity()


def gt_one() -> GT:
    """The identity of GT (``GT.zero()`` is the field zero, not a group element)."""
    return GT.one()


def random_scalar() -> int:
    """A uniformly random non-zero scalar, from the OS CSPRNG."""
    return 1 + secrets.randbelow(ORDER - 1)


def inverse(k: int) -> int:
    """The inverse of a non-zero scalar mod the group order."""
    k %= ORDER
    if k == 0:
        raise ZeroDivisionError("zero has no inverse mod the group order")
    return pow(k, -1, ORDER)


def _scalar(k: int) -> Scalar:
    return Scalar(k % ORDER)


def mul(point: P, k: int) -> P:
    """``point`` raised to the scalar ``k`` (written additively: k·point)."""
    return point * _scalar(k)


def multiexp(points: Sequence[P], scalars: Sequence[int]) -> P:
    """Π points[i]^scalars[i] as one multi-scalar multiplication."""
    if len(points) != len(scalars):
        raise ValueError(f"multiexp of {len(points)} points with {len(scalars)} scalars")
    if not points:
        raise ValueError("multiexp of no points")
    kind = type(points[0])
    return kind.multiexp_unchecked(list(points), [_scalar(k) for k in scalars])


# --- pairings -------------------------------------------------------------------------------


def pair(p: G1Point, q: G2Point) -> GT:
    return GT.pairing(p, q)


def multi_pairing(ps: Sequence[G1Point], qs: Sequence[G2Point]) -> GT:
    """Π e(ps[i], qs[i]) with one final exponentiation."""
    if len(ps) != len(qs):
        raise ValueError(f"multi-pairing of {len(ps)} G1 with {len(qs)} G2 points")
    return GT.multi_pairing(list(ps), list(qs))


def pairing_check(ps: Sequence[G1Point], qs: Sequence[G2Point]) -> bool:
    """True iff Π e(ps[i], qs[i]) is the identity of GT."""
    if len(ps) != len(qs):
        raise ValueError(f"pairing check of {len(ps)} G1 with {len(qs)} G2 points")
    return GT.pairing_check(list(ps), list(qs))


def gt_to_bytes(x: GT) -> bytes:
    """A canonical byte encoding of a GT element, for use as KDF input only.

    The backend's ``str`` of GT is a fixed-width hex of the full Fp12 element; equal
    group elements give equal strings (tested), so this is a stable KEM secret.
    """
    encoded = bytes.fromhex(str(x))
    if len(encoded) != GT_BYTES:  # pragma: no cover - would mean the backend changed
        raise RuntimeError("unexpected GT encoding width from the pairing backend")
    return encoded


def gt_pow(x: GT, k: int) -> GT:
    """x^k in GT by square-and-multiply (GT offers only multiplication)."""
    k %= ORDER
    result = GT.one()
    for bit in bin(k)[2:]:
        result = result * result
        if bit == "1":
            result = result * x
    return result


# --- encodings ------------------------------------------------------------------------------


def encode_g1(p: G1Point) -> bytes:
    return p.to_compressed_bytes()


def encode_g2(q: G2Point) -> bytes:
    return q.to_compressed_bytes()


def _decode(kind: type[P], size: int, name: str, data: bytes, allow_identity: bool) -> P:
    if not isinstance(data, bytes | bytearray):
        raise InvalidEncoding(f"{name} point must be bytes, not {type(data).__name__}")
    if len(data) != size:
        raise InvalidEncoding(f"{name} point must be {size} bytes, got {len(data)}")
    try:
        point = kind.from_compressed_bytes(bytes(data))
    except ValueError as exc:
        raise InvalidEncoding(f"malformed {name} point") from exc
    if not point.is_in_subgroup():  # the checked decoder already did; kept explicit
        raise InvalidEncoding(f"{name} point is not in the prime-order subgroup")
    if point.to_compressed_bytes() != bytes(data):
        raise InvalidEncoding(f"{name} point is not canonically encoded")
    if not allow_identity and point == kind.identity():
        raise InvalidEncoding(f"{name} point is the identity")
    return point


def decode_g1(data: bytes, *, allow_identity: bool = False) -> G1Point:
    """Decode a compressed G1 point, checking length, encoding and subgroup."""
    return _decode(G1Point, G1_BYTES, "G1", data, allow_identity)


def decode_g2(data: bytes, *, allow_identity: bool = False) -> G2Point:
    """Decode a compressed G2 point, checking length, encoding and subgroup."""
    return _decode(G2Point, G2_BYTES, "G2", data, allow_identity)


def encode_scalar(k: int) -> bytes:
    return (k % ORDER).to_bytes(SCALAR_BYTES, "big")


def decode_scalar(data: bytes, *, nonzero: bool = True) -> int:
    """Decode a 32-byte big-endian scalar; refuses values >= ORDER (no silent reduction)."""
    if len(data) != SCALAR_BYTES:
        raise InvalidEncoding(f"scalar must be {SCALAR_BYTES} bytes, got {len(data)}")
    k = int.from_bytes(data, "big")
    if k >= ORDER:
        raise InvalidEncoding("scalar is not reduced mod the group order")
    if nonzero and k == 0:
        raise InvalidEncoding("scalar is zero")
    return k


# --- hashing with domain separation -----------------------------------------------------------


def hash_to_zp(domain: bytes, message: bytes) -> int:
    """Hash to Z_p: SHA-512 of a length-prefixed domain tag and the message, reduced mod p.

    512 bits reduced mod a 255-bit p leaves a statistical bias below 2^-256.
    """
    if not domain:
        raise ValueError("a domain-separation tag is required")
    digest = hashlib.sha512(len(domain).to_bytes(2, "big") + domain + message).digest()
    return int.from_bytes(digest, "big") % ORDER


def hash_to_g1(domain: bytes, message: bytes) -> G1Point:
    """RFC 9380 hash to G1 (the backend's suite) under the domain tag ``domain``."""
    if not domain:
        raise ValueError("a domain-separation tag is required")
    return G1Point.hash_to_curve(message, domain)


def hash_to_g2(domain: bytes, message: bytes) -> G2Point:
    """RFC 9380 hash to G2 (the backend's suite) under the domain tag ``domain``."""
    if not domain:
        raise ValueError("a domain-separation tag is required")
    return G2Point.hash_to_curve(message, domain)


# --- fixed-base tables --------------------------------------------------------------------------

_WINDOW = 8
_WINDOWS = (ORDER.bit_length() + _WINDOW - 1) // _WINDOW
_MASK = (1 << _WINDOW) - 1


@dataclass(frozen=True)
class FixedBase(Generic[P]):
    """Windowed fixed-base table: base^k with about 32 additions instead of ~380 doublings/adds.

    Worth building when one base is raised to many exponents (KAC setup raises g to
    thousands of powers of α). ``rows[j][d]`` holds ``d · 2^(8j) · base``.
    """

    rows: tuple[tuple[P, ...], ...]

    @classmethod
    def build(cls, base: P) -> FixedBase[P]:
        identity = type(base).identity()
        rows = []
        step = base
        for _ in range(_WINDOWS):
            row = [identity, step]
            for _ in range(2, 1 << _WINDOW):
                row.append(row[-1] + step)
            rows.append(tuple(row))
            step = row[-1] + step  # 2^8 · step
        return cls(tuple(rows))

    def mul(self, k: int) -> P:
        k %= ORDER
        rows = self.rows
        return sum(
            (rows[j][(k >> (_WINDOW * j)) & _MASK] for j in range(_WINDOWS)),
            start=rows[0][0],
        )


@dataclass(frozen=True)
class FixedBaseGT:
    """Windowed fixed-base exponentiation in GT (multiplication only, ~32 products)."""

    rows: tuple[tuple[GT, ...], ...]

    @classmethod
    def build(cls, base: GT) -> FixedBaseGT:
        one = GT.one()
        rows = []
        step = base
        for _ in range(_WINDOWS):
            row = [one, step]
            for _ in range(2, 1 << _WINDOW):
                row.append(row[-1] * step)
            rows.append(tuple(row))
            step = row[-1] * step
        return cls(tuple(rows))

    def pow(self, k: int) -> GT:
        k %= ORDER
        result = GT.one()
        for j in range(_WINDOWS):
            digit = (k >> (_WINDOW * j)) & _MASK
            if digit:
                result = result * self.rows[j][digit]
        return result
