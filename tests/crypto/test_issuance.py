"""Tests of accountable two-party key issuance (medshare.crypto.issuance)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator

import phe
import pytest

from medshare.crypto import abe, encoding, issuance
from medshare.crypto.abe import Verdict, audit, check_key, decrypt, encrypt
from medshare.crypto.errors import InvalidEncoding, ProtocolError
from medshare.crypto.group import ORDER, g1, mul, random_scalar
from medshare.crypto.issuance import (
    PAILLIER_BITS,
    AuthorityKeys,
    DlogProof,
    IssuanceAuthority,
    IssuanceChallenge,
    IssuanceOffer,
    IssuanceResponse,
    IssuanceUser,
    IssuedKey,
    RegistrationRequest,
    issue_key,
    modulus_digest,
    prove_dlog,
    verify_dlog,
)
from medshare.crypto.paillier_blum import generate_blum_primes
from medshare.crypto.signing import SigningKey

ATTRS = ("hospital:H001", "role:physician")
_RUNS = itertools.count()
POLICY = "hospital:H001 and role:physician"
MESSAGE = b"discharge letter, ward 3"

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> AuthorityKeys:
    return AuthorityKeys.generate()


@pytest.fixture(scope="module")
def public(keys: AuthorityKeys) -> abe.AbePublicKey:
    return keys.master.public


@pytest.fixture(scope="module")
def authority(keys: AuthorityKeys) -> IssuanceAuthority:
    return IssuanceAuthority(keys)


@dataclasses.dataclass
class Run:
    """One manual protocol run, with every intermediate message kept."""

    user: IssuanceUser
    request: RegistrationRequest
    offer: IssuanceOffer
    response: IssuanceResponse
    issued: IssuedKey | None = None
    registration: abe.Registration | None = None
    key: abe.AbeUserKey | None = None


def _start(authority: IssuanceAuthority, public, identity: str | None = None) -> Run:
    """Register, get an offer and respond; the authority has not issued yet. Each run has
    its own identity (a failed session suspends its identity at the shared authority)."""
    user = IssuanceUser(public, identity or f"dr-who-{next(_RUNS)}")
    request = user.registration(authority.challenge())
    offer = authority.offer(request, ATTRS)
    return Run(user, request, offer, _respond(authority, user, offer))


def _respond(authority: IssuanceAuthority, user: IssuanceUser, offer: IssuanceOffer):
    """The user's range challenge, the authority's answer, the user's response."""
    return user.respond(authority.open_range(user.range_challenge(offer)))


@pytest.fixture(scope="module")
def completed(authority, public) -> Run:
    run = _start(authority, public, "alice")
    run.issued, run.registration = authority.issue(run.response)
    run.key = run.user.finish(run.issued)
    return run


@pytest.fixture
def fresh(authority, public) -> Run:
    """A fresh session up to the user's response (failed issues consume their session)."""
    return _start(authority, public)


