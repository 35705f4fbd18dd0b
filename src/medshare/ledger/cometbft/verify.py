"""Re-verify a CometBFT chain of the ledger from genesis, trusting only the genesis.

``medshare ledger verify --rpc URL`` reads from one node's RPC every block, the commit
that decided it, the validator set of every height and the blocks' execution results,
and checks them the way a CometBFT node does when it syncs, plus what only our
application knows. Nothing the node says is believed unless it is bound to the genesis
through hashes and > 2/3 of the voting power's Ed25519 signatures:

* **Header** (CometBFT's ``types/block.go``): chain id, height, version (block protocol
  11, the genesis app version), ``last_block_id`` = the previous block's id, BFT time (the
  genesis time at height 1, else the power-weighted median of the last commit's vote
  times, and later than the previous block's), ``data_hash`` (``Txs.Hash``: merkle root of
  the transactions' SHA-256), ``evidence_hash``, ``last_commit_hash`` (merkle root of the
  last commit's ``CommitSig`` encodings), ``consensus_hash`` (the genesis consensus
  parameters: the application never changes them), ``validators_hash`` and
  ``next_validators_hash`` (``ValidatorSet.Hash``), ``last_results_hash`` (merkle root of
  the previous block's deterministic ``ExecTxResult`` encodings) and the header's own hash
  (``Header.Hash``: merkle root of the cdc-encoded fields) = the block id's hash.
* **Block id**: its part set header is recomputed from the block's protobuf encoding cut
  into 64 KiB parts, so the id the validators sign covers exactly the bytes served.
* **Commit** (``VerifyCommit``): one signature slot per validator of that height, each
  present signature an Ed25519 signature of that validator over the canonical vote sign
  bytes (length-delimited ``CanonicalVote``), and the power of the signatures for the
  block > 2/3 of the set's. The commit of height h is block h+1's ``last_commit`` (the one
  the header of h+1 hashes and the application is told about), or ``/commit`` for the
  last height.
* **Evidence**: duplicate-vote evidence must carry two conflicting, validly signed votes
  of a validator of that height, with that height's powers and block time.
* **Application**: the state machine is replayed in Python from the genesis
  ``app_state`` with :func:`replay_block`, i.e. :func:`rules.finalize`, the function
  ``LedgerApplication.finalize_block`` runs; every transaction's result code must equal the
  node's ``/block_results``, the replayed app hash after block h must be the one in header
  h+1, the validator updates the node reports must be the replay's, and the validator set
  of every height must be the committee the rules elected (CometBFT applies the updates of
  block h at h+2, so the set at h is the committee after block h-2, and the first
  committee holds heights 1 and 2).

The check stops at the first failure and names its height: a header, block, results or
evidence problem is reported at the block's height; a bad commit of block h (in block
h+1's ``last_commit``) is reported at h, because block h is then not proven decided. The
app hash after the last checked height is not yet in any checked header; it is checked
against ``/block_results`` only.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from medshare.ledger.app import rules
from medshare.ledger.app.genesis import MEMBER_POWER, Genesis
from medshare.ledger.app.state import LedgerState
from medshare.ledger.cometbft.client import LedgerClient, LedgerUnavailable
from medshare.ledger.cometbft.home import cometbft_chain_id
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci_pb
from medshare.ledger.cometbft.proto.tendermint.crypto import keys_pb2
from medshare.ledger.cometbft.proto.tendermint.types import (
    block_pb2,
    canonical_pb2,
    evidence_pb2,
    params_pb2,
    types_pb2,
    validator_pb2,
)
from medshare.ledger.cometbft.proto.tendermint.version import types_pb2 as version_pb2
from medshare.ledger.cometbft.varint import uvarint

BLOCK_PROTOCOL = 11  # CometBFT v0.38's block protocol version (version.BlockProtocol)
PART_SIZE = 65536  # types.BlockPartSizeBytes
PRECOMMIT = 2  # tendermint.types.SignedMsgType
FLAG_ABSENT, FLAG_COMMIT, FLAG_NIL = 1, 2, 3  # tendermint.types.BlockIDFlag
ED25519_JSON_TYPE = "tendermint/PubKeyEd25519"
DUPLICATE_VOTE_JSON_TYPE = "tendermint/DuplicateVoteEvidence"
PER_PAGE = 100  # the RPC's largest page of validators
EMPTY_HASH = hashlib.sha256(b"").digest()


# --- merkle trees (crypto/merkle: RFC 6962 with 0x00 / 0x01 prefixes) ---------------------


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(items: Sequence[bytes]) -> bytes:
    """CometBFT's ``HashFromByteSlices``: SHA-256 of nothing for no items; otherwise the
    left subtree holds the largest power of two strictly below the count."""
    n = len(items)
    if n == 0:
        return EMPTY_HASH
    if n == 1:
        return leaf_hash(items[0])
    split = 1 << ((n - 1).bit_length() - 1)
    return inner_hash(merkle_root(items[:split]), merkle_root(items[split:]))


# --- reading the RPC's JSON ---------------------------------------------------------------

_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


def parse_time(text: str) -> tuple[int, int]:
    """An RFC 3339 UTC time as CometBFT prints it → (seconds since 1970, nanoseconds)."""
    match = _TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    nanos = int((match.group(7) or "").ljust(9, "0"))
    return calendar.timegm((year, month, day, hour, minute, second)), nanos


def timestamp(text: str) -> Timestamp:
    seconds, nanos = parse_time(text)
    return Timestamp(seconds=seconds, nanos=nanos)


def hex_bytes(value: object) -> bytes:
    """CometBFT's ``HexBytes`` (upper-case hex; empty for none)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a hex string, got {value!r}")
    return bytes.fromhex(value)


