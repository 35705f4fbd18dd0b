"""Merkle trees over transactions, with inclusion proofs a third party checks from a header.

RFC 6962 (Certificate Transparency) hashing: leaves are ``H(0x00 ‖ data)``, inner
nodes ``H(0x01 ‖ left ‖ right)``, so a leaf can never be passed off as an inner node;
the tree of n leaves splits at the largest power of two below n (no duplicated last
leaf, which would let two different lists share a root).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n ≥ 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(_root(leaves[:k]), _root(leaves[k:]))


def merkle_root(items: Sequence[bytes]) -> bytes:
    """Root over the items' bytes (each hashed as a leaf)."""
    if not items:
        return EMPTY_ROOT
    return _root([leaf_hash(item) for item in items])


@dataclass(frozen=True)
class InclusionProof:
    """Audit path of leaf ``index`` in a tree of ``size`` leaves, bottom-up."""

    index: int
    size: int
    path: tuple[bytes, ...]


def _path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_path(leaves[:k], index), _root(leaves[k:])]
    return [*_path(leaves[k:], index - k), _root(leaves[:k])]


def prove(items: Sequence[bytes], index: int) -> InclusionProof:
    if not 0 <= index < len(items):
        raise IndexError(f"no item {index} in a tree of {len(items)}")
    leaves = [leaf_hash(item) for item in items]
    return InclusionProof(index, len(items), tuple(_path(leaves, index)))


def verify_inclusion(item: bytes, proof: InclusionProof, root: bytes) -> bool:
    """True iff ``item`` is leaf ``proof.index`` of the tree with ``root`` (RFC 9162 §2.1.3.2)."""
    if not 0 <= proof.index < proof.size:
        return False
    fn, sn = proof.index, proof.size - 1
    r = leaf_hash(item)
    for p in proof.path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
