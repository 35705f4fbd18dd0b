"""Large-universe CP-ABE with white-box traceability, with accountable-authority audit.

Scheme: J. Ning, Z. Cao, X. Dong, L. Wei, "Large Universe Ciphertext-Policy
Attribute-Based Encryption with White-Box Traceability", ESORICS 2014 (IACR ePrint
2014/471), §4, which adds traceability to Y. Rouselakis and B. Waters, "Practical
constructions and new proof methods for large universe attribute-based encryption",
CCS 2013. Accountability of the authority follows J. Ning, X. Dong, Z. Cao, L. Wei,
"Accountable authority ciphertext-policy attribute-based encryption with white-box
traceability and public auditing in the cloud", ESORICS 2015: the key's ``K'`` is
``c + k`` where only the user knows ``k`` (see :mod:`medshare.crypto.issuance`).

Security: selective security under the q-type assumption of Rouselakis–Waters;
traceability under the ℓ-SDH assumption (the ``g^{α/(a+c)}`` part is a Boneh–Boyen
signature on ``c``). Pairing type 3 (BLS12-381): ciphertexts live in G1, keys in G2,
and ``w, v, u, h`` are published in both groups with the same exponents.

Deviation from the paper, and why: the backend cannot decode GT elements, so the
public key carries ``g1^α`` and everyone recomputes ``e(g,g)^α = e(g1^α, g2)``.
Every ciphertext component is in G1 and ``g1^α`` pairs only with G2 elements that
carry no ciphertext randomness ``s``, so it does not help to compute ``e(g,g)^{αs}``.

Decryption is one multi-pairing of ``2|I| + 2`` terms; with the AND-friendly LSSS of
:mod:`medshare.crypto.policy` all reconstruction coefficients of AND/OR policies are 1,
so decryption needs no G1 scalar multiplication per row.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from medshare.crypto import encoding, fields, group, hybrid, signing
from medshare.crypto import policy as policy_mod
from medshare.crypto.errors import InvalidEncoding, InvalidKey, PolicyNotSatisfied
from medshare.crypto.group import G1, G2, ORDER

ATTRIBUTE_DST = b"medshare/abe/v1/attribute"
KEM_INFO = b"medshare/abe/v1/kem"
HEADER_DST = b"medshare/abe/v1/header"
REGISTRATION_DOMAIN = b"medshare/abe/v1/registration"
MAX_ATTRIBUTES = 4096
MAX_ROWS = policy_mod.MAX_LEAVES  # one ciphertext row per policy leaf
_G2_TEXT = (4 * group.G2_BYTES + 2) // 3  # unpadded base64 length of a G2 point
_WEIGHT_BITS = 128


def attribute_scalar(name: str) -> int:
    """The attribute's value in Z_p: a 512-bit domain-separated hash reduced mod p."""
    return group.hash_to_zp(ATTRIBUTE_DST, name.encode("utf-8"))


def _weight() -> int:
    """A random 128-bit weight for batching pairing equations (small-exponent test)."""
    return 1 + secrets.randbits(_WEIGHT_BITS)


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbePublicKey:
    """Public parameters: ``g1^α``, ``g1^a`` and ``w, v, u, h`` in G1 and G2."""

    alpha1: G1
    a1: G1
    w1: G1
    v1: G1
    u1: G1
    h1: G1
    w2: G2
    v2: G2
    u2: G2
    h2: G2

    @cached_property
    def egg_alpha(self) -> group.GT:
        """e(g1, g2)^α, recomputed from g1^α (GT values are never stored or sent)."""
        return group.pair(self.alpha1, group.g2())

    def attribute_point_g1(self, name: str) -> G1:
        """u1^τ · h1 for the attribute τ."""
        return group.multiexp([self.u1, self.h1], [attribute_scalar(name), 1])

    def check(self) -> None:
        """Public sanity check: the G2 copies of w, v, u, h carry the G1 exponents."""
        weights = [_weight() for _ in range(4)]
        firsts = [self.w1, self.v1, self.u1, self.h1]
        seconds = [self.w2, self.v2, self.u2, self.h2]
        left = group.multiexp(firsts, weights)
        right = group.multiexp(seconds, weights)
        if not group.pairing_check([left, -group.g1()], [group.g2(), right]):
            raise InvalidKey("public key is inconsistent: G1 and G2 copies differ")

    def fingerprint(self) -> bytes:
        """SHA-256 over all public points: names the authority a ciphertext was made for."""
        digest = hashlib.sha256(b"medshare/abe/v1/public")
        for point in (self.alpha1, self.a1, self.w1, self.v1, self.u1, self.h1):
            digest.update(group.encode_g1(point))
        for point in (self.w2, self.v2, self.u2, self.h2):
            digest.update(group.encode_g2(point))
        return digest.digest()

    def to_bytes(self) -> bytes:
        g1_fields = {n: fields.g1_text(getattr(self, n)) for n in _PK_G1}
        g2_fields = {n: fields.g2_text(getattr(self, n)) for n in _PK_G2}
        return encoding.dumps("abe-public-key", 1, {**g1_fields, **g2_fields})

    @classmethod
    def from_bytes(cls, data: bytes | str) -> AbePublicKey:
        doc = encoding.loads(data, "abe-public-key")
        points = {n: encoding.field(doc, n, fields.g1_value) for n in _PK_G1}
        points.update({n: encoding.field(doc, n, fields.g2_value) for n in _PK_G2})
        return cls(**points)


