"""The replay cache: one full verification per distinct block, every node's rows still checked.

Real SQLite files of a real 7-node embedded ledger (real consensus and signatures), copied
and changed per test the way an attacker with file access would."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from medshare.crypto.signing import SigningKey
from medshare.ledger import audit, chain
from medshare.ledger.embedded import EmbeddedLedger
from medshare.ledger.replay_cache import ReplayCache
from medshare.ledger.store import SQLiteStore, StoreCorrupted
from medshare.ledger.types import CommitCertificate, TxKind, Vote, VoteKind, canonical

SEVEN = tuple(f"node-{i}" for i in range(7))
DAMAGED = 2


def anchor_body(n: int) -> dict:
    return {"record": f"rec-{n}", "patient": "p-1", "dept": "0304", "digest": f"{n:064x}"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7-node ledger of a dozen blocks over several epochs (committee re-elections)."""
    directory = tmp_path_factory.mktemp("replay-cache") / "ledger"
    keys = [SigningKey.generate() for _ in range(3)]
    with EmbeddedLedger.create(directory, SEVEN, committee_size=4, epoch_blocks=3) as ledger:
        n = 0
        for batch in range(12):
            key = keys[batch % len(keys)]
            ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(n + i) for i in (0, 1)])
            n += 2
        assert ledger.height() >= 12
    return directory