def _ints(obj: object, seen: set[int] | None = None) -> Iterator[int]:
    """Every int reachable from ``obj`` through attributes, dataclass fields and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, bool):
        return
    if isinstance(obj, int):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _ints(k, seen)
            yield from _ints(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from _ints(item, seen)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _ints(getattr(obj, f.name), seen)
    elif hasattr(obj, "__dict__"):
        yield from _ints(vars(obj), seen)


# --- the honest protocol ------------------------------------------------------------------------


def test_issued_key_has_k_prime_c_plus_k(completed: Run, public) -> None:
    user, key, reg = completed.user, completed.key, completed.registration
    assert key is not None and reg is not None
    k = user._k
    assert key.k_prime == (completed.offer.c + k) % ORDER
    assert mul(g1(), k) == reg.R
    assert mul(g1(), k) == completed.request.R
    assert reg.c == completed.offer.c
    assert reg.identity == "alice"
    assert reg.attributes == ATTRS
    assert key.attributes == frozenset(ATTRS)
    assert reg.tag() == key.tag()
    check_key(public, key)


def test_issued_key_audits_to_user_and_decrypts(completed: Run, public) -> None:
    key, reg = completed.key, completed.registration
    assert key is not None and reg is not None
    other_user_reg = abe.Registration("mallory", random_scalar(), mul(g1(), random_scalar()))
    result = audit(public, key, [other_user_reg, reg])
    assert result.verdict is Verdict.USER
    assert result.identity == "alice"
    assert decrypt(public, key, encrypt(public, POLICY, MESSAGE)) == MESSAGE


def test_authority_never_holds_k(authority, public, completed: Run) -> None:
    # Mid-protocol (a session pending) and after issuance.
    pending = _start(authority, public, "bob")
    for run in (completed, pending):
        k = run.user._k
        secrets_ = {k, (run.offer.c + k) % ORDER}
        assert secrets_.isdisjoint(_ints(authority))
        # nor does anything the user sends carry k
        assert secrets_.isdisjoint(_ints(run.request))
        assert secrets_.isdisjoint(_ints(run.response))
        k_hex = format(k, "x").encode()
        assert k_hex not in run.request.to_bytes()
        assert k_hex not in run.response.to_bytes()
    assert not any(isinstance(v, IssuanceUser) for v in vars(authority).values()), (
        "the authority must not reference the user object"
    )
    authority.issue(pending.response)  # close the session


def test_issue_key_convenience(authority, public) -> None:
    key, reg = issue_key(authority, public, "carol", ["role:nurse"])
    assert key.attributes == frozenset({"role:nurse"})
    assert reg.identity == "carol"
    assert reg.attributes == ("role:nurse",)
    assert reg.tag() == key.tag()
    result = audit(public, key, [reg])
    assert (result.verdict, result.identity) == (Verdict.USER, "carol")
    # two keys for the same identity get fresh c, so distinct K' and tags
    key2, reg2 = issue_key(authority, public, "carol", ["role:nurse"])
    assert reg2.c != reg.c
    assert key2.k_prime != key.k_prime
    assert audit(public, key2, [reg, reg2]).identity == "carol"


def test_keys_blamed_on_authority_when_unregistered(authority, public, keys) -> None:
    key, _ = issue_key(authority, public, "dave", ["role:nurse"])
    # A key the authority produced alone, outside the protocol
    forged = abe.keygen(keys.master, random_scalar(), ["role:nurse"])
    assert audit(public, forged, []).verdict is Verdict.AUTHORITY
    assert audit(public, key, []).verdict is Verdict.AUTHORITY  # not registered → authority


# --- Schnorr proofs ----------------------------------------------------------------------------


def test_dlog_proof() -> None:
    x = random_scalar()
    base = mul(g1(), random_scalar())
    proof = prove_dlog(base, x, b"ctx")
    assert verify_dlog(base, mul(base, x), proof, b"ctx")
    assert not verify_dlog(base, mul(base, x), proof, b"other ctx")
    assert not verify_dlog(base, mul(base, x + 1), proof, b"ctx")
    assert not verify_dlog(g1(), mul(base, x), proof, b"ctx")
    bad = DlogProof(proof.challenge, (proof.response + 1) % ORDER)
    assert not verify_dlog(base, mul(base, x), bad, b"ctx")


# --- message encodings -------------------------------------------------------------------------

MESSAGE_TYPES = [RegistrationRequest, IssuanceOffer, IssuanceResponse, IssuedKey]


def _messages(run: Run) -> dict[type, object]:
    return {
        RegistrationRequest: run.request,
        IssuanceOffer: run.offer,
        IssuanceResponse: run.response,
        IssuedKey: run.issued,
    }


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_message_round_trip(completed: Run, cls: type) -> None:
    message = _messages(completed)[cls]
    data = message.to_bytes()  # type: ignore[attr-defined]
    assert cls.from_bytes(data) == message  # type: ignore[attr-defined]
    assert cls.from_bytes(data.decode()) == message  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_message_wrong_type(completed: Run, keys, cls: type) -> None:
    for other_cls, other in _messages(completed).items():
        if other_cls is cls:
            continue
        with pytest.raises(InvalidEncoding, match="expected a"):
            cls.from_bytes(other.to_bytes())  # type: ignore[attr-defined]
    with pytest.raises(InvalidEncoding):
        cls.from_bytes(keys.master.public.to_bytes())  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_message_bad_version_and_json(completed: Run, cls: type) -> None:
    data = _messages(completed)[cls].to_bytes()  # type: ignore[attr-defined]
    doc = json.loads(data)
    with pytest.raises(InvalidEncoding, match="version"):
        cls.from_bytes(json.dumps({**doc, "version": 2}))  # type: ignore[attr-defined]
    with pytest.raises(InvalidEncoding):
        cls.from_bytes(data[:-20])  # type: ignore[attr-defined]


def test_message_bad_fields(completed: Run) -> None:
    req = json.loads(completed.request.to_bytes())
    offer = json.loads(completed.offer.to_bytes())
    resp = json.loads(completed.response.to_bytes())
    cases = [
        (RegistrationRequest, {**req, "identity": "  "}),
        (RegistrationRequest, {**req, "proof": ["1"]}),
        (RegistrationRequest, {**req, "proof": [format(ORDER, "x"), "1"]}),
        (RegistrationRequest, {**req, "R": "A"}),
        (IssuanceOffer, {**offer, "c": "xyz"}),
        (IssuanceOffer, {**offer, "c": 5}),
        (IssuanceOffer, {**offer, "attributes": "role:physician"}),
        (IssuanceOffer, {**offer, "attributes": [""]}),
        (IssuanceResponse, {**resp, "enc_x": ""}),
        (IssuanceResponse, {**resp, "X": encoding.b64e(bytes(48))}),
        (IssuanceResponse, {**resp, "enc_x": "f" * 5000}),
    ]
    for cls, doc in cases:
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(json.dumps(doc))


# --- registration ------------------------------------------------------------------------------


def test_registration_with_bad_proof(authority, public) -> None:
    user = IssuanceUser(public, "eve")
    request = user.registration(authority.challenge())
    bad_requests = [
        dataclasses.replace(request, R=mul(g1(), random_scalar())),
        dataclasses.replace(request, identity="not-eve"),
        dataclasses.replace(
            request, proof=DlogProof(request.proof.challenge, (request.proof.response + 1) % ORDER)
        ),
        dataclasses.replace(
            request, proof=DlogProof((request.proof.challenge + 1) % ORDER, request.proof.response)
        ),
    ]
    for bad in bad_requests:  # R and identity are signed too: the signature fails first
        with pytest.raises(ProtocolError, match=r"registration proof|not signed"):
            authority.offer(bad, ATTRS)
    # the genuine request is still accepted
    assert authority.offer(request, ATTRS).identity == "eve"


def test_registration_replayed_under_other_identity(authority, public) -> None:
    request = IssuanceUser(public, "frank").registration(authority.challenge())
    stolen = dataclasses.replace(request, identity="mallory")
    with pytest.raises(ProtocolError):
        authority.offer(stolen, ATTRS)


def test_registration_must_be_signed_by_the_identity_key(authority, public) -> None:
    request = IssuanceUser(public, "hana").registration(authority.challenge())
    other = SigningKey.generate()
    forged = dataclasses.replace(request, identity_key=other.public)
    with pytest.raises(ProtocolError, match="identity key"):
        authority.offer(forged, ATTRS)
    assert RegistrationRequest.from_bytes(request.to_bytes()) == request


def test_authority_cannot_frame_a_user_with_its_own_registry_row(authority, public) -> None:
    """DESIGN §3.1: the registry is the authority's; a row the user never signed, or one
    signed by a key that is not the user's identity key, blames the authority."""
    from medshare.crypto import abe

    alice = SigningKey.generate()
    _, genuine = issue_key(authority, public, "alice", ATTRS, identity_key=alice)
    k2, c2 = random_scalar(), random_scalar()
    fake_R = mul(g1(), k2)
    forged_key = abe.keygen(authority._keys.master, c2 + k2, ATTRS)
    unsigned = abe.Registration("alice", c2, fake_R, ATTRS)
    result = audit(public, forged_key, [genuine, unsigned])
    assert result.verdict is Verdict.AUTHORITY and result.identity is None
    impostor = SigningKey.generate()
    message = abe.registration_message("alice", fake_R)
    signed_by_impostor = abe.Registration(
        "alice",
        c2,
        fake_R,
        ATTRS,
        impostor.public,
        impostor.sign(abe.REGISTRATION_DOMAIN, message),
    )
    assert audit(public, forged_key, [signed_by_impostor]).verdict is Verdict.USER
    trusted = {"alice": alice.public}
    framed = audit(public, forged_key, [signed_by_impostor], trusted_identities=trusted)
    assert framed.verdict is Verdict.AUTHORITY
    honest_key, honest_reg = issue_key(authority, public, "alice", ATTRS, identity_key=alice)
    assert audit(public, honest_key, [honest_reg], trusted_identities=trusted).identity == "alice"


