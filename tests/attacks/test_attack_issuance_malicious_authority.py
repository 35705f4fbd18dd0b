"""A malicious authority trying to learn the user's k or ρ during issuance: all resisted.

The user (IssuanceUser) answers only after the modulus proof and an interactive range proof
whose challenge it draws after the commitments. Tried here: a plaintext far outside the
range (a + c − 2^300, i.e. a huge value mod N) with commitments prepared for a guessed
challenge; learning the challenge from a first offer and sending a second offer tailored
to it in the same run (session confusion); replaying a valid answer of another offer;
reordering the rounds of a valid answer; answering the same challenge twice.
"""

from __future__ import annotations

import secrets

import pytest

from medshare.crypto import group, issuance, paillier_range
from medshare.crypto.errors import ProtocolError

ATTRS = ("hospital:H001", "role:physician")
ELL = 1 << issuance.RANGE_BITS


@pytest.fixture(scope="module")
def keys() -> issuance.AuthorityKeys:
    return issuance.AuthorityKeys.generate()


@pytest.fixture(scope="module")
def authority(keys):
    return issuance.IssuanceAuthority(keys)


@pytest.fixture(scope="module")
def moduli() -> set:
    return set()  # the user's wallet cache: the modulus proof is checked once


def _unit(n: int) -> int:
    while True:
        r = secrets.randbelow(n - 1) + 1
        if r % 2 and r % 3:
            return r


def _cheating_offer(keys, session: str, identity: str, plaintext: int, guess: int):
    """An offer of Enc(plaintext) whose range commitments answer the challenge ``guess``
    (bit 0: an honest pair; bit 1: a pair whose element j makes c·c_j = Enc(z), z in range)
    and the openings for ``guess``. Valid only if the user's challenge equals ``guess``."""
    enc = paillier_range._Encryptor(keys.paillier_p, keys.paillier_q)
    n = enc.n
    r = _unit(n)
    c = enc.encrypt(plaintext, r)
    pairs, openings = [], []
    for i in range(paillier_range.ROUNDS):
        r1, r2 = _unit(n), _unit(n)
        if not (guess >> i) & 1:
            w = ELL + secrets.randbits(issuance.RANGE_BITS)
            pairs.append((enc.encrypt(w, r1), enc.encrypt(w - ELL, r2)))
            openings.append(paillier_range.Opening((w, r1, w - ELL, r2)))
        else:
            z = ELL + secrets.randbits(issuance.RANGE_BITS)
            pairs.append((enc.encrypt((z - plaintext) % n, r1), enc.encrypt(7, r2)))
            openings.append(paillier_range.Opening((0, z, r * r1 % n)))
    offer = issuance.IssuanceOffer(
        session,
        identity,
        group.random_scalar(),
        ATTRS,
        n,
        c,
        paillier_range.RangeCommitment(tuple(pairs)),
    )
    return offer, issuance.RangeAnswer(session, paillier_range.RangeOpening(tuple(openings)))


def test_resisted_second_offer_tailored_to_the_first_challenge(keys, authority, moduli):
    """The authority sends an honest offer, reads the user's challenge, then sends a second
    offer (same session) hiding a huge plaintext, its commitments made for that challenge.
    The user draws a fresh challenge for the second offer and refuses the answer."""
    public = keys.master.public
    user = issuance.IssuanceUser(public, "dr-who", verified_moduli=moduli)
    request = user.registration(authority.challenge())
    honest = authority.offer(request, ATTRS)
    first_bits = user.range_challenge(honest).bits
    huge = (keys.master.a + honest.c - (1 << 300)) % (keys.paillier_p * keys.paillier_q)
    offer, answer = _cheating_offer(keys, honest.session, "dr-who", huge, first_bits)
    # Control: the cheat is real, it verifies against the challenge it was built for.
    assert paillier_range.verify(
        offer.paillier_n,
        offer.enc_a_plus_c,
        issuance.RANGE_BITS,
        offer.range_commitment,
        first_bits,
        answer.opening,
    )
    second_bits = user.range_challenge(offer).bits
    assert second_bits != first_bits
    with pytest.raises(ProtocolError, match="not proven in range"):
        user.respond(answer)


def test_resisted_replayed_reordered_and_repeated_range_answers(keys, authority, moduli):
    public = keys.master.public
    runs = []
    for who in ("alice", "bob"):
        user = issuance.IssuanceUser(public, who, verified_moduli=moduli)
        offer = authority.offer(user.registration(authority.challenge()), ATTRS)
        runs.append((user, offer, user.range_challenge(offer)))
    (alice, _, a_bits), (bob, b_offer, b_bits) = runs
    a_answer = authority.open_range(a_bits)
    b_answer = authority.open_range(b_bits)
    # Alice's valid answer, relabelled for Bob's session: refused.
    with pytest.raises(ProtocolError):
        bob.respond(issuance.RangeAnswer(b_offer.session, a_answer.opening))
    # Bob's challenge was used up by the refused attempt: even his own answer is refused now.
    with pytest.raises(ProtocolError):
        bob.respond(b_answer)
    # A valid answer with its rounds reversed: refused.
    fresh = issuance.IssuanceUser(public, "carol", verified_moduli=moduli)
    c_offer = authority.offer(fresh.registration(authority.challenge()), ATTRS)
    c_answer = authority.open_range(fresh.range_challenge(c_offer))
    bad = paillier_range.RangeOpening(tuple(reversed(c_answer.opening.rounds)))
    with pytest.raises(ProtocolError):
        fresh.respond(issuance.RangeAnswer(c_offer.session, bad))
    # The honest answer works once; answering the same challenge again is refused.
    alice.respond(a_answer)
    with pytest.raises(ProtocolError):
        alice.respond(a_answer)
    # And the authority does not open a challenge twice.
    with pytest.raises(ProtocolError, match="answered already"):
        authority.open_range(a_bits)


def test_resisted_a_plaintext_outside_the_range_with_a_guessed_challenge(keys, authority, moduli):
    """Commitments prepared for a guessed challenge before the user's challenge is known."""
    public = keys.master.public
    user = issuance.IssuanceUser(public, "dave", verified_moduli=moduli)
    request = user.registration(authority.challenge())
    n = keys.paillier_p * keys.paillier_q
    guess = secrets.randbits(paillier_range.ROUNDS)
    negative = (keys.master.a + 5 - (1 << 300)) % n  # m ≡ a + c − 2^300: outside (−ℓ, 2ℓ)
    offer, answer = _cheating_offer(keys, request.session, "dave", negative, guess)
    asked = user.range_challenge(offer)
    assert asked.bits != guess
    with pytest.raises(ProtocolError, match="not proven in range"):
        user.respond(answer)
