"""The in-process ledger harness: the application's rules behind the ledger port, blocks on
disk across processes, the handshake after a crash, and verification from genesis."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from medshare.crypto.signing import SigningKey
from medshare.ledger.app.rules import Code
from medshare.ledger.inprocess import InProcessLedger
from medshare.ledger.port import LedgerPort, LedgerUnavailable, TxRejected, sign
from medshare.ledger.types import TxKind


def access(n: int) -> dict:
    return {"record": f"r-{n}", "actor": "nurse", "area": "institution", "patient": "p"}


@pytest.fixture
def ledger(tmp_path: Path):
    ledger = InProcessLedger.create(tmp_path / "ledger", nodes=4, committee=4, epoch=3)
    yield ledger
    ledger.close()


def register(ledger: InProcessLedger, *keys: SigningKey) -> None:
    bodies = [{"identity": f"person-{i}", "key": k.public.hex()} for i, k in enumerate(keys)]
    ledger.sign_and_submit(ledger.node_key(0), TxKind.REGISTER_IDENTITY, bodies)


def test_it_is_a_ledger_port_with_the_genesis_committee(ledger: InProcessLedger) -> None:
    assert isinstance(ledger, LedgerPort)
    assert ledger.node_names == ("node-0", "node-1", "node-2", "node-3")
    assert sorted(ledger.committee()) == list(ledger.node_names)
    assert ledger.height() == 0 and list(ledger.txs()) == []
    key_file = ledger.directory / "keys" / "0.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_one_block_per_submit_with_registered_senders_only(ledger: InProcessLedger) -> None:
    alice, stranger = SigningKey.generate(), SigningKey.generate()
    register(ledger, alice)
    assert ledger.registered(alice.public) == "person-0"
    assert ledger.registered(stranger.public) is None
    done = ledger.sign_and_submit(alice, TxKind.ACCESS, [access(0), access(1)])
    assert [(c.height, c.index) for c in done] == [(2, 0), (2, 1)]
    assert done[0].timestamp_ms < ledger.find(done[1].tx.txid).timestamp_ms + 1
    assert ledger.next_nonce(alice.public) == 2
    with pytest.raises(TxRejected) as refused:
        ledger.sign_and_submit(stranger, TxKind.ACCESS, [access(2)])
    assert refused.value.code == Code.NOT_PERMITTED and ledger.height() == 2


def test_a_refusal_refuses_the_whole_batch(ledger: InProcessLedger) -> None:
    alice, stranger = SigningKey.generate(), SigningKey.generate()
    register(ledger, alice)
    good = sign(ledger, alice, TxKind.ACCESS, [access(0)])
    bad = sign(ledger, stranger, TxKind.ACCESS, [access(1)])
    with pytest.raises(TxRejected) as refused:
        ledger.submit(good + bad)
    assert refused.value.index == 1 and refused.value.committed == []
    assert ledger.height() == 1 and ledger.find(good[0].txid) is None
    # Nothing of the refused batch lingers: the same transaction commits alone later.
    assert ledger.submit(good)[0].height == 2


def test_a_tx_the_rules_skip_is_reported_and_never_read_back(ledger: InProcessLedger) -> None:
    alice = SigningKey.generate()
    register(ledger, alice)
    again = {"identity": "twice", "key": alice.public.hex()}
    node = ledger.node_key(1)
    txs = sign(ledger, node, TxKind.REGISTER_IDENTITY, [again])
    txs += sign(ledger, alice, TxKind.ACCESS, [access(0)])
    with pytest.raises(TxRejected) as skipped:
        ledger.submit(txs)
    assert skipped.value.code == Code.REJECTED and skipped.value.index == 0
    assert [c.tx.txid for c in skipped.value.committed] == [txs[1].txid]
    assert ledger.find(txs[0].txid) is None
    assert [c.tx.kind for c in ledger.txs()] == [TxKind.REGISTER_IDENTITY, TxKind.ACCESS]


def test_blocks_survive_reopening_and_elections_follow_the_app(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    alice = SigningKey.generate()
    with InProcessLedger.create(directory, nodes=6, committee=4, epoch=3) as ledger:
        register(ledger, alice)
        for n in range(8):
            ledger.sign_and_submit(alice, TxKind.ACCESS, [access(n)])
        committee = ledger.committee()
    with InProcessLedger.open(directory), pytest.raises(LedgerUnavailable, match="another"):
        InProcessLedger.open(directory)
    with InProcessLedger.open(directory) as ledger:
        assert ledger.height() == 9 and ledger.committee() == committee
        assert len(list(ledger.txs(TxKind.ACCESS))) == 8
        assert len(list(ledger.txs(start_height=5))) == 5
        (check,) = ledger.verify()
        assert check.ok and check.height == 9


def test_the_application_one_block_behind_is_caught_up_on_open(tmp_path: Path) -> None:
    """A process killed between storing a block and the application's Commit."""
    directory = tmp_path / "ledger"
    alice = SigningKey.generate()
    with InProcessLedger.create(directory, nodes=4, committee=4) as ledger:
        register(ledger, alice)
    saved = tmp_path / "app-before.db"
    shutil.copy(directory / "app.db", saved)
    with InProcessLedger.open(directory) as ledger:
        ledger.sign_and_submit(alice, TxKind.ACCESS, [access(0)])
    for suffix in ("-wal", "-shm"):
        Path(f"{directory / 'app.db'}{suffix}").unlink(missing_ok=True)
    shutil.copy(saved, directory / "app.db")
    with InProcessLedger.open(directory) as ledger:
        assert ledger.next_nonce(alice.public) == 1 and ledger.height() == 2
        assert ledger.verify()[0].ok


def test_verify_names_the_first_changed_block(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    alice = SigningKey.generate()
    with InProcessLedger.create(directory, nodes=4, committee=4) as ledger:
        register(ledger, alice)
        for n in range(4):
            ledger.sign_and_submit(alice, TxKind.ACCESS, [access(n)])
    with closing(sqlite3.connect(directory / "blocks.db")) as db, db:
        raw = db.execute("SELECT raw FROM txs WHERE height = 3").fetchone()[0]
        changed = raw.replace(b'"r-1"', b'"r-9"')
        db.execute("UPDATE txs SET raw = ? WHERE height = 3", (changed,))
    with InProcessLedger.open(directory) as ledger:
        (check,) = ledger.verify()
    assert not check.ok and check.height == 2
    assert check.error.startswith("height 3: block hash")