def b64_bytes(value: object) -> bytes:
    """A base64 ``[]byte`` (null for none)."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ValueError(f"expected base64, got {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f"not base64: {value!r}") from None


# --- CometBFT's structures as protobuf ------------------------------------------------------
#
# gogoproto's non-nullable message fields (BlockID.part_set_header, Header.version/time/
# last_block_id, Commit.block_id, CommitSig.timestamp, …) are always encoded, even when
# empty; Python's protobuf encodes a message field only when it is present, so every such
# field is marked present with SetInParent().


def block_id_pb(doc: dict) -> types_pb2.BlockID:
    pb = types_pb2.BlockID(hash=hex_bytes(doc["hash"]))
    pb.part_set_header.total = int(doc["parts"]["total"])
    pb.part_set_header.hash = hex_bytes(doc["parts"]["hash"])
    pb.part_set_header.SetInParent()
    return pb


def is_zero_block_id(pb: types_pb2.BlockID) -> bool:
    return not pb.hash and not pb.part_set_header.total and not pb.part_set_header.hash


def header_pb(doc: dict) -> types_pb2.Header:
    pb = types_pb2.Header(
        chain_id=doc["chain_id"],
        height=int(doc["height"]),
        last_commit_hash=hex_bytes(doc["last_commit_hash"]),
        data_hash=hex_bytes(doc["data_hash"]),
        validators_hash=hex_bytes(doc["validators_hash"]),
        next_validators_hash=hex_bytes(doc["next_validators_hash"]),
        consensus_hash=hex_bytes(doc["consensus_hash"]),
        app_hash=hex_bytes(doc["app_hash"]),
        last_results_hash=hex_bytes(doc["last_results_hash"]),
        evidence_hash=hex_bytes(doc["evidence_hash"]),
        proposer_address=hex_bytes(doc["proposer_address"]),
    )
    pb.version.block = int(doc["version"]["block"])
    pb.version.app = int(doc["version"].get("app", 0))
    pb.version.SetInParent()
    pb.time.CopyFrom(timestamp(doc["time"]))
    pb.time.SetInParent()
    pb.last_block_id.CopyFrom(block_id_pb(doc["last_block_id"]))
    pb.last_block_id.SetInParent()
    return pb


def header_hash(header: types_pb2.Header) -> bytes:
    """``Header.Hash``: merkle root of the fields, each scalar wrapped in its
    ``google.protobuf`` value message (cdcEncode; an empty value encodes as nothing)."""
    if not header.validators_hash:
        raise ValueError("a header without validators_hash has no hash")
    version = version_pb2.Consensus(block=header.version.block, app=header.version.app)
    fields = [
        version.SerializeToString(),
        StringValue(value=header.chain_id).SerializeToString(),
        Int64Value(value=header.height).SerializeToString(),
        header.time.SerializeToString(),
        header.last_block_id.SerializeToString(),
        *(
            BytesValue(value=value).SerializeToString()
            for value in (
                header.last_commit_hash,
                header.data_hash,
                header.validators_hash,
                header.next_validators_hash,
                header.consensus_hash,
                header.app_hash,
                header.last_results_hash,
                header.evidence_hash,
                header.proposer_address,
            )
        ),
    ]
    return merkle_root(fields)


def commit_sig_pb(doc: dict) -> types_pb2.CommitSig:
    pb = types_pb2.CommitSig(
        block_id_flag=int(doc["block_id_flag"]),
        validator_address=hex_bytes(doc["validator_address"]),
        signature=b64_bytes(doc.get("signature")),
    )
    pb.timestamp.CopyFrom(timestamp(doc["timestamp"]))
    pb.timestamp.SetInParent()
    return pb


def commit_pb(doc: dict) -> types_pb2.Commit:
    pb = types_pb2.Commit(height=int(doc["height"]), round=int(doc["round"]))
    pb.block_id.CopyFrom(block_id_pb(doc["block_id"]))
    pb.block_id.SetInParent()
    pb.signatures.extend(commit_sig_pb(s) for s in doc.get("signatures") or [])
    return pb


def commit_hash(commit: types_pb2.Commit) -> bytes:
    """``Commit.Hash``: merkle root of the ``CommitSig`` encodings."""
    return merkle_root([sig.SerializeToString() for sig in commit.signatures])


def txs_hash(txs: Sequence[bytes]) -> bytes:
    """``Txs.Hash``: merkle root of the transactions' SHA-256."""
    return merkle_root([hashlib.sha256(tx).digest() for tx in txs])


