"""CPU denial of service on the issuing authority, and hostile encodings.

``IssuanceAuthority.offer`` makes 81 Paillier encryptions (the ciphertext and 40 range
pairs, ~1.35 s on 2 cores). The review found it made them for any registration with a
valid Schnorr proof and a signature by *some* Ed25519 key, and that a flood of free
``challenge()`` calls evicted honest users' open sessions. Both are resisted now: offers
go only to identity keys the ledger enrolled under the name, and sessions are stateless
MAC'd tokens. Oversized or negative numbers in every message are refused at decoding.
What is left: an *enrolled* identity can still ask for offers again and again (it is
named by its key; rate limits belong to the authority's HTTP edge).
"""

from __future__ import annotations

import json

import pytest

from medshare.crypto import abe, group, issuance, paillier_range
from medshare.crypto.errors import InvalidEncoding, ProtocolError
from medshare.crypto.signing import SigningKey


@pytest.fixture(scope="module")
def keys() -> issuance.AuthorityKeys:
    return issuance.AuthorityKeys.generate()


def _stranger_request(auth: issuance.IssuanceAuthority, fingerprint: bytes, name: str):
    """What an anonymous client sends: a fresh key pair, a fresh session, a valid proof."""
    stranger = SigningKey.generate()
    challenge = auth.challenge()
    k = group.random_scalar()
    R = group.mul(group.g1(), k)
    context = issuance._registration_context(name, challenge.session, fingerprint)
    return issuance.RegistrationRequest(
        name,
        challenge.session,
        R,
        issuance.prove_dlog(group.g1(), k, context),
        stranger.public,
        stranger.sign(abe.REGISTRATION_DOMAIN, abe.registration_message(name, R)),
    )


def test_resisted_an_anonymous_request_is_refused_before_any_paillier_work(keys):
    """Fixed after review: the authority offers (81 Paillier encryptions, ~1.3 s) only to
    an identity key the ledger enrolled under the requested name (the service passes
    ``enrolled`` = the ledger's registration lookup). A stranger's request with a fresh
    key pair is refused at the price of a signature check, and keeps nothing open."""
    enrolled = {"dr.real@H001": SigningKey.generate().public}
    auth = issuance.IssuanceAuthority(keys, enrolled=lambda who, key: enrolled.get(who) == key)
    fingerprint = keys.master.public.fingerprint()
    for name in ("nobody-0", "dr.real@H001"):  # unknown name; known name, stranger's key
        request = _stranger_request(auth, fingerprint, name)
        with pytest.raises(ProtocolError, match="not the one enrolled"):
            auth.offer(request, ("hospital:H001", "role:physician"))
    assert not auth._pending and not auth._used


def test_resisted_a_flood_of_free_challenges_evicts_nobody(keys):
    """Fixed after review: a challenge is a MAC'd, timestamped token the authority keeps
    no state for, so any number of anonymous ``challenge()`` calls between a user's
    challenge and registration leave the user's session valid."""
    auth = issuance.IssuanceAuthority(keys)
    fingerprint = keys.master.public.fingerprint()
    user_session = auth.challenge()
    for _ in range(issuance.MAX_OPEN_SESSIONS + 1):
        auth.challenge()  # an anonymous flood, ~µs each
    assert not auth._pending and not auth._used
    k = group.random_scalar()
    R = group.mul(group.g1(), k)
    identity = SigningKey.generate()
    context = issuance._registration_context("dr-who", user_session.session, fingerprint)
    request = issuance.RegistrationRequest(
        "dr-who",
        user_session.session,
        R,
        issuance.prove_dlog(group.g1(), k, context),
        identity.public,
        identity.sign(abe.REGISTRATION_DOMAIN, abe.registration_message("dr-who", R)),
    )
    assert auth.offer(request, ("role:physician",)).session == user_session.session


@pytest.mark.parametrize(
    "make",
    [
        # a 2049-digit Paillier modulus in a challenge
        lambda c: issuance.IssuanceChallenge.from_bytes(
            c.to_bytes().replace(b'"paillier_n": "', b'"paillier_n": "1' + b"0" * 2048, 1)
        ),
        # a 41-bit / negative range challenge
        lambda c: issuance.RangeChallenge.from_bytes(
            issuance.RangeChallenge("s" * 32, 1 << 40).to_bytes()
        ),
        lambda c: issuance.RangeChallenge.from_bytes(
            issuance.RangeChallenge("s" * 32, 0).to_bytes().replace(b'"bits": "0"', b'"bits": "-1"')
        ),
        # a 2049-digit number in a range opening
        lambda c: paillier_range.RangeOpening.from_json([["f" * 2049, "1", "1"]] * 40),
        # a 4097-digit value in a modulus proof
        lambda c: type(c.modulus_proof).from_json({**c.modulus_proof.to_json(), "w": "f" * 4097}),
    ],
)
def test_resisted_oversized_or_negative_numbers_are_refused_before_any_arithmetic(keys, make):
    challenge = issuance.IssuanceAuthority(keys).challenge()
    with pytest.raises((InvalidEncoding, ValueError, json.JSONDecodeError)):
        make(challenge)
