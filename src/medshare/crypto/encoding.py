"""Versioned, typed file formats for keys, parameters and ciphertexts.

Every object medshare writes is a JSON document ``{"format": "medshare", "type": T,
"version": V, ...}`` with binary fields in unpadded base64url. Readers name the type
and the versions they understand, so a KAC key passed where an ABE key is expected,
a file from a future version, a truncated download or a flipped bit all end in one
clear :class:`InvalidEncoding` message instead of a stack trace. Group elements inside
are decoded by the group facade, which subgroup-checks them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from medshare.crypto.errors import InvalidEncoding

FORMAT = "medshare"
T = TypeVar("T")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: object, *, field: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise InvalidEncoding(f"field {field!r} must be an unpadded base64url string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEncoding(f"field {field!r} is not valid base64url") from None


def dumps(kind: str, version: int, body: Mapping[str, Any]) -> bytes:
    """Serialise ``body`` as a typed, versioned document (deterministic key order)."""
    doc = {"format": FORMAT, "type": kind, "version": version, **body}
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def loads(data: bytes | str, kind: str, versions: frozenset[int] = frozenset({1})) -> dict:
    """Parse a document and check its format, type and version; returns the whole dict."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEncoding(f"not a medshare {kind} file (not UTF-8 text)") from None
    if not isinstance(data, str):
        raise InvalidEncoding(f"a {kind} file must be bytes, not {type(data).__name__}")
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidEncoding(f"not a medshare {kind} file (not valid JSON: {exc.msg})") from None
    except (ValueError, RecursionError):
        # JSON the parser refuses past its limits (issue 12, fuzzing): an integer longer
        # than int()'s 4300 digits (ValueError), arrays nested deeper than the recursion limit
        raise InvalidEncoding(
            f"not a medshare {kind} file (a number or nesting beyond the JSON limits)"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidEncoding(f"not a medshare {kind} file")
    if doc.get("type") != kind:
        raise InvalidEncoding(f"expected a {kind} file, got a {_shown(doc.get('type'))} file")
    version = doc.get("version")
    # an int, compared only then: a list or object is unhashable (a TypeError in the set
    # lookup), and true or 1.0 would pass as version 1
    if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
        known = ", ".join(str(v) for v in sorted(versions))
        raise InvalidEncoding(
            f"{kind} file has unsupported version {_shown(version)} (this medshare reads {known})"
        )
    return doc


def _shown(value: object) -> str:
    """A value from a hostile document, as an error message may quote it: short scalars
    as they are, anything else by its type (its repr could be megabytes, or recurse)."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:40]
    if isinstance(value, str) and len(value) <= 64:
        return repr(value)
    return f"<{type(value).__name__}>"


def field(doc: Mapping[str, Any], name: str, decode: Callable[[Any], T]) -> T:
    """Fetch and decode one field, turning every failure into a message naming the field."""
    if name not in doc:
        raise InvalidEncoding(f"{doc.get('type', 'document')} is missing field {name!r}")
    try:
        return decode(doc[name])
    except InvalidEncoding as exc:
        raise InvalidEncoding(f"field {name!r}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        # OverflowError: a value its decoder cannot represent, e.g. a time that leaves the
        # datetime range once moved to UTC ("0001-01-01T00:00:00+01:00")
        raise InvalidEncoding(f"field {name!r} is malformed ({exc})") from None


def string_list(value: object) -> tuple[str, ...]:
    """A JSON list of non-empty strings (attribute names)."""
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise InvalidEncoding("expected a list of non-empty strings")
    return tuple(value)


def identity_text(value: object) -> str:
    """A non-empty identity or session name of at most 256 characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise InvalidEncoding("expected a non-empty string of at most 256 characters")
    return value


def int_field(value: object, *, low: int, high: int) -> int:
    """An integer in [low, high] (JSON booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidEncoding(f"expected an integer in [{low}, {high}]")
    return value
