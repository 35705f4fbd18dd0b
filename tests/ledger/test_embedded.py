"""The embedded consortium ledger: real SQLite files, real signatures, real consensus."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medshare.crypto.signing import SigningKey
from medshare.ledger.embedded import (
    CommittedTx,
    EmbeddedLedger,
    LedgerUnavailable,
    TxRejected,
)
from medshare.ledger.types import Tx, TxKind

FOUR = ("hospital-a", "hospital-b", "clinic-c", "regulator")
SEVEN = tuple(f"node-{i}" for i in range(7))


def anchor_body(n: int) -> dict:
    return {"record": f"rec-{n}", "patient": "p-1", "dept": "0304", "digest": f"{n:064x}"}


def anchor(chain_id: str, key: SigningKey, nonce: int) -> Tx:
    return Tx.create(TxKind.ANCHOR_RECORD, anchor_body(nonce), nonce, key, chain=chain_id)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[EmbeddedLedger]:
    with EmbeddedLedger.create(tmp_path / "ledger", FOUR) as opened:
        yield opened


def flip_byte(db: Path, height: int, needle: bytes) -> None:
    """What an attacker with file access does: change one byte of a stored block row."""
    con = sqlite3.connect(db)
    with con:
        (data,) = con.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        at = data.index(needle) + len(needle)
        changed = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
        con.execute("UPDATE blocks SET data = ? WHERE height = ?", (changed, height))
    con.close()


# --- create, close, open ------------------------------------------------------------------------


def test_create_writes_manifest_without_secrets_and_private_keys(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    with EmbeddedLedger.create(directory, FOUR, committee_size=4, epoch_blocks=3) as ledger:
        assert ledger.node_names == FOUR
        assert ledger.height() == 0
        assert sorted(ledger.committee()) == sorted(FOUR)
    manifest = json.loads((directory / "ledger.json").read_text())
    assert manifest["nodes"] == list(FOUR)
    assert manifest["chain"]["epoch_length"] == 3
    for i in range(len(FOUR)):
        key_file = directory / "keys" / f"{i}.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip() not in (directory / "ledger.json").read_text()
        assert (directory / f"node-{i}.db").is_file()
    assert stat.S_IMODE((directory / "keys").stat().st_mode) == 0o700


def test_submit_close_open_keeps_txs_nonces_and_increasing_time(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    key = SigningKey.generate()
    with EmbeddedLedger.create(directory, FOUR) as ledger:
        first = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(n) for n in (0, 1)])
        assert ledger.next_nonce(key.public) == 2
    files = sorted(p.name for p in directory.iterdir())
    before = time.time_ns() // 1_000_000
    with EmbeddedLedger.open(directory) as ledger:
        assert [c.tx for c in ledger.txs(TxKind.ANCHOR_RECORD)] == [c.tx for c in first]
        assert ledger.next_nonce(key.public) == 2
        height = ledger.height()
        (later,) = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(2)])
    assert sorted(p.name for p in directory.iterdir()) == files  # restored, not recreated
    assert later.tx.nonce == 2 and later.height > height
    assert later.timestamp_ms > first[-1].timestamp_ms and later.timestamp_ms >= before
    with EmbeddedLedger.open(directory) as ledger:
        assert [c.tx.nonce for c in ledger.txs()] == [0, 1, 2]
        assert ledger.find(later.tx.txid) == later
        assert all(check.ok for check in ledger.verify())


def test_open_refuses_missing_or_foreign_directory(tmp_path: Path) -> None:
    with pytest.raises(LedgerUnavailable, match="no ledger directory"):
        EmbeddedLedger.open(tmp_path / "nowhere")
    with pytest.raises(LedgerUnavailable, match=r"not a ledger \(no ledger.json\)"):
        EmbeddedLedger.open(tmp_path)


def test_open_refuses_a_missing_node_database(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    EmbeddedLedger.create(directory, FOUR).close()
    (directory / "node-1.db").unlink()
    with pytest.raises(LedgerUnavailable, match=r"node-1\.db is missing"):
        EmbeddedLedger.open(directory)


def test_create_refuses_an_existing_ledger(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    EmbeddedLedger.create(directory, FOUR).close()
    with pytest.raises(FileExistsError, match="already holds a ledger"):
        EmbeddedLedger.create(directory, FOUR)
    with EmbeddedLedger.open(directory) as ledger:  # and left it intact
        assert ledger.node_names == FOUR


def test_second_open_of_an_open_ledger_is_refused(ledger: EmbeddedLedger, tmp_path: Path) -> None:
    with pytest.raises(LedgerUnavailable, match="open in another process"):
        EmbeddedLedger.open(tmp_path / "ledger")


def test_closed_ledger_refuses_use(tmp_path: Path) -> None:
    ledger = EmbeddedLedger.create(tmp_path / "ledger", FOUR)
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(LedgerUnavailable, match="closed"):
        ledger.height()


# --- submitting ---------------------------------------------------------------------------------


def test_sign_and_submit_assigns_consecutive_nonces_per_sender(ledger: EmbeddedLedger) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    a = ledger.sign_and_submit(alice, TxKind.ANCHOR_RECORD, [anchor_body(n) for n in range(3)])
    b = ledger.sign_and_submit(bob, TxKind.ANCHOR_RECORD, [anchor_body(9)])
    more = ledger.sign_and_submit(alice, TxKind.ANCHOR_RECORD, [anchor_body(3)])
    assert [c.tx.nonce for c in a + more] == [0, 1, 2, 3]
    assert [c.tx.sender for c in a] == [alice.public] * 3
    assert b[0].tx.nonce == 0
    assert (ledger.next_nonce(alice.public), ledger.next_nonce(bob.public)) == (4, 1)


def test_submit_returns_txs_in_given_order_with_their_place(ledger: EmbeddedLedger) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    txs = [
        anchor(ledger.chain_id, bob, 0),
        anchor(ledger.chain_id, alice, 0),
        anchor(ledger.chain_id, bob, 1),
    ]
    committed = ledger.submit(txs)
    assert [c.tx for c in committed] == txs
    for c in committed:
        assert isinstance(c, CommittedTx)
        assert ledger.find(c.tx.txid) == c
        assert c.height <= ledger.height()
    assert ledger.find("00" * 32) is None
    assert [c.tx for c in ledger.txs(TxKind.ANCHOR_RECORD)] == [
        c.tx for c in sorted(committed, key=lambda c: (c.height, c.index))
    ]
    assert list(ledger.txs(TxKind.GRANT)) == []


def test_replayed_tx_is_rejected(ledger: EmbeddedLedger) -> None:
    key = SigningKey.generate()
    tx = anchor(ledger.chain_id, key, 0)
    ledger.submit([tx])
    height = ledger.height()
    with pytest.raises(TxRejected, match="already committed") as caught:
        ledger.submit([tx])
    assert caught.value.index == 0 and caught.value.committed == []
    stale = Tx.create(TxKind.ANCHOR_RECORD, anchor_body(7), 0, key, chain=ledger.chain_id)
    with pytest.raises(TxRejected, match="stale nonce 0"):
        ledger.submit([stale])
    assert ledger.height() == height and ledger.next_nonce(key.public) == 1


def test_tx_signed_for_another_consortium_is_refused(ledger: EmbeddedLedger) -> None:
    key = SigningKey.generate()
    elsewhere = "ab" * 16
    assert elsewhere != ledger.chain_id
    with pytest.raises(TxRejected, match="another chain") as caught:
        ledger.submit([anchor(ledger.chain_id, key, 0), anchor(elsewhere, key, 1)])
    assert caught.value.index == 1 and ledger.height() == 0  # nothing half-committed


def test_forged_signature_rejects_the_whole_batch(ledger: EmbeddedLedger) -> None:
    key, mallory = SigningKey.generate(), SigningKey.generate()
    good = anchor(ledger.chain_id, key, 0)
    altered = dataclasses.replace(
        anchor(ledger.chain_id, key, 1), body=anchor_body(99)
    )  # body changed after
    claimed = dataclasses.replace(
        anchor(ledger.chain_id, mallory, 0), sender=key.public
    )  # signed by another
    for forged in (altered, claimed):
        with pytest.raises(TxRejected, match="invalid signature") as caught:
            ledger.submit([good, forged])
        assert isinstance(caught.value, ValueError) and caught.value.index == 1
    assert ledger.find(good.txid) is None and ledger.height() == 0  # nothing half-committed
    assert ledger.submit([good])[0].tx == good


def test_nonce_gaps_and_malformed_bodies_are_rejected(ledger: EmbeddedLedger) -> None:
    key = SigningKey.generate()
    with pytest.raises(TxRejected, match="nonce gap: 1 given, 0 expected"):
        ledger.submit([anchor(ledger.chain_id, key, 1)])
    with pytest.raises(TxRejected, match="twice in this batch"):
        ledger.submit([anchor(ledger.chain_id, key, 0), anchor(ledger.chain_id, key, 0)])
    with pytest.raises(TxRejected, match="lacks dept, digest"):
        ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [{"record": "r", "patient": "p"}])
    assert ledger.submit([]) == []


# --- faults -------------------------------------------------------------------------------------


def test_kill_one_of_seven_then_restart_catches_up(tmp_path: Path) -> None:
    key = SigningKey.generate()
    with EmbeddedLedger.create(tmp_path / "ledger", SEVEN, committee_size=4) as ledger:
        ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(0)])
        victim = SEVEN.index(ledger.committee()[0])  # a member: its rounds must time out
        ledger.kill_node(victim)
        assert ledger.alive() == [i != victim for i in range(7)]
        done = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(n) for n in (1, 2)])
        assert [c.tx.nonce for c in done] == [1, 2]
        behind = ledger.verify()[victim].height
        assert behind < ledger.height()
        ledger.restart_node(victim)
        assert all(ledger.alive())
        checks = ledger.verify()
        assert all(c.ok for c in checks)
        assert {c.height for c in checks} == {ledger.height()}  # same head everywhere
        ledger.kill_node((victim + 1) % 7)
        (last,) = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(3)])
    with EmbeddedLedger.open(tmp_path / "ledger") as ledger:  # killing lasts one session
        assert all(ledger.alive())
        assert ledger.find(last.tx.txid) == last
        # The node killed last starts a block behind and catches up; lost rounds may have
        # run the simulated clock ahead of the wall clock, yet block time keeps increasing.
        (again,) = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(4)])
        assert again.tx.nonce == 4 and again.timestamp_ms > last.timestamp_ms
        checks = ledger.verify()
        assert all(c.ok for c in checks) and {c.height for c in checks} == {ledger.height()}


def test_without_a_quorum_submit_is_unavailable_and_loses_nothing(ledger: EmbeddedLedger) -> None:
    key = SigningKey.generate()
    ledger.kill_node(0)
    ledger.kill_node(1)  # 2 of 4 members down: 2f+1 = 3 is out of reach
    with pytest.raises(LedgerUnavailable, match="only 2 of the 4 committee members"):
        ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(0)])
    ledger.restart_node(1)
    (committed,) = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(0)])
    assert committed.tx.nonce == 0
    with pytest.raises(IndexError):
        ledger.kill_node(4)


def test_verify_names_the_tampered_height_and_the_node_stays_down(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    key = SigningKey.generate()
    with EmbeddedLedger.create(directory, FOUR) as ledger:
        ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(0)])
        (target,) = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(1)])
        ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(2)])
        assert all(c.ok for c in ledger.verify())
        flip_byte(directory / "node-2.db", target.height, b'"record":"')
        checks = ledger.verify()
    assert [c.ok for c in checks] == [True, True, False, True]
    bad = checks[2]
    assert bad.name == FOUR[2] and bad.height == target.height - 1
    assert bad.error is not None and bad.error.startswith(f"height {target.height}:")
    with EmbeddedLedger.open(directory) as ledger:  # the damaged node does not boot; 3 of 4 go on
        assert ledger.alive() == [True, True, False, True]
        assert FOUR[2] in ledger.boot_failures
        (after,) = ledger.sign_and_submit(key, TxKind.ANCHOR_RECORD, [anchor_body(3)])
        assert after.tx.nonce == 3
        with pytest.raises(LedgerUnavailable, match=f"node {FOUR[2]} does not start"):
            ledger.restart_node(2)
