"""Ledger data types: transactions, votes, commit certificates, blocks, evidence.

Every object has one canonical byte form (RFC 8785 JSON via ``rfc8785``), from which
its hash and the message it signs are derived, so every node computes the same ids.
Signatures are Ed25519 over a domain tag plus the canonical bytes of the unsigned
object (``medshare/tx/v1``, ``medshare/vote/v1``): a vote can never pass as a
transaction. Every signature is bound to one chain: a transaction carries its chain id
(``Tx.chain``, signed), votes and proposals sign it in their domain
(:func:`vote_domain`), so nothing signed for one chain is valid on another. Binary
values are lower-case hex in the JSON form.

All ``from_json`` constructors validate shape and types and raise
:class:`LedgerFormatError`; signature checks are separate (:meth:`Tx.verify`,
:meth:`Vote.verify`) because they cost ~100 µs each and the simulator charges for them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, TypeVar

import rfc8785

from medshare.crypto import signing
from medshare.ledger import merkle

TX_DOMAIN = b"medshare/tx/v1"
VOTE_DOMAIN = b"medshare/vote/v1"
PROPOSAL_DOMAIN = b"medshare/proposal/v1"


def vote_domain(chain_id: str) -> bytes:
    """What votes sign besides their canonical bytes: the domain tag and the chain id, as
    Tendermint's sign bytes carry its chain id. A validator key serving two chains (or a
    test and a production chain) then never yields two "conflicting" votes that could be
    shown as equivocation evidence on either; the vote's wire form stays the same."""
    return VOTE_DOMAIN + b"/" + chain_id.encode()


def proposal_domain(chain_id: str) -> bytes:
    """The proposal counterpart of :func:`vote_domain`."""
    return PROPOSAL_DOMAIN + b"/" + chain_id.encode()


MAX_TX_BYTES = 64 * 1024
_MAX_SAFE_INT = 2**53 - 1  # RFC 8785 (I-JSON) integers
_HEX_DIGITS = frozenset("0123456789abcdef")
CHAIN_ID_BYTES = 16
ZERO_HASH = "00" * 32
E = TypeVar("E", bound=StrEnum)


class LedgerFormatError(ValueError):
    """A transaction, vote or block that is not well-formed."""


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise LedgerFormatError(f"not canonicalisable JSON: {exc}") from None


