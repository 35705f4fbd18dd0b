"""Field codecs for group elements inside the versioned documents of :mod:`encoding`.

One place turns points and scalars into base64url text and back, so every reader
decodes through the facade's checked decoders (length, encoding, subgroup, canonical
form) and no scheme module writes its own variant.
"""

from __future__ import annotations

from medshare.crypto import encoding, group
from medshare.crypto.group import G1, G2


def g1_text(point: G1) -> str:
    return encoding.b64e(group.encode_g1(point))


def g2_text(point: G2) -> str:
    return encoding.b64e(group.encode_g2(point))


def scalar_text(k: int) -> str:
    return encoding.b64e(group.encode_scalar(k))


def g1_value(value: object) -> G1:
    """Decoder for :func:`encoding.field`: base64url text → checked G1 point."""
    return group.decode_g1(encoding.b64d(value, field="G1 point"))


def g2_value(value: object) -> G2:
    """Decoder for :func:`encoding.field`: base64url text → checked G2 point."""
    return group.decode_g2(encoding.b64d(value, field="G2 point"))


def scalar_value(value: object) -> int:
    """Decoder for :func:`encoding.field`: base64url text → reduced, non-zero scalar."""
    return group.decode_scalar(encoding.b64d(value, field="scalar"))
