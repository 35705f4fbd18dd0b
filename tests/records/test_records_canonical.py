"""The one byte form (RFC 8785) and the salted ledger digest."""

from __future__ import annotations

import pytest

from medshare.records.canonical import (
    SALT_BYTES,
    CanonicalizationError,
    canonical_bytes,
    new_salt,
    salted_digest,
    verify_salted_digest,
)


def test_canonical_bytes_known_answer() -> None:
    doc = {"s": 'é€\n"', "n": [1e21, 1e-7, 0.1, -0.0, 100, 1.50], "b": False, "a": {"z": None}}
    assert canonical_bytes(doc) == (
        b'{"a":{"z":null},"b":false,"n":[1e+21,1e-7,0.1,0,100,1.5],'
        b'"s":"\xc3\xa9\xe2\x82\xac\\n\\""}'
    )


def test_key_order_does_not_matter() -> None:
    a = {"resourceType": "Patient", "id": "1", "name": [{"given": ["A"], "family": "B"}]}
    b = {"name": [{"family": "B", "given": ["A"]}], "id": "1", "resourceType": "Patient"}
    assert canonical_bytes(a) == canonical_bytes(b)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53 + 1, object(), b"x"])
def test_values_without_a_canonical_form(value: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_bytes({"v": value})


def test_canonical_bytes_needs_an_object() -> None:
    with pytest.raises(TypeError):
        canonical_bytes([1, 2])  # type: ignore[arg-type]


def test_salted_digest_known_answer() -> None:
    salt = bytes(range(16))
    assert salted_digest(b'{"a":1}', salt) == (
        "aed8a0ebb5f60a8aa06554873318b8e888584ebddf7878258719930ae328cbb2"
    )


def test_salt_hides_guessable_content() -> None:
    data = canonical_bytes({"resourceType": "Observation", "valueString": "positive"})
    s1, s2 = new_salt(), new_salt()
    assert len(s1) == SALT_BYTES == 16 and s1 != s2
    d1, d2 = salted_digest(data, s1), salted_digest(data, s2)
    assert d1 != d2 and len(d1) == 64 and int(d1, 16) >= 0
    assert verify_salted_digest(data, s1, d1) and not verify_salted_digest(data + b" ", s1, d1)


def test_salted_digest_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        salted_digest(b"x", b"short")
    with pytest.raises(TypeError):
        salted_digest("text", new_salt())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        salted_digest(b"x", "0" * 32)  # type: ignore[arg-type]
