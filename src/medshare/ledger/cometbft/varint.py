"""Protobuf's unsigned varint, as CometBFT frames ABCI messages and delimits sign bytes."""

from __future__ import annotations


def uvarint(n: int) -> bytes:
    """``n`` (≥ 0) in 7-bit groups, least significant first, high bit = more follow."""
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
