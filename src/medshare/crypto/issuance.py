"""Accountable-authority key issuance: a two-party protocol so the authority never learns K'.

Ning, Dong, Cao, Wei, ESORICS 2015 (accountable authority CP-ABE with white-box
traceability and public auditing). The user holds a secret ``k`` and registers
``R = g1^k`` with a Schnorr proof of knowledge, whose Fiat–Shamir challenge binds the
authority's key fingerprint, a fresh single-use session the authority opened
(:meth:`IssuanceAuthority.challenge`, bounded in number and expiring) and the identity,
so a captured registration can be neither replayed nor taken to another authority. For
each key the authority picks a
fresh random ``c`` and sends its Paillier encryption of ``a + c``; the user returns
``Enc((a + c + k)·ρ + p·δ)`` for random ``ρ`` and a statistically masking ``δ``
(|p| + 130 bits), together with ``X = (g1^a · g1^c · R)^ρ`` and a proof of knowledge
of ``ρ``. The authority decrypts ``x = ρ(a+c+k) mod p``, checks ``g1^x = X`` (this
stops a user who ran the Paillier step with some other ``k̂`` from obtaining an
unregistered key with which to frame the authority), and issues key components for
the exponent ``x``. The user raises ``K, L, L'`` to ``ρ`` and sets ``K' = c + k``:
the result is an ordinary key for identity ``c + k`` with ``r = ρ·r̃``.

The authority's side is checked too, so a deviating authority cannot learn ``k``. An
authority that encrypted ``a + c + 2^1000`` instead of ``a + c`` would read ``ρ`` off the
high bits of ``x`` and solve for ``k``. So before answering, the user checks
(1) once per authority modulus, that ``N`` is a Paillier–Blum modulus
(:mod:`medshare.crypto.paillier_blum`, Π^mod of Canetti–Gennaro–Goldfeder–Makriyannis–
Peled 2020, §4), shown in the challenge; and (2) for every offer, an interactive range
proof that its plaintext is congruent to an integer of magnitude below
``2^(RANGE_BITS+2)`` (:mod:`medshare.crypto.paillier_range`, Boudot 2000 / Lindell 2017),
for which ``δ`` (:data:`MASK_BITS`) is sized. The proof does not show that the plaintext
is exactly ``a + c mod p``: a different small plaintext only yields a key that fails the
user's final sanity check, and, masked as ``x`` is, tells the authority nothing about
``k``. Cost on a 2-core machine: about 1.6 s per key, 1.35 s of it the authority's 81
Paillier encryptions (independent of the key, so an authority server can make them ahead
of requests), plus 0.7 s once per authority modulus for the user's modulus check.

Paillier: the ``phe`` package (with ``gmpy2``), modulus 3072 bits.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import phe
from phe.util import powmod

from medshare.crypto import abe, encoding, fields, group, paillier_blum, paillier_range, signing
from medshare.crypto.errors import InvalidEncoding, InvalidKey, ProtocolError
from medshare.crypto.group import G1, G2, ORDER

PAILLIER_BITS = 3072
# The authority proves its plaintext a + c is below 2^RANGE_BITS; the proof guarantees
# |plaintext| < 2^(RANGE_BITS+2), and the user's mask p·δ is sized to hide ρ·(m + k) for
# any such m with 2^-130 statistical distance.
RANGE_BITS = 256
SESSION_TTL_S = 600.0  # an issuance session not finished within this is dropped
# Paillier randomizers one offer uses: Enc(a + c) and the range proof's pairs.
RANDOMIZERS_PER_OFFER = 2 * paillier_range.ROUNDS + 1
MAX_OPEN_SESSIONS = 4096  # sessions offered and not yet expired; more wait
MAX_OPEN_PER_IDENTITY = 1  # offers one identity may have open at once (servers pass it)
MASK_BITS = ORDER.bit_length() + RANGE_BITS + 2 + 130
_PROOF_DST = b"medshare/abe/v1/issuance-proof"


# --- Schnorr proofs of knowledge of a discrete log (Fiat–Shamir) -------------------------------


@dataclass(frozen=True)
class DlogProof:
    """Proof of knowledge of ``x`` with ``statement = base^x``: ``(challenge, response)``."""

    challenge: int
    response: int


def _challenge(context: bytes, base: G1, statement: G1, commitment: G1) -> int:
    parts = [context, group.encode_g1(base), group.encode_g1(statement)]
    parts.append(group.encode_g1(commitment))
    return group.hash_to_zp(_PROOF_DST, b"".join(len(p).to_bytes(4, "big") + p for p in parts))


def prove_dlog(base: G1, secret: int, context: bytes) -> DlogProof:
    nonce = group.random_scalar()
    e = _challenge(context, base, group.mul(base, secret), group.mul(base, nonce))
    return DlogProof(e, (nonce + e * secret) % ORDER)


def verify_dlog(base: G1, statement: G1, proof: DlogProof, context: bytes) -> bool:
    commitment = group.multiexp([base, statement], [proof.response, ORDER - proof.challenge])
    return _challenge(context, base, statement, commitment) == proof.challenge


# --- proving a key tag is one's own -------------------------------------------------------------


def key_tag_context(chain: str, identity: str, sender: bytes) -> bytes:
    """What a tag's proof is bound to: the chain, the holder's identity and identity key."""
    return f"medshare/key-tag/v1|{chain}|{identity}|{sender.hex()}".encode()


def prove_key_tag(k_prime: int, context: bytes) -> list[str]:
    """A proof of knowledge of ``K'`` for the tag ``g1^{K'}`` (JSON form). Only the key's
    holder knows ``K'``: a tag copied from someone else's registration has no such
    proof, so nobody can register another's tag under their own name to take the blame
    (and steer the revocation) when that key leaks."""
    return _proof_doc(prove_dlog(group.g1(), k_prime, context))


def verify_key_tag(tag_hex: object, proof: object, context: bytes) -> bool:
    """Whether ``proof`` (JSON form) shows knowledge of the discrete log of the tag."""
    try:
        if not isinstance(tag_hex, str):
            return False
        statement = group.decode_g1(bytes.fromhex(tag_hex))
        return verify_dlog(group.g1(), statement, _proof(proof), context)
    except (InvalidEncoding, ValueError):
        return False


# --- messages ------------------------------------------------------------------------------------


def _hex_int(value: object) -> int:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise InvalidEncoding("expected a hex integer")
    try:
        return int(value, 16)
    except ValueError:
        raise InvalidEncoding("expected a hex integer") from None


def _proof_doc(proof: DlogProof) -> list[str]:
    return [format(proof.challenge, "x"), format(proof.response, "x")]


def _proof(value: object) -> DlogProof:
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidEncoding("a proof is [challenge, response]")
    e, z = _hex_int(value[0]), _hex_int(value[1])
    if not (0 <= e < ORDER and 0 <= z < ORDER):
        raise InvalidEncoding("proof values out of range")
    return DlogProof(e, z)


class SessionsExhausted(ProtocolError):
    """Too many open issuance sessions (for everyone, or for this identity): try later."""


@dataclass(frozen=True)
class IssuanceChallenge:
    """Authority → user, first: a fresh single-use session and the fingerprint of the
    authority's public key. The user's registration proof is bound to both, so a captured
    registration opens no second session (each costs the authority a 3072-bit Paillier
    encryption, ~110 ms), and one made for another authority is refused."""

    session: str
    authority: bytes  # AbePublicKey.fingerprint()
    paillier_n: int
    modulus_proof: paillier_blum.ModulusProof  # N is Paillier–Blum (checked once per N)

    def to_bytes(self) -> bytes:
        body = {
            "session": self.session,
            "authority": self.authority.hex(),
            "paillier_n": format(self.paillier_n, "x"),
            "modulus_proof": self.modulus_proof.to_json(),
        }
        return encoding.dumps("abe-issuance-challenge", 1, body)

    @classmethod
    def from_bytes(cls, data: bytes | str) -> IssuanceChallenge:
        doc = encoding.loads(data, "abe-issuance-challenge")
        return cls(
            session=encoding.field(doc, "session", encoding.identity_text),
            authority=encoding.field(doc, "authority", bytes.fromhex),
            paillier_n=encoding.field(doc, "paillier_n", _hex_int),
            modulus_proof=encoding.field(
                doc, "modulus_proof", paillier_blum.ModulusProof.from_json
            ),
        )


@dataclass(frozen=True)
class RegistrationRequest:
    """User → authority: ``R = g1^k`` with a proof of knowledge of ``k``, bound to the
    identity, the session and the authority (:class:`IssuanceChallenge`), and signed with
    the user's own Ed25519 identity key (so the authority's registry cannot attribute an
    ``R`` to a user who never claimed it)."""

    identity: str
    session: str
    R: G1
    proof: DlogProof
    identity_key: bytes
    identity_signature: bytes

    def to_bytes(self) -> bytes:
        body = {"identity": self.identity, "session": self.session, "R": fields.g1_text(self.R)}
        body["identity_key"] = self.identity_key.hex()
        body["identity_signature"] = self.identity_signature.hex()
        return encoding.dumps("abe-registration", 1, {**body, "proof": _proof_doc(self.proof)})

    @classmethod
    def from_bytes(cls, data: bytes | str) -> RegistrationRequest:
        doc = encoding.loads(data, "abe-registration")
        return cls(
            identity=encoding.field(doc, "identity", encoding.identity_text),
            session=encoding.field(doc, "session", encoding.identity_text),
            R=encoding.field(doc, "R", fields.g1_value),
            proof=encoding.field(doc, "proof", _proof),
            identity_key=encoding.field(doc, "identity_key", bytes.fromhex),
            identity_signature=encoding.field(doc, "identity_signature", bytes.fromhex),
        )


@dataclass(frozen=True)
class IssuanceOffer:
    """Authority → user: fresh ``c``, the attributes, and ``Enc_paillier(a + c)``."""

    session: str
    identity: str
    c: int
    attributes: tuple[str, ...]
    paillier_n: int
    enc_a_plus_c: int
    range_commitment: paillier_range.RangeCommitment

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "abe-issuance-offer",
            1,
            {
                "session": self.session,
                "identity": self.identity,
                "c": format(self.c, "x"),
                "attributes": list(self.attributes),
                "paillier_n": format(self.paillier_n, "x"),
                "enc_a_plus_c": format(self.enc_a_plus_c, "x"),
                "range_commitment": self.range_commitment.to_json(),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> IssuanceOffer:
        doc = encoding.loads(data, "abe-issuance-offer")
        return cls(
            session=encoding.field(doc, "session", encoding.identity_text),
            identity=encoding.field(doc, "identity", encoding.identity_text),
            c=encoding.field(doc, "c", _hex_int),
            attributes=encoding.field(doc, "attributes", encoding.string_list),
            paillier_n=encoding.field(doc, "paillier_n", _hex_int),
            enc_a_plus_c=encoding.field(doc, "enc_a_plus_c", _hex_int),
            range_commitment=encoding.field(
                doc, "range_commitment", paillier_range.RangeCommitment.from_json
            ),
        )


@dataclass(frozen=True)
class RangeChallenge:
    """User → authority, after the offer: one random bit per round of the range proof."""

    session: str
    bits: int

    def to_bytes(self) -> bytes:
        body = {"session": self.session, "bits": format(self.bits, "x")}
        return encoding.dumps("abe-issuance-range-challenge", 1, body)

    @classmethod
    def from_bytes(cls, data: bytes | str) -> RangeChallenge:
        doc = encoding.loads(data, "abe-issuance-range-challenge")
        bits = encoding.field(doc, "bits", _hex_int)
        if bits >> paillier_range.ROUNDS:
            raise InvalidEncoding(f"a range challenge has {paillier_range.ROUNDS} bits")
        return cls(session=encoding.field(doc, "session", encoding.identity_text), bits=bits)


@dataclass(frozen=True)
class RangeAnswer:
    """Authority → user: the range proof's openings for the user's challenge."""

    session: str
    opening: paillier_range.RangeOpening

    def to_bytes(self) -> bytes:
        body = {"session": self.session, "opening": self.opening.to_json()}
        return encoding.dumps("abe-issuance-range-answer", 1, body)

    @classmethod
    def from_bytes(cls, data: bytes | str) -> RangeAnswer:
        doc = encoding.loads(data, "abe-issuance-range-answer")
        return cls(
            session=encoding.field(doc, "session", encoding.identity_text),
            opening=encoding.field(doc, "opening", paillier_range.RangeOpening.from_json),
        )


@dataclass(frozen=True)
class IssuanceResponse:
    """User → authority: ``Enc(x_full)``, ``X = B^ρ`` and a proof of knowledge of ``ρ``."""

    session: str
    enc_x: int
    X: G1
    proof: DlogProof

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "abe-issuance-response",
            1,
            {
                "session": self.session,
                "enc_x": format(self.enc_x, "x"),
                "X": fields.g1_text(self.X),
                "proof": _proof_doc(self.proof),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> IssuanceResponse:
        doc = encoding.loads(data, "abe-issuance-response")
        return cls(
            session=encoding.field(doc, "session", encoding.identity_text),
            enc_x=encoding.field(doc, "enc_x", _hex_int),
            X=encoding.field(doc, "X", fields.g1_value),
            proof=encoding.field(doc, "proof", _proof),
        )


@dataclass(frozen=True)
class IssuedKey:
    """Authority → user: the blinded key ``(K̃, L̃, L̃', components)`` for exponent ``x``."""

    session: str
    K: G2
    L: G2
    L_prime: G2
    components: dict[str, tuple[G2, G2]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        points = {n: fields.g2_text(getattr(self, n)) for n in _ISSUED_POINTS}
        body = {"session": self.session, **points}
        return encoding.dumps(
            "abe-issued-key", 1, {**body, "components": abe.encode_components(self.components)}
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> IssuedKey:
        doc = encoding.loads(data, "abe-issued-key")
        return cls(
            session=encoding.field(doc, "session", encoding.identity_text),
            K=encoding.field(doc, "K", fields.g2_value),
            L=encoding.field(doc, "L", fields.g2_value),
            L_prime=encoding.field(doc, "L_prime", fields.g2_value),
            components=encoding.field(doc, "components", abe.decode_components),
        )


_ISSUED_POINTS = ("K", "L", "L_prime")


def _context(session: str, identity: str, c: int) -> bytes:
    return f"medshare/issuance/v1|{session}|{identity}|{c:x}".encode()


def _modulus_context(authority: bytes) -> bytes:
    return b"medshare/issuance/paillier-modulus/v1|" + authority


def modulus_digest(paillier_n: int, proof: paillier_blum.ModulusProof) -> bytes:
    """SHA-256 of an authority's Paillier modulus and its Paillier–Blum proof: what the
    authority publishes on the ledger once (so auditors can fetch the proof and check it),
    and what users compare a challenge's modulus with before trusting it."""
    body = {"paillier_n": format(paillier_n, "x"), "modulus_proof": proof.to_json()}
    return hashlib.sha256(encoding.dumps("abe-paillier-modulus", 1, body)).digest()


def _registration_context(identity: str, session: str, authority: bytes) -> bytes:
    return f"medshare/registration/v2|{authority.hex()}|{session}|{identity}".encode()


# --- the authority side ------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorityKeys:
    """Everything an attribute authority keeps secret: the ABE master key and its Paillier key."""

    master: abe.AbeMasterKey
    paillier_p: int = field(repr=False)
    paillier_q: int = field(repr=False)
    # Π^mod for N, bound to this authority's public key; made once, shown to every user.
    modulus_proof: paillier_blum.ModulusProof | None = field(default=None, repr=False)

    @classmethod
    def generate(cls) -> AuthorityKeys:
        """A fresh master key and a Paillier–Blum modulus (p ≡ q ≡ 3 mod 4) with its proof."""
        p, q = paillier_blum.generate_blum_primes(PAILLIER_BITS)
        return cls(abe.setup(), p, q).with_modulus_proof()

    def with_modulus_proof(self) -> AuthorityKeys:
        """These keys with their modulus proof (made now if missing)."""
        if self.modulus_proof is not None:
            return self
        context = _modulus_context(self.master.public.fingerprint())
        proof = paillier_blum.prove_modulus(self.paillier_p, self.paillier_q, context)
        return replace(self, modulus_proof=proof)

    def paillier(self) -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
        public = phe.PaillierPublicKey(self.paillier_p * self.paillier_q)
        return public, phe.PaillierPrivateKey(public, self.paillier_p, self.paillier_q)

    def to_bytes(self) -> bytes:
        return encoding.dumps(
            "abe-authority-keys",
            1,
            {
                "master": self.master.to_bytes().decode(),
                "paillier_p": format(self.paillier_p, "x"),
                "paillier_q": format(self.paillier_q, "x"),
                **(
                    {"modulus_proof": self.modulus_proof.to_json()}
                    if self.modulus_proof is not None
                    else {}
                ),
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> AuthorityKeys:
        doc = encoding.loads(data, "abe-authority-keys")
        keys = cls(
            master=encoding.field(doc, "master", abe.AbeMasterKey.from_bytes),
            paillier_p=encoding.field(doc, "paillier_p", _hex_int),
            paillier_q=encoding.field(doc, "paillier_q", _hex_int),
            modulus_proof=paillier_blum.ModulusProof.from_json(doc["modulus_proof"])
            if "modulus_proof" in doc
            else None,
        )
        if (keys.paillier_p * keys.paillier_q).bit_length() < PAILLIER_BITS - 1:
            raise InvalidEncoding("Paillier modulus is too small")
        return keys.with_modulus_proof()


@dataclass(frozen=True)
class _Pending:
    request: RegistrationRequest
    c: int
    attributes: tuple[str, ...]
    range_prover: paillier_range.RangeProver

    @property
    def identity(self) -> str:
        return self.request.identity

    @property
    def R(self) -> G1:
        return self.request.R


def _expiry(value: float | tuple[_Pending, float]) -> float:
    return value[1] if isinstance(value, tuple) else value


SESSION_NONCE_BYTES = 16
SESSION_TAG_BYTES = 16
_SESSION_DOMAIN = b"medshare/issuance/session/v1|"
# Who may be offered a key: (identity, Ed25519 identity key) -> enrolled under that name?
Enrolled = Callable[[str, bytes], bool]


class IssuanceAuthority:
    """The authority's side of issuance; keeps per-session state between its messages.

    A session is opened by :meth:`challenge`, used once by :meth:`offer`, and closed by
    :meth:`issue`. Challenges cost the authority no memory: a session is a token
    ``nonce ‖ expiry ‖ HMAC(session key, nonce ‖ expiry)`` it checks when the registration
    comes back, so a flood of challenges evicts nobody's session. A session is
    remembered from its offer until it expires (:data:`SESSION_TTL_S`), so it is used
    once; at most :data:`MAX_OPEN_SESSIONS` are, and a new offer beyond that waits for
    one to expire instead of evicting an open one.

    An offer costs the authority 81 Paillier encryptions (~1.3 s), so it is made only to
    an identity key ``enrolled`` says the ledger enrolled under the requested identity
    (checked before any Paillier work): a stranger's request is refused for the price of
    a signature check, and an enrolled requester who floods is named. ``enrolled=None``
    means the caller vouched for every requester itself. ``clock`` (seconds, monotonic)
    and ``randbytes`` (session nonces and key) are injectable for tests."""

    def __init__(
        self,
        keys: AuthorityKeys,
        *,
        clock: Callable[[], float] = time.monotonic,
        suspended: set[str] | None = None,
        enrolled: Enrolled | None = None,
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
        per_identity: int | None = None,
    ) -> None:
        self._per_identity = per_identity
        self._suspended = suspended if suspended is not None else set()
        self._enrolled = enrolled
        self._keys = keys.with_modulus_proof()
        self._paillier_public, self._paillier_private = keys.paillier()
        self._fingerprint = keys.master.public.fingerprint()
        self._clock = clock
        self._randbytes = randbytes
        self._session_key = randbytes(32)
        self._used: OrderedDict[str, float] = OrderedDict()  # session -> expiry
        self._pending: OrderedDict[str, tuple[_Pending, float]] = OrderedDict()
        self._randomizers = paillier_range.RandomizerPool(keys.paillier_p, keys.paillier_q)

    def precompute(self, keys: int) -> None:
        """Make the Paillier randomness of ``keys`` more offers now (81 powers each, about
        1.3 s per key here), so that those offers cost milliseconds when they come: what
        a server does while idle. Never reused; offers beyond the pool compute their own."""
        self._randomizers.fill(keys * RANDOMIZERS_PER_OFFER)

    @property
    def precomputed_offers(self) -> int:
        """How many offers the precomputed randomness covers now."""
        return len(self._randomizers) // RANDOMIZERS_PER_OFFER

    def challenge(self) -> IssuanceChallenge:
        """Open a session: what the user's registration must be bound to."""
        expiry_ms = max(0, int((self._clock() + SESSION_TTL_S) * 1000))
        body = self._randbytes(SESSION_NONCE_BYTES) + expiry_ms.to_bytes(8, "big")
        session = (body + self._session_tag(body)).hex()
        proof = self._keys.modulus_proof
        assert proof is not None  # with_modulus_proof made it
        return IssuanceChallenge(session, self._fingerprint, self._paillier_public.n, proof)

    def _session_tag(self, body: bytes) -> bytes:
        mac = hmac.new(self._session_key, _SESSION_DOMAIN + body, hashlib.sha256)
        return mac.digest()[:SESSION_TAG_BYTES]

    def _session_expiry(self, session: str) -> float:
        """The expiry of a session this authority handed out, unused and unexpired."""
        size = SESSION_NONCE_BYTES + 8 + SESSION_TAG_BYTES
        try:
            raw = bytes.fromhex(session)
        except ValueError:
            raw = b""
        if raw.hex() != session:  # one spelling only: the used-session table is keyed by it
            raw = b""
        body, tag = raw[: size - SESSION_TAG_BYTES], raw[size - SESSION_TAG_BYTES :]
        if len(raw) != size or not hmac.compare_digest(tag, self._session_tag(body)):
            raise ProtocolError("unknown, used or expired issuance session")
        expiry = int.from_bytes(body[SESSION_NONCE_BYTES:], "big") / 1000
        if expiry <= self._clock() or session in self._used:
            raise ProtocolError("unknown, used or expired issuance session")
        return expiry

    def _expire(self) -> None:
        """Drop expired sessions: each table is in order of expiry (one TTL for all), so
        this stops at the first live one."""
        now = self._clock()
        for table in (self._used, self._pending):
            while table and _expiry(next(iter(table.values()))) <= now:
                table.popitem(last=False)

    def offer(self, request: RegistrationRequest, attributes: Iterable[str]) -> IssuanceOffer:
        """Check the user's registration proof, pick a fresh ``c``, send ``Enc(a + c)``.
        The session is checked first and used up once the request checks out: a replayed
        request costs a MAC and a lookup, not a proof check and Paillier encryptions."""
        self._expire()
        expiry = self._session_expiry(request.session)
        # Cheapest first, and nothing about a name to anyone who cannot sign for it: the
        # signature, the proof, then the ledger's enrolment, then the suspension list.
        if not signing.is_valid(
            request.identity_key,
            request.identity_signature,
            abe.REGISTRATION_DOMAIN,
            abe.registration_message(request.identity, request.R),
        ):
            raise ProtocolError("registration is not signed by the user's identity key")
        context = _registration_context(request.identity, request.session, self._fingerprint)
        if not verify_dlog(group.g1(), request.R, request.proof, context):
            raise ProtocolError("registration proof of knowledge of k does not verify")
        if self._enrolled is not None and not self._enrolled(
            request.identity, request.identity_key
        ):
            raise ProtocolError(
                f"the registration's identity key is not the one enrolled as {request.identity!r}"
            )
        if request.identity in self._suspended:
            raise ProtocolError(
                f"issuance to {request.identity!r} is suspended after a failed session"
            )
        attrs = tuple(sorted(set(attributes)))
        abe.check_attributes(attrs)
        if len(self._used) >= MAX_OPEN_SESSIONS:
            raise SessionsExhausted("too many issuance sessions in progress; try again later")
        mine = sum(1 for p, _ in self._pending.values() if p.identity == request.identity)
        if self._per_identity is not None and mine >= self._per_identity:
            raise SessionsExhausted(
                f"{request.identity} has an issuance in progress; finish it or let it expire"
            )
        session = request.session
        self._used[session] = expiry  # used up: the same request opens nothing again
        c = group.random_scalar()
        n = self._paillier_public.n
        plaintext = (self._keys.master.a + c) % ORDER
        r, r_to_n = self._randomizers.take()
        prover = paillier_range.RangeProver(
            self._keys.paillier_p,
            self._keys.paillier_q,
            plaintext,
            r,
            RANGE_BITS,
            pool=self._randomizers,
            r_to_n=r_to_n,
        )
        enc = prover.encrypt_plaintext()
        commitment = prover.commit()
        pending = _Pending(request, c, attrs, prover)
        self._pending[session] = (pending, expiry)
        return IssuanceOffer(session, request.identity, c, attrs, n, enc, commitment)

    def _open(self, session: str, identity: str | None) -> tuple[_Pending, float]:
        """The open session ``session`` (of ``identity``, when given), left in place: a
        session is looked up as its owner's, so nobody else can drive or spend it."""
        entry = self._pending.get(session)
        if (
            entry is None
            or entry[1] <= self._clock()  # offers may expire out of order
            or (identity is not None and entry[0].identity != identity)
        ):
            raise ProtocolError("unknown, used or expired issuance session")
        return entry

    def open_range(self, challenge: RangeChallenge, *, identity: str | None = None) -> RangeAnswer:
        """Answer the user's range challenge for the session's offer (once)."""
        self._expire()
        entry = self._open(challenge.session, identity)
        try:
            opening = entry[0].range_prover.open(challenge.bits)
        except ValueError:
            raise ProtocolError(
                "the range challenge of this session was answered already"
            ) from None
        return RangeAnswer(challenge.session, opening)

    def issue(
        self, response: IssuanceResponse, *, identity: str | None = None
    ) -> tuple[IssuedKey, abe.Registration]:
        """Decrypt ``x``, check it against ``X`` and the proof of ``ρ``, then issue."""
        self._expire()
        pending, _ = self._open(response.session, identity)
        del self._pending[response.session]
        n_square = self._paillier_public.nsquare
        if not 0 < response.enc_x < n_square:
            raise ProtocolError("Paillier ciphertext out of range")
        x = self._paillier_private.raw_decrypt(response.enc_x) % ORDER
        if x == 0 or group.mul(group.g1(), x) != response.X:
            # Whether this check passes depends on the plaintext a + c, which a user who
            # built enc_x with a wrap-around in mind can steer: refusing is one bit about
            # a (adversarial review). The user must not get a second bit: issuance to
            # this identity stops until someone looks (the caller keeps ``suspended``).
            self._suspended.add(pending.identity)
            raise ProtocolError("the blinded exponent does not match the registered commitment")
        master = self._keys.master
        base = master.public.a1 + group.mul(group.g1(), pending.c) + pending.R
        context = _context(response.session, pending.identity, pending.c)
        if not verify_dlog(base, response.X, response.proof, context):
            self._suspended.add(pending.identity)  # a failure after decryption, as above
            raise ProtocolError("proof of knowledge of the blinding factor does not verify")
        r_tilde = group.random_scalar()
        big_k, big_l, l_prime, comps = abe.issue_components(master, x, r_tilde, pending.attributes)
        request = pending.request
        registration = abe.Registration(
            request.identity,
            pending.c,
            request.R,
            pending.attributes,
            request.identity_key,
            request.identity_signature,
        )
        return IssuedKey(response.session, big_k, big_l, l_prime, comps), registration


# --- the user side ------------------------------------------------------------------------------


class IssuanceUser:
    """The user's side: owns ``k`` (never sent) and the blinding factor ``ρ`` of one session.

    The user answers the authority's Paillier ciphertext only after checking that the
    modulus is Paillier–Blum (:mod:`medshare.crypto.paillier_blum`; once per modulus, kept
    in ``verified_moduli``, which a wallet shares across sessions) and that the plaintext
    is proven in range (:mod:`medshare.crypto.paillier_range`). Messages in order:
    :meth:`registration` (to a challenge), :meth:`range_challenge` (to the offer),
    :meth:`respond` (to the range answer), :meth:`finish` (to the issued key).

    ``public`` is the authority key the user trusts and ``published_modulus`` the
    :func:`modulus_digest` the authority published on the ledger: taken from there, not
    from the authority, they keep an authority (or whoever answers in its name) from
    switching to another key or modulus for one user."""

    def __init__(
        self,
        public: abe.AbePublicKey,
        identity: str,
        identity_key: signing.SigningKey | None = None,
        *,
        verified_moduli: set[tuple[bytes, int]] | None = None,
        published_modulus: bytes | None = None,
    ) -> None:
        self._public = public
        self._published_modulus = published_modulus
        self._identity = encoding.identity_text(identity)
        self._identity_key = identity_key or signing.SigningKey.generate()
        self._k = group.random_scalar()
        self._rho: int | None = None
        self._offer: IssuanceOffer | None = None
        self._range_bits: int | None = None
        self._challenge: IssuanceChallenge | None = None
        self._verified = verified_moduli if verified_moduli is not None else set()

    def registration(self, challenge: IssuanceChallenge) -> RegistrationRequest:
        """``R`` and its proof, bound to the authority's challenge; refused when the
        challenge names another authority than the public key this user trusts, or a
        modulus other than the one it published. The modulus proof itself (about a second
        of work) is checked when an offer comes (:meth:`range_challenge`): still before
        anything is sent under the modulus, and not at all when the authority offers this
        user nothing (a staff member asks every authority; most refuse)."""
        if challenge.authority != self._public.fingerprint():
            raise ProtocolError("the challenge comes from another authority")
        if challenge.paillier_n.bit_length() < PAILLIER_BITS - 1:
            raise ProtocolError("the authority's Paillier modulus is too small")
        if self._published_modulus is not None and not hmac.compare_digest(
            modulus_digest(challenge.paillier_n, challenge.modulus_proof), self._published_modulus
        ):
            raise ProtocolError("the authority's Paillier modulus is not the one it published")
        self._challenge = challenge
        R = group.mul(group.g1(), self._k)
        context = _registration_context(self._identity, challenge.session, challenge.authority)
        proof = prove_dlog(group.g1(), self._k, context)
        message = abe.registration_message(self._identity, R)
        signature = self._identity_key.sign(abe.REGISTRATION_DOMAIN, message)
        return RegistrationRequest(
            self._identity, challenge.session, R, proof, self._identity_key.public, signature
        )

    def range_challenge(self, offer: IssuanceOffer) -> RangeChallenge:
        """Check the offer's form and ask for the range proof's openings."""
        if offer.identity != self._identity:
            raise ProtocolError("offer is for another identity")
        if self._challenge is None or offer.paillier_n != self._challenge.paillier_n:
            raise ProtocolError("the offer's Paillier modulus is not the one proven")
        self._check_modulus()
        n_square = offer.paillier_n**2
        if not 0 < offer.enc_a_plus_c < n_square or not 0 < offer.c < ORDER:
            raise ProtocolError("offer values out of range")
        self._offer, self._range_bits = offer, paillier_range.challenge()
        return RangeChallenge(offer.session, self._range_bits)

    def _check_modulus(self) -> None:
        """The challenge's modulus is Paillier–Blum (once per modulus and cache)."""
        challenge = self._challenge
        if challenge is None:
            raise ProtocolError("no challenge was answered")
        known = (challenge.authority, challenge.paillier_n)
        if known in self._verified:
            return
        context = _modulus_context(challenge.authority)
        if not paillier_blum.verify_modulus(challenge.paillier_n, challenge.modulus_proof, context):
            raise ProtocolError("the authority's Paillier modulus is not proven well formed")
        self._verified.add(known)

    def respond(self, answer: RangeAnswer) -> IssuanceResponse:
        """Check the range proof, then blind ``a + c`` homomorphically into
        ``Enc(ρ(a + c + k) + p·δ)``. Without a valid proof nothing is sent: the answer
        would tell an authority that encrypted a huge plaintext the user's ``k``."""
        offer, bits = self._offer, self._range_bits
        if offer is None or bits is None or answer.session != offer.session:
            raise ProtocolError("range answer does not belong to this user's open session")
        self._range_bits = None  # one answer per challenge
        if not paillier_range.verify(
            offer.paillier_n,
            offer.enc_a_plus_c,
            RANGE_BITS,
            offer.range_commitment,
            bits,
            answer.opening,
        ):
            self._offer = None
            raise ProtocolError("the authority's Paillier plaintext is not proven in range")
        n_square = offer.paillier_n**2
        rho = group.random_scalar()
        delta = secrets.randbits(MASK_BITS)
        paillier = phe.PaillierPublicKey(offer.paillier_n)
        masked = paillier.raw_encrypt(self._k * rho + ORDER * delta)
        enc_x = powmod(offer.enc_a_plus_c, rho, n_square) * masked % n_square
        base = self._public.a1 + group.mul(group.g1(), offer.c) + group.mul(group.g1(), self._k)
        big_x = group.mul(base, rho)
        proof = prove_dlog(base, rho, _context(offer.session, offer.identity, offer.c))
        self._rho, self._offer = rho, offer
        return IssuanceResponse(offer.session, enc_x, big_x, proof)

    def key_tag(self, chain: str, sender: bytes) -> tuple[str, list[str]]:
        """After :meth:`respond`: the tag ``g1^{K'}`` of the key to come (``K' = c + k``)
        and the proof the ledger asks of its holder, so the tag is on the ledger before
        the authority releases the key."""
        if self._offer is None or self._rho is None:
            raise ProtocolError("no answered offer to register a tag for")
        k_prime = (self._offer.c + self._k) % ORDER
        tag = group.encode_g1(group.mul(group.g1(), k_prime)).hex()
        return tag, prove_key_tag(k_prime, key_tag_context(chain, self._identity, sender))

    def finish(self, issued: IssuedKey) -> abe.AbeUserKey:
        """Unblind with ``ρ``, set ``K' = c + k`` and check the key before accepting it."""
        if self._offer is None or self._rho is None or issued.session != self._offer.session:
            raise ProtocolError("issued key does not belong to this user's open session")
        if set(issued.components) != set(self._offer.attributes):
            raise ProtocolError("issued key does not carry the offered attributes")
        rho = self._rho
        key = abe.AbeUserKey(
            k_prime=(self._offer.c + self._k) % ORDER,
            K=group.mul(issued.K, rho),
            L=group.mul(issued.L, rho),
            L_prime=group.mul(issued.L_prime, rho),
            components=dict(issued.components),
        )
        self._rho, self._offer = None, None
        try:
            abe.check_key(self._public, key)
        except InvalidKey as exc:
            raise ProtocolError(f"the authority issued a malformed key: {exc}") from None
        return key


def issue_key(
    authority: IssuanceAuthority,
    public: abe.AbePublicKey,
    identity: str,
    attributes: Iterable[str],
    identity_key: signing.SigningKey | None = None,
    *,
    verified_moduli: set[tuple[bytes, int]] | None = None,
    published_modulus: bytes | None = None,
) -> tuple[abe.AbeUserKey, abe.Registration]:
    """Run both sides in one process, passing every message through its byte encoding.

    ``identity_key`` is the user's Ed25519 identity key (a fresh one if omitted)."""
    user = IssuanceUser(
        public,
        identity,
        identity_key,
        verified_moduli=verified_moduli,
        published_modulus=published_modulus,
    )
    challenge = IssuanceChallenge.from_bytes(authority.challenge().to_bytes())
    request = RegistrationRequest.from_bytes(user.registration(challenge).to_bytes())
    offer = IssuanceOffer.from_bytes(authority.offer(request, attributes).to_bytes())
    asked = RangeChallenge.from_bytes(user.range_challenge(offer).to_bytes())
    answer = RangeAnswer.from_bytes(authority.open_range(asked).to_bytes())
    response = IssuanceResponse.from_bytes(user.respond(answer).to_bytes())
    issued, registration = authority.issue(response)
    key = user.finish(IssuedKey.from_bytes(issued.to_bytes()))
    return key, registration
