"""Inclusion proofs for ledger transactions on CometBFT, checkable offline.

A proof binds one transaction (e.g. a record's ``anchor_record``) to a decided block:

1. the transaction's bytes → its SHA-256 → CometBFT's merkle proof (``/tx?prove=true``,
   RFC 6962 hashing as in ``crypto/merkle``) → the block header's ``data_hash``;
2. the header → its hash (``Header.Hash``) → the ``block_id`` the commit signed;
3. the commit → Ed25519 signatures of more than 2/3 of the voting power of the validator
   set of that height, whose hash is the header's ``validators_hash``.

Who that validator set is must come from somewhere trusted: ``check`` without a trusted
set says so in its result (``"committee": "taken on trust"``); with ``trusted`` (e.g.
the set :class:`~medshare.ledger.cometbft.verify.ChainVerifier` derives by replaying the
chain from its genesis, which ``medshare ledger check-proof --rpc`` does) the proof's set
must equal it. The checks reuse :mod:`~medshare.ledger.cometbft.verify`'s hashing.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from medshare.ledger.cometbft import verify as v
from medshare.ledger.cometbft.client import LedgerClient

FORMAT = "medshare-cometbft-tx-proof"
VERSION = 1
MAX_AUNTS = 64  # a tree of 2^64 transactions: anything deeper is malformed


class ProofError(ValueError):
    """The proof does not check; the message says which link fails."""


def root_from_aunts(index: int, total: int, leaf: bytes, aunts: Sequence[bytes]) -> bytes:
    """The merkle root a proof claims (CometBFT's ``computeHashFromAunts``): the left
    subtree of ``total`` leaves holds the largest power of two strictly below it."""
    if not 0 <= index < total:
        raise ProofError(f"leaf index {index} outside a tree of {total}")
    if total == 1:
        if aunts:
            raise ProofError("a one-leaf tree has no aunts")
        return leaf
    if not aunts:
        raise ProofError("too few aunts for the tree")
    split = 1 << ((total - 1).bit_length() - 1)
    if index < split:
        return v.inner_hash(root_from_aunts(index, split, leaf, aunts[:-1]), aunts[-1])
    return v.inner_hash(aunts[-1], root_from_aunts(index - split, total - split, leaf, aunts[:-1]))


def make(url: str, txid: str) -> dict:
    """Ask the node at ``url`` for everything a proof of ``txid`` needs."""
    source = v.NodeSource(url)
    client = LedgerClient([url])
    try:
        raw = bytes.fromhex(txid)
        answer = client.batch(
            [("tx", {"hash": base64.b64encode(raw).decode(), "prove": True})], errors=True
        )[0]
        if "error" in answer:
            raise KeyError(f"transaction {txid} is not committed on that node")
        height = int(answer["height"])
        served = next(source.heights(height, height))
        return {
            "format": FORMAT,
            "version": VERSION,
            "txid": txid,
            "height": height,
            "tx": answer["tx"],
            "result_code": int(answer.get("tx_result", {}).get("code", 0)),
            "proof": answer["proof"]["proof"],
            "header": served.block["block"]["header"],
            "commit": source.commit(height),
            "validators": served.validators,
        }
    finally:
        client.close()
        source.close()


def check(doc: Any, trusted: v.ValidatorSet | None = None, chain_id: str | None = None) -> dict:
    """Check a proof from :func:`make`; :class:`ProofError` names the first broken link."""
    try:
        return _check(doc, trusted, chain_id)
    except ProofError:
        raise
    except v.Bad as exc:
        raise ProofError(exc.problem) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ProofError(f"malformed proof: {type(exc).__name__}: {exc}") from None


def _check(doc: Any, trusted: v.ValidatorSet | None, chain_id: str | None) -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ProofError(f"not a {FORMAT} version {VERSION} document")
    tx = v.b64_bytes(doc["tx"])
    txid = hashlib.sha256(tx).hexdigest()
    if txid != doc["txid"]:
        raise ProofError("the transaction bytes do not have the stated id")
    proof = doc["proof"]
    aunts = [v.b64_bytes(a) for a in proof.get("aunts") or []]
    if len(aunts) > MAX_AUNTS:
        raise ProofError("merkle proof too deep")
    leaf = v.leaf_hash(hashlib.sha256(tx).digest())
    if v.b64_bytes(proof["leaf_hash"]) != leaf:
        raise ProofError("the proof's leaf is not this transaction")
    root = root_from_aunts(int(proof["index"]), int(proof["total"]), leaf, aunts)
    header = v.header_pb(doc["header"])
    height = int(doc["height"])
    if header.height != height:
        raise ProofError(f"header is of height {header.height}, not {height}")
    if chain_id is not None and header.chain_id != chain_id:
        raise ProofError(f"header of chain {header.chain_id}, not {chain_id}")
    if root != header.data_hash:
        raise ProofError("the merkle proof does not lead to the header's data hash")
    commit = v.commit_pb(doc["commit"])
    if commit.height != height or v.header_hash(header) != commit.block_id.hash:
        raise ProofError("the commit is not for this header")
    members = v.served_members(height, doc["validators"])
    if v.validator_set_hash(members) != header.validators_hash:
        raise ProofError("the validator set is not the header's")
    signatures = v.verify_commit(height, header.chain_id, commit, members)
    if trusted is not None and tuple(members) != tuple(trusted):
        raise ProofError("the proof's validator set is not the committee the chain elected")
    return {
        "ok": True,
        "txid": txid,
        "height": height,
        "chain_id": header.chain_id,
        "result_code": doc.get("result_code"),
        "signatures_checked": signatures,
        "committee": "checked against the chain" if trusted is not None else "taken on trust",
    }


def trusted_set(url: str, height: int) -> tuple[v.ValidatorSet, str]:
    """The validator set of ``height`` as the rules elected it, by re-verifying the chain
    the node at ``url`` serves from its genesis up to ``height`` (and its chain id)."""
    source = v.NodeSource(url)
    try:
        verifier = v.ChainVerifier(source.genesis())
        report = v.run(verifier, source, height, source.latest())
    finally:
        source.close()
    if not report.ok:
        raise ProofError(
            f"the chain does not verify: {report.problem} (height {report.first_bad_height})"
        )
    return verifier.expected_set(height), report.chain_id