def digest_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hex(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise LedgerFormatError(f"{name} must be {size} bytes of lower-case hex")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise LedgerFormatError(f"{name} is not hex") from None
    if raw.hex() != value:
        raise LedgerFormatError(f"{name} must be lower-case hex")
    return raw


def _int(value: object, name: str, low: int = 0) -> int:
    """An integer field, at most 2^53 - 1: a larger one has no canonical (RFC 8785) form, so
    a header or vote holding it decoded and then failed to hash (issue 12, fuzzing)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_SAFE_INT:
        raise LedgerFormatError(f"{name} must be an integer in [{low}, 2^53 - 1]")
    return value


def _kind(enum: type[E], value: object, name: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise LedgerFormatError(f"unknown {name} kind {value!r}") from None


def _mapping(value: object, name: str) -> dict:
    if not isinstance(value, dict):
        raise LedgerFormatError(f"{name} must be an object")
    return value


# --- transactions -------------------------------------------------------------------------------


class TxKind(StrEnum):
    """The transaction types of DESIGN §4."""

    REGISTER_NODE = "register_node"
    REGISTER_IDENTITY = "register_identity"
    REGISTER_KEY_TAG = "register_key_tag"
    PUBLISH_KEY = "publish_key"
    ANCHOR_RECORD = "anchor_record"
    GRANT = "grant"
    REVOKE = "revoke"
    ACCESS = "access"
    BREAK_GLASS = "break_glass"
    TRACE_VERDICT = "trace_verdict"
    EVIDENCE = "evidence"
    COMMITTEE_CHANGE = "committee_change"


# Fields each kind's body must carry (more are allowed): the ledger checks shape, the
# services above it give the fields meaning.
REQUIRED_FIELDS: Mapping[TxKind, tuple[str, ...]] = {
    TxKind.REGISTER_NODE: ("node", "name"),
    TxKind.REGISTER_IDENTITY: ("identity", "key"),
    TxKind.REGISTER_KEY_TAG: ("identity", "tag"),
    TxKind.PUBLISH_KEY: ("key", "digest"),
    TxKind.ANCHOR_RECORD: ("record", "patient", "dept", "digest"),
    TxKind.GRANT: ("grant", "patient", "grantee"),
    TxKind.REVOKE: ("grant",),
    TxKind.ACCESS: ("record", "actor", "area"),
    TxKind.BREAK_GLASS: ("record", "actor", "reason", "until"),
    TxKind.TRACE_VERDICT: ("verdict", "evidence"),
    TxKind.EVIDENCE: ("offender", "kind", "proof"),
    TxKind.COMMITTEE_CHANGE: ("epoch", "committee"),
}


@dataclass(frozen=True)
class Tx:
    """A signed transaction. ``nonce`` counts the sender's transactions from 0 (anti-replay
    within one chain); ``chain`` is the :attr:`~medshare.ledger.chain.ChainConfig.chain_id`
    it was signed for (anti-replay across chains: the same staff or node key may serve two
    consortia, or a test and a production chain, whose nonces line up)."""

    kind: TxKind
    sender: bytes
    nonce: int
    body: Mapping[str, Any]
    signature: bytes = b""
    chain: str = ""

    def unsigned_json(self) -> dict:
        return {
            "chain": self.chain,
            "kind": self.kind.value,
            "sender": self.sender.hex(),
            "nonce": self.nonce,
            "body": dict(self.body),
        }

    def signing_bytes(self) -> bytes:
        return self._signing_bytes

    @cached_property
    def _signing_bytes(self) -> bytes:
        return canonical(self.unsigned_json())

    def to_json(self) -> dict:
        return {**self.unsigned_json(), "signature": self.signature.hex()}

    def encode(self) -> bytes:
        """Canonical bytes of the signed tx (computed once: txs are immutable by contract)."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        # canonical(self.to_json()) without canonicalising the body a second time: RFC 8785
        # writes members in sorted key order, each value on its own, and "signature" sorts
        # after every unsigned key, so the signed form is the unsigned one with that member
        # appended (tests/ledger/test_types.py checks the identity on arbitrary bodies).
        return self._signing_bytes[:-1] + b',"signature":"' + self.signature.hex().encode() + b'"}'

    @cached_property
    def txid(self) -> str:
        """SHA-256 of the canonical signed transaction, hex."""
        return digest_hex(self.encode())

    @classmethod
    def create(
        cls,
        kind: TxKind,
        body: Mapping[str, Any],
        nonce: int,
        key: signing.SigningKey,
        *,
        chain: str,
    ) -> Tx:
        unsigned = cls(TxKind(kind), key.public, nonce, dict(body), chain=check_chain_id(chain))
        check_body(unsigned.kind, unsigned.body)
        return replace(unsigned, signature=key.sign(TX_DOMAIN, unsigned.signing_bytes()))

    def verify(self) -> None:
        """Raise :class:`signing.InvalidSignature` unless the sender signed exactly this tx."""
        signing.verify(self.sender, self.signature, TX_DOMAIN, self.signing_bytes())

    @classmethod
    def from_json(cls, doc: object) -> Tx:
        doc = _mapping(doc, "transaction")
        kind = _kind(TxKind, doc.get("kind"), "transaction")
        body = _mapping(doc.get("body"), "body")
        check_fields(kind, body)  # canonicalisable: checked by encode() below
        tx = cls(
            kind,
            _hex(doc.get("sender"), signing.PUBLIC_KEY_BYTES, "sender"),
            _int(doc.get("nonce"), "nonce"),
            body,
            _hex(doc.get("signature"), signing.SIGNATURE_BYTES, "signature"),
            check_chain_id(doc.get("chain")),
        )
        if len(tx.encode()) > MAX_TX_BYTES:
            raise LedgerFormatError(f"transaction larger than {MAX_TX_BYTES} bytes")
        return tx

    @classmethod
    def decode(cls, data: bytes) -> Tx:
        """Parse and check a transaction; every bad input raises :class:`LedgerFormatError`
        (a replica must reach the same verdict whatever its stack depth, so nesting is
        bounded by :data:`MAX_JSON_DEPTH` before the parser recurses)."""
        if len(data) > MAX_TX_BYTES:
            raise LedgerFormatError(f"transaction larger than {MAX_TX_BYTES} bytes")
        check_depth(data)
        try:
            return cls.from_json(json.loads(data))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise LedgerFormatError("transaction is not JSON") from None