def test_offer_rejects_empty_attributes(authority, public) -> None:
    request = IssuanceUser(public, "gina").registration(authority.challenge())
    with pytest.raises(ValueError):
        authority.offer(request, [])


# --- a cheating user ---------------------------------------------------------------------------


def test_attack_1_user_responds_with_other_k(authority, public) -> None:
    user = IssuanceUser(public, "mallory")
    offer = authority.offer(user.registration(authority.challenge()), ATTRS)
    user._k = random_scalar()  # k̂ ≠ log R, used consistently for enc_x, X and the proof
    response = _respond(authority, user, offer)
    with pytest.raises(ProtocolError):
        authority.issue(response)


def test_attack_1_enc_x_with_other_k_but_honest_x(authority, public) -> None:
    """enc_x made with k̂, X and its proof made honestly with the registered k."""
    user = IssuanceUser(public, "marvin")
    offer = authority.offer(user.registration(authority.challenge()), ATTRS)
    honest = _respond(authority, user, offer)
    rho = user._rho
    assert rho is not None
    k_hat = random_scalar()
    paillier = phe.PaillierPublicKey(offer.paillier_n)
    n2 = paillier.nsquare
    masked = paillier.raw_encrypt(k_hat * rho + ORDER * 12345)
    enc_x = pow(offer.enc_a_plus_c, rho, n2) * masked % n2
    with pytest.raises(ProtocolError, match="blinded exponent"):
        authority.issue(dataclasses.replace(honest, enc_x=enc_x))


