"""Auditing a node's database: full re-verification from genesis, and inclusion proofs.

``verify_chain`` trusts nothing stored except the chain configuration (whose genesis
hash it prints, so an auditor can compare it with the consortium's published one):
every block is re-decoded, must be stored in its canonical bytes with every column
derived from those bytes (the block's ``hash`` and ``height``, the ``txs`` index that
proofs are made from) matching them, and is re-applied through
:func:`medshare.ledger.chain.apply_block` with its commit certificate checked against
the committee elected for its epoch. The first height that fails is named.

An inclusion proof carries the transaction, the block header, the Merkle audit path,
the commit certificate and the committee that signed it: a third party checks the
transaction against the header alone, and the header against 2f+1 committee
signatures. (Whether that committee is the legitimate one follows from the chain, or
from an anchored checkpoint.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from medshare.ledger import chain, merkle
from medshare.ledger.store import BlockStore, SQLiteStore, StoreCorrupted
from medshare.ledger.types import (
    Block,
    BlockHeader,
    CommitCertificate,
    LedgerFormatError,
    Tx,
    canonical,
    certificate_signers,
    check_chain_id,
    digest_hex,
    quorum,
)

CONFIG_KEY = "chain_config"
# 2: a proof names its chain id, which the certificate's precommits are signed with.
PROOF_VERSION = 2


def init_store(store: BlockStore, config: chain.ChainConfig) -> chain.ChainState:
    """Write the chain config and the genesis block into an empty store; return the state."""
    block, state = chain.genesis(config)
    existing = store.get_meta(CONFIG_KEY)
    if existing is None:
        store.put_meta(CONFIG_KEY, canonical(config.to_json()))
    elif existing != canonical(config.to_json()):
        raise ValueError("store belongs to another chain configuration")
    if store.height() < 0:
        store.append(block)
    return state


def load_config(store: BlockStore) -> chain.ChainConfig:
    return parse_config(store.get_meta(CONFIG_KEY))


def parse_config(raw: bytes | None) -> chain.ChainConfig:
    if raw is None:
        raise StoreCorrupted("database has no chain configuration (not a medshare node db?)")
    try:
        return chain.ChainConfig.from_json(json.loads(raw))
    except (LedgerFormatError, ValueError) as exc:
        raise StoreCorrupted(f"chain configuration does not decode: {exc}") from None


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    height: int  # last height verified good (-1 if none)
    first_bad_height: int | None
    reason: str
    genesis_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verified_height": self.height,
            "first_bad_height": self.first_bad_height,
            "reason": self.reason,
            "genesis": self.genesis_hash,
        }


def replay(store: BlockStore) -> chain.ChainState:
    """The state after the stored head, re-verified from genesis (raises on the first bad block)."""
    report, state = _verify(store)
    if not report.ok:
        raise StoreCorrupted(f"block {report.first_bad_height}: {report.reason}")
    return state


def verify_chain(store: BlockStore) -> VerifyReport:
    return _verify(store)[0]


def _verify(store: BlockStore) -> tuple[VerifyReport, chain.ChainState | None]:
    try:
        config = load_config(store)
    except StoreCorrupted as exc:
        return VerifyReport(False, -1, 0, str(exc), ""), None
    genesis_block, state = chain.genesis(config)
    good = -1
    sql = store if isinstance(store, SQLiteStore) else None
    indexed = sql.tx_rows_per_height() if sql is not None else {}

    def bad(height: int, reason: str) -> tuple[VerifyReport, None]:
        return VerifyReport(False, good, height, reason, genesis_block.hash), None

    for height in range(store.height() + 1):
        try:
            block = store.get(height)
        except StoreCorrupted as exc:
            return bad(height, str(exc))
        if block is None:
            return bad(height, "block is missing")
        if sql is not None:
            if sql.raw(height) != block.encode():
                return bad(height, "stored bytes are not the block's canonical encoding")
            stored = sql.stored_hash(height)
            if stored != block.hash:
                return bad(
                    height,
                    f"the blocks.hash column holds {stored!r}, but the block's bytes hash "
                    f"to {block.hash!r}",
                )
        problem = _index_problem(store, block, sql, indexed.pop(height, 0))
        if problem:
            return bad(height, problem)
        if height == 0:
            if block.encode() != genesis_block.encode():
                return bad(0, "genesis block does not match the chain configuration")
        else:
            try:
                state = chain.apply_block(state, block)
            except chain.InvalidBlock as exc:
                return bad(height, str(exc))
        good = height
    # Rows outside the chain walked above: the store's height is the highest row.
    if sql is not None and (below := sql.heights_below_genesis()):
        return bad(
            good + 1,
            f"the blocks table has a row whose blocks.height column is {below[0]}, "
            "below the genesis block",
        )
    if indexed:  # rows naming a height the chain does not have
        height, count = min(indexed.items(), key=lambda item: str(item[0]))
        return bad(
            good + 1,
            f"the txs table has {count} row(s) whose txs.height column is {height!r}, "
            f"which names no block of the chain (0 to {good})",
        )
    ok = VerifyReport(True, good, None, f"{good + 1} blocks verified", genesis_block.hash)
    return ok, state


def _index_problem(
    store: BlockStore, block: Block, sql: SQLiteStore | None, rows: int
) -> str | None:
    """What is wrong with the transaction index of ``block``, or None.

    Each transaction's ``txs`` row must name its first position in the chain (a later
    copy keeps the first row). In a SQLite store ``rows`` is how many ``txs`` rows name
    this block, which must be exactly the transactions first seen here, so a row added
    for a transaction that is not in the block is found too.
    """
    first_here = 0
    for index, tx in enumerate(block.txs):
        try:
            where = store.find_tx(tx.txid)
            if where == (block.height, index):
                first_here += 1
                continue
            if where is None:
                return f"the txs table has no row for transaction {tx.txid} (index {index})"
            if where < (block.height, index):  # a copy: the index names the first one
                earlier = block if where[0] == block.height else store.get(where[0])
                if earlier is not None and _txid_at(earlier, where[1]) == tx.txid:
                    continue
        except StoreCorrupted as exc:
            return str(exc)
        return (
            f"the txs row of transaction {tx.txid} says txs.height {where[0]}, txs.idx "
            f"{where[1]}, but it is at index {index} of block {block.height}"
        )
    if sql is not None and rows != first_here:
        stray = [
            (txid, idx)
            for txid, idx in sql.tx_rows_at(block.height)
            if not (type(idx) is int and _txid_at(block, idx) == txid)
        ]
        txid, idx = stray[0] if stray else ("?", "?")
        return (
            f"the txs table has {rows} row(s) naming this block but the block holds "
            f"{first_here} transaction(s) first seen here: e.g. transaction {txid!r} at "
            f"txs.idx {idx!r} is not in it"
        )
    return None


def _txid_at(block: Block, index: int) -> str | None:
    return block.txs[index].txid if 0 <= index < len(block.txs) else None


# --- inclusion proofs ---------------------------------------------------------------------------


class ProofError(ValueError):
    """A proof that does not check, with the reason."""


def make_proof(store: BlockStore, txid: str) -> dict[str, Any]:
    """A self-contained JSON inclusion proof for a committed transaction."""
    where = store.find_tx(txid)
    if where is None:
        raise KeyError(f"transaction {txid} is not in this ledger")
    height, index = where
    block = store.get(height)
    if block is None or block.certificate is None:
        raise StoreCorrupted(f"block {height} or its certificate is missing")
    state = replay_to(store, height)
    proof = merkle.prove([tx.encode() for tx in block.txs], index)
    return {
        "type": "medshare-inclusion-proof",
        "version": PROOF_VERSION,
        "txid": txid,
        "tx": block.txs[index].to_json(),
        "height": height,
        "block_hash": block.hash,
        "header": block.header.to_json(),
        "merkle": {"index": proof.index, "size": proof.size, "path": [p.hex() for p in proof.path]},
        "certificate": block.certificate.to_json(),
        "committee": [member.hex() for member in state.head_committee],
        "chain_id": state.config.chain_id,
    }


def replay_to(store: BlockStore, height: int) -> chain.ChainState:
    """The state after block ``height``, re-verified from genesis."""
    _, state = chain.genesis(load_config(store))
    for block in store.blocks(1):
        if block.height > height:
            break
        try:
            state = chain.apply_block(state, block)
        except chain.InvalidBlock as exc:
            raise StoreCorrupted(f"chain does not verify: {exc}") from None
    return state


def committee_digest(committee: list[str]) -> str:
    """SHA-256 of the canonical list of committee keys (hex), as proofs report it."""
    return digest_hex(canonical(committee))


def committee_at(store: BlockStore, height: int) -> list[str]:
    """The committee that certified block ``height``, from a chain verified from genesis."""
    return [member.hex() for member in replay_to(store, height).head_committee]


def check_proof(
    doc: Any, trusted_committee: list[str] | None = None, trusted_chain_id: str | None = None
) -> dict[str, Any]:
    """Check a proof from :func:`make_proof`; returns a summary or raises :class:`ProofError`.

    The proof carries the committee that signed the block, which anyone could invent: the
    result says ``"committee_trusted": true`` only when ``trusted_committee`` (from a
    verified chain, or an anchored checkpoint's committee) is given and matches. It also
    names its chain, which a test chain run with the same validator keys would share
    otherwise: give ``trusted_chain_id`` (the chain you check against) and a proof from
    another chain is refused."""
    if not isinstance(doc, dict) or doc.get("type") != "medshare-inclusion-proof":
        raise ProofError("not a medshare inclusion proof")
    if doc.get("version") != PROOF_VERSION:
        raise ProofError(f"unsupported proof version {doc.get('version')!r}")
    try:
        tx = Tx.from_json(doc["tx"])
        header = BlockHeader.from_json(doc["header"])
        cert = CommitCertificate.from_json(doc["certificate"])
        path = tuple(bytes.fromhex(p) for p in doc["merkle"]["path"])
        proof = merkle.InclusionProof(int(doc["merkle"]["index"]), int(doc["merkle"]["size"]), path)
        committee = [bytes.fromhex(m) for m in doc["committee"]]
        chain_id = check_chain_id(doc["chain_id"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        # OverflowError: int() of an infinite float (JSON's Infinity) as the Merkle index
        raise ProofError(f"malformed proof: {exc}") from None
    if trusted_chain_id is not None and chain_id != trusted_chain_id:
        raise ProofError(f"the proof is for chain {chain_id}, not {trusted_chain_id}")
    if tx.chain != chain_id:
        raise ProofError("the transaction was signed for another chain than the proof's")
    if tx.txid != doc.get("txid"):
        raise ProofError("the transaction does not hash to the claimed txid")
    if header.hash != doc.get("block_hash") or header.height != doc.get("height"):
        raise ProofError("the header does not hash to the claimed block")
    if not merkle.verify_inclusion(tx.encode(), proof, bytes.fromhex(header.merkle_root)):
        raise ProofError("the Merkle path does not lead to the header's root")
    signers = certificate_signers(cert, committee, header.hash, header.height, chain_id)
    if len(signers) < quorum(len(committee)):
        raise ProofError(
            f"certificate has {len(signers)} valid signatures of the {len(committee)}-member "
            f"committee; needs {quorum(len(committee))}"
        )
    digest = committee_digest(doc["committee"])
    if trusted_committee is not None and committee_digest(trusted_committee) != digest:
        raise ProofError("the proof's committee is not the one that certified this height")
    return {
        "ok": True,
        "txid": tx.txid,
        "height": header.height,
        "block_hash": header.hash,
        "signers": len(signers),
        "committee": len(committee),
        "committee_digest": digest,
        "committee_trusted": trusted_committee is not None,
    }