MAX_JSON_DEPTH = 32  # arrays and objects nested deeper are refused before parsing


def check_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`LedgerFormatError` if the JSON text nests arrays/objects deeper than
    ``limit``. Brackets inside strings do not count. Fast path: a text with at most
    ``limit`` opening brackets cannot nest deeper."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                raise LedgerFormatError(f"JSON nested deeper than {limit} levels")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


def check_chain_id(value: object) -> str:
    """A chain id is 16 bytes of lower-case hex (see ``ChainConfig.chain_id``)."""
    _hex(value, CHAIN_ID_BYTES, "chain id")
    return str(value)


def check_fields(kind: TxKind, body: Mapping[str, Any]) -> None:
    missing = [name for name in REQUIRED_FIELDS[kind] if name not in body]
    if missing:
        raise LedgerFormatError(f"{kind.value} transaction lacks {', '.join(missing)}")


def check_body(kind: TxKind, body: Mapping[str, Any]) -> None:
    check_fields(kind, body)
    # Canonicalisable JSON (no floats out of range, str keys) and no deeper than decode takes.
    check_depth(canonical(dict(body)), MAX_JSON_DEPTH - 1)


# --- votes and certificates ---------------------------------------------------------------------


class VoteKind(StrEnum):
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


@dataclass(frozen=True)
class Vote:
    """A committee member's signed prevote or precommit for a block hash (``None`` = nil)."""

    kind: VoteKind
    height: int
    round: int
    block_hash: str | None
    voter: bytes
    signature: bytes = b""

    def unsigned_json(self) -> dict:
        return {
            "kind": self.kind.value,
            "height": self.height,
            "round": self.round,
            "block": self.block_hash,
            "voter": self.voter.hex(),
        }

    def signing_bytes(self) -> bytes:
        return self._signing_bytes

    @cached_property
    def _signing_bytes(self) -> bytes:
        # Votes are the most numerous signed objects (2m per height per node, 2N in the
        # all-node baseline), so their canonical bytes are written directly when every
        # field has its plain shape: RFC 8785 output for sorted keys, non-negative I-JSON
        # integers and lower-case hex strings is exactly this text (tests/ledger/
        # test_types.py checks it). Anything else takes the general encoder.
        block, height, round_ = self.block_hash, self.height, self.round
        if (
            type(height) is int
            and type(round_) is int
            and 0 <= height <= _MAX_SAFE_INT
            and 0 <= round_ <= _MAX_SAFE_INT
            and (block is None or _HEX_DIGITS.issuperset(block))
        ):
            block_json = "null" if block is None else f'"{block}"'
            return (
                f'{{"block":{block_json},"height":{height},"kind":"{self.kind.value}",'
                f'"round":{round_},"voter":"{self.voter.hex()}"}}'
            ).encode()
        return canonical(self.unsigned_json())

    def to_json(self) -> dict:
        return {**self.unsigned_json(), "signature": self.signature.hex()}

    @classmethod
    def create(
        cls,
        kind: VoteKind,
        height: int,
        round_: int,
        block_hash: str | None,
        key: signing.SigningKey,
        *,
        chain: str,
    ) -> Vote:
        unsigned = cls(VoteKind(kind), height, round_, block_hash, key.public)
        signature = key.sign(vote_domain(chain), unsigned.signing_bytes())
        return replace(unsigned, signature=signature)

    def verify(self, chain: str) -> None:
        """Raise ``signing.InvalidSignature`` unless the voter signed this vote on ``chain``."""
        signing.verify(self.voter, self.signature, vote_domain(chain), self.signing_bytes())

    def is_valid(self, chain: str) -> bool:
        return signing.is_valid(
            self.voter, self.signature, vote_domain(chain), self.signing_bytes()
        )

    @classmethod
    def from_json(cls, doc: object) -> Vote:
        doc = _mapping(doc, "vote")
        kind = _kind(VoteKind, doc.get("kind"), "vote")
        block = doc.get("block")
        if block is not None:
            _hex(block, 32, "block")
        return cls(
            kind,
            _int(doc.get("height"), "height"),
            _int(doc.get("round"), "round"),
            block,
            _hex(doc.get("voter"), signing.PUBLIC_KEY_BYTES, "voter"),
            _hex(doc.get("signature"), signing.SIGNATURE_BYTES, "signature"),
        )


