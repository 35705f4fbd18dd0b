"""Tests of seed backup and recovery (medshare.crypto.recovery)."""

from __future__ import annotations

from itertools import combinations, permutations

import pytest

from medshare.crypto.hkac import PatientSeed, block_public
from medshare.crypto.recovery import (
    InvalidMnemonic,
    MixedShareSets,
    NotEnoughShares,
    RecoveryError,
    recover_seed,
    seed_to_words,
    split_seed,
    words_to_seed,
)

FIXED_SEED = PatientSeed(bytes(range(32)))


@pytest.fixture(scope="module")
def seed() -> PatientSeed:
    return PatientSeed.generate()


@pytest.fixture(scope="module")
def shares(seed) -> list[str]:
    return split_seed(seed)


def _replace_word(mnemonic: str, position: int, word: str) -> str:
    words = mnemonic.split()
    words[position] = word
    return " ".join(words)


def test_two_of_three_round_trip(seed, shares):
    assert len(shares) == 3 and all(len(s.split()) == 33 for s in shares)
    assert len(set(shares)) == 3
    for pair in permutations(shares, 2):  # any two, in any order
        assert recover_seed(pair) == seed
    assert recover_seed(shares) == seed
    recovered = recover_seed(shares[:2])
    assert block_public(recovered, 0).patient_id == block_public(seed, 0).patient_id


def test_word_lists_and_case_are_accepted(seed, shares):
    assert recover_seed([shares[0].split(), "  " + shares[2].upper() + "\n"]) == seed


def test_one_of_three_fails_clearly(shares):
    for single in shares:
        with pytest.raises(NotEnoughShares, match="1 distinct share"):
            recover_seed([single])
    with pytest.raises(NotEnoughShares):
        recover_seed([shares[0], shares[0]])  # the same share twice is still one
    with pytest.raises(NotEnoughShares):
        recover_seed([])


def test_mistyped_words_fail(shares):
    first = shares[0].split()
    other = "academic" if first[10] != "academic" else "acid"
    with pytest.raises(InvalidMnemonic, match="share 1") as exc:
        recover_seed([_replace_word(shares[0], 10, other), shares[1]])
    assert "checksum" in str(exc.value)
    with pytest.raises(InvalidMnemonic, match="share 2"):
        recover_seed([shares[0], _replace_word(shares[1], 3, "zebraa")])
    with pytest.raises(InvalidMnemonic):
        recover_seed([" ".join(shares[0].split()[:-1]), shares[1]])  # a word missing


def test_mixed_sets_fail(seed, shares):
    other_split = split_seed(seed)  # same seed, new identifier: still a different set
    with pytest.raises(MixedShareSets):
        recover_seed([shares[0], other_split[1]])
    with pytest.raises(MixedShareSets):
        recover_seed([shares[0], split_seed(PatientSeed.generate())[1]])


def test_passphrase_mismatch_gives_another_seed(seed):
    protected = split_seed(seed, passphrase=b"correct horse")
    assert recover_seed(protected[1:], passphrase=b"correct horse") == seed
    assert recover_seed(protected[1:], passphrase="correct horse") == seed
    wrong = recover_seed(protected[1:], passphrase=b"wrong horse")  # SLIP-39: no error
    assert wrong != seed
    assert recover_seed(protected[1:]) != seed
    with pytest.raises(ValueError):
        split_seed(seed, passphrase="pässword")


def test_other_thresholds(seed):
    three_of_five = split_seed(seed, threshold=3, shares=5)
    for subset in combinations(three_of_five, 3):
        assert recover_seed(subset) == seed
    with pytest.raises(NotEnoughShares, match="2 distinct"):
        recover_seed(three_of_five[:2])
    assert recover_seed(split_seed(seed, threshold=1, shares=1)) == seed


@pytest.mark.parametrize(("threshold", "count"), [(1, 3), (3, 2), (0, 3), (2, 17)])
def test_bad_split_parameters(seed, threshold, count):
    with pytest.raises(ValueError):
        split_seed(seed, threshold=threshold, shares=count)


def test_recovery_error_is_a_value_error():
    assert issubclass(NotEnoughShares, RecoveryError) and issubclass(RecoveryError, ValueError)


# --- BIP-39 --------------------------------------------------------------------------------------


def test_bip39_round_trip(seed):
    words = seed_to_words(seed)
    assert len(words.split()) == 24
    assert words_to_seed(words) == seed
    assert words_to_seed(words.upper().split()) == seed
    assert seed_to_words(FIXED_SEED).split()[:3] == ["abandon", "amount", "liar"]


def test_bip39_checksum_and_words():
    words = seed_to_words(FIXED_SEED).split()
    swapped = [words[1], words[0], *words[2:]]  # checked to fail the 8-bit checksum
    with pytest.raises(InvalidMnemonic, match="checksum"):
        words_to_seed(swapped)
    with pytest.raises(InvalidMnemonic, match="checksum"):
        words_to_seed(_replace_word(" ".join(words), 5, "zoo"))
    with pytest.raises(InvalidMnemonic, match="word 4"):
        words_to_seed(_replace_word(" ".join(words), 3, "notaword"))
    with pytest.raises(InvalidMnemonic, match="24 words"):
        words_to_seed(words[:12])
