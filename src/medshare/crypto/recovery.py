"""Backing up and recovering the patient's 32-byte seed as word lists (DESIGN §3.3).

Two forms:

* **SLIP-39 Shamir shares** (:func:`split_seed` / :func:`recover_seed`) with the Trezor
  reference implementation ``shamir-mnemonic``: e.g. 2-of-3 shares held by the patient, a
  relative and the home hospital; any ``threshold`` of them rebuild the seed, fewer reveal
  nothing about it. Each share is a 33-word mnemonic (for a 32-byte secret) with its own
  RS1024 checksum, so a mistyped word is caught per share.
* **A single BIP-39 paper backup** (:func:`seed_to_words` / :func:`words_to_seed`) with
  ``mnemonic``: the 32 seed bytes are the BIP-39 *entropy*, written as 24 English words whose
  last word carries an 8-bit checksum. BIP-39's PBKDF2 "wallet seed" and its passphrase are not
  used: the words encode the seed itself.

**Passphrase semantics (SLIP-39).** The optional passphrase encrypts the seed before it is
split. Recovering with a *different* passphrase is not an error: it yields a different,
equally valid-looking seed (by design of SLIP-39, for plausible deniability). A wrong
passphrase therefore shows up only later, as keys that open nothing; the caller should check
the recovered seed against something public, e.g. that :func:`medshare.crypto.hkac.block_public`
of block 0 matches the patient's published ``v_0``. SLIP-39 allows only printable ASCII
passphrases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import shamir_mnemonic
from mnemonic import Mnemonic
from shamir_mnemonic import MnemonicError

from medshare.crypto.errors import CryptoError
from medshare.crypto.hkac import SEED_BYTES, PatientSeed

__all__ = [
    "BIP39_WORDS",
    "InvalidMnemonic",
    "MixedShareSets",
    "NotEnoughShares",
    "RecoveryError",
    "recover_seed",
    "seed_to_words",
    "split_seed",
    "words_to_seed",
]

BIP39_WORDS = 24
MAX_SHARES = 16
_ITERATION_EXPONENT = 1  # SLIP-39 default: 10,000 × 2^e PBKDF2-SHA256 iterations in all


class RecoveryError(CryptoError, ValueError):
    """The words given cannot rebuild a seed; the message says why."""


class InvalidMnemonic(RecoveryError):
    """A word list with an unknown word, a wrong length or a failing checksum."""


class NotEnoughShares(RecoveryError):
    """Fewer distinct shares than the threshold the shares were made with."""


class MixedShareSets(RecoveryError):
    """Shares from different splits (different identifiers or parameters) were combined."""


def _passphrase(passphrase: bytes | str) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, bytes | bytearray):
        raise TypeError(f"a passphrase is bytes or str, not {type(passphrase).__name__}")
    if not all(32 <= c <= 126 for c in passphrase):
        raise ValueError("a SLIP-39 passphrase may contain only printable ASCII characters")
    return bytes(passphrase)


def _normalise(words: str | Sequence[str]) -> str:
    if isinstance(words, str):
        parts = words.split()
    elif isinstance(words, Sequence) and all(isinstance(w, str) for w in words):
        parts = [p for w in words for p in w.split()]
    else:
        raise TypeError("a mnemonic is a string of words or a list of words")
    return " ".join(p.lower() for p in parts)


# --- SLIP-39 -----------------------------------------------------------------------------------


def split_seed(
    seed: PatientSeed, threshold: int = 2, shares: int = 3, passphrase: bytes | str = b""
) -> list[str]:
    """``shares`` SLIP-39 mnemonics (33 words each), any ``threshold`` of which rebuild the seed.

    SLIP-39 forbids ``threshold = 1`` with more than one share (use :func:`seed_to_words` for
    a single backup, or 1-of-1). Each call makes a new, independent set of shares.
    """
    if not isinstance(seed, PatientSeed):
        raise TypeError(f"expected a PatientSeed, not {type(seed).__name__}")
    for name, value in (("threshold", threshold), ("shares", shares)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int")
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise ValueError(
            f"need 1 <= threshold <= shares <= {MAX_SHARES}, got {threshold}-of-{shares}"
        )
    if threshold == 1 and shares > 1:
        raise ValueError("SLIP-39 does not allow a 1-of-n split with n > 1; use 1-of-1 or BIP-39")
    groups = shamir_mnemonic.generate_mnemonics(
        1,
        [(threshold, shares)],
        seed.secret_bytes(),
        _passphrase(passphrase),
        extendable=True,
        iteration_exponent=_ITERATION_EXPONENT,
    )
    return list(groups[0])


def recover_seed(
    mnemonics: Iterable[str | Sequence[str]], passphrase: bytes | str = b""
) -> PatientSeed:
    """Rebuild the seed from at least ``threshold`` SLIP-39 shares of one split.

    Raises :class:`InvalidMnemonic` (naming the share) for an unknown word or a checksum
    failure, :class:`MixedShareSets` for shares of different splits, and
    :class:`NotEnoughShares` for too few distinct shares. A wrong passphrase gives a
    different seed, not an error (module docstring).
    """
    texts = list(dict.fromkeys(_normalise(m) for m in mnemonics))
    if not texts:
        raise NotEnoughShares("no shares were given")
    decoded = []
    for k, text in enumerate(texts, start=1):
        try:
            decoded.append(shamir_mnemonic.Share.from_mnemonic(text))
        except MnemonicError as exc:
            # an empty or blank share has no first word to name it by (was an IndexError)
            shown = f"{text.split()[0]} …" if text.strip() else "empty"
            raise InvalidMnemonic(f"share {k} ({shown}) is not valid: {exc}") from None
    common = {d.common_parameters() for d in decoded}
    if len(common) > 1:
        raise MixedShareSets(
            "the shares come from different splits (their identifiers or parameters differ)"
        )
    first = decoded[0]
    if first.group_count == 1:
        by_member: dict[int, str] = {}
        for share, text in zip(decoded, texts, strict=True):
            if share.group_index != first.group_index:
                raise MixedShareSets("the shares belong to different groups of one split")
            if by_member.setdefault(share.index, text) != text:
                raise MixedShareSets(f"two different shares claim member number {share.index + 1}")
        if len(by_member) < first.member_threshold:
            raise NotEnoughShares(
                f"{len(by_member)} distinct share(s) given, {first.member_threshold} needed"
            )
        # the library wants exactly `threshold` shares; any extra ones are redundant
        texts = list(by_member.values())[: first.member_threshold]
    try:
        secret = shamir_mnemonic.combine_mnemonics(texts, _passphrase(passphrase))
    except MnemonicError as exc:
        message = str(exc)
        if "Wrong number" in message or "Insufficient" in message:
            raise NotEnoughShares(message) from None
        if "don't match" in message or "Invalid set" in message:
            raise MixedShareSets(message) from None
        raise RecoveryError(message) from None
    if len(secret) != SEED_BYTES:
        raise RecoveryError(
            f"the shares hold a {len(secret)}-byte secret, not a {SEED_BYTES}-byte patient seed"
        )
    return PatientSeed(secret)


# --- BIP-39 ------------------------------------------------------------------------------------

_BIP39 = Mnemonic("english")


def seed_to_words(seed: PatientSeed) -> str:
    """The seed as 24 BIP-39 English words (the seed is the entropy; last word = checksum)."""
    if not isinstance(seed, PatientSeed):
        raise TypeError(f"expected a PatientSeed, not {type(seed).__name__}")
    return _BIP39.to_mnemonic(seed.secret_bytes())


def words_to_seed(words: str | Sequence[str]) -> PatientSeed:
    """Parse a 24-word BIP-39 backup; raise :class:`InvalidMnemonic` with the reason."""
    text = _normalise(words)
    parts = text.split()
    if len(parts) != BIP39_WORDS:
        raise InvalidMnemonic(f"a seed backup has {BIP39_WORDS} words, got {len(parts)}")
    known = set(_BIP39.wordlist)
    for position, word in enumerate(parts, start=1):
        if word not in known:
            raise InvalidMnemonic(f"word {position} ({word!r}) is not in the BIP-39 word list")
    if not _BIP39.check(text):
        raise InvalidMnemonic("the checksum does not match: a word is wrong or out of order")
    return PatientSeed(bytes(_BIP39.to_entropy(text)))