@dataclass(frozen=True)
class CommitCertificate:
    """2f+1 precommits of one round for one block hash: the proof that a block committed."""

    height: int
    round: int
    block_hash: str
    signatures: tuple[tuple[bytes, bytes], ...]  # (voter, signature), sorted by voter

    def votes(self) -> list[Vote]:
        return list(self._votes)

    @cached_property
    def _votes(self) -> tuple[Vote, ...]:
        # Kept with the certificate: each Vote caches its signing bytes, and a certificate
        # is checked by every node that receives it (and again as the next block's
        # last_commit).
        return tuple(
            Vote(VoteKind.PRECOMMIT, self.height, self.round, self.block_hash, voter, sig)
            for voter, sig in self.signatures
        )

    def to_json(self) -> dict:
        return {
            "height": self.height,
            "round": self.round,
            "block": self.block_hash,
            "signatures": [[v.hex(), s.hex()] for v, s in self.signatures],
        }

    @classmethod
    def from_votes(cls, votes: Sequence[Vote]) -> CommitCertificate:
        first = votes[0]
        sigs = sorted({(v.voter, v.signature) for v in votes})
        return cls(first.height, first.round, first.block_hash or "", tuple(sigs))

    @classmethod
    def from_json(cls, doc: object) -> CommitCertificate:
        doc = _mapping(doc, "certificate")
        sigs = doc.get("signatures")
        if not isinstance(sigs, list):
            raise LedgerFormatError("certificate signatures must be a list")
        pairs = []
        for item in sigs:
            if not isinstance(item, list) or len(item) != 2:
                raise LedgerFormatError("certificate signature entries are [voter, signature]")
            pairs.append(
                (
                    _hex(item[0], signing.PUBLIC_KEY_BYTES, "voter"),
                    _hex(item[1], signing.SIGNATURE_BYTES, "signature"),
                )
            )
        block = doc.get("block")
        _hex(block, 32, "block")
        return cls(
            _int(doc.get("height"), "height"), _int(doc.get("round"), "round"), block, tuple(pairs)
        )


def certificate_signers(
    cert: CommitCertificate,
    committee: Sequence[bytes],
    block_hash: str,
    height: int,
    chain: str,
) -> set[bytes]:
    """The distinct committee members whose precommit signatures in ``cert`` verify on
    ``chain``."""
    if cert.block_hash != block_hash or cert.height != height:
        return set()
    members = set(committee)
    return {vote.voter for vote in cert.votes() if vote.voter in members and vote.is_valid(chain)}


def quorum(size: int) -> int:
    """Votes needed in a committee of ``size`` = 3f+1 members: 2f+1 (⌊2n/3⌋ + 1)."""
    return 2 * size // 3 + 1


