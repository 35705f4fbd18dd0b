"""The one byte form of a record for its digest, and the salted digest on the ledger.

:func:`canonical_bytes` is RFC 8785 (JSON Canonicalization Scheme, via ``rfc8785``):
sorted keys, no whitespace, ECMAScript number form, UTF-8. It is what gets hashed, so
every node derives the same digest from the same resource, however it was formatted.
It is *only* for digests: numbers are IEEE doubles in JCS, so a FHIR decimal written
``1.50`` (or ``0.0``) would come back as ``1.5`` (``0``), losing the precision FHIR
gives its decimals. What is encrypted, stored and returned is the resource's JSON as the
hospital submitted it; :func:`verify_record` checks such bytes against the digest
through their canonical form, and :func:`on_one_line` fits them on an NDJSON line
without touching a value.

:func:`salted_digest` is SHA-256 over ``salt ‖ data``. The salt (≥ 16 random bytes from
:func:`new_salt`) is stored beside the encrypted record, never on the ledger, so the
ledger digest cannot be confirmed by hashing guessed content ("is this patient's
record a positive HIV test?"); whoever holds the record and its salt can still verify it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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


def object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook refusing a repeated key: parsers disagree on which duplicate
    wins, so the digest would depend on the node."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def no_constants(name: str) -> Any:
    """``json`` constant hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def canonical_of_json(data: bytes) -> bytes:
    """RFC 8785 bytes of a JSON object given as text (strict: no duplicate keys, no NaN);
    :class:`CanonicalizationError` if it is not one."""
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=object_without_duplicates,
            parse_constant=no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CanonicalizationError(f"not a JSON object: {exc}") from None
    if not isinstance(doc, Mapping):
        raise CanonicalizationError(f"not a JSON object but {type(doc).__name__}")
    return canonical_bytes(doc)


def verify_record(data: bytes, salt: bytes, digest: str) -> bool:
    """Whether a record's JSON (as submitted, or already canonical) matches its salted
    ledger digest, which covers its canonical form."""
    try:
        return verify_salted_digest(canonical_of_json(bytes(data)), salt, digest)
    except CanonicalizationError:
        return False


def on_one_line(data: bytes) -> bytes:
    """JSON text on one line, for NDJSON: line breaks and tabs removed. JSON forbids both
    raw inside strings, so they only ever sit between tokens: every value, and every
    number as written, stays byte for byte."""
    return data.replace(b"\r", b"").replace(b"\n", b"").replace(b"\t", b"")