def test_response_for_unknown_session(authority, fresh: Run) -> None:
    with pytest.raises(ProtocolError, match="unknown"):
        authority.issue(dataclasses.replace(fresh.response, session="0" * 32))
    # the real session is untouched and still works
    issued, _ = authority.issue(fresh.response)
    assert fresh.user.finish(issued).attributes == frozenset(ATTRS)


def test_replayed_response(authority, fresh: Run) -> None:
    authority.issue(fresh.response)
    with pytest.raises(ProtocolError, match="unknown, used or expired"):
        authority.issue(fresh.response)


def test_failed_response_consumes_session(authority, fresh: Run) -> None:
    with pytest.raises(ProtocolError):
        authority.issue(dataclasses.replace(fresh.response, enc_x=fresh.response.enc_x + 1))
    with pytest.raises(ProtocolError, match="unknown, used or expired"):
        authority.issue(fresh.response)


@pytest.mark.parametrize("how", ["plus-one", "times-enc-1", "other-session", "zero", "n-square"])
def test_modified_enc_x(authority, public, fresh: Run, how: str) -> None:
    resp, offer = fresh.response, fresh.offer
    paillier = phe.PaillierPublicKey(offer.paillier_n)
    n2 = paillier.nsquare
    if how == "plus-one":
        enc_x = resp.enc_x + 1
    elif how == "times-enc-1":
        enc_x = resp.enc_x * paillier.raw_encrypt(1) % n2
    elif how == "other-session":
        enc_x = _start(authority, public, "other").response.enc_x
    elif how == "zero":
        enc_x = 0
    else:
        enc_x = n2
    with pytest.raises(ProtocolError):
        authority.issue(dataclasses.replace(resp, enc_x=enc_x))


def test_modified_big_x(authority, fresh: Run) -> None:
    resp = fresh.response
    with pytest.raises(ProtocolError, match="blinded exponent"):
        authority.issue(dataclasses.replace(resp, X=resp.X + g1()))