# --- blocks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockHeader:
    height: int
    prev_hash: str
    merkle_root: str
    state_root: str
    last_commit_hash: str
    epoch: int
    proposer: bytes
    timestamp_ms: int

    def to_json(self) -> dict:
        return {
            "height": self.height,
            "prev": self.prev_hash,
            "merkle_root": self.merkle_root,
            "state_root": self.state_root,
            "last_commit": self.last_commit_hash,
            "epoch": self.epoch,
            "proposer": self.proposer.hex(),
            "time_ms": self.timestamp_ms,
        }

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical header (computed once: headers are immutable)."""
        return digest_hex(canonical(self.to_json()))

    @classmethod
    def from_json(cls, doc: object) -> BlockHeader:
        doc = _mapping(doc, "header")
        for name in ("prev", "merkle_root", "state_root", "last_commit"):
            _hex(doc.get(name), 32, name)
        return cls(
            _int(doc.get("height"), "height"),
            doc["prev"],
            doc["merkle_root"],
            doc["state_root"],
            doc["last_commit"],
            _int(doc.get("epoch"), "epoch"),
            _hex(doc.get("proposer"), signing.PUBLIC_KEY_BYTES, "proposer"),
            _int(doc.get("time_ms"), "time_ms"),
        )


@dataclass(frozen=True)
class Block:
    """Header, transactions, the canonical certificate of the previous block (``last_commit``,
    hashed into the header so every node applies the same reputation update) and this
    block's own commit certificate (which may differ between nodes: any 2f+1 precommits)."""

    header: BlockHeader
    txs: tuple[Tx, ...]
    last_commit: CommitCertificate | None = None
    certificate: CommitCertificate | None = field(default=None)

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def tx_merkle_root(self) -> str:
        return merkle_root_hex(self.txs)

    def to_json(self) -> dict:
        return {
            "header": self.header.to_json(),
            "txs": [tx.to_json() for tx in self.txs],
            "last_commit": None if self.last_commit is None else self.last_commit.to_json(),
            "certificate": None if self.certificate is None else self.certificate.to_json(),
        }

    def encode(self) -> bytes:
        """``canonical(self.to_json())``, without canonicalising the transactions again:
        RFC 8785 writes an object's members in sorted key order, each value on its own, and
        "txs" sorts last, so each transaction's own cached canonical bytes drop in
        (tests/ledger/test_types.py checks the identity)."""
        shell = canonical(
            {
                "certificate": None if self.certificate is None else self.certificate.to_json(),
                "header": self.header.to_json(),
                "last_commit": None if self.last_commit is None else self.last_commit.to_json(),
            }
        )
        txs = b"[" + b",".join(tx.encode() for tx in self.txs) + b"]"
        return shell[:-1] + b',"txs":' + txs + b"}"

    def with_certificate(self, cert: CommitCertificate) -> Block:
        return Block(self.header, self.txs, self.last_commit, cert)

    @classmethod
    def from_json(cls, doc: object) -> Block:
        doc = _mapping(doc, "block")
        txs = doc.get("txs")
        if not isinstance(txs, list):
            raise LedgerFormatError("block txs must be a list")
        last, cert = doc.get("last_commit"), doc.get("certificate")
        return cls(
            BlockHeader.from_json(doc.get("header")),
            tuple(Tx.from_json(t) for t in txs),
            None if last is None else CommitCertificate.from_json(last),
            None if cert is None else CommitCertificate.from_json(cert),
        )


def merkle_root_hex(txs: Sequence[Tx]) -> str:
    return merkle.merkle_root([tx.encode() for tx in txs]).hex()


def certificate_hash(cert: CommitCertificate | None) -> str:
    """What a header commits to for its ``last_commit`` (zero hash for none)."""
    return ZERO_HASH if cert is None else digest_hex(canonical(cert.to_json()))