_PK_G1 = ("alpha1", "a1", "w1", "v1", "u1", "h1")
_PK_G2 = ("w2", "v2", "u2", "h2")


@dataclass(frozen=True)
class AbeMasterKey:
    """The authority's secrets ``α`` and ``a``, with its public key."""

    alpha: int = field(repr=False)
    a: int = field(repr=False)
    public: AbePublicKey

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "abe-master-key",
            1,
            {
                "alpha": fields.scalar_text(self.alpha),
                "a": fields.scalar_text(self.a),
                "public": self.public.to_bytes().decode(),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> AbeMasterKey:
        doc = encoding.loads(data, "abe-master-key")
        master = cls(
            alpha=encoding.field(doc, "alpha", fields.scalar_value),
            a=encoding.field(doc, "a", fields.scalar_value),
            public=encoding.field(doc, "public", AbePublicKey.from_bytes),
        )
        if group.mul(group.g1(), master.alpha) != master.public.alpha1 or (
            group.mul(group.g1(), master.a) != master.public.a1
        ):
            raise InvalidEncoding("master key does not match its public key")
        return master


@dataclass(frozen=True)
class AbeUserKey:
    """A user's decryption key for the attribute set ``components.keys()``.

    ``k_prime`` is ``K'``, the key's identity value (``c + k`` under accountable
    issuance). ``components[τ] = (K_{τ,1}, K_{τ,2})``.
    """

    k_prime: int = field(repr=False)
    K: G2
    L: G2
    L_prime: G2
    components: Mapping[str, tuple[G2, G2]]

    @property
    def attributes(self) -> frozenset[str]:
        return frozenset(self.components)

    @cached_property
    def l_combined(self) -> G2:
        """``L^{K'} · L' = g2^{(a+K') r}``, used by every decryption; computed once per key."""
        return group.mul(self.L, self.k_prime) + self.L_prime

    def tag(self) -> bytes:
        """``g1^{K'}``: what the registry stores to recognise this key when it leaks."""
        return group.encode_g1(group.mul(group.g1(), self.k_prime))

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "abe-user-key",
            1,
            {
                "k_prime": fields.scalar_text(self.k_prime),
                "K": fields.g2_text(self.K),
                "L": fields.g2_text(self.L),
                "L_prime": fields.g2_text(self.L_prime),
                "components": encode_components(self.components),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> AbeUserKey:
        doc = encoding.loads(data, "abe-user-key")
        return cls(
            k_prime=encoding.field(doc, "k_prime", fields.scalar_value),
            K=encoding.field(doc, "K", fields.g2_value),
            L=encoding.field(doc, "L", fields.g2_value),
            L_prime=encoding.field(doc, "L_prime", fields.g2_value),
            components=encoding.field(doc, "components", decode_components),
        )


def encode_components(components: Mapping[str, tuple[G2, G2]]) -> dict[str, list[str]]:
    """``{τ: [K_{τ,1}, K_{τ,2}]}`` as base64url, in attribute order."""
    return {
        name: [fields.g2_text(k1), fields.g2_text(k2)]
        for name, (k1, k2) in sorted(components.items())
    }


def decode_components(value: object) -> dict[str, tuple[G2, G2]]:
    """Decode ``{τ: [K_{τ,1}, K_{τ,2}]}``; every entry's shape is checked before any point.

    A G2 subgroup check costs ~0.3 ms, so a key (a leaked one is audited, from anyone) that
    is malformed anywhere is refused before that work starts, not after thousands of points.
    """
    if not isinstance(value, dict) or not value:
        raise InvalidEncoding("expected a non-empty map of attribute → [K1, K2]")
    if len(value) > MAX_ATTRIBUTES:
        raise InvalidEncoding(f"more than {MAX_ATTRIBUTES} attributes")
    for name, pair in value.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise InvalidEncoding(f"attribute {name!r} must have two components")
        if not all(isinstance(text, str) and len(text) == _G2_TEXT for text in pair):
            raise InvalidEncoding(
                f"attribute {name!r}: components must be {group.G2_BYTES}-byte G2 points"
            )
    out: dict[str, tuple[G2, G2]] = {}
    for name, pair in value.items():
        out[name] = (
            fields.g2_value(pair[0]),
            fields.g2_value(pair[1]),
        )
    return out


# --- Setup and KeyGen ---------------------------------------------------------------------------


def setup() -> AbeMasterKey:
    """Setup: random α, a and the public group elements w, v, u, h in both groups."""
    alpha, a = group.random_scalar(), group.random_scalar()
    exps = {name: group.random_scalar() for name in ("w", "v", "u", "h")}
    public = AbePublicKey(
        alpha1=group.mul(group.g1(), alpha),
        a1=group.mul(group.g1(), a),
        **{f"{n}1": group.mul(group.g1(), e) for n, e in exps.items()},
        **{f"{n}2": group.mul(group.g2(), e) for n, e in exps.items()},
    )
    return AbeMasterKey(alpha=alpha, a=a, public=public)


def check_attributes(attributes: Iterable[str]) -> tuple[str, ...]:
    names = tuple(sorted(set(attributes)))
    if not names:
        raise ValueError("a key needs at least one attribute")
    if len(names) > MAX_ATTRIBUTES:
        raise ValueError(f"a key may hold at most {MAX_ATTRIBUTES} attributes")
    for name in names:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"invalid attribute name {name!r}")
    return names


def issue_components(
    master: AbeMasterKey, x: int, r: int, attributes: Iterable[str]
) -> tuple[G2, G2, G2, dict[str, tuple[G2, G2]]]:
    """The authority's half of KeyGen for the exponent ``x`` (``a + c`` in the plain scheme).

    Returns ``(g2^{α/x} w^r, g2^r, g2^{ar}, {τ: (g2^{r_τ}, (u^τ h)^{r_τ} v^{-x r})})``.
    The accountable issuance calls this with a blinded ``x`` and then unblinds.
    """
    pk = master.public
    if x % ORDER == 0:
        raise ValueError("the key exponent must be non-zero")
    big_k = group.multiexp([group.g2(), pk.w2], [master.alpha * group.inverse(x), r])
    big_l = group.mul(group.g2(), r)
    l_prime = group.mul(group.g2(), master.a * r)
    components = {}
    for name in check_attributes(attributes):
        r_tau = group.random_scalar()
        components[name] = (
            group.mul(group.g2(), r_tau),
            group.multiexp([pk.u2, pk.h2, pk.v2], [attribute_scalar(name) * r_tau, r_tau, -x * r]),
        )
    return big_k, big_l, l_prime, components


def keygen(master: AbeMasterKey, k_prime: int, attributes: Iterable[str]) -> AbeUserKey:
    """KeyGen for the identity value ``K' = k_prime`` (the paper's algorithm, no blinding).

    The authority alone can run this: a key made here for an unregistered ``K'`` is
    exactly what the public audit blames on the authority.
    """
    r = group.random_scalar()
    big_k, big_l, l_prime, comps = issue_components(master, master.a + k_prime, r, attributes)
    return AbeUserKey(k_prime=k_prime % ORDER, K=big_k, L=big_l, L_prime=l_prime, components=comps)


# --- key sanity check and audit -------------------------------------------------------------------


def check_key(public: AbePublicKey, key: AbeUserKey) -> None:
    """Public sanity check of a decryption key (Ning et al. 2014, Trace; 2015, Audit).

    Verifies, batched with random 128-bit weights into one pairing check:
    ``e(g1, L') = e(g1^a, L)``, ``e(g1^a g1^{K'}, K) = e(g,g)^α e(w1, L^{K'} L')`` and per
    attribute ``e(g1, K_{τ,2}) e(v1, L^{K'} L') = e(u1^τ h1, K_{τ,1})``. Points were already
    subgroup-checked when decoded. Raises :class:`InvalidKey`.
    """
    if not 0 < key.k_prime < ORDER:
        raise InvalidKey("K' is out of range")
    ll = key.l_combined
    d1, d2 = _weight(), _weight()
    taus = sorted(key.components)
    d_tau = [_weight() for _ in taus]
    g1s = [
        group.mul(group.g1(), d1),
        group.mul(public.a1, ORDER - d1),
        group.mul(public.a1 + group.mul(group.g1(), key.k_prime), d2),
        group.mul(public.alpha1, ORDER - d2),
        group.multiexp([public.w1, public.v1], [ORDER - d2, sum(d_tau) % ORDER])
        if taus
        else group.mul(public.w1, ORDER - d2),
    ]
    g2s = [key.L_prime, key.L, key.K, group.g2(), ll]
    for name, d in zip(taus, d_tau, strict=True):
        k1, k2 = key.components[name]
        g1s += [group.mul(group.g1(), d), group.mul(public.attribute_point_g1(name), ORDER - d)]
        g2s += [k2, k1]
    if not group.pairing_check(g1s, g2s):
        raise InvalidKey("key components are inconsistent with the public key")


class Verdict(StrEnum):
    """Outcome of a public audit of a leaked key."""

    USER = "user"
    AUTHORITY = "authority"
    MALFORMED = "malformed"


def registration_message(identity: str, R: G1) -> bytes:
    """What a user signs with its identity key to claim the commitment ``R``."""
    name = identity.encode("utf-8")
    return len(name).to_bytes(2, "big") + name + group.encode_g1(R)


@dataclass(frozen=True)
class Registration:
    """A registry entry: who holds the key with tag ``g1^{c} · R``.

    ``R = g1^k`` is the user's registered commitment; ``c`` the authority's fresh value
    for this key. Anyone can recompute the tag from ``(c, R)``, so the registry itself
    is auditable. The registry is kept by the authority, so a row alone proves nothing
    against a user: the holder signs ``(identity, R)`` with its own Ed25519 identity key
    (``identity_key``), which the authority does not have. A row without that signature
    cannot blame anyone but the authority.
    """

    identity: str
    c: int
    R: G1
    attributes: tuple[str, ...] = field(default=())
    identity_key: bytes = b""
    identity_signature: bytes = b""

    def tag(self) -> bytes:
        return group.encode_g1(group.mul(group.g1(), self.c) + self.R)

    def R_hex(self) -> str:
        """The commitment ``R``, compressed, hex (as published on the ledger)."""
        return group.encode_g1(self.R).hex()

    def signed_by_holder(self) -> bool:
        return signing.is_valid(
            self.identity_key,
            self.identity_signature,
            REGISTRATION_DOMAIN,
            registration_message(self.identity, self.R),
        )


@dataclass(frozen=True)
class AuditResult:
    verdict: Verdict
    identity: str | None
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        return {"verdict": self.verdict.value, "identity": self.identity, "reason": self.reason}


def audit_tags(public: AbePublicKey, key: AbeUserKey, holders: Mapping[bytes, str]) -> AuditResult:
    """Trace a leaked key against tags registered by their holders (``holders``: tag →
    identity, each tag registered on the ledger by the identity's enrolled key, which the
    chain checks). Same verdicts as :func:`audit`: ``malformed`` if the key fails the
    sanity check, ``user`` if its ``g1^{K'}`` is a tag its holder registered, else
    ``authority`` — only the master-key holder can make a well-formed key nobody
    registered."""
    try:
        check_key(public, key)
    except InvalidKey as exc:
        return AuditResult(Verdict.MALFORMED, None, f"key fails the public sanity check: {exc}")
    identity = holders.get(key.tag())
    if identity is not None:
        return AuditResult(
            Verdict.USER,
            identity,
            f"K' matches the tag {identity!r} registered on the ledger with its enrolled "
            "identity key",
        )
    return AuditResult(
        Verdict.AUTHORITY,
        None,
        "well-formed key whose K' matches no tag a holder registered on the ledger: "
        "only the authority could have made it",
    )


def audit(
    public: AbePublicKey,
    key: AbeUserKey,
    registry: Iterable[Registration],
    trusted_identities: Mapping[str, bytes] | None = None,
) -> AuditResult:
    """Trace and publicly audit a leaked key.

    * fails the sanity check → ``malformed`` (it cannot decrypt; nobody is blamed);
    * ``g1^{K'}`` equals a registered ``g1^c · R`` whose ``(identity, R)`` the holder signed
      with its identity key → ``user``: that holder leaked it;
    * well-formed but matching no registration, or only one the holder never signed (or
      signed with a key other than ``trusted_identities[identity]``, e.g. the key that
      registered the identity on the ledger) → ``authority``: only the master-key holder
      can make a well-formed key, and it never learns a user's ``k``.
    """
    try:
        check_key(public, key)
    except InvalidKey as exc:
        return AuditResult(Verdict.MALFORMED, None, f"key fails the public sanity check: {exc}")
    tag = key.tag()
    for reg in registry:
        if reg.tag() != tag:
            continue
        if not reg.signed_by_holder():
            return AuditResult(
                Verdict.AUTHORITY,
                None,
                f"K' matches a registration of {reg.identity!r} that the holder never signed: "
                "only the authority could have made this key and its registry row",
            )
        trusted = None if trusted_identities is None else trusted_identities.get(reg.identity)
        if trusted_identities is not None and trusted != reg.identity_key:
            return AuditResult(
                Verdict.AUTHORITY,
                None,
                f"K' matches a registration signed by a key that is not {reg.identity!r}'s "
                "identity key: only the authority could have made it",
            )
        return AuditResult(
            Verdict.USER,
            reg.identity,
            "K' matches the commitment g^c·R that the holder signed with identity key "
            f"{reg.identity_key.hex()[:16]}…",
        )
    return AuditResult(
        Verdict.AUTHORITY,
        None,
        "well-formed key whose K' matches no registered user commitment: "
        "only the authority could have made it",
    )


# --- ciphertexts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbeCiphertext:
    """``(policy, C0, C0', [(C_{i,1}, C_{i,2}, C_{i,3})], AEAD(record))``."""

    policy: str
    c0: G1
    c0_prime: G1
    rows: tuple[tuple[G1, G1, G1], ...]
    sealed: bytes

    def header_bytes(self) -> bytes:
        """The KEM header: C0 ‖ C0' ‖ rows, 48 bytes each point."""
        parts = [group.encode_g1(self.c0), group.encode_g1(self.c0_prime)]
        parts += [group.encode_g1(p) for row in self.rows for p in row]
        return b"".join(parts)

    def size(self) -> int:
        """Bytes of the binary ciphertext: policy text, header and sealed record."""
        return len(self.policy.encode()) + len(self.header_bytes()) + len(self.sealed)

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "abe-ciphertext",
            1,
            {
                "policy": self.policy,
                "header": encoding.b64e(self.header_bytes()),
                "sealed": encoding.b64e(self.sealed),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> AbeCiphertext:
        """Decode a ciphertext from anyone, cheapest checks first (issue 12, finding 7).

        The header's size is checked against MAX_ROWS while it is still text, and its row count
        is read off its length; the policy is only parsed, under its own limits, and must have
        exactly that many leaves (compiling it is the encryptor's job: a 1023-of-1024 gate took
        seconds); only then are points decoded, at ~0.1 ms each for the subgroup check. So
        decoding costs time linear in the bytes present, whatever the document claims.
        """
        doc = encoding.loads(data, "abe-ciphertext")
        header = encoding.field(doc, "header", _header_bytes)
        count = (len(header) // group.G1_BYTES - 2) // 3
        node = encoding.field(doc, "policy", _policy_node)
        leaves = len(policy_mod.row_labels(node))
        if leaves != count:
            raise InvalidEncoding(
                f"header holds {count} rows but the policy has {leaves} attributes"
            )
        sealed = encoding.field(doc, "sealed", lambda v: encoding.b64d(v, field="sealed"))
        size = group.G1_BYTES
        points = [group.decode_g1(header[i : i + size]) for i in range(0, len(header), size)]
        rows = tuple(tuple(points[2 + 3 * i : 5 + 3 * i]) for i in range(count))
        text = policy_mod.canonical(node)
        return cls(text, points[0], points[1], rows, sealed)  # type: ignore[arg-type]


# The longest header a ciphertext can have, and its unpadded base64 length.
_MAX_HEADER_BYTES = group.G1_BYTES * (2 + 3 * MAX_ROWS)
_MAX_HEADER_TEXT = (4 * _MAX_HEADER_BYTES + 2) // 3


def _header_bytes(value: object) -> bytes:
    """``C0 ‖ C0' ‖ 3 points per row``, its shape and size checked before any point is decoded."""
    if isinstance(value, str) and len(value) > _MAX_HEADER_TEXT:
        raise InvalidEncoding(
            f"header of {len(value)} base64 characters exceeds the limit of {MAX_ROWS} rows"
        )
    header = encoding.b64d(value, field="header")
    points, extra = divmod(len(header), group.G1_BYTES)
    rows, odd = divmod(points - 2, 3)
    if extra or odd or rows < 1:
        raise InvalidEncoding(
            f"header length {len(header)} is not {group.G1_BYTES}·(2 + 3·rows) bytes, rows >= 1"
        )
    return header  # at most MAX_ROWS rows: longer text was refused above


def _policy_node(value: object) -> policy_mod.Node:
    """Parse only: the parser enforces the leaf, depth and threshold limits as it reads."""
    if not isinstance(value, str):
        raise InvalidEncoding("policy must be a string")
    return policy_mod.parse(value)


def _aad(ct_policy: str, header: bytes, context: bytes) -> bytes:
    digest = hashlib.sha256(HEADER_DST)
    for part in (ct_policy.encode(), header, context):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def encrypt(
    public: AbePublicKey, policy_text: str, plaintext: bytes, *, context: bytes = b""
) -> AbeCiphertext:
    """Encrypt: hybrid, ``e(g,g)^{αs}`` → HKDF → AES-256-GCM with the policy as AAD.

    ``context`` (e.g. a record id) is bound as associated data too and must be given
    again to decrypt.
    """
    node = policy_mod.parse(policy_text)
    lsss = policy_mod.compile_lsss(node, modulus=ORDER)
    if len(lsss.rows) > MAX_ROWS:
        raise ValueError(f"policies may have at most {MAX_ROWS} attributes")
    s = group.random_scalar()
    y = [s] + [secrets.randbelow(ORDER) for _ in range(len(lsss.rows[0]) - 1)]
    rows = []
    for row, label in zip(lsss.rows, lsss.labels, strict=True):
        share = sum(m * yj for m, yj in zip(row, y, strict=True)) % ORDER
        t = group.random_scalar()
        rows.append(
            (
                group.multiexp([public.w1, public.v1], [share, t]),
                group.multiexp([public.u1, public.h1], [-t * attribute_scalar(label), -t]),
                group.mul(group.g1(), t),
            )
        )
    secret = group.pair(group.mul(public.alpha1, s), group.g2())
    text = policy_mod.canonical(node)
    header = AbeCiphertext(
        text, group.mul(group.g1(), s), group.mul(public.a1, s), tuple(rows), b""
    )
    aead_key = hybrid.derive_key(group.gt_to_bytes(secret), info=KEM_INFO)
    sealed = hybrid.seal(aead_key, plaintext, aad=_aad(text, header.header_bytes(), context))
    return AbeCiphertext(header.policy, header.c0, header.c0_prime, header.rows, sealed)


def decrypt(
    public: AbePublicKey, key: AbeUserKey, ct: AbeCiphertext, *, context: bytes = b""
) -> bytes:
    """Decrypt with one multi-pairing of ``2|I| + 2`` terms.

    Raises :class:`PolicyNotSatisfied` before any pairing when the key's attributes do
    not satisfy the (public) policy, and :class:`DecryptionFailed` for a wrong key or
    any tampering.
    """
    node = policy_mod.parse(ct.policy)
    omega = policy_mod.reconstruct(node, key.attributes, modulus=ORDER)
    if omega is None:
        raise PolicyNotSatisfied("this key's attributes do not satisfy the policy")
    labels = policy_mod.row_labels(node)  # rho only: the matrix is not needed to decrypt
    secret = group.multi_pairing(*_decryption_terms(key, ct, omega, labels))
    aead_key = hybrid.derive_key(group.gt_to_bytes(secret), info=KEM_INFO)
    return hybrid.open_sealed(aead_key, ct.sealed, aad=_aad(ct.policy, ct.header_bytes(), context))


def _decryption_terms(
    key: AbeUserKey, ct: AbeCiphertext, omega: Mapping[int, int], labels: tuple[str, ...]
) -> tuple[list[G1], list[G2]]:
    """G1/G2 argument lists whose product of pairings is ``e(g,g)^{αs}``.

    ``e(C0^{K'} C0', K) · e(Π C_{i,1}^{-ω_i}, L^{K'} L') · Π e(C_{i,2}^{-ω_i}, K_{ρ(i),1})
    e(C_{i,3}^{-ω_i}, K_{ρ(i),2})``; for ω_i = 1 the powers are plain negations.
    """
    used = sorted(omega)
    unit = all(omega[i] == 1 for i in used)
    if unit:
        c1_sum = -sum((ct.rows[i][0] for i in used), start=group.identity_g1())
    else:
        c1_sum = group.multiexp([ct.rows[i][0] for i in used], [ORDER - omega[i] for i in used])
    g1s = [group.mul(ct.c0, key.k_prime) + ct.c0_prime, c1_sum]
    g2s = [key.K, key.l_combined]
    for i in used:
        _, c2, c3 = ct.rows[i]
        k1, k2 = key.components[labels[i]]
        if unit:
            g1s += [-c2, -c3]
        else:
            g1s += [group.mul(c2, ORDER - omega[i]), group.mul(c3, ORDER - omega[i])]
        g2s += [k1, k2]
    return g1s, g2s


# --- the registry of issued keys -----------------------------------------------------------------


def registry_to_bytes(entries: Iterable[Registration]) -> bytes:
    """The authority's registry: one entry per issued key, with its public tag."""
    rows = [
        {
            "identity": reg.identity,
            "c": fields.scalar_text(reg.c),
            "R": fields.g1_text(reg.R),
            "tag": encoding.b64e(reg.tag()),
            "attributes": list(reg.attributes),
            "identity_key": reg.identity_key.hex(),
            "identity_signature": reg.identity_signature.hex(),
        }
        for reg in entries
    ]
    return encoding.dumps("abe-registry", 1, {"keys": rows})


def registry_from_bytes(data: bytes | str) -> list[Registration]:
    """Parse a registry and re-derive every tag from ``(c, R)``, refusing inconsistent rows."""
    doc = encoding.loads(data, "abe-registry")
    return encoding.field(doc, "keys", _registry_rows)


def _registry_rows(value: object) -> list[Registration]:
    if not isinstance(value, list):
        raise InvalidEncoding("keys must be a list")
    out = []
    for row in value:
        if not isinstance(row, dict):
            raise InvalidEncoding("registry rows must be objects")
        reg = Registration(
            identity=encoding.field(row, "identity", encoding.identity_text),
            c=encoding.field(row, "c", fields.scalar_value),
            R=encoding.field(row, "R", fields.g1_value),
            attributes=encoding.field(row, "attributes", encoding.string_list),
            identity_key=encoding.field(row, "identity_key", _hex_bytes),
            identity_signature=encoding.field(row, "identity_signature", _hex_bytes),
        )
        if encoding.b64e(reg.tag()) != row.get("tag"):
            raise InvalidEncoding(f"registry tag of {reg.identity!r} does not match g^c·R")
        out.append(reg)
    return out


def _hex_bytes(value: object) -> bytes:
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidEncoding("expected lower-case hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InvalidEncoding("expected lower-case hex") from None