@pytest.fixture
def ledger_dir(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built ledger, free to damage."""
    return Path(shutil.copytree(built, tmp_path / "ledger"))


@contextmanager
def stores(directory: Path) -> Iterator[list[SQLiteStore]]:
    opened = [SQLiteStore(directory / f"node-{i}.db", readonly=True) for i in range(len(SEVEN))]
    try:
        yield opened
    finally:
        for store in opened:
            store.close()


def rows(db: Path) -> dict[int, bytes]:
    with closing(sqlite3.connect(db)) as con:
        return {h: bytes(d) for h, d in con.execute("SELECT height, data FROM blocks")}


def put_row(db: Path, height: int, data: bytes) -> None:
    """What an attacker with file access does: rewrite one stored block row."""
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("UPDATE blocks SET data = ? WHERE height = ?", (data, height))


def flip_after(data: bytes, needle: bytes) -> bytes:
    """``data`` with the byte right after the first ``needle`` changed ('0' becomes '1')."""
    at = data.index(needle) + len(needle)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def node_key(path: Path) -> SigningKey:
    return SigningKey(bytes.fromhex(path.read_text().strip()))


def summary(state: chain.ChainState) -> tuple:
    return (
        state.height,
        state.head_hash,
        state.head_time_ms,
        state.state_root(),
        dict(state.nonces),
        state.validators,
        state.committee,
        state.head_proposer,
        state.head_committee,
    )


def uncached_error(db: Path) -> str:
    with closing(SQLiteStore(db, readonly=True)) as store, pytest.raises(StoreCorrupted) as info:
        audit.replay(store)
    return str(info.value)


# --- same result, one full verification per block ----------------------------------------------


def test_encoding_is_byte_identical_to_block_encode(built: Path) -> None:
    with stores(built) as opened:
        for store in opened:
            for block in store.blocks():
                assert block.encode() == canonical(block.to_json()) == store.raw(block.height)


def test_cached_replay_gives_the_uncached_state_and_verifies_each_block_once(built: Path) -> None:
    cache = ReplayCache()
    with stores(built) as opened:
        top = opened[0].height()
        assert {store.height() for store in opened} == {top}
        for store in opened:
            cached, plain = audit.replay(store, cache=cache), audit.replay(store)
            assert summary(cached) == summary(plain)
            assert cached.head_hash == store.get(top).hash
    # Node 0 applied every block; the six others reused them (their certificates differ
    # from node 0's in places: each is checked, not applied again).
    assert cache.applied == top
    assert cache.reused == 6 * top


def test_replayed_states_are_private_copies(built: Path) -> None:
    cache = ReplayCache()
    with stores(built) as opened:
        first = audit.replay(opened[0], cache=cache)
        expected = summary(first)
        first.nonces["ff" * 32] = 7  # a node's state is mutated as it commits
        first.height += 1
        again = audit.replay(opened[1], cache=cache)
        assert summary(again) == expected
        assert again is not first and again.nonces is not first.nonces


def test_stores_of_other_lengths_and_few_kept_states_give_the_uncached_state(
    ledger_dir: Path,
) -> None:
    """Nodes whose heads differ (one was down) restart from the nearest kept state."""
    top = max(rows(ledger_dir / "node-0.db"))
    for i, keep in ((1, top - 5), (3, top - 1), (4, 1)):
        with closing(sqlite3.connect(ledger_dir / f"node-{i}.db")) as con, con:
            con.execute("DELETE FROM blocks WHERE height > ?", (keep,))
    cache = ReplayCache(max_states=3)
    with stores(ledger_dir) as opened:
        for store in opened:
            assert summary(audit.replay(store, cache=cache)) == summary(audit.replay(store))
    assert cache.applied < 2 * top  # far from 7 full replays
    assert cache.reused > 0


def test_a_different_valid_certificate_is_checked_and_accepted(ledger_dir: Path) -> None:
    """Nodes may store different certificates of one block (any 2f+1 precommits): here one
    of another round, signed by the whole committee, which only a signature check accepts."""
    db = ledger_dir / f"node-{DAMAGED}.db"
    top = max(rows(db))
    height = top // 2
    with closing(SQLiteStore(db, readonly=True)) as store:
        block = store.get(height)
        state = audit.replay_to(store, height)
    keys = {k.public: k for k in map(node_key, ledger_dir.glob("keys/*.key"))}
    votes = [
        Vote.create(
            VoteKind.PRECOMMIT, height, 99, block.hash, keys[member], chain=state.config.chain_id
        )
        for member in state.head_committee
    ]
    put_row(db, height, block.with_certificate(CommitCertificate.from_votes(votes)).encode())
    cache = ReplayCache()
    with stores(ledger_dir) as opened:
        assert audit.verify_chain(opened[DAMAGED]).ok
        expected = summary(audit.replay(opened[0]))
        for store in opened:
            assert summary(audit.replay(store, cache=cache)) == expected
    assert cache.applied == top  # the new certificate was checked, the block not re-applied
    assert cache.reused == 6 * top


def test_a_certificate_of_too_few_signers_keeps_that_node_down(ledger_dir: Path) -> None:
    db = ledger_dir / f"node-{DAMAGED}.db"
    height = max(rows(db)) // 2
    with closing(SQLiteStore(db, readonly=True)) as store:
        block = store.get(height)
    cert = block.certificate
    short = CommitCertificate(cert.height, cert.round, cert.block_hash, cert.signatures[:2])
    put_row(db, height, block.with_certificate(short).encode())
    open_and_check_only_damaged_is_down(ledger_dir, height)


# --- a changed byte on one node is still found, and only that node stays down ----------------


def open_and_check_only_damaged_is_down(directory: Path, height: int) -> None:
    reason = uncached_error(directory / f"node-{DAMAGED}.db")
    assert reason.startswith(f"block {height}:")
    with EmbeddedLedger.open(directory) as ledger:
        assert ledger.alive() == [i != DAMAGED for i in range(len(SEVEN))]
        assert dict(ledger.boot_failures) == {SEVEN[DAMAGED]: f"StoreCorrupted: {reason}"}
        cache = ledger._cluster.replay_cache
        assert cache is not None and cache.reused >= 5 * ledger.height()  # the cache was used
        checks = ledger.verify()  # the audit path, uncached
        assert [c.ok for c in checks] == [i != DAMAGED for i in range(len(SEVEN))]
        assert checks[DAMAGED].error.startswith(f"height {height}:")


@pytest.mark.parametrize("where", ["first", "middle", "head"])
def test_a_changed_transaction_byte_keeps_that_node_down(ledger_dir: Path, where: str) -> None:
    db = ledger_dir / f"node-{DAMAGED}.db"
    stored = rows(db)
    with_txs = [h for h in sorted(stored) if json.loads(stored[h])["txs"]]
    height = {"first": with_txs[0], "middle": with_txs[len(with_txs) // 2], "head": with_txs[-1]}
    put_row(db, height[where], flip_after(stored[height[where]], b'"digest":"'))
    open_and_check_only_damaged_is_down(ledger_dir, height[where])


@pytest.mark.parametrize("where", ["middle", "head"])
def test_a_changed_certificate_byte_keeps_that_node_down(ledger_dir: Path, where: str) -> None:
    """A certificate of another round: every signature fails, nothing else changes."""
    db = ledger_dir / f"node-{DAMAGED}.db"
    stored = rows(db)
    height = max(stored) if where == "head" else max(stored) // 2
    doc = json.loads(stored[height])
    changed = stored[height].replace(
        b'"round":%d,"signatures"' % doc["certificate"]["round"],
        b'"round":%d,"signatures"' % (doc["certificate"]["round"] ^ 1),
        1,
    )
    assert changed.index(b'"signatures"') < changed.index(b'"header"')  # in the certificate
    assert len(changed) == len(stored[height]) and changed != stored[height]
    put_row(db, height, changed)
    open_and_check_only_damaged_is_down(ledger_dir, height)


def test_a_changed_header_byte_keeps_that_node_down(ledger_dir: Path) -> None:
    db = ledger_dir / f"node-{DAMAGED}.db"
    stored = rows(db)
    height = max(stored) // 2
    put_row(db, height, flip_after(stored[height], b'"time_ms":'))
    open_and_check_only_damaged_is_down(ledger_dir, height)


def test_every_node_damaged_alike_is_refused(ledger_dir: Path) -> None:
    """Agreement of the copies proves nothing: the first copy is verified in full too."""
    stored = rows(ledger_dir / "node-0.db")
    height = max(stored) // 2
    for i in range(len(SEVEN)):
        db = ledger_dir / f"node-{i}.db"
        put_row(db, height, flip_after(rows(db)[height], b'"digest":"'))
    with stores(ledger_dir) as opened:
        cache = ReplayCache()
        for store in opened:
            with pytest.raises(StoreCorrupted, match=f"^block {height}:"):
                audit.replay(store, cache=cache)