@dataclass(frozen=True)
class Member:
    """One validator of a CometBFT validator set."""

    address: bytes
    public: bytes
    power: int

    @classmethod
    def of(cls, public: bytes, power: int) -> Member:
        return cls(rules.address(public), public, power)


ValidatorSet = tuple[Member, ...]


def canonical_set(members: Iterable[Member]) -> ValidatorSet:
    """CometBFT's order of a validator set: voting power descending, then address."""
    return tuple(sorted(members, key=lambda m: (-m.power, m.address)))


def committee_set(committee: Iterable[bytes]) -> ValidatorSet:
    """The validator set CometBFT runs for an elected committee (equal power each)."""
    return canonical_set(Member.of(public, MEMBER_POWER) for public in committee)


def validator_set_hash(validators: Sequence[Member]) -> bytes:
    """``ValidatorSet.Hash``: merkle root of the ``SimpleValidator`` encodings."""
    return merkle_root(
        [
            validator_pb2.SimpleValidator(
                pub_key=keys_pb2.PublicKey(ed25519=m.public), voting_power=m.power
            ).SerializeToString()
            for m in validators
        ]
    )


def results_hash(results: Sequence[dict]) -> bytes:
    """``ABCIResults.Hash``: merkle root of the deterministic part of each ``ExecTxResult``
    (code, data, gas wanted, gas used)."""
    return merkle_root(
        [
            abci_pb.ExecTxResult(
                code=int(r.get("code") or 0),
                data=b64_bytes(r.get("data")),
                gas_wanted=int(r.get("gas_wanted") or 0),
                gas_used=int(r.get("gas_used") or 0),
            ).SerializeToString()
            for r in results
        ]
    )


def consensus_params_hash(params: dict) -> bytes:
    """``ConsensusParams.Hash``: SHA-256 of ``HashedParams`` (block max bytes and gas)."""
    hashed = params_pb2.HashedParams(
        block_max_bytes=int(params["block"]["max_bytes"]),
        block_max_gas=int(params["block"]["max_gas"]),
    )
    return hashlib.sha256(hashed.SerializeToString()).digest()


def vote_pb(doc: dict) -> types_pb2.Vote:
    pb = types_pb2.Vote(
        type=int(doc["type"]),
        height=int(doc["height"]),
        round=int(doc["round"]),
        validator_address=hex_bytes(doc["validator_address"]),
        validator_index=int(doc["validator_index"]),
        signature=b64_bytes(doc.get("signature")),
        extension=b64_bytes(doc.get("extension")),
        extension_signature=b64_bytes(doc.get("extension_signature")),
    )
    pb.block_id.CopyFrom(block_id_pb(doc["block_id"]))
    pb.block_id.SetInParent()
    pb.timestamp.CopyFrom(timestamp(doc["timestamp"]))
    pb.timestamp.SetInParent()
    return pb


def duplicate_vote_pb(doc: dict) -> evidence_pb2.DuplicateVoteEvidence:
    pb = evidence_pb2.DuplicateVoteEvidence(
        vote_a=vote_pb(doc["vote_a"]),
        vote_b=vote_pb(doc["vote_b"]),
        total_voting_power=int(doc["TotalVotingPower"]),
        validator_power=int(doc["ValidatorPower"]),
    )
    pb.timestamp.CopyFrom(timestamp(doc["Timestamp"]))
    pb.timestamp.SetInParent()
    return pb


class UnsupportedEvidence(ValueError):
    """Evidence of a kind this tool does not check (light-client attacks)."""


def evidence_pb(doc: dict) -> evidence_pb2.Evidence:
    kind = doc.get("type")
    if kind != DUPLICATE_VOTE_JSON_TYPE:
        raise UnsupportedEvidence(f"evidence of type {kind!r} is not checked by this tool")
    return evidence_pb2.Evidence(duplicate_vote_evidence=duplicate_vote_pb(doc["value"]))


def evidence_hash(evidence: Sequence[evidence_pb2.Evidence]) -> bytes:
    """``EvidenceList.Hash``: merkle root of each evidence's own encoding."""
    return merkle_root([e.duplicate_vote_evidence.SerializeToString() for e in evidence])


def block_pb(
    header: types_pb2.Header,
    txs: Sequence[bytes],
    evidence: Sequence[evidence_pb2.Evidence],
    last_commit: types_pb2.Commit,
) -> block_pb2.Block:
    pb = block_pb2.Block()
    pb.header.CopyFrom(header)
    pb.header.SetInParent()
    pb.data.txs.extend(txs)
    pb.data.SetInParent()
    pb.evidence.evidence.extend(evidence)
    pb.evidence.SetInParent()
    pb.last_commit.CopyFrom(last_commit)
    pb.last_commit.SetInParent()
    return pb


def part_set_header(block: block_pb2.Block) -> tuple[int, bytes]:
    """``Block.MakePartSet``: (number of 64 KiB parts, merkle root of the parts)."""
    data = block.SerializeToString()
    parts = [data[i : i + PART_SIZE] for i in range(0, len(data), PART_SIZE)]
    return len(parts), merkle_root(parts)


