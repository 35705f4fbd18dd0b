"""Ledger types: the fast paths to canonical bytes equal the plain RFC 8785 encoding."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medshare.crypto.signing import SigningKey
from medshare.ledger.types import (
    Block,
    BlockHeader,
    CommitCertificate,
    LedgerFormatError,
    Tx,
    TxKind,
    Vote,
    VoteKind,
    canonical,
    merkle_root_hex,
)

KEY = SigningKey(bytes([42]) * 32)
CHAIN = "0123456789abcdef" * 2

# JSON values RFC 8785 can encode: I-JSON integers, any text (incl. non-BMP characters,
# whose UTF-16 order differs from code-point order), nested lists and objects.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_bodies = st.dictionaries(st.text(max_size=8), _json, max_size=5)


@settings(max_examples=150, deadline=None)
@given(extra=_bodies, nonce=st.integers(min_value=0, max_value=2**53 - 1))
def test_signed_tx_bytes_equal_the_canonical_encoding(extra: dict, nonce: int) -> None:
    body = {**extra, "grant": "g", "patient": "p", "grantee": "q"}
    tx = Tx.create(TxKind.GRANT, body, nonce, KEY, chain=CHAIN)
    assert tx.encode() == canonical(tx.to_json())
    assert Tx.decode(tx.encode()) == tx
    unsigned = dataclasses.replace(tx, signature=b"")
    assert unsigned.encode() == canonical(unsigned.to_json())


_hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(VoteKind)),
    height=st.integers(min_value=-5, max_value=2**53 + 5),
    round_=st.integers(min_value=-5, max_value=2**53 + 5),
    block=st.none() | _hex64 | st.text(max_size=70),
)
def test_vote_signing_bytes_equal_the_canonical_encoding(
    kind: VoteKind, height: int, round_: int, block: str | None
) -> None:
    vote = Vote(kind, height, round_, block, KEY.public)
    try:
        expected = canonical(vote.unsigned_json())
    except LedgerFormatError:
        with pytest.raises(LedgerFormatError):
            vote.signing_bytes()
        return
    assert vote.signing_bytes() == expected


@settings(max_examples=60, deadline=None)
@given(bodies=st.lists(_bodies, max_size=4), certified=st.booleans())
def test_block_bytes_equal_the_canonical_encoding(bodies: list[dict], certified: bool) -> None:
    txs = tuple(
        Tx.create(TxKind.GRANT, {**b, "grant": "g", "patient": "p", "grantee": "q"}, n, KEY,
                  chain=CHAIN)
        for n, b in enumerate(bodies)
    )  # fmt: skip
    header = BlockHeader(3, "11" * 32, merkle_root_hex(txs), "22" * 32, "00" * 32, 0, KEY.public, 9)
    vote = Vote.create(VoteKind.PRECOMMIT, 2, 0, "33" * 32, KEY, chain=CHAIN)
    cert = CommitCertificate.from_votes([vote]) if certified else None
    block = Block(header, txs, cert, cert)
    assert block.encode() == canonical(block.to_json())
    assert Block.from_json(json.loads(block.encode())).encode() == block.encode()