@pytest.mark.parametrize("which", ["response", "challenge"])
def test_rho_proof_with_wrong_value(authority, fresh: Run, which: str) -> None:
    resp = fresh.response
    e, z = resp.proof.challenge, resp.proof.response
    proof = DlogProof(e, (z + 1) % ORDER) if which == "response" else DlogProof((e + 1) % ORDER, z)
    with pytest.raises(ProtocolError, match="blinding factor"):
        authority.issue(dataclasses.replace(resp, proof=proof))


def test_rho_proof_from_other_session(authority, public, fresh: Run) -> None:
    other = _start(authority, public)
    with pytest.raises(ProtocolError):
        authority.issue(dataclasses.replace(fresh.response, proof=other.response.proof))
    authority.issue(other.response)


# --- a cheating authority (as far as the user can check) ----------------------------------------


def _scaled(point):
    return mul(point, 2)


@pytest.mark.parametrize("part", ["K", "L", "L_prime", "K1", "K2", "swap"])
def test_finish_rejects_altered_key(authority, fresh: Run, part: str) -> None:
    issued, _ = authority.issue(fresh.response)
    comps = dict(issued.components)
    (k1a, k2a), (k1b, k2b) = comps[ATTRS[0]], comps[ATTRS[1]]
    if part in ("K", "L", "L_prime"):
        bad = dataclasses.replace(issued, **{part: _scaled(getattr(issued, part))})
    elif part == "K1":
        bad = dataclasses.replace(issued, components={**comps, ATTRS[0]: (_scaled(k1a), k2a)})
    elif part == "K2":
        bad = dataclasses.replace(issued, components={**comps, ATTRS[0]: (k1a, _scaled(k2a))})
    else:
        bad = dataclasses.replace(issued, components={ATTRS[0]: (k1a, k2b), ATTRS[1]: (k1b, k2a)})
    with pytest.raises(ProtocolError, match="malformed key"):
        fresh.user.finish(bad)


def test_finish_rejects_missing_attribute(authority, fresh: Run) -> None:
    issued, _ = authority.issue(fresh.response)
    partial = dict(issued.components)
    del partial[ATTRS[0]]
    with pytest.raises(ProtocolError, match="attributes"):
        fresh.user.finish(dataclasses.replace(issued, components=partial))


def test_finish_rejects_key_from_other_session(authority, public, fresh: Run) -> None:
    other = _start(authority, public)
    issued_other, _ = authority.issue(other.response)
    issued_mine, _ = authority.issue(fresh.response)
    with pytest.raises(ProtocolError, match="session"):
        fresh.user.finish(issued_other)
    # the same components relabelled with this session still fail the key check (other ρ, x)
    relabelled = dataclasses.replace(issued_other, session=issued_mine.session)
    with pytest.raises(ProtocolError, match="malformed key"):
        fresh.user.finish(relabelled)


def test_finish_rejects_without_open_session(authority, fresh: Run) -> None:
    issued, _ = authority.issue(fresh.response)
    key = fresh.user.finish(issued)
    assert key.attributes == frozenset(ATTRS)
    with pytest.raises(ProtocolError, match="session"):
        fresh.user.finish(issued)  # the session is closed


def test_user_rejects_bad_offers(keys, public, fresh: Run) -> None:
    offer = fresh.offer
    small = phe.generate_paillier_keypair(n_length=512)[0]
    for bad in (
        dataclasses.replace(offer, identity="someone-else"),
        dataclasses.replace(offer, paillier_n=small.n),
        dataclasses.replace(offer, c=0),
        dataclasses.replace(offer, c=ORDER),
        dataclasses.replace(offer, enc_a_plus_c=0),
        dataclasses.replace(offer, enc_a_plus_c=offer.paillier_n**2),
    ):
        with pytest.raises(ProtocolError):
            fresh.user.range_challenge(bad)


# --- authority keys ---------------------------------------------------------------------------


def test_authority_keys_round_trip(keys: AuthorityKeys) -> None:
    back = AuthorityKeys.from_bytes(keys.to_bytes())
    assert back == keys
    assert (back.paillier_p * back.paillier_q).bit_length() >= PAILLIER_BITS - 1
    public_n, private = back.paillier()
    assert private.decrypt(public_n.encrypt(12345)) == 12345