def vote_sign_bytes(
    chain_id: str,
    *,
    vote_type: int,
    height: int,
    round_: int,
    block_id: types_pb2.BlockID | None,
    time: Timestamp,
) -> bytes:
    """``VoteSignBytes``: the length-delimited ``CanonicalVote`` a validator signs (a zero
    block id, a vote for nil, is left out)."""
    vote = canonical_pb2.CanonicalVote(type=vote_type, height=height, round=round_)
    if block_id is not None and not is_zero_block_id(block_id):
        vote.block_id.hash = block_id.hash
        vote.block_id.part_set_header.total = block_id.part_set_header.total
        vote.block_id.part_set_header.hash = block_id.part_set_header.hash
        vote.block_id.part_set_header.SetInParent()
    vote.timestamp.CopyFrom(time)
    vote.timestamp.SetInParent()
    vote.chain_id = chain_id
    body = vote.SerializeToString()
    return uvarint(len(body)) + body


def signature_ok(public: bytes, signature: bytes, message: bytes) -> bool:
    """CometBFT's Ed25519 vote signature, checked with libsodium (about twice as fast as
    OpenSSL here; a verifier replays every commit signature from genesis)."""
    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + message, public)
    except (BadSignatureError, ValueError):
        return False
    return True


# --- the application's block -------------------------------------------------------------

TxResult = tuple[int, str]  # (code, log): 0 applied, else the rule that skipped it


def replay_block(
    state: LedgerState,
    *,
    votes: Iterable[tuple[bytes, bool]],
    proposer: bytes,
    misbehaving_addresses: Iterable[bytes],
    block_hash: bytes,
    height: int,
    txs: Iterable[bytes],
) -> tuple[list[TxResult], list[tuple[bytes, int]]]:
    """What ``FinalizeBlock`` does to ``state`` (in place) for one decided block, read
    back from the RPC: ``votes`` are the previous height's validators by address with
    whether each signed the block (its ``last_commit``), ``misbehaving_addresses`` who the
    block's evidence names. The order of the steps lives in :func:`rules.finalize`, which
    ``LedgerApplication.finalize_block`` calls too. Returns the transactions' (code, log)
    and the validator updates (power 0 removes); ``state.app_hash`` is the block's."""
    outcome = rules.finalize(
        state,
        rules.DecidedBlock(
            height,
            block_hash,
            rules.CommitReport(tuple(votes), proposer),
            tuple(misbehaving_addresses),
            tuple(txs),
        ),
    )
    return list(outcome.results), list(outcome.updates)


# --- the report ----------------------------------------------------------------------------


@dataclass
class ChainReport:
    ok: bool
    height: int  # last height verified (0: none)
    first_bad_height: int | None
    problem: str | None
    checked: dict[str, int] = field(default_factory=dict)
    chain_id: str = ""
    genesis_trusted: bool = False  # the genesis came from the caller, not the node

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "height": self.height,
            "first_bad_height": self.first_bad_height,
            "problem": self.problem,
            "checked": dict(self.checked),
            "chain_id": self.chain_id,
            "genesis": "given by the caller" if self.genesis_trusted else "taken from the node",
        }


class Bad(Exception):
    """The served chain fails a check at ``height``."""

    def __init__(self, height: int, problem: str) -> None:
        super().__init__(f"height {height}: {problem}")
        self.height = height
        self.problem = problem


# --- what a height brings ----------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What the node serves for one height: ``/block``, ``/block_results``, ``/validators``."""

    height: int
    block: dict  # the /block result: {"block_id": …, "block": …}
    results: dict
    validators: list[dict]


def served_members(height: int, validators: Sequence[dict]) -> ValidatorSet:
    out = []
    for v in validators:
        key = v["pub_key"]
        if key.get("type") != ED25519_JSON_TYPE:
            raise Bad(height, f"validator {v.get('address')} has a non-Ed25519 key")
        member = Member(hex_bytes(v["address"]), b64_bytes(key["value"]), int(v["voting_power"]))
        if len(member.public) != 32 or rules.address(member.public) != member.address:
            raise Bad(height, f"validator {v.get('address')}: address is not its key's")
        out.append(member)
    return tuple(out)


def _update_key(update: dict) -> bytes:
    """The Ed25519 key of a validator update in ``/block_results``: an ABCI
    ``PublicKey`` (``{"Sum": {"value": {"ed25519": …}}}``) or an amino one."""
    key = update.get("pub_key") or {}
    if "Sum" in key:
        return b64_bytes(key["Sum"]["value"]["ed25519"])
    return b64_bytes(key.get("value"))


def _short(data: bytes) -> str:
    return data.hex().upper()[:16] or "(empty)"


# --- the verifier --------------------------------------------------------------------------------


