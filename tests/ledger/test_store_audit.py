"""Node storage, full-chain verification, inclusion proofs, and the ``medshare ledger`` CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from chainkit import Kit
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.ledger import audit
from medshare.ledger.store import MemoryStore, SQLiteStore, StoreCorrupted


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, list]:
    path = tmp_path / "node.db"
    store = SQLiteStore(path)
    txs = Kit.new(nodes=5, committee=4, epoch_length=3).fill(store, blocks=8, txs_per_block=3)
    store.close()
    return path, txs


@pytest.mark.parametrize("make", [MemoryStore, lambda: SQLiteStore(":memory:")])
def test_store_appends_in_order_and_indexes_txs(make) -> None:
    store = make()
    txs = Kit.new().fill(store, blocks=3)
    assert store.height() == 3
    assert [b.height for b in store.blocks()] == [0, 1, 2, 3]
    assert store.find_tx(txs[-1].txid) == (3, 1)
    assert store.find_tx("00" * 32) is None
    with pytest.raises(ValueError, match="cannot append block 2"):
        store.append(store.get(2))
    store.put_meta("wal", b"x")
    store.put_meta("wal", b"y")
    assert store.get_meta("wal") == b"y"


def test_sqlite_store_survives_reopen(db: tuple[Path, list]) -> None:
    path, txs = db
    store = SQLiteStore(path)
    assert store.height() == 8
    assert store.find_tx(txs[0].txid) == (1, 0)
    assert store.get_meta(audit.CONFIG_KEY) is not None
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_verify_accepts_an_intact_chain(db: tuple[Path, list]) -> None:
    report = audit.verify_chain(SQLiteStore(db[0]))
    assert report.ok and report.height == 8 and report.first_bad_height is None


def _flip_byte(path: Path, height: int, needle: bytes) -> None:
    con = sqlite3.connect(path)
    (data,) = con.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
    at = data.index(needle)
    changed = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    con.execute("UPDATE blocks SET data = ? WHERE height = ?", (changed, height))
    con.commit()
    con.close()


@pytest.mark.parametrize(
    "needle",
    [b'"digest":"ab', b'"state_root":"', b'"signature":"', b'"time_ms":', b'{"certificate"'],
)
def test_verify_names_the_first_altered_height(db: tuple[Path, list], needle: bytes) -> None:
    path, _ = db
    _flip_byte(path, 5, needle)
    report = audit.verify_chain(SQLiteStore(path))
    assert not report.ok
    assert report.first_bad_height == 5
    assert report.height == 4


def test_verify_detects_a_deleted_block(db: tuple[Path, list]) -> None:
    path, _ = db
    con = sqlite3.connect(path)
    con.execute("DELETE FROM blocks WHERE height = 3")
    con.commit()
    report = audit.verify_chain(SQLiteStore(path))
    assert report.first_bad_height == 3 and "missing" in report.reason


def test_verify_detects_a_swapped_chain_config(db: tuple[Path, list]) -> None:
    path, _ = db
    store = SQLiteStore(path)
    config = json.loads(store.get_meta(audit.CONFIG_KEY))
    config["epoch_length"] = 4
    store.put_meta(audit.CONFIG_KEY, json.dumps(config).encode())
    report = audit.verify_chain(store)
    assert not report.ok and report.first_bad_height == 0


def test_proof_round_trip_and_tampering(db: tuple[Path, list]) -> None:
    path, txs = db
    proof = audit.make_proof(SQLiteStore(path), txs[7].txid)
    summary = audit.check_proof(proof)
    assert summary["ok"] and summary["height"] == 3 and summary["signers"] >= 3
    bad_tx = json.loads(json.dumps(proof))
    bad_tx["tx"]["body"]["digest"] = "cd" * 32
    with pytest.raises(audit.ProofError, match="txid"):
        audit.check_proof(bad_tx)
    bad_path = json.loads(json.dumps(proof))
    bad_path["merkle"]["path"][0] = "00" * 32
    with pytest.raises(audit.ProofError, match="Merkle"):
        audit.check_proof(bad_path)
    short_cert = json.loads(json.dumps(proof))
    short_cert["certificate"]["signatures"] = short_cert["certificate"]["signatures"][:2]
    with pytest.raises(audit.ProofError, match="needs 3"):
        audit.check_proof(short_cert)
    other_chain = {**proof, "chain_id": "ab" * 16}  # not the chain the tx and votes name
    with pytest.raises(audit.ProofError, match="another chain than the proof's"):
        audit.check_proof(other_chain)
    with pytest.raises(audit.ProofError, match="is for chain"):
        audit.check_proof(proof, trusted_chain_id="ab" * 16)
    with pytest.raises(audit.ProofError, match="malformed proof"):
        audit.check_proof({k: v for k, v in proof.items() if k != "chain_id"})
    with pytest.raises(audit.ProofError, match="not a medshare"):
        audit.check_proof({"type": "x"})


def test_replay_raises_on_corruption(db: tuple[Path, list]) -> None:
    path, _ = db
    _flip_byte(path, 2, b'"time_ms":')
    with pytest.raises(StoreCorrupted, match="block 2"):
        audit.replay(SQLiteStore(path))


def test_cli_verify_prove_check(db: tuple[Path, list], tmp_path: Path) -> None:
    path, txs = db
    runner = CliRunner()
    result = runner.invoke(app, ["ledger", "verify", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verified_height"] == 8
    result = runner.invoke(app, ["ledger", "prove", "--db", str(path), "--tx", txs[4].txid])
    assert result.exit_code == 0, result.output
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(result.stdout)
    result = runner.invoke(app, ["ledger", "check-proof", str(proof_file)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["txid"] == txs[4].txid
    _flip_byte(path, 6, b'"digest":"ab')
    result = runner.invoke(app, ["ledger", "verify", "--db", str(path)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["first_bad_height"] == 6


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["ledger", "verify", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no such database" in result.output
    empty = tmp_path / "empty.db"
    SQLiteStore(empty).close()
    result = runner.invoke(app, ["ledger", "prove", "--db", str(empty), "--tx", "ab" * 32])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["ledger", "check-proof", str(bad)])
    assert result.exit_code == 2 and "not JSON" in result.output


def test_verify_opens_read_only_and_refuses_foreign_files(tmp_path: Path) -> None:
    runner = CliRunner()
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    result = runner.invoke(app, ["ledger", "verify", "--db", str(text)])
    assert result.exit_code == 2 and "not a medshare node database" in result.output
    assert text.read_text() == "not a database"  # untouched
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE blocks (x INTEGER)")
    size = foreign.stat().st_size
    for command in (["verify"], ["prove", "--tx", "ab" * 32]):
        result = runner.invoke(app, ["ledger", *command[:1], "--db", str(foreign), *command[1:]])
        assert result.exit_code == 2 and "Traceback" not in result.output
    assert foreign.stat().st_size == size


def test_proof_after_an_ejection_names_the_signing_committee(tmp_path: Path) -> None:
    from medshare.ledger.types import Equivocation, TxKind, Vote, VoteKind

    kit = Kit.new(nodes=5, committee=4, epoch_length=50)
    store = MemoryStore()
    kit.fill(store, blocks=1)
    offender = kit.key(kit.state.committee[1])
    a = Vote.create(VoteKind.PREVOTE, 9, 0, "aa" * 32, offender, chain=kit.config.chain_id)
    b = Vote.create(VoteKind.PREVOTE, 9, 0, "bb" * 32, offender, chain=kit.config.chain_id)
    neighbour = kit.tx(3)
    block = kit.next_block([kit.tx(0, TxKind.EVIDENCE, Equivocation(a, b).to_body()), neighbour])
    store.append(block)
    assert offender.public not in kit.state.committee  # re-elected after the evidence
    assert audit.check_proof(audit.make_proof(store, neighbour.txid))["ok"]


def test_prove_on_a_chain_that_does_not_verify_is_a_clear_error(db: tuple[Path, list]) -> None:
    path, txs = db
    _flip_byte(path, 2, b'"time_ms":')
    result = CliRunner().invoke(app, ["ledger", "prove", "--db", str(path), "--tx", txs[-1].txid])
    assert result.exit_code == 1 and "database is corrupted: block 2" in result.output


def test_check_proof_against_the_chain_refuses_an_invented_committee(
    db: tuple[Path, list], tmp_path: Path
) -> None:
    from medshare.crypto.signing import SigningKey
    from medshare.ledger.types import CommitCertificate, Vote, VoteKind

    path, txs = db
    proof = audit.make_proof(SQLiteStore(path), txs[2].txid)
    assert audit.check_proof(proof)["committee_trusted"] is False
    trusted = audit.committee_at(SQLiteStore(path), proof["height"])
    assert audit.check_proof(proof, trusted)["committee_trusted"] is True
    # a forger signs the real header alone and lists itself as the committee
    forger = SigningKey.generate()
    vote = Vote.create(
        VoteKind.PRECOMMIT, proof["height"], 0, proof["block_hash"], forger, chain=proof["chain_id"]
    )
    forged = {**proof, "committee": [forger.public.hex()]}
    forged["certificate"] = CommitCertificate.from_votes([vote]).to_json()
    assert audit.check_proof(forged)["ok"]  # self-consistent, but…
    with pytest.raises(audit.ProofError, match="not the one that certified"):
        audit.check_proof(forged, trusted)
    forged_file = tmp_path / "forged.json"
    forged_file.write_text(json.dumps(forged))
    result = CliRunner().invoke(app, ["ledger", "check-proof", str(forged_file), "--db", str(path)])
    assert result.exit_code == 1 and "not the one that certified" in result.output


def test_check_proof_against_a_db_refuses_a_proof_from_another_chain(tmp_path: Path) -> None:
    """A test chain run with the production validator keys: its proofs carry a committee the
    production database would trust, but not its chain id."""
    import dataclasses

    from medshare.ledger import chain

    prod = Kit.new(nodes=4, committee=4)
    config = dataclasses.replace(prod.config, chain_name="staging")
    block, state = chain.genesis(config)
    staging = Kit(prod.keys, config, state, block)
    paths = {}
    for name, kit in (("prod", prod), ("staging", staging)):
        paths[name] = tmp_path / f"{name}.db"
        store = SQLiteStore(paths[name])
        txs = kit.fill(store, blocks=2)
        store.close()
    proof = audit.make_proof(SQLiteStore(paths["staging"]), txs[0].txid)
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof))
    own = CliRunner().invoke(
        app, ["ledger", "check-proof", str(proof_file), "--db", str(paths["staging"])]
    )
    assert own.exit_code == 0 and json.loads(own.output)["committee_trusted"] is True
    cross = CliRunner().invoke(
        app, ["ledger", "check-proof", str(proof_file), "--db", str(paths["prod"])]
    )
    assert cross.exit_code == 1 and f"is for chain {config.chain_id}" in cross.output
    relabelled = {**proof, "chain_id": prod.config.chain_id}  # the tx still names staging
    with pytest.raises(audit.ProofError, match="another chain than the proof's"):
        audit.check_proof(relabelled)


def test_a_block_row_rewritten_as_text_is_corruption_not_a_crash(db: tuple[Path, list]) -> None:
    path, _ = db
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE blocks SET data = CAST(data AS TEXT) WHERE height = 2")
    store = SQLiteStore(path)
    with pytest.raises(StoreCorrupted, match="block 2 is stored as str"):
        store.get(2)
    report = audit.verify_chain(store)
    assert not report.ok and report.first_bad_height == 2


# --- derived columns (issue 12, finding 10): the hash, height and tx index must match the bytes


def _tamper(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as raw:
        for statement in statements:
            raw.execute(statement)


@pytest.mark.parametrize(
    ("statements", "first_bad", "column"),
    [
        (["UPDATE blocks SET hash = 'ab' || substr(hash, 3) WHERE height = 4"], 4, "blocks.hash"),
        (["UPDATE blocks SET hash = CAST(hash AS BLOB) WHERE height = 0"], 0, "blocks.hash"),
        (
            [
                "UPDATE blocks SET height = -3 WHERE height = 3",
                "UPDATE blocks SET height = 3 WHERE height = 4",
                "UPDATE blocks SET height = 4 WHERE height = -3",
            ],
            3,
            "blocks.height",
        ),
        (["UPDATE blocks SET height = -1 WHERE height = 8"], 8, "blocks.height"),
        (["UPDATE txs SET idx = 2 WHERE height = 5 AND idx = 0"], 5, "txs.idx"),
        (["UPDATE txs SET height = 6 WHERE height = 5 AND idx = 1"], 5, "txs.height"),
        (["UPDATE txs SET height = 'five' WHERE height = 5 AND idx = 1"], 5, "txs row"),
        (["DELETE FROM txs WHERE height = 7 AND idx = 2"], 7, "no row for transaction"),
        ([f"INSERT INTO txs VALUES ('{'cd' * 32}', 2, 0)"], 2, "is not in it"),
        ([f"INSERT INTO txs VALUES ('{'cd' * 32}', 99, 0)"], 9, "txs.height column is 99"),
    ],
    ids=[
        "hash",
        "hash-as-blob",
        "heights-swapped",
        "height-below-genesis",
        "tx-idx",
        "tx-height",
        "tx-height-text",
        "tx-row-deleted",
        "tx-row-added",
        "tx-row-beyond-head",
    ],
)
def test_verify_checks_every_column_derived_from_the_block_bytes(
    db: tuple[Path, list], statements: list[str], first_bad: int, column: str
) -> None:
    """The legacy store keeps a block's hash and height, and an index of its transactions,
    next to its canonical bytes: a column that no longer matches the bytes is named."""
    path, _ = db
    _tamper(path, *statements)
    report = audit.verify_chain(SQLiteStore(path, readonly=True))
    assert not report.ok and report.first_bad_height == first_bad
    assert column in report.reason
    result = CliRunner().invoke(app, ["ledger", "verify", "--db", str(path)])
    assert result.exit_code == 1, result.output  # a report, not a traceback
    assert column in json.loads(result.stdout)["reason"]


def test_prove_with_a_tampered_index_row_is_a_clear_error(db: tuple[Path, list]) -> None:
    path, txs = db
    _tamper(path, f"UPDATE txs SET height = 'five' WHERE txid = '{txs[4].txid}'")
    result = CliRunner().invoke(app, ["ledger", "prove", "--db", str(path), "--tx", txs[4].txid])
    assert result.exit_code == 1 and "not integers" in result.output, result.output