def test_authority_keys_reject_small_modulus(keys: AuthorityKeys) -> None:
    doc = json.loads(keys.to_bytes())
    small = phe.generate_paillier_keypair(n_length=1024)[1]
    doc["paillier_p"], doc["paillier_q"] = format(small.p, "x"), format(small.q, "x")
    with pytest.raises(InvalidEncoding, match="too small"):
        AuthorityKeys.from_bytes(json.dumps(doc))


def test_authority_keys_reject_bad_documents(keys: AuthorityKeys) -> None:
    doc = json.loads(keys.to_bytes())
    other_master = abe.setup()
    for change in (
        {"type": "abe-master-key"},
        {"paillier_p": "zz"},
        {"master": other_master.public.to_bytes().decode()},
    ):
        with pytest.raises(InvalidEncoding):
            AuthorityKeys.from_bytes(json.dumps({**doc, **change}))
    del doc["paillier_q"]
    with pytest.raises(InvalidEncoding, match="paillier_q"):
        AuthorityKeys.from_bytes(json.dumps(doc))


# --- sessions: replay, expiry, another authority (issue 12, finding 8) -------------------------


def test_a_captured_registration_opens_no_second_session(authority, public) -> None:
    """Regression: the proof bound only the identity, so 200 replays of one captured
    request all opened sessions, each costing a 3072-bit Paillier encryption."""
    request = IssuanceUser(public, "ivan").registration(authority.challenge())
    assert authority.offer(request, ATTRS).session == request.session
    for _ in range(3):
        with pytest.raises(ProtocolError, match="unknown, used or expired"):
            authority.offer(request, ATTRS)


def test_a_registration_is_bound_to_its_session(authority, public) -> None:
    """Moving a captured proof to a fresh session does not verify."""
    request = IssuanceUser(public, "judy").registration(authority.challenge())
    moved = dataclasses.replace(request, session=authority.challenge().session)
    with pytest.raises(ProtocolError, match="registration proof"):
        authority.offer(moved, ATTRS)
    with pytest.raises(ProtocolError, match="unknown, used or expired"):
        authority.offer(dataclasses.replace(request, session="f" * 32), ATTRS)


def test_the_user_refuses_a_challenge_of_another_authority(keys, public) -> None:
    other = IssuanceAuthority(
        AuthorityKeys(abe.setup(), keys.paillier_p, keys.paillier_q).with_modulus_proof()
    )
    with pytest.raises(ProtocolError, match="another authority"):
        IssuanceUser(public, "kim").registration(other.challenge())
    challenge = IssuanceChallenge.from_bytes(IssuanceAuthority(keys).challenge().to_bytes())
    assert challenge.authority == public.fingerprint()


def test_sessions_expire_and_are_bounded(keys, public, monkeypatch) -> None:
    now = [0.0]
    authority = IssuanceAuthority(keys, clock=lambda: now[0])
    request = IssuanceUser(public, "lee").registration(authority.challenge())
    now[0] += issuance.SESSION_TTL_S + 1
    with pytest.raises(ProtocolError, match="expired"):
        authority.offer(request, ATTRS)
    # Offered sessions are remembered until they expire, at most MAX_OPEN_SESSIONS: one
    # more offer waits (it does not evict an open session).
    monkeypatch.setattr(issuance, "MAX_OPEN_SESSIONS", 2)
    for name in ("max", "nia"):
        authority.offer(IssuanceUser(public, name).registration(authority.challenge()), ATTRS)
    late = IssuanceUser(public, "oli").registration(authority.challenge())
    with pytest.raises(ProtocolError, match="too many issuance sessions"):
        authority.offer(late, ATTRS)
    now[0] += issuance.SESSION_TTL_S + 1  # the two expire; a fresh session goes through
    fresh = IssuanceUser(public, "oli").registration(authority.challenge())
    assert authority.offer(fresh, ATTRS).identity == "oli"


