"""A patient's share as a ledger grant: the one body both the patient's wallet signs and the
hospital's gate checks.

Why a module of its own: the share's key (H-KAC aggregate keys) is made from the seed on the
patient's device and goes to the grantee only; the hospital gets the signed ``grant``
transaction and the share's class map, which its storage gate needs to decide what the
share may open. Both sides build and read that body here, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from medshare.crypto import hkac

SHARE_AREA = "personal"
BODY_FIELDS = frozenset({"grant", "patient", "grantee", "area", "scope", "until"})
MAX_SCOPE_ITEMS = 1024
_SHARE_ID = re.compile(r"[0-9a-f]{32}")
_BLOCK = re.compile(r"[0-9]{1,7}")


class ShareGrantError(ValueError):
    """A share grant body or class map that is not well formed."""


def grant_body(share: hkac.Share, patient_id: str, until_ms: int | None) -> dict[str, Any]:
    """The GRANT transaction body of ``share``: what an auditor reads (the H-KAC class map
    is not on the ledger; it is for the gate and for re-wrapping only)."""
    return {
        "grant": share.share_id,
        "patient": patient_id,
        "grantee": share.grantee,
        "area": SHARE_AREA,
        "scope": {"kind": share.scope_kind, "items": list(share.scope)},
        "until": until_ms,
    }


def wire_classes(share: hkac.Share) -> dict[str, list[int]]:
    """The share's classes as JSON: block (as text) → sorted class indices."""
    return {str(b): sorted(c) for b, c in share.classes().items()}


def parse_body(body: Mapping[str, Any]) -> tuple[str, str, str, tuple[str, ...], int | None]:
    """(grant id, grantee, scope kind, scope items, until) of a share's GRANT body."""
    if not isinstance(body, Mapping) or set(body) != BODY_FIELDS:
        raise ShareGrantError(f"a share grant has exactly the fields {sorted(BODY_FIELDS)}")
    grant, grantee, until = body["grant"], body["grantee"], body["until"]
    if not isinstance(grant, str) or not _SHARE_ID.fullmatch(grant):
        raise ShareGrantError("a share's id is 32 lower-case hex digits")
    if body["area"] != SHARE_AREA:
        raise ShareGrantError(f"a share is a grant of the {SHARE_AREA} area")
    if not isinstance(grantee, str):
        raise ShareGrantError("grantee must be a name")
    scope = body["scope"]
    if not isinstance(scope, Mapping) or set(scope) != {"kind", "items"}:
        raise ShareGrantError("scope is {kind, items}")
    items = scope["items"]
    if (
        not isinstance(items, list)
        or len(items) > MAX_SCOPE_ITEMS
        or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in items)
    ):
        raise ShareGrantError(f"scope items are at most {MAX_SCOPE_ITEMS} names")
    if until is not None and (not isinstance(until, int) or isinstance(until, bool)):
        raise ShareGrantError("until is a time in ms or null")
    return grant, grantee, str(scope["kind"]), tuple(items), until


def parse_classes(doc: object) -> dict[int, frozenset[int]]:
    """A wire class map (see :func:`wire_classes`); ShareGrantError if malformed."""
    if not isinstance(doc, Mapping) or len(doc) > hkac.MAX_BLOCKS:
        raise ShareGrantError("classes is a map of block -> class indices")
    out: dict[int, frozenset[int]] = {}
    for block, indices in doc.items():
        if not isinstance(block, str) or not _BLOCK.fullmatch(block):
            raise ShareGrantError("a block is a decimal number")
        if not isinstance(indices, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 16 for i in indices
        ):
            raise ShareGrantError("class indices are small non-negative integers")
        out[int(block)] = frozenset(indices)
    return out
