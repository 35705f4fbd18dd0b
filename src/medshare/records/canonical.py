"""The one byte form of a record, and the salted digest that goes on the ledger.

:func:`canonical_bytes` is RFC 8785 (JSON Canonicalization Scheme, via ``rfc8785``):
sorted keys, no whitespace, ECMAScript number form, UTF-8. It is what gets hashed,
encrypted and returned on export, so every node derives the same bytes from the same
resource. Numbers are IEEE doubles in JCS: a FHIR decimal written ``1.50`` comes back as
``1.5`` (its value is kept, its trailing zero is not), and integers beyond ±2^53 are
refused rather than silently rounded.

:func:`salted_digest` is SHA-256 over ``salt ‖ data``. The salt (≥ 16 random bytes from
:func:`new_salt`) is stored beside the encrypted record, never on the ledger, so the
ledger digest cannot be confirmed by hashing guessed content ("is this patient's
record a positive HIV test?"); whoever holds the record and its salt can still verify it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import rfc8785

SALT_BYTES = 16


class CanonicalizationError(ValueError):
    """A value with no RFC 8785 form (NaN, infinity, integer beyond ±2^53, non-JSON type)."""


def canonical_bytes(resource_json: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of a JSON object (a FHIR resource as parsed from JSON)."""
    if not isinstance(resource_json, Mapping):
        raise TypeError(f"expected a JSON object (dict), got {type(resource_json).__name__}")
    try:
        return rfc8785.dumps(resource_json)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CanonicalizationError(f"no canonical JSON form: {exc}") from None


def new_salt() -> bytes:
    """A fresh per-record salt: :data:`SALT_BYTES` bytes from ``os.urandom``."""
    return os.urandom(SALT_BYTES)


def salted_digest(data: bytes, salt: bytes) -> str:
    """Lower-case hex of SHA-256(salt ‖ data) (64 characters, like the ledger's hashes).

    ``salt`` must be at least :data:`SALT_BYTES` bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if not isinstance(salt, bytes | bytearray | memoryview):
        raise TypeError(f"salt must be bytes, got {type(salt).__name__}")
    if len(salt) < SALT_BYTES:
        raise ValueError(f"salt must be at least {SALT_BYTES} bytes, got {len(salt)}")
    return hashlib.sha256(bytes(salt) + bytes(data)).hexdigest()


def verify_salted_digest(data: bytes, salt: bytes, digest: str) -> bool:
    """Constant-time comparison of ``salted_digest(data, salt)`` with a stored digest."""
    return hmac.compare_digest(salted_digest(data, salt), digest)