def test_a_session_token_is_the_authoritys_and_unchanged(keys, public) -> None:
    """Sessions are MAC'd tokens, not table entries: one made up, altered (its expiry
    pushed out, say) or from another authority instance is refused."""
    authority = IssuanceAuthority(keys)
    challenge = authority.challenge()
    raw = bytearray(bytes.fromhex(challenge.session))
    raw[issuance.SESSION_NONCE_BYTES + 1] ^= 0x01  # a later expiry
    forged_sessions = [
        bytes(raw).hex(),
        "00" * len(raw),
        challenge.session[:-2],
        "not hex",
        IssuanceAuthority(keys).challenge().session,
    ]
    for session in forged_sessions:
        forged = dataclasses.replace(challenge, session=session)
        request = IssuanceUser(public, "pat").registration(forged)
        with pytest.raises(ProtocolError, match="unknown, used or expired"):
            authority.offer(request, ATTRS)


def test_the_authority_offers_only_to_enrolled_identity_keys(keys, public) -> None:
    """With ``enrolled``, a registration signed by a key the ledger did not enrol under
    that name is refused before any Paillier work (no offered session is kept)."""
    enrolled_keys = {"quin": SigningKey.generate()}
    authority = IssuanceAuthority(
        keys,
        enrolled=lambda who, key: who in enrolled_keys and enrolled_keys[who].public == key,
    )
    stranger = IssuanceUser(public, "quin", SigningKey.generate())
    with pytest.raises(ProtocolError, match="not the one enrolled as 'quin'"):
        authority.offer(stranger.registration(authority.challenge()), ATTRS)
    assert not authority._pending and not authority._used
    holder = IssuanceUser(public, "quin", enrolled_keys["quin"])
    assert authority.offer(holder.registration(authority.challenge()), ATTRS).identity == "quin"


# --- the authority's proofs (issue 12: the user refuses a deviating authority) ------------


def _offer_for(authority, public, name: str):
    user = IssuanceUser(public, name)
    return user, authority.offer(user.registration(authority.challenge()), ATTRS)


def test_the_user_refuses_an_authority_that_encrypts_a_huge_plaintext(keys, public) -> None:
    """Regression: an authority that encrypted a + c + 2^1000 read ρ off the high bits
    of the user's answer and solved for k (reproduced against the old protocol). Now the
    offer carries a range proof, which such a plaintext cannot pass, and the user sends
    nothing."""
    from medshare.crypto import paillier_range

    authority = IssuanceAuthority(keys)
    user, offer = _offer_for(authority, public, "olga")
    n = offer.paillier_n
    pending = authority._pending[offer.session][0]
    huge = (keys.master.a + pending.c) % ORDER + 2**1000
    r = 5
    enc = paillier_range.encrypt(n, huge, r)
    # The deviating authority replays its honest commitment over the new ciphertext,
    # answering as the honest prover would (the best it can do without guessing bits).
    deviating = dataclasses.replace(offer, enc_a_plus_c=enc)
    challenge = user.range_challenge(deviating)
    answer = authority.open_range(challenge)
    with pytest.raises(ProtocolError, match="not proven in range"):
        user.respond(answer)
    assert user._rho is None  # nothing was blinded, nothing sent


def _unproven(authority: IssuanceAuthority, user: IssuanceUser, challenge) -> None:
    """Run ``user`` with a challenge whose modulus the proof is not for up to the offer,
    which the user must refuse before anything is sent under that modulus."""
    request = user.registration(challenge)  # R and its proof: nothing under the modulus
    offer = dataclasses.replace(authority.offer(request, ATTRS), paillier_n=challenge.paillier_n)
    with pytest.raises(ProtocolError, match="not proven well formed"):
        user.range_challenge(offer)
    assert user._offer is None and user._rho is None


def test_the_user_refuses_an_unproven_modulus(keys, public) -> None:
    """The modulus proof is checked when the offer comes, before anything is sent under
    the modulus."""
    authority = IssuanceAuthority(keys)
    other = AuthorityKeys(keys.master, *generate_blum_primes(PAILLIER_BITS))
    forged = dataclasses.replace(
        authority.challenge(), paillier_n=other.paillier_p * other.paillier_q
    )
    _unproven(authority, IssuanceUser(public, "pia"), forged)


