"""The ABCI 2.0 adapter: CometBFT's protobuf requests in, the rules' answers out.

CometBFT calls the application on four connections (consensus, mempool, query,
snapshot); the socket server (:mod:`medshare.ledger.cometbft.server`) serves them all from
one event loop, so the methods here never run concurrently and need no locks.

Two views of the state are kept, as CometBFT's ABCI spec asks:

* the **committed** state, advanced only by ``FinalizeBlock`` → ``Commit``;
* the **mempool** view for ``CheckTx``: the committed nonces plus one for every
  transaction admitted since, so a sender can have several transactions in flight (each
  must carry the sender's next nonce: no gaps, no second transaction for a nonce already
  taken). After each ``Commit`` it restarts from the committed state and CometBFT
  re-checks the transactions left in its mempool, in order (``mempool.recheck``), which
  drops those a block made invalid. Without the re-check such transactions would stay in
  the mempool for good, and a sender who spread conflicting transactions over several
  nodes could fill the head of every mempool with them and starve proposals (found by
  an adversarial review).

A transaction is decoded and its signature verified once per process: ``CheckTx``
remembers the decoded transactions whose signature it checked, keyed by their exact bytes,
and the same bytes re-checked after a commit, in a proposal or in a decided block are
neither decoded nor verified again (equal bytes, equal transaction and signature).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

from medshare.crypto import signing
from medshare.ledger.app import rules
from medshare.ledger.app.genesis import Genesis
from medshare.ledger.app.state import BlockChanges, LedgerState
from medshare.ledger.app.store import StateStore
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.cometbft.proto.tendermint.crypto import keys_pb2
from medshare.ledger.cometbft.proto.tendermint.types import validator_pb2 as cmt_validator
from medshare.ledger.types import LedgerFormatError, Tx

APP_VERSION = 1
# Verified transactions are kept decoded, weighed by their size (a decoded transaction
# with its cached encodings takes several times its bytes: measured ≈ 8×) within a budget,
# and dropped once a block commits them.
VERIFIED_CACHE_BUDGET = 256 * 1024 * 1024


def cache_weight(raw: bytes) -> int:
    """What one cached transaction is charged against :data:`VERIFIED_CACHE_BUDGET`."""
    return 8 * len(raw) + 2048


@dataclass
class _Pending:
    """A finalized block waiting for ``Commit``."""

    state: LedgerState
    changes: BlockChanges
    txs: list[bytes]


class LedgerApplication:
    """One node's application instance over its own :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._state = store.load()
        self._pending: _Pending | None = None
        self._mempool_nonces: dict[str, int] = {}
        self._verified: OrderedDict[bytes, Tx] = OrderedDict()
        self._verified_weight = 0

    # --- info and genesis -----------------------------------------------------------------

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        state = self._state
        return abci.ResponseInfo(
            data="medshare",
            version="1",
            app_version=APP_VERSION,
            last_block_height=state.height if state else 0,
            last_block_app_hash=state.app_hash if state and state.height else b"",
        )

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        genesis = Genesis.from_json(json.loads(req.app_state_bytes or b"null"))
        state = LedgerState.initial(genesis)
        self._store.reset(state)
        self._state = state
        return abci.ResponseInitChain(
            validators=[
                _update(m, power) for m, power in rules.validator_updates((), state.committee)
            ],
            app_hash=state.app_hash,
        )

    def query(self, req: abci.RequestQuery) -> abci.ResponseQuery:
        state = self._committed()
        if req.path == "/state":
            value = json.dumps(state.summary()).encode()
        elif req.path == "/nonce":
            value = json.dumps({"next_nonce": state.nonces.get(req.data.hex(), 0)}).encode()
        elif req.path == "/identity":
            value = json.dumps({"identity": state.identities.get(req.data.hex())}).encode()
        elif req.path == "/published":
            name = req.data.decode("utf-8", "replace")
            value = json.dumps({"digest": state.published.get(name)}).encode()
        else:
            return abci.ResponseQuery(code=1, log=f"unknown query path {req.path!r}")
        return abci.ResponseQuery(code=0, value=value, height=state.height)

    # --- mempool --------------------------------------------------------------------------

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        state = self._committed()
        try:
            tx = self._decode(req.tx)
            sender = tx.sender.hex()
            expected = self._mempool_nonces.get(sender, state.nonces.get(sender, 0))
            rules.admit(state, tx, expected, verified=self._is_verified)
        except rules.TxRejected as exc:
            return abci.ResponseCheckTx(code=exc.code, log=exc.log)
        self._remember(tx)
        self._mempool_nonces[sender] = tx.nonce + 1
        return abci.ResponseCheckTx(code=0)

    # --- consensus ------------------------------------------------------------------------

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        """Propose the mempool's transactions that apply in order (all rules, on a scratch
        copy of the state), within the size cap: an honest proposer's block carries no
        transaction another replica would skip."""
        scratch = self._committed().clone()
        changes = BlockChanges()
        chosen: list[bytes] = []
        room = req.max_tx_bytes
        for raw in req.txs:
            if len(raw) > room:
                continue
            try:
                tx = self._decode(raw)
                rules.apply_tx(scratch, tx, changes, verified=self._is_verified)
            except (rules.TxRejected, LedgerFormatError, ValueError):
                continue
            self._remember(tx)
            chosen.append(raw)
            room -= len(raw)
        return abci.ResponsePrepareProposal(txs=chosen)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        """Reject a proposal carrying bytes that are not a well-signed transaction: only a
        faulty proposer makes one. State-dependent failures (nonce, permission) are not a
        reason to reject; they are skipped in ``FinalizeBlock`` like anywhere else."""
        accept = abci.ResponseProcessProposal.ACCEPT
        for raw in req.txs:
            try:
                tx = self._decode(raw)
                if not self._is_verified(tx):
                    tx.verify()
                    self._remember(tx)
            except (rules.TxRejected, signing.InvalidSignature):
                accept = abci.ResponseProcessProposal.REJECT
                break
        return abci.ResponseProcessProposal(status=accept)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        state = self._committed().clone()
        block = rules.DecidedBlock(
            req.height,
            req.hash,
            rules.CommitReport(
                tuple(
                    (v.validator.address, v.block_id_flag == cmt_validator.BLOCK_ID_FLAG_COMMIT)
                    for v in req.decided_last_commit.votes
                ),
                req.proposer_address,
            ),
            tuple(m.validator.address for m in req.misbehavior),
            tuple(req.txs),
        )
        outcome = rules.finalize(state, block, decode=self._decode, verified=self._is_verified)
        self._pending = _Pending(state, outcome.changes, list(req.txs))
        return abci.ResponseFinalizeBlock(
            tx_results=[abci.ExecTxResult(code=code, log=log) for code, log in outcome.results],
            validator_updates=[_update(m, power) for m, power in outcome.updates],
            app_hash=state.app_hash,
        )

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        if self._pending is None:
            raise RuntimeError("Commit without FinalizeBlock")
        self._store.save(self._pending.state, self._pending.changes)
        self._state = self._pending.state
        self._forget(self._pending.txs)  # committed: never checked again
        self._pending = None
        self._mempool_nonces = {}  # rebuilt by CometBFT's re-check of its mempool
        return abci.ResponseCommit(retain_height=0)

    # --- snapshots and vote extensions: not used -----------------------------------------

    def list_snapshots(self, req: abci.RequestListSnapshots) -> abci.ResponseListSnapshots:
        return abci.ResponseListSnapshots()

    def offer_snapshot(self, req: abci.RequestOfferSnapshot) -> abci.ResponseOfferSnapshot:
        return abci.ResponseOfferSnapshot(result=abci.ResponseOfferSnapshot.REJECT)

    def load_snapshot_chunk(
        self, req: abci.RequestLoadSnapshotChunk
    ) -> abci.ResponseLoadSnapshotChunk:
        return abci.ResponseLoadSnapshotChunk()

    def apply_snapshot_chunk(
        self, req: abci.RequestApplySnapshotChunk
    ) -> abci.ResponseApplySnapshotChunk:
        return abci.ResponseApplySnapshotChunk(result=abci.ResponseApplySnapshotChunk.ABORT)

    def extend_vote(self, req: abci.RequestExtendVote) -> abci.ResponseExtendVote:
        return abci.ResponseExtendVote()

    def verify_vote_extension(
        self, req: abci.RequestVerifyVoteExtension
    ) -> abci.ResponseVerifyVoteExtension:
        return abci.ResponseVerifyVoteExtension(status=abci.ResponseVerifyVoteExtension.ACCEPT)

    # --- internals ------------------------------------------------------------------------

    def _committed(self) -> LedgerState:
        if self._state is None:
            raise RuntimeError("the chain is not initialised (no InitChain yet)")
        return self._state

    def _decode(self, raw: bytes) -> Tx:
        """The decoded transaction: from the cache when these bytes were verified here."""
        cached = self._verified.get(raw)
        return cached if cached is not None else rules.decode(raw)

    def _is_verified(self, tx: Tx) -> bool:
        return self._verified.get(tx.encode()) is tx

    def _remember(self, tx: Tx) -> None:
        raw = tx.encode()
        if raw in self._verified:
            self._verified.move_to_end(raw)
            return
        self._verified[raw] = tx
        self._verified_weight += cache_weight(raw)
        while self._verified_weight > VERIFIED_CACHE_BUDGET and self._verified:
            old, _ = self._verified.popitem(last=False)
            self._verified_weight -= cache_weight(old)

    def _forget(self, raws: list[bytes]) -> None:
        for raw in raws:
            if self._verified.pop(raw, None) is not None:
                self._verified_weight -= cache_weight(raw)


def _update(public: bytes, power: int) -> abci.ValidatorUpdate:
    return abci.ValidatorUpdate(pub_key=keys_pb2.PublicKey(ed25519=public), power=power)
