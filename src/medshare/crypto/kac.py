"""Key-aggregate cryptosystem (KAC): one constant-size key opens any chosen set of classes.

Reference: C.-K. Chu, S. S. M. Chow, W.-G. Tzeng, J. Zhou, R. H. Deng, "Key-Aggregate
Cryptosystem for Scalable Data Sharing in Cloud Storage", IEEE Transactions on Parallel
and Distributed Systems 25(2), 2014. This module implements the *basic* KAC of §4.1
(Setup, KeyGen, Encrypt, Extract, Decrypt); security rests on the n-BDHE assumption.

Properties and limits:

* **CPA only.** The scheme is used as a KEM: the pairing value ``e(g_1, g_n)^t`` is hashed
  into an AES-256-GCM key (:mod:`medshare.crypto.hybrid`). The AEAD gives integrity, and its
  associated data binds the class index, the header ``(c1, c2)``, the patient id and the
  parameter fingerprint, which the KAC header does not authenticate by itself, plus an
  optional caller ``context`` (H-KAC passes the record id) that is not stored in the
  ciphertext and must be supplied again to decrypt.
* **Trust in setup.** ``α`` exists only inside :func:`setup`: whoever keeps it can compute
  ``g_{n+1}`` and open every ciphertext of every patient. Parameters are therefore made in a
  documented ceremony and ``α`` is discarded (here it is a local variable that is never
  returned or stored); a multi-party powers-of-tau ceremony is a stretch goal.
  :meth:`KacParams.verify` checks that parameters are well formed (honest *structure*), but no
  public check can tell whether someone kept ``α``.
* **Type-3 placement** (BLS12-381). G1 holds ``g_1 … g_n`` (``g_i = g1^{α^i}``), the patient's
  ``v = g1^γ`` and the header ``c1 = g1^t, c2 = (v · g_i)^t`` (2 × 48 B). G2 holds ``g_1 … g_n``
  and ``g_{n+2} … g_{2n}``; ``g_{n+1}`` is published in neither group. The aggregate key
  ``K_S = (Π_{j∈S} g2_{n+1-j})^γ`` is one G2 point (96 B) whatever ``|S|``.

Decryption of class ``i ∈ S`` computes, with ``a_S = Π_{j∈S} g2_{n+1-j}`` and
``b_S = Π_{j∈S, j≠i} g2_{n+1-j+i}``, ``e(c2, a_S) / e(c1, K_S · b_S) = e(g_1, g_n)^t`` as one
two-term multi-pairing.

Classes are indexed ``1 … n`` with ``1 <= n <= 65536``. Group operations go through
:mod:`medshare.crypto.group`, the only module that imports the pairing library.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

from medshare.crypto import encoding, fields
from medshare.crypto.errors import DecryptionFailed, InvalidEncoding, InvalidKey, PolicyNotSatisfied
from medshare.crypto.group import (
    G1,
    G1_BYTES,
    G2,
    G2_BYTES,
    ORDER,
    FixedBase,
    FixedBaseGT,
    decode_g1,
    decode_g2,
    encode_g1,
    encode_g2,
    g1,
    g2,
    gt_to_bytes,
    identity_g2,
    mul,
    multi_pairing,
    multiexp,
    pair,
    pairing_check,
    random_scalar,
)
from medshare.crypto.hybrid import NONCE_BYTES, TAG_BYTES, derive_key, open_sealed, seal

__all__ = [
    "MAX_CLASSES",
    "AggregateKey",
    "KacCiphertext",
    "KacParams",
    "KacPatientPublic",
    "KacPatientSecret",
    "decrypt",
    "encrypt",
    "extract",
    "keygen",
    "setup",
]

MAX_CLASSES = 65536
VERSION = 1
KDF_INFO = b"medshare/kac/v1"
_AAD_TAG = b"medshare/kac/v1/aad"
_PATIENT_ID_TAG = b"medshare/kac/v1/patient-id"
_FINGERPRINT_TAG = b"medshare/kac/v1/params"
_PATIENT_ID_BYTES = 16
_FINGERPRINT_BYTES = 32
_PATIENT_ID_RE = re.compile(r"[0-9a-f]{32}")
_VERIFY_WEIGHT_BITS = 128


@cache
def _g1_table() -> FixedBase[G1]:
    return FixedBase.build(g1())


@cache
def _g2_table() -> FixedBase[G2]:
    return FixedBase.build(g2())


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"the number of classes n must be an int, not {type(n).__name__}")
    if not 1 <= n <= MAX_CLASSES:
        raise ValueError(f"the number of classes n must be in 1..{MAX_CLASSES}, got {n}")
    return n


def _check_class(i: object, n: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise ValueError(f"a class index must be an int, not {type(i).__name__}")
    if not 1 <= i <= n:
        raise ValueError(f"class index {i} is out of range: classes are numbered 1..{n}")
    return i


# --- types ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KacParams:
    """Public parameters for ``n`` classes: the published powers of α in G1 and G2.

    ``g1_powers[k-1] = g1^{α^k}`` for ``k = 1..n``; ``g2_powers`` holds ``g2^{α^k}`` for
    ``k = 1..n`` then ``k = n+2..2n`` (``2n-1`` points). Use :meth:`g1_power` and
    :meth:`g2_power` rather than indexing. Parameters received from someone else should be
    checked once with :meth:`verify`.
    """

    n: int
    g1_powers: tuple[G1, ...] = field(repr=False)
    g2_powers: tuple[G2, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"KacParams(n={self.n}, fingerprint={self.fingerprint.hex()[:16]}…)"

    def g1_power(self, k: int) -> G1:
        """``g1^{α^k}`` for ``k`` in ``1..n``."""
        if not 1 <= k <= self.n:
            raise ValueError(f"G1 power {k} is not published (1..{self.n})")
        return self.g1_powers[k - 1]

    def g2_power(self, k: int) -> G2:
        """``g2^{α^k}`` for ``k`` in ``1..n`` or ``n+2..2n`` (``g_{n+1}`` is never published)."""
        n = self.n
        if 1 <= k <= n:
            return self.g2_powers[k - 1]
        if n + 2 <= k <= 2 * n:
            return self.g2_powers[k - 2]
        if k == n + 1:
            raise ValueError(f"g_{{n+1}} (k = {k}) is never published")
        raise ValueError(f"G2 power {k} is not published (1..{n}, {n + 2}..{2 * n})")

    @cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 over a domain tag, ``n`` and every encoded point (computed once)."""
        h = hashlib.sha256(_FINGERPRINT_TAG)
        h.update(self.n.to_bytes(4, "big"))
        for p in self.g1_powers:
            h.update(encode_g1(p))
        for q in self.g2_powers:
            h.update(encode_g2(q))
        return h.digest()

    @cached_property
    def _kem_table(self) -> FixedBaseGT:
        """Fixed-base table of ``e(g1_1, g2_n)``, built on the first encryption."""
        return FixedBaseGT.build(pair(self.g1_power(1), self.g2_power(self.n)))

    def verify(self) -> None:
        """Check that these are well-formed KAC parameters; raise if not.

        Every point is re-decoded by the facade's checked decoders (on the curve, in the
        prime-order subgroup, not the identity: :class:`InvalidEncoding` otherwise), and the
        powers must be consistent (:class:`InvalidKey` otherwise). With ``g_0`` the generator,
        the equations are

        * ``e(g1_{k+1}, g2) = e(g1_k, g2_1)`` for ``k = 0..n-1`` (the G1 chain, tied to G2);
        * ``e(g1, g2_{k+1}) = e(g1_1, g2_k)`` for ``k = 1..n-1`` and ``k = n+2..2n-1``;
        * ``e(g1, g2_{n+2}) = e(g1_2, g2_n)`` across the gap at ``n+1``.

        They are batched with independent random 128-bit weights into one 5-term pairing
        check (soundness error about 2^-128). This proves the points are powers of *some* α;
        it cannot show that α was discarded.
        """
        n = self.n
        try:
            _check_n(n)
        except ValueError as exc:
            raise InvalidKey(f"KAC parameters: {exc}") from None
        if len(self.g1_powers) != n or len(self.g2_powers) != 2 * n - 1:
            raise InvalidKey(
                f"KAC parameters for n = {n} need {n} G1 and {2 * n - 1} G2 powers, "
                f"got {len(self.g1_powers)} and {len(self.g2_powers)}"
            )
        encoded_g1 = []
        for k, p in enumerate(self.g1_powers, start=1):
            if not isinstance(p, G1):
                raise InvalidKey(f"KAC parameters: G1 power {k} is not a G1 point")
            data = encode_g1(p)
            try:
                decode_g1(data)
            except InvalidEncoding as exc:
                raise InvalidEncoding(f"KAC parameters: G1 power {k}: {exc}") from None
            encoded_g1.append(data)
        for idx, q in enumerate(self.g2_powers):
            k = idx + 1 if idx < n else idx + 2
            if not isinstance(q, G2):
                raise InvalidKey(f"KAC parameters: G2 power {k} is not a G2 point")
            try:
                decode_g2(encode_g2(q))
            except InvalidEncoding as exc:
                raise InvalidEncoding(f"KAC parameters: G2 power {k}: {exc}") from None
        # α of small order (α^k = 1 for some k <= n) would publish g_{n+1} under another name.
        if len(set(encoded_g1)) != n or encode_g1(g1()) in encoded_g1:
            raise InvalidKey("KAC parameters: the G1 powers repeat (α has small order)")

        def weights(count: int) -> list[int]:
            return [1 + secrets.randbits(_VERIFY_WEIGHT_BITS) for _ in range(count)]

        chain = (g1(), *self.g1_powers)  # chain[k] = g1^{α^k}, k = 0..n
        r = weights(n)
        ps = [multiexp(chain[1:], r), -multiexp(chain[:-1], r)]
        qs = [g2(), self.g2_power(1)]
        if n >= 2:
            ks = [k for k in range(1, 2 * n) if k not in (n, n + 1)]
            s = weights(len(ks) + 1)
            upper = [self.g2_power(k + 1) for k in ks] + [self.g2_power(n + 2)]
            lower = [self.g2_power(k) for k in ks]
            ps += [g1(), -self.g1_power(1), -mul(self.g1_power(2), s[-1])]
            qs += [multiexp(upper, s), multiexp(lower, s[:-1]), self.g2_power(n)]
        if not pairing_check(ps, qs):
            raise InvalidKey("KAC parameters are inconsistent: the points are not powers of one α")

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "kac-params",
            VERSION,
            {
                "n": self.n,
                "g1_powers": encoding.b64e(b"".join(encode_g1(p) for p in self.g1_powers)),
                "g2_powers": encoding.b64e(b"".join(encode_g2(q) for q in self.g2_powers)),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KacParams:
        """Decode parameters (every point subgroup-checked); call :meth:`verify` once too."""
        doc = encoding.loads(data, "kac-params")
        n = encoding.field(doc, "n", lambda v: encoding.int_field(v, low=1, high=MAX_CLASSES))

        def points(count: int, size: int, decode: Any, label: str) -> Any:
            def run(value: object) -> tuple:
                raw = encoding.b64d(value, field=label)
                if len(raw) != count * size:
                    raise InvalidEncoding(
                        f"expected {count} points ({count * size} bytes), got {len(raw)} bytes"
                    )
                out = []
                for k in range(count):
                    try:
                        out.append(decode(raw[k * size : (k + 1) * size]))
                    except InvalidEncoding as exc:
                        raise InvalidEncoding(f"point {k}: {exc}") from None
                return tuple(out)

            return run

        g1s = encoding.field(doc, "g1_powers", points(n, G1_BYTES, decode_g1, "g1_powers"))
        g2s = encoding.field(doc, "g2_powers", points(2 * n - 1, G2_BYTES, decode_g2, "g2_powers"))
        return cls(n, g1s, g2s)


@dataclass(frozen=True)
class KacPatientPublic:
    """A patient's public key ``v = g1^γ``."""

    v: G1

    @cached_property
    def patient_id(self) -> str:
        """32 hex digits: the first 16 bytes of SHA-256(tag ‖ encoded v)."""
        digest = hashlib.sha256(_PATIENT_ID_TAG + encode_g1(self.v)).digest()
        return digest[:_PATIENT_ID_BYTES].hex()

    def to_bytes(self) -> bytes:
        return encoding.dumps("kac-patient-public", VERSION, {"v": fields.g1_text(self.v)})

    @classmethod
    def from_bytes(cls, data: bytes) -> KacPatientPublic:
        doc = encoding.loads(data, "kac-patient-public")
        return cls(encoding.field(doc, "v", fields.g1_value))


@dataclass(frozen=True)
class KacPatientSecret:
    """A patient's master secret ``γ`` and the matching public key (γ is kept out of repr)."""

    gamma: int = field(repr=False)
    public: KacPatientPublic

    def to_bytes(self) -> bytes:
        """Only γ is written; the public key is recomputed on load, so they cannot disagree."""
        return encoding.dumps(
            "kac-patient-secret", VERSION, {"gamma": fields.scalar_text(self.gamma)}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KacPatientSecret:
        doc = encoding.loads(data, "kac-patient-secret")
        gamma = encoding.field(doc, "gamma", fields.scalar_value)
        return cls(gamma, KacPatientPublic(_g1_table().mul(gamma)))


@dataclass(frozen=True)
class AggregateKey:
    """``K_S``: one G2 point that opens every class in ``classes`` of one patient.

    ``patient_id`` and ``params_fingerprint`` record whose key it is and under which
    parameters it was extracted, so a mismatch gives a clear error instead of garbage.
    """

    classes: frozenset[int]
    key: G2
    patient_id: str
    params_fingerprint: bytes
    _base: dict[bytes, G2] = field(default_factory=dict, init=False, repr=False, compare=False)

    def aggregate_base(self, params: KacParams) -> G2:
        """``a_S = Π_{j∈S} g2_{n+1-j}``, computed once per key and parameter set.

        It depends only on ``S`` and the parameters, so a patient or clinician opening
        many records with one share pays for the |S| additions once.
        """
        base = self._base.get(params.fingerprint)
        if base is None:
            n = params.n
            base = sum((params.g2_power(n + 1 - j) for j in self.classes), start=identity_g2())
            self._base[params.fingerprint] = base
        return base

    def key_bytes(self) -> bytes:
        """The compressed key point: 96 bytes whatever the number of classes."""
        return encode_g2(self.key)

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "kac-aggregate-key",
            VERSION,
            {
                "classes": _ranges(self.classes),
                "key": encoding.b64e(self.key_bytes()),
                "patient": self.patient_id,
                "params": encoding.b64e(self.params_fingerprint),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AggregateKey:
        """Classes are stored as sorted, disjoint, non-adjacent ``[first, last]`` ranges."""
        doc = encoding.loads(data, "kac-aggregate-key")
        classes = encoding.field(doc, "classes", _classes_from_ranges)
        key = encoding.field(doc, "key", fields.g2_value)
        patient = encoding.field(doc, "patient", _patient_id_field)
        params = encoding.field(doc, "params", _fingerprint_field)
        return cls(classes, key, patient, params)


@dataclass(frozen=True)
class KacCiphertext:
    """A record encrypted to one class: header ``(c1, c2)`` plus the AES-GCM payload."""

    class_index: int
    c1: G1
    c2: G1
    patient_id: str
    sealed: bytes = field(repr=False)

    def header_bytes(self) -> bytes:
        """``c1 ‖ c2``, compressed: 96 bytes."""
        return encode_g1(self.c1) + encode_g1(self.c2)

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "kac-ciphertext",
            VERSION,
            {
                "class": self.class_index,
                "c1": fields.g1_text(self.c1),
                "c2": fields.g1_text(self.c2),
                "patient": self.patient_id,
                "sealed": encoding.b64e(self.sealed),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KacCiphertext:
        doc = encoding.loads(data, "kac-ciphertext")
        index = encoding.field(
            doc, "class", lambda v: encoding.int_field(v, low=1, high=MAX_CLASSES)
        )
        c1 = encoding.field(doc, "c1", fields.g1_value)
        c2 = encoding.field(doc, "c2", fields.g1_value)
        patient = encoding.field(doc, "patient", _patient_id_field)
        sealed = encoding.field(doc, "sealed", _sealed_field)
        return cls(index, c1, c2, patient, sealed)


# --- field codecs -----------------------------------------------------------------------------


def _ranges(classes: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for c in sorted(classes):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def _classes_from_ranges(value: object) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise InvalidEncoding("expected a non-empty list of [first, last] class ranges")
    classes: set[int] = set()
    previous = -1
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise InvalidEncoding("each class range must be a [first, last] pair")
        lo, hi = (encoding.int_field(x, low=1, high=MAX_CLASSES) for x in item)
        if lo > hi or lo <= previous + 1:
            raise InvalidEncoding("class ranges must be sorted, disjoint and non-adjacent")
        classes.update(range(lo, hi + 1))
        previous = hi
    return frozenset(classes)


def _patient_id_field(value: object) -> str:
    if not isinstance(value, str) or not _PATIENT_ID_RE.fullmatch(value):
        raise InvalidEncoding(f"a patient id is {2 * _PATIENT_ID_BYTES} lowercase hex digits")
    return value


def _fingerprint_field(value: object) -> bytes:
    raw = encoding.b64d(value, field="params")
    if len(raw) != _FINGERPRINT_BYTES:
        raise InvalidEncoding(f"a params fingerprint is {_FINGERPRINT_BYTES} bytes, got {len(raw)}")
    return raw


def _sealed_field(value: object) -> bytes:
    raw = encoding.b64d(value, field="sealed")
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise InvalidEncoding(f"sealed payload is too short ({len(raw)} bytes)")
    return raw


# --- the scheme -------------------------------------------------------------------------------


def _powers(n: int, alpha: int) -> KacParams:
    """The published powers of ``alpha`` (split out of :func:`setup` for testing only)."""
    t1, t2 = _g1_table(), _g2_table()
    exps = [1] * (2 * n + 1)  # exps[k] = α^k mod p
    for k in range(1, 2 * n + 1):
        exps[k] = exps[k - 1] * alpha % ORDER
    g1s = tuple(t1.mul(exps[k]) for k in range(1, n + 1))
    g2s = tuple(t2.mul(exps[k]) for k in (*range(1, n + 1), *range(n + 2, 2 * n + 1)))
    return KacParams(n, g1s, g2s)


def setup(n: int) -> KacParams:
    """Setup(n): fresh parameters for classes ``1..n``; α is drawn here and discarded."""
    _check_n(n)
    alpha = random_scalar()
    params = _powers(n, alpha)
    del alpha  # documentation of intent; Python cannot wipe the int's memory
    return params


def keygen(params: KacParams) -> KacPatientSecret:
    """KeyGen: a patient's secret γ and public ``v = g1^γ`` (independent of ``n``)."""
    del params  # the key lives in G1 of the shared group; kept for the paper's signature
    gamma = random_scalar()
    return KacPatientSecret(gamma, KacPatientPublic(_g1_table().mul(gamma)))


def _aad(
    params: KacParams, class_index: int, c1: G1, c2: G1, patient_id: str, context: bytes = b""
) -> bytes:
    """The AEAD associated data; a non-empty ``context`` is appended with its length.

    Every field before it has a fixed or prefixed length, so an empty context gives exactly
    the associated data of a context-free ciphertext and a non-empty one can never collide.
    """
    pid = patient_id.encode("utf-8")
    parts = [
        _AAD_TAG,
        class_index.to_bytes(4, "big"),
        encode_g1(c1),
        encode_g1(c2),
        len(pid).to_bytes(2, "big"),
        pid,
        params.fingerprint,
    ]
    if context:
        parts += [len(context).to_bytes(4, "big"), context]
    return b"".join(parts)


def _check_context(context: object) -> bytes:
    if not isinstance(context, bytes | bytearray | memoryview):
        raise TypeError(f"context must be bytes, not {type(context).__name__}")
    context = bytes(context)
    if len(context) >= 1 << 32:
        raise ValueError("context is too long")
    return context


def _encapsulate(params: KacParams, public: KacPatientPublic, i: int, t: int) -> tuple:
    """Header ``(c1, c2)`` and the KEM secret ``e(g1_1, g2_n)^t`` for class ``i``."""
    c1 = _g1_table().mul(t)
    c2 = mul(public.v + params.g1_power(i), t)
    return c1, c2, params._kem_table.pow(t)


def _decapsulate(params: KacParams, key: AggregateKey, i: int, c1: G1, c2: G1) -> Any:
    """``e(c2, a_S) / e(c1, K_S · b_S)`` as one two-term multi-pairing."""
    n = params.n
    b_s = (params.g2_power(n + 1 - j + i) for j in key.classes if j != i)
    return multi_pairing([c2, -c1], [key.aggregate_base(params), sum(b_s, start=key.key)])


def encrypt(
    params: KacParams,
    public: KacPatientPublic,
    class_index: int,
    plaintext: bytes,
    *,
    context: bytes = b"",
) -> KacCiphertext:
    """Encrypt(params, pk, i, m): KEM header to class ``i`` plus the AES-256-GCM payload.

    ``context`` (e.g. a record id) is bound into the AEAD's associated data but not stored
    in the ciphertext: :func:`decrypt` must be given the same bytes, so a ciphertext moved to
    another context fails. The default (empty) context is the plain scheme.
    """
    i = _check_class(class_index, params.n)
    context = _check_context(context)
    c1, c2, secret = _encapsulate(params, public, i, random_scalar())
    key = derive_key(gt_to_bytes(secret), info=KDF_INFO)
    patient = public.patient_id
    sealed = seal(key, bytes(plaintext), aad=_aad(params, i, c1, c2, patient, context))
    return KacCiphertext(i, c1, c2, patient, sealed)


def extract(params: KacParams, secret: KacPatientSecret, classes: Iterable[int]) -> AggregateKey:
    """Extract(msk, S): ``K_S = (Π_{j∈S} g2_{n+1-j})^γ``, one G2 point for any set ``S``."""
    n = params.n
    if isinstance(classes, int):
        raise ValueError("classes must be a set of class indices, not a single int")
    chosen = frozenset(_check_class(j, n) for j in classes)
    if not chosen:
        raise ValueError("cannot extract a key for an empty set of classes")
    a_s = sum((params.g2_power(n + 1 - j) for j in chosen), start=identity_g2())
    return AggregateKey(
        chosen, mul(a_s, secret.gamma), secret.public.patient_id, params.fingerprint
    )


def decrypt(
    params: KacParams, key: AggregateKey, ciphertext: KacCiphertext, *, context: bytes = b""
) -> bytes:
    """Decrypt(K_S, S, i, C): the plaintext, if ``i ∈ S`` and nothing was tampered with.

    ``context`` must equal the one given to :func:`encrypt` (:class:`DecryptionFailed`
    otherwise).

    Raises :class:`PolicyNotSatisfied` (before any pairing) if the class is not in the key's
    set, :class:`InvalidKey` for a key whose classes do not fit the parameters, and
    :class:`DecryptionFailed` for a key from other parameters or another patient, or for any
    tampering with the ciphertext.
    """
    if key.params_fingerprint != params.fingerprint:
        raise DecryptionFailed(
            "the aggregate key was extracted under different KAC parameters "
            f"({key.params_fingerprint.hex()[:16]}… vs {params.fingerprint.hex()[:16]}…)"
        )
    if not key.classes or not all(
        isinstance(j, int) and not isinstance(j, bool) and 1 <= j <= params.n for j in key.classes
    ):
        raise InvalidKey(f"the aggregate key's classes are not a non-empty subset of 1..{params.n}")
    context = _check_context(context)
    i = ciphertext.class_index
    if i not in key.classes:
        raise PolicyNotSatisfied(
            f"class {i} is not among the {len(key.classes)} classes this key opens"
        )
    if key.patient_id != ciphertext.patient_id:
        raise DecryptionFailed(
            f"the key belongs to patient {key.patient_id}, "
            f"the ciphertext to patient {ciphertext.patient_id}"
        )
    secret = _decapsulate(params, key, i, ciphertext.c1, ciphertext.c2)
    aead_key = derive_key(gt_to_bytes(secret), info=KDF_INFO)
    aad = _aad(params, i, ciphertext.c1, ciphertext.c2, ciphertext.patient_id, context)
    return open_sealed(aead_key, ciphertext.sealed, aad=aad)