def test_a_modulus_is_verified_once_per_user_cache(keys, public) -> None:
    authority = IssuanceAuthority(keys)
    seen: set = set()
    issue_key(authority, public, "quinn", ATTRS, verified_moduli=seen)
    assert seen == {(public.fingerprint(), keys.paillier_p * keys.paillier_q)}
    challenge = authority.challenge()
    broken = dataclasses.replace(
        challenge,
        modulus_proof=dataclasses.replace(challenge.modulus_proof, w=challenge.modulus_proof.w + 1),
    )
    # cached: the (already checked) modulus is not checked again
    cached = IssuanceUser(public, "quinn", verified_moduli=seen)
    cached.range_challenge(authority.offer(cached.registration(broken), ATTRS))
    fresh = dataclasses.replace(authority.challenge(), modulus_proof=broken.modulus_proof)
    _unproven(authority, IssuanceUser(public, "quinn"), fresh)


def test_the_user_refuses_a_modulus_other_than_the_published_one(keys, public) -> None:
    """The user compares the challenge's modulus and proof with the digest the authority
    published on the ledger: another well-formed modulus (one the authority keeps for
    this user only, say) is refused before anything is sent under it."""
    challenge = IssuanceAuthority(keys).challenge()
    n = keys.paillier_p * keys.paillier_q
    published = modulus_digest(n, challenge.modulus_proof)
    assert published == modulus_digest(challenge.paillier_n, challenge.modulus_proof)
    other = AuthorityKeys(keys.master, *generate_blum_primes(PAILLIER_BITS)).with_modulus_proof()
    switched = IssuanceAuthority(other).challenge()
    seen: set = set()
    with pytest.raises(ProtocolError, match="not the one it published"):
        IssuanceUser(public, "pia", verified_moduli=seen, published_modulus=published).registration(
            switched
        )
    assert not seen  # refused before the proof was even checked
    key, _ = issue_key(IssuanceAuthority(keys), public, "pia", ATTRS, published_modulus=published)
    assert key.components.keys() == set(ATTRS)


def test_a_range_challenge_is_answered_once(keys, public) -> None:
    authority = IssuanceAuthority(keys)
    user, offer = _offer_for(authority, public, "rui")
    asked = user.range_challenge(offer)
    authority.open_range(asked)
    with pytest.raises(ProtocolError, match="answered already"):
        authority.open_range(asked)


def test_a_failed_session_suspends_the_identity(keys, public) -> None:
    """Regression (adversarial review): whether the authority's check passes can depend
    on its plaintext a + c when the user builds enc_x for a wrap-around, so each refusal
    is a bit about a. After one refusal the identity gets no second session."""
    suspended: set[str] = set()
    authority = IssuanceAuthority(keys, suspended=suspended)
    user = IssuanceUser(public, "sam")
    offer = authority.offer(user.registration(authority.challenge()), ATTRS)
    user._k = random_scalar()  # a response the check refuses
    with pytest.raises(ProtocolError, match=r"blinded exponent|blinding factor"):
        authority.issue(_respond(authority, user, offer))
    assert suspended == {"sam"}
    again = IssuanceUser(public, "sam").registration(authority.challenge())
    with pytest.raises(ProtocolError, match="suspended"):
        authority.offer(again, ATTRS)
    other = IssuanceUser(public, "tess").registration(authority.challenge())
    assert authority.offer(other, ATTRS).identity == "tess"


def test_precomputed_randomness_is_spent_by_offers_and_keys_still_check(keys, public) -> None:
    """``precompute`` moves an offer's Paillier powers ahead of time; each offer spends
    its 81 pairs, and the issued key is as valid as one made without a pool."""
    authority = IssuanceAuthority(keys)
    authority.precompute(2)
    assert authority.precomputed_offers == 2
    key, _ = issue_key(authority, public, "ria", ATTRS)
    assert authority.precomputed_offers == 1
    abe.check_key(public, key)
    issue_key(authority, public, "sol", ATTRS)
    issue_key(authority, public, "tau", ATTRS)  # beyond the pool: fresh randomness
    assert authority.precomputed_offers == 0
