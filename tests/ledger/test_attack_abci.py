"""Adversarial review of the ABCI adapter's mempool view and verified-transaction cache
(``medshare.ledger.app.abci``), in-process with CometBFT's protobuf requests.

Tests that FAIL on the current code demonstrate a vulnerability (their docstring says what
is wrong and the fix); tests that PASS are regression tests for attacks it resists.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest
from appkit import NODE_KEYS
from hypothesis import given, settings
from hypothesis import strategies as st
from test_abci_app import access_tx, check, commit_block, identity_tx, init

from medshare.crypto.signing import SigningKey
from medshare.ledger.app import rules
from medshare.ledger.app.abci import VERIFIED_CACHE_BUDGET, LedgerApplication, cache_weight
from medshare.ledger.app.store import StateStore
from medshare.ledger.cometbft.proto.tendermint.abci import types_pb2 as abci
from medshare.ledger.types import MAX_TX_BYTES, Tx, TxKind


@pytest.fixture
def app(tmp_path: Path) -> LedgerApplication:
    store = StateStore(tmp_path / "app.db")
    application = LedgerApplication(store)
    init(application)
    yield application
    store.close()


def _big_anchor(app: LedgerApplication, nonce: int, variant: int, key=NODE_KEYS[0]) -> Tx:
    """A ~48 KB node transaction of many short distinct strings (a realistic record anchor
    with a long list would look the same to the cache)."""
    pad = [f"{variant:x}-{i:x}" for i in range(5200)]
    body = {"record": "r", "patient": "p", "dept": "d", "digest": "00", "pad": pad}
    tx = Tx.create(TxKind.ANCHOR_RECORD, body, nonce, key, chain=app._committed().genesis.chain_id)
    assert len(tx.encode()) <= MAX_TX_BYTES
    return tx


# --- finding: one sender, one nonce, any number of admitted transactions ------------------------


def test_attack_check_tx_refuses_a_different_tx_for_an_already_pending_nonce(
    app: LedgerApplication,
) -> None:
    """REGRESSION (was HIGH at HEAD 8f67e77; fixed in 769a03c by the strict
    ``tx.nonce == expected`` rule in CheckTx and ``mempool.recheck = true``; the
    real-process half is ``test_attack_net::test_attack_stale_same_nonce_txs_starve_every_
    later_tx``). The attack: CheckTx admitted any nonce from
    the committed one up to the next pending one, so one registered sender gets an unbounded
    number of *different* transactions with the same nonce into the mempool. Only one can
    ever commit; with ``mempool.recheck = false`` the rest are never re-checked and never
    leave the mempool (no TTL is configured either). They sit at the front of CometBFT's
    FIFO mempool; ``ReapMaxBytesMaxGas`` stops at the first tx that does not fit, so once
    ~4 MiB of them (64 txs of 64 KiB) are there, every proposal is reaped from them alone,
    ``PrepareProposal`` drops them all, and no transaction of anyone commits again.

    Fix: remember the admitted tx per (sender, nonce) and refuse *different* bytes for a
    nonce already pending (identical bytes are CometBFT's cache's business); and, because a
    conflicting tx admitted on another node still goes stale when its twin commits, turn
    ``mempool.recheck`` back on (or set ``mempool.ttl_num_blocks``) so stale txs leave the
    mempool; a per-sender cap on pending txs bounds the rest."""
    first = _big_anchor(app, 0, 0)
    assert check(app, first).code == 0
    admitted = sum(check(app, _big_anchor(app, 0, v)).code == 0 for v in range(1, 9))
    assert admitted == 0, f"{admitted} more transactions with the same pending nonce admitted"


# --- finding: the verified-tx cache is bounded in entries, not bytes ---------------------------


def test_attack_verified_cache_memory_is_bounded(app: LedgerApplication) -> None:
    """FIXED (was medium): ``VERIFIED_CACHE`` bounds the cache at 50 000 entries, "≈ 50 MB at
    most" says the comment, but an entry is a decoded Tx of up to 64 KiB of JSON plus the
    raw key plus its cached signing and encoded bytes: ~0.5 MB for a 48 KB tx of short
    strings, i.e. ~20 GB for a full cache. The cache keeps committed transactions (nothing
    is ever removed but by LRU eviction), so steady traffic of large transactions — one
    registered identity sending 64 KiB accesses at consecutive nonces, ~64 per 4 MiB block,
    fills 50 000 entries in well under an hour — grows the app process until the OOM killer
    stops the node (still true after 769a03c's strict-nonce change).

    Fix: bound the cache by bytes (e.g. Σ len(raw) ≤ 64 MiB), drop a transaction's entry
    once a block commits it (FinalizeBlock/Commit), and keep only what is needed to skip
    the signature check (raw → sender, nonce), not the whole decoded object."""
    txs = [_big_anchor(app, n, n).encode() for n in range(30)]  # nonces 0..29, all admitted
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in txs:
            assert app.check_tx(abci.RequestCheckTx(tx=raw)).code == 0
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(txs)
    finally:
        tracemalloc.stop()
    fits = VERIFIED_CACHE_BUDGET // cache_weight(txs[0])
    worst = per_entry * fits
    assert worst <= 1 << 30, (
        f"{per_entry / 1024:.0f} KiB per cached tx x {fits} entries = {worst / 2**30:.1f} GiB"
    )
    # Committed transactions leave the cache.
    commit_block(app, 1, txs[:5])
    assert all(raw not in app._verified for raw in txs[:5])


# --- resisted ---------------------------------------------------------------------------------


def test_attack_resisted_gaps_and_committed_nonces_are_refused(app: LedgerApplication) -> None:
    """RESISTED: CheckTx refuses a nonce past the next pending one (a gap that would park a
    tx forever) and any nonce below the committed one (a replay), and an unregistered
    sender before its signature is checked."""
    alice = SigningKey.generate()
    commit_block(app, 1, [identity_tx(app, alice, 0).encode()])
    assert check(app, access_tx(app, alice, 1)).code == rules.Code.BAD_NONCE
    assert check(app, access_tx(app, alice, 0)).code == 0
    commit_block(app, 2, [access_tx(app, alice, 0).encode()])
    assert check(app, access_tx(app, alice, 0)).code == rules.Code.BAD_NONCE
    assert check(app, access_tx(app, SigningKey.generate(), 0)).code == rules.Code.NOT_PERMITTED


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.booleans()), max_size=12))
def test_attack_resisted_prepare_proposal_output_is_accepted_by_another_replica(
    tmp_path_factory, picks
) -> None:
    """RESISTED: whatever the proposer's mempool holds (gaps, replays, duplicates, forged
    signatures, junk), what its ``PrepareProposal`` returns is accepted by another
    replica's ``ProcessProposal`` with an empty cache, and every tx in it is applied
    (code 0) by that replica's ``FinalizeBlock``: an honest proposer never stalls a round."""
    folder = tmp_path_factory.mktemp("pp")
    stores = [StateStore(folder / f"{n}.db") for n in "ab"]
    try:
        a, b = (LedgerApplication(s) for s in stores)
        init(a)
        init(b)
        keys = [NODE_KEYS[0], NODE_KEYS[1], NODE_KEYS[2]]
        mempool = []
        for who, nonce, forge in picks:
            body = {"identity": "x", "key": hashlib.sha256(bytes([who, nonce])).digest().hex()}
            tx = Tx.create(
                TxKind.REGISTER_IDENTITY,
                body,
                nonce,
                keys[who],
                chain=a._committed().genesis.chain_id,
            )
            raw = tx.encode()
            if forge:
                raw = raw.replace(tx.signature.hex().encode(), b"00" * 64)
            mempool.append(raw)
        mempool.append(b"junk")
        chosen = list(
            a.prepare_proposal(abci.RequestPrepareProposal(txs=mempool, max_tx_bytes=10**6)).txs
        )
        status = b.process_proposal(abci.RequestProcessProposal(txs=chosen)).status
        assert status == abci.ResponseProcessProposal.ACCEPT
        from test_abci_app import finalize

        codes = [r.code for r in finalize(b, 1, chosen).tx_results]
        assert all(c == 0 for c in codes), codes
    finally:
        for s in stores:
            s.close()


def test_attack_resisted_a_tx_made_stale_by_a_conflicting_commit_fails_its_recheck(
    app: LedgerApplication,
) -> None:
    """RESISTED (769a03c): a sender spreads two different transactions with nonce 0
    over two nodes; this node admitted X, the block commits Y. After ``Commit`` the
    mempool view restarts from the committed state, so CometBFT's re-check of X (now
    ``mempool.recheck = true``) refuses it and X leaves the mempool instead of lingering
    at its head; the sender's next nonce is admitted."""
    alice = SigningKey.generate()
    commit_block(app, 1, [identity_tx(app, alice, 0).encode()])
    x = access_tx(app, alice, 0)
    y = Tx.create(
        TxKind.ACCESS,
        {"record": "other", "actor": "n", "area": "institution"},
        0,
        alice,
        chain=app._committed().genesis.chain_id,
    )
    assert check(app, x).code == 0
    commit_block(app, 2, [y.encode()])
    assert check(app, x, recheck=True).code == rules.Code.BAD_NONCE
    assert check(app, access_tx(app, alice, 1)).code == 0