# --- evidence -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Equivocation:
    """Two signed votes of one voter for different blocks at the same height, round and kind."""

    first: Vote
    second: Vote

    def check(self, chain: str) -> None:
        """Raise unless both votes conflict and were signed on ``chain``."""
        a, b = self.first, self.second
        same_slot = (a.kind, a.height, a.round, a.voter) == (b.kind, b.height, b.round, b.voter)
        if not same_slot or a.block_hash == b.block_hash:
            raise LedgerFormatError("the two votes do not conflict")
        a.verify(chain)
        b.verify(chain)

    def to_body(self) -> dict:
        return {
            "offender": self.first.voter.hex(),
            "kind": "equivocation",
            "proof": [self.first.to_json(), self.second.to_json()],
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Equivocation:
        proof = body.get("proof")
        if body.get("kind") != "equivocation" or not isinstance(proof, list) or len(proof) != 2:
            raise LedgerFormatError("not equivocation evidence")
        return cls(Vote.from_json(proof[0]), Vote.from_json(proof[1]))


# --- proposals (signed by the round's proposer; the block travels beside) ----------------------


def proposal_signing_bytes(
    height: int, round_: int, block_hash: str, pol_round: int, proposer: bytes
) -> bytes:
    return canonical(
        {
            "height": height,
            "round": round_,
            "block": block_hash,
            "pol_round": pol_round,
            "proposer": proposer.hex(),
        }
    )


def conflicting_proposals_offender(body: Any, chain: str) -> bytes:
    """Check a ``conflicting_proposals`` EVIDENCE body (two signed proposal headers of one
    proposer for one height and round, different blocks, signed on ``chain``; no blocks
    needed) and return the offender's key. Raises
    :class:`LedgerFormatError` or ``signing.InvalidSignature``."""
    proof = body.get("proof") if isinstance(body, dict) else None
    if body.get("kind") != "conflicting_proposals" or not isinstance(proof, list):
        raise LedgerFormatError("not conflicting-proposals evidence")
    if len(proof) != 2 or not all(isinstance(p, dict) for p in proof):
        raise LedgerFormatError("conflicting-proposals evidence needs two proposals")
    try:
        slots = [(p["height"], p["round"], p["proposer"]) for p in proof]
        hashes = [str(p["block"]) for p in proof]
        proposer = bytes.fromhex(proof[0]["proposer"])
        signed = [
            (
                bytes.fromhex(p["signature"]),
                proposal_signing_bytes(
                    _int(p["height"], "height"),
                    _int(p["round"], "round"),
                    str(p["block"]),
                    int(p["pol_round"]),
                    proposer,
                ),
            )
            for p in proof
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerFormatError(f"malformed proposal proof: {exc}") from None
    if slots[0] != slots[1] or hashes[0] == hashes[1] or body.get("offender") != proposer.hex():
        raise LedgerFormatError("the two proposals do not conflict")
    for signature, message in signed:
        signing.verify(proposer, signature, proposal_domain(chain), message)
    return proposer


# --- invalid blocks ------------------------------------------------------------------------------


def invalid_block_body(proposal_proof: Mapping[str, Any], block: Block, index: int) -> dict:
    """An ``invalid_block`` EVIDENCE body: a signed proposal (``Proposal.proof()``), its
    block's header, and the transaction at ``index`` with its Merkle path, whose signature
    does not verify. No state is needed to check it, so it stays valid at any later height;
    blocks invalid only against the state (a wrong state root) cannot be proven this way."""
    proof = merkle.prove([tx.encode() for tx in block.txs], index)
    return {
        "offender": str(proposal_proof["proposer"]),
        "kind": "invalid_block",
        "proof": {
            "proposal": dict(proposal_proof),
            "header": block.header.to_json(),
            "tx": block.txs[index].to_json(),
            "index": proof.index,
            "size": proof.size,
            "path": [p.hex() for p in proof.path],
        },
    }


def invalid_block_offender(body: Any, chain: str) -> bytes:
    """Check an ``invalid_block`` EVIDENCE body (a proposal signed on ``chain``) and return
    the offender (the proposal's signer). Raises :class:`LedgerFormatError` or
    ``signing.InvalidSignature``."""
    proof = body.get("proof") if isinstance(body, dict) else None
    if body.get("kind") != "invalid_block" or not isinstance(proof, dict):
        raise LedgerFormatError("not invalid-block evidence")
    try:
        signed = proof["proposal"]
        proposer = bytes.fromhex(signed["proposer"])
        header = BlockHeader.from_json(proof["header"])
        tx = Tx.from_json(proof["tx"])
        inclusion = merkle.InclusionProof(
            _int(proof["index"], "index"),
            _int(proof["size"], "size"),
            tuple(bytes.fromhex(p) for p in proof["path"]),
        )
        message = proposal_signing_bytes(
            _int(signed["height"], "height"),
            _int(signed["round"], "round"),
            str(signed["block"]),
            int(signed["pol_round"]),
            proposer,
        )
        signature = bytes.fromhex(signed["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerFormatError(f"malformed invalid-block proof: {exc}") from None
    if body.get("offender") != proposer.hex() or signed["block"] != header.hash:
        raise LedgerFormatError("the proposal does not sign this block header")
    if header.height != signed["height"]:
        raise LedgerFormatError("the header is not for the proposal's height")
    if not merkle.verify_inclusion(tx.encode(), inclusion, bytes.fromhex(header.merkle_root)):
        raise LedgerFormatError("the transaction is not in the proposed block")
    if signing.is_valid(tx.sender, tx.signature, TX_DOMAIN, tx.signing_bytes()):
        raise LedgerFormatError("the transaction's signature is valid: no offence")
    signing.verify(proposer, signature, proposal_domain(chain), message)
    return proposer