class ChainVerifier:
    """Checks heights 1, 2, … in order against the genesis; raises :class:`Bad`."""

    def __init__(self, genesis: dict) -> None:
        try:
            self.chain_id = str(genesis["chain_id"])
            initial = int(genesis.get("initial_height") or 1)
            self.genesis_time = parse_time(genesis["genesis_time"])
            params = genesis["consensus_params"]
            self.consensus_hash = consensus_params_hash(params)
            self.app_version = int((params.get("version") or {}).get("app") or 0)
            evidence = params.get("evidence") or {}
            self.evidence_age_blocks = int(evidence.get("max_age_num_blocks") or 0)
            self.evidence_age_ns = int(evidence.get("max_age_duration") or 0)
            app_genesis = Genesis.from_json(genesis["app_state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the genesis is not a medshare CometBFT genesis: {exc}") from None
        if initial != 1:
            raise ValueError(f"initial_height {initial} is not supported (only 1)")
        if self.chain_id != cometbft_chain_id(app_genesis):
            # The id every vote signs must be the one the app state (which every
            # transaction signs, and which elects the first committee) names.
            raise ValueError(
                f"chain_id {self.chain_id!r} is not the app state's "
                f"{cometbft_chain_id(app_genesis)!r}"
            )
        self.state = LedgerState.initial(app_genesis)
        # committee after block k, for k = h-2, h-1, h (the set at h is the one after h-2)
        self._committees: dict[int, tuple[bytes, ...]] = {0: self.state.committee}
        # checked heights' (time, validator set) while evidence of them may still come
        self._history: dict[int, tuple[tuple[int, int], ValidatorSet]] = {}
        self._oldest = 1
        self._prev_block_id = types_pb2.BlockID()
        self._prev_block_id.part_set_header.SetInParent()
        self._prev_results: list[dict] = []
        self.height = 0
        self.counts: Counter[str] = Counter()

    # --- committee bookkeeping ---------------------------------------------------------------

    def committee_after(self, height: int) -> tuple[bytes, ...]:
        return self._committees[max(height, 0)]

    def expected_set(self, height: int) -> ValidatorSet:
        """The validator set the rules put at ``height`` (H+2: the committee after h-2)."""
        return committee_set(self.committee_after(height - 2))

    # --- one height ----------------------------------------------------------------------------

    def check(self, served: Served, commit: dict) -> None:
        """Check height ``self.height + 1``: ``served`` its data, ``commit`` the commit
        that decided it (block h+1's ``last_commit``, or ``/commit``'s)."""
        h = self.height + 1
        if served.height != h:
            raise Bad(h, f"expected height {h}, got {served.height}")
        try:
            self._check(h, served, commit)
        except Bad:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise Bad(h, f"malformed response: {type(exc).__name__}: {exc}") from None
        self.height = h
        self.counts["blocks"] += 1

    def _check(self, h: int, served: Served, commit_doc: dict) -> None:
        block = served.block["block"]
        doc = block["header"]
        header = header_pb(doc)
        if header.chain_id != self.chain_id:
            raise Bad(h, f"chain_id {header.chain_id!r}, expected {self.chain_id!r}")
        if header.height != h:
            raise Bad(h, f"header height {header.height}")
        if header.version.block != BLOCK_PROTOCOL or header.version.app != self.app_version:
            raise Bad(h, f"version {header.version.block}/{header.version.app}")
        block_hash = header_hash(header)
        block_id = block_id_pb(served.block["block_id"])
        if block_id.hash != block_hash:
            raise Bad(
                h, f"header hashes to {_short(block_hash)}, block_id says {_short(block_id.hash)}"
            )
        if header.last_block_id.SerializeToString() != self._prev_block_id.SerializeToString():
            raise Bad(h, "last_block_id is not the previous block's id")

        # the block's contents against its header
        txs = [b64_bytes(t) for t in block["data"].get("txs") or []]
        if txs_hash(txs) != header.data_hash:
            raise Bad(h, "data_hash is not the hash of the block's transactions")
        try:
            evidence = [evidence_pb(e) for e in (block.get("evidence") or {}).get("evidence") or []]
        except UnsupportedEvidence as exc:
            raise Bad(h, str(exc)) from None
        if evidence_hash(evidence) != header.evidence_hash:
            raise Bad(h, "evidence_hash is not the hash of the block's evidence")
        last_commit = commit_pb(block["last_commit"])
        if commit_hash(last_commit) != header.last_commit_hash:
            raise Bad(h, "last_commit_hash is not the hash of the block's last commit")
        parts = part_set_header(block_pb(header, txs, evidence, last_commit))
        if parts != (block_id.part_set_header.total, block_id.part_set_header.hash):
            raise Bad(h, "the block id's part set header is not the block's encoding")
        if header.consensus_hash != self.consensus_hash:
            raise Bad(h, "consensus_hash is not the genesis consensus parameters'")
        if header.last_results_hash != results_hash(self._prev_results):
            raise Bad(h, "last_results_hash is not the previous block's results")

        # time: the genesis time, then the weighted median of the last commit's votes
        when = (header.time.seconds, header.time.nanos)
        prev_time, prev_set = self._history.get(h - 1, ((0, 0), ()))
        if h == 1:
            if when != self.genesis_time:
                raise Bad(h, "block 1's time is not the genesis time")
            if last_commit.signatures:
                raise Bad(h, "block 1 carries a last commit")
        else:
            if when <= prev_time:
                raise Bad(h, "block time is not after the previous block's")
            if when != _median_time(h, last_commit, prev_set):
                raise Bad(h, "block time is not the weighted median of the last commit's")

        # the validator set: CometBFT's hashes and the application's committee rule
        served_set = served_members(h, served.validators)
        if served_set == prev_set:
            served_set = prev_set  # one object per run of equal sets (the history keeps it)
        if validator_set_hash(served_set) != header.validators_hash:
            raise Bad(h, "the served validator set does not hash to validators_hash")
        expected = self.expected_set(h)
        if served_set != expected:
            raise Bad(h, _set_difference(h, served_set, expected))
        next_expected = committee_set(self.committee_after(h - 1))
        if validator_set_hash(next_expected) != header.next_validators_hash:
            raise Bad(h, "next_validators_hash is not the committee the rules elected")
        if not any(m.address == header.proposer_address for m in served_set):
            raise Bad(h, f"proposer {_short(header.proposer_address)} is not a validator")

        # the application's state before this block
        if header.app_hash != self.state.app_hash:
            raise Bad(
                h,
                f"app_hash {_short(header.app_hash)} is not the replay's "
                f"{_short(self.state.app_hash)} after block {h - 1}",
            )
        self.counts["app_hashes"] += 1

        # the commit that decided this block
        commit = commit_pb(commit_doc)
        if (
            commit.height != h
            or commit.block_id.SerializeToString() != block_id.SerializeToString()
        ):
            raise Bad(h, "the commit is not for this block")
        self.counts["signatures"] += verify_commit(h, self.chain_id, commit, served_set)

        # evidence: what it proves, and who it names
        misbehaving = [self._check_evidence(h, e.duplicate_vote_evidence) for e in evidence]

        # replay the block
        votes = _commit_votes(h, last_commit, prev_set)
        results, updates = replay_block(
            self.state,
            votes=votes,
            proposer=header.proposer_address,
            misbehaving_addresses=misbehaving,
            block_hash=block_hash,
            height=h,
            txs=txs,
        )
        served_results = served.results.get("txs_results") or []
        if len(served_results) != len(txs):
            raise Bad(h, f"{len(served_results)} tx results for {len(txs)} transactions")
        for i, ((code, _log), served_result) in enumerate(
            zip(results, served_results, strict=True)
        ):
            if int(served_result.get("code") or 0) != code:
                raise Bad(
                    h, f"tx {i}: node reports code {served_result.get('code')}, rules give {code}"
                )
        served_updates = sorted(
            (_update_key(u), int(u.get("power") or 0))
            for u in served.results.get("validator_updates") or []
        )
        if served_updates != updates:
            raise Bad(h, "the node's validator updates are not the replay's")
        if served.results.get("consensus_param_updates"):
            raise Bad(h, "consensus parameters changed: the application never changes them")
        served_hash = b64_bytes(served.results.get("app_hash"))
        if served_hash and served_hash != self.state.app_hash:
            raise Bad(h, "the node's app hash after this block is not the replay's")

        # what the next height is checked against
        self._committees[h] = self.state.committee
        self._committees.pop(h - 3, None)
        self._remember(h, when, served_set)
        self._prev_block_id = block_id
        self._prev_results = served_results
        self.counts["txs"] += len(txs)
        self.counts["txs_applied"] += sum(1 for code, _ in results if code == 0)
        self.counts["evidence"] += len(evidence)
        if rules.epoch_ends(self.state, h):
            self.counts["elections"] += 1
        if updates:
            self.counts["committee_changes"] += 1

    def _remember(self, h: int, when: tuple[int, int], members: ValidatorSet) -> None:
        """Keep height ``h``'s time and set while evidence of it can still be included:
        CometBFT expires evidence older than both the age in blocks and the age in time."""
        self._history[h] = (when, members)
        now_ns = when[0] * 10**9 + when[1]
        while self._oldest < h:
            (s, ns), _ = self._history[self._oldest]
            too_old = h - self._oldest > self.evidence_age_blocks and (
                now_ns - (s * 10**9 + ns) > self.evidence_age_ns
            )
            if not too_old:
                break
            del self._history[self._oldest]
            self._oldest += 1

    def _check_evidence(self, h: int, ev: evidence_pb2.DuplicateVoteEvidence) -> bytes:
        """A duplicate vote: two different votes of one validator for one height, round and
        step, both signed by it, with that height's powers and block time."""
        a, b = ev.vote_a, ev.vote_b
        at = a.height
        if not (0 < at < h) or at not in self._history:
            raise Bad(h, f"evidence for height {at}: not a checked height within the evidence age")
        at_time, members = self._history[at]
        if (a.height, a.round, a.type) != (b.height, b.round, b.type):
            raise Bad(h, "duplicate-vote evidence with votes of different steps")
        if a.validator_address != b.validator_address or a.block_id == b.block_id:
            raise Bad(h, "duplicate-vote evidence that is not a double vote")
        member = next((m for m in members if m.address == a.validator_address), None)
        if member is None:
            raise Bad(h, "duplicate-vote evidence against a non-validator")
        if ev.validator_power != member.power or ev.total_voting_power != sum(
            m.power for m in members
        ):
            raise Bad(h, "duplicate-vote evidence with wrong powers")
        if (ev.timestamp.seconds, ev.timestamp.nanos) != at_time:
            raise Bad(h, "duplicate-vote evidence with a wrong time")
        for vote in (a, b):
            message = vote_sign_bytes(
                self.chain_id,
                vote_type=vote.type,
                height=vote.height,
                round_=vote.round,
                block_id=vote.block_id,
                time=vote.timestamp,
            )
            if not signature_ok(member.public, vote.signature, message):
                raise Bad(h, "duplicate-vote evidence with a bad signature")
        return member.address


def _set_difference(h: int, served: ValidatorSet, expected: ValidatorSet) -> str:
    extra = sorted(_short(m.address) for m in set(served) - set(expected))
    missing = sorted(_short(m.address) for m in set(expected) - set(served))
    if not extra and not missing:
        return f"validator set at {h} is the committee, in the wrong order"
    return (
        f"validator set at {h} is not the committee the rules elected after block "
        f"{max(h - 2, 0)}: not elected {extra}, elected but missing {missing}"
    )


def _median_time(h: int, commit: types_pb2.Commit, validators: ValidatorSet) -> tuple[int, int]:
    """``MedianTime``: the vote time at which half the present votes' power is reached."""
    power = {m.address: m.power for m in validators}
    weighted = []
    for sig in commit.signatures:
        if sig.block_id_flag == FLAG_ABSENT:
            continue
        if sig.validator_address not in power:
            raise Bad(h, "last commit names a validator not in the previous height's set")
        weighted.append(
            ((sig.timestamp.seconds, sig.timestamp.nanos), power[sig.validator_address])
        )
    weighted.sort(key=lambda w: w[0])
    median = sum(w for _, w in weighted) // 2
    for when, weight in weighted:
        if median <= weight:
            return when
        median -= weight
    return (0, 0)


def verify_commit(h: int, chain_id: str, commit: types_pb2.Commit, validators: ValidatorSet) -> int:
    """``VerifyCommit``: one slot per validator, every present signature valid, and the
    power of those for the block > 2/3 of the set's. Returns the signatures checked."""
    if len(commit.signatures) != len(validators):
        raise Bad(h, f"commit has {len(commit.signatures)} slots for {len(validators)} validators")
    total = sum(m.power for m in validators)
    signed = checked = 0
    for member, sig in zip(validators, commit.signatures, strict=True):
        if sig.block_id_flag == FLAG_ABSENT:
            continue
        if sig.block_id_flag not in (FLAG_COMMIT, FLAG_NIL):
            raise Bad(h, f"commit signature with flag {sig.block_id_flag}")
        if sig.validator_address != member.address:
            raise Bad(h, f"commit slot of {_short(member.address)} names another validator")
        message = vote_sign_bytes(
            chain_id,
            vote_type=PRECOMMIT,
            height=commit.height,
            round_=commit.round,
            block_id=commit.block_id if sig.block_id_flag == FLAG_COMMIT else None,
            time=sig.timestamp,
        )
        if not signature_ok(member.public, sig.signature, message):
            raise Bad(h, f"commit signature of validator {_short(member.address)} is invalid")
        checked += 1
        if sig.block_id_flag == FLAG_COMMIT:
            signed += member.power
    if 3 * signed <= 2 * total:
        raise Bad(h, f"commit signed by {signed} of {total} voting power (needs > 2/3)")
    return checked


def _commit_votes(
    h: int, last_commit: types_pb2.Commit, validators: ValidatorSet
) -> list[tuple[bytes, bool]]:
    """``decided_last_commit.votes``: each validator of h-1 and whether it signed."""
    if h == 1:
        return []
    if len(last_commit.signatures) != len(validators):
        raise Bad(h, "last commit does not have one slot per validator of the previous height")
    return [
        (member.address, sig.block_id_flag == FLAG_COMMIT)
        for member, sig in zip(validators, last_commit.signatures, strict=True)
    ]


# --- reading a node ------------------------------------------------------------------------------


class NodeSource:
    """Batched JSON-RPC reads from one node; a batch that fails is retried smaller (nodes
    cap the calls per batch) and a call the node cannot answer yet is retried briefly
    (``/block_results`` may lag ``/status`` by a moment)."""

    RETRIES = 5
    RETRY_S = 0.3

    def __init__(self, url: str, *, timeout: float = 10.0, window: int = 16) -> None:
        self._client = LedgerClient([url], timeout=timeout)
        self._window = max(1, window)

    def close(self) -> None:
        self._client.close()

    def _batch(self, calls: Sequence[tuple[str, dict]]) -> list[dict]:
        for attempt in range(self.RETRIES):
            answers = self._client.batch(calls, errors=True)
            if all("error" not in a for a in answers):
                return answers
            if attempt + 1 < self.RETRIES:
                time.sleep(self.RETRY_S)
        failed = next((c, a["error"]) for c, a in zip(calls, answers, strict=True) if "error" in a)
        raise Unserved(failed[0], failed[1])

    def genesis(self) -> dict:
        answer = self._client.batch([("genesis", {})], errors=True)[0]
        if "error" not in answer:
            return answer["genesis"]
        first = self._batch([("genesis_chunked", {"chunk": "0"})])[0]
        data = [b64_bytes(first["data"])]
        for chunk in range(1, int(first["total"])):
            data.append(
                b64_bytes(self._batch([("genesis_chunked", {"chunk": str(chunk)})])[0]["data"])
            )
        return json.loads(b"".join(data))

    def latest(self) -> int:
        return int(self._client.call("status")["sync_info"]["latest_block_height"])

    def block(self, height: int) -> dict:
        return self._batch([("block", {"height": str(height)})])[0]

    def commit(self, height: int) -> dict:
        return self._batch([("commit", {"height": str(height)})])[0]["signed_header"]["commit"]

    def heights(self, start: int, stop: int) -> Iterator[Served]:
        """Heights ``start``..``stop`` in order."""
        h = start
        while h <= stop:
            last = min(stop, h + self._window - 1)
            try:
                served = self._fetch(h, last)
            except Unserved:
                raise
            except LedgerUnavailable:
                if self._window == 1:
                    raise
                self._window = max(1, self._window // 2)
                continue
            yield from served
            h = last + 1

    def _fetch(self, first: int, last: int) -> list[Served]:
        calls: list[tuple[str, dict]] = []
        for h in range(first, last + 1):
            height = str(h)
            calls.append(("block", {"height": height}))
            calls.append(("block_results", {"height": height}))
            calls.append(("validators", {"height": height, "page": "1", "per_page": str(PER_PAGE)}))
        answers = self._batch(calls)
        out = []
        for i, h in enumerate(range(first, last + 1)):
            block, results, validators = answers[3 * i : 3 * i + 3]
            members = list(validators.get("validators") or [])
            total = int(validators.get("total") or len(members))
            page = 1
            while len(members) < total:
                page += 1
                more = self._batch(
                    [
                        (
                            "validators",
                            {"height": str(h), "page": str(page), "per_page": str(PER_PAGE)},
                        )
                    ]
                )[0]
                if not more.get("validators"):
                    break
                members.extend(more["validators"])
            out.append(Served(h, block, results, members))
        return out


class Unserved(LedgerUnavailable):
    """The node answered a call with an error (a height it does not have, pruned, …)."""

    def __init__(self, call: tuple[str, dict], error: object) -> None:
        super().__init__(f"{call[0]} {call[1]}: {error}")
        self.call = call


def same_genesis(a: dict, b: dict) -> bool:
    """Whether two genesis documents are the same genesis. CometBFT serves its genesis time
    re-printed in RFC 3339 with trailing zeros of the fraction dropped, so the time is
    compared as an instant; every other member must be equal as JSON."""
    try:
        times = parse_time(a["genesis_time"]), parse_time(b["genesis_time"])
    except (KeyError, TypeError, ValueError):
        return a == b
    rest = [{k: v for k, v in doc.items() if k != "genesis_time"} for doc in (a, b)]
    return times[0] == times[1] and rest[0] == rest[1]


def verify_node(
    url: str, *, to: int | None = None, window: int = 16, genesis: dict | None = None
) -> ChainReport:
    """Re-verify the chain a node serves at ``url`` from its genesis up to ``to`` (default:
    its latest height). ``genesis`` is the trust anchor (the consortium's published
    ``genesis.json``): the node must serve exactly that genesis; without it the node's own
    genesis is taken on trust and the report says so (``genesis_trusted`` false). Raises
    :class:`LedgerUnavailable` when the node cannot be read at all and ``ValueError`` for a
    genesis that is not ours, another than the trusted one, or a ``to`` past the node."""
    source = NodeSource(url, window=window)
    try:
        served = source.genesis()
        if genesis is not None and not same_genesis(served, genesis):
            raise ValueError("the node serves another genesis than the trusted one")
        verifier = ChainVerifier(served)
        latest = source.latest()
        stop = latest if to is None else to
        if stop > latest:
            raise ValueError(f"the node is at height {latest}, below --to {stop}")
        report = run(verifier, source, stop, latest)
        report.genesis_trusted = genesis is not None
        return report
    finally:
        source.close()


def run(verifier: ChainVerifier, source: NodeSource, stop: int, latest: int) -> ChainReport:
    """Feed heights 1..``stop`` from ``source`` to ``verifier``; the report."""

    def report(bad: Bad | None) -> ChainReport:
        return ChainReport(
            ok=bad is None,
            height=verifier.height,
            first_bad_height=bad.height if bad else None,
            problem=bad.problem if bad else None,
            checked=dict(verifier.counts),
            chain_id=verifier.chain_id,
        )

    pending: Served | None = None
    try:
        try:
            for served in source.heights(1, min(stop + 1, latest)):
                if pending is not None:
                    verifier.check(pending, served.block["block"]["last_commit"])
                pending = served
                if served.height > stop:
                    break
            if pending is not None and pending.height == stop:
                verifier.check(pending, source.commit(stop))
        except Unserved as exc:
            raise Bad(verifier.height + 1, f"the node does not serve {exc}") from None
        except (KeyError, TypeError) as exc:
            raise Bad(verifier.height + 1, f"malformed response: {exc}") from None
    except Bad as bad:
        return report(bad)
    return report(None)
