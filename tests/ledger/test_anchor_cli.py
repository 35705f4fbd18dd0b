"""``medshare anchor publish|verify`` against a real anvil and a real node database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from chainkit import Kit
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.ledger.anvil import AnvilProcess
from medshare.ledger.store import SQLiteStore


def _node_db(path: Path, blocks: int) -> Path:
    store = SQLiteStore(path)
    Kit.new(nodes=5, committee=4, epoch_length=4).fill(store, blocks=blocks)
    store.close()
    return path


def _invoke(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def test_publish_then_verify_then_detect_divergence(anvil: AnvilProcess, tmp_path: Path) -> None:
    db = _node_db(tmp_path / "node.db", blocks=25)
    code, out = _invoke("anchor", "publish", "--db", str(db), "--rpc", anvil.rpc_url, "--deploy")
    assert code == 0, out
    assert out["anchored_heights"] == [0, 10, 20]
    assert out["committee_epoch"] == 6
    contract = out["checkpoint_registry"]
    code, report = _invoke(
        "anchor", "verify", "--db", str(db), "--rpc", anvil.rpc_url, "--contract", contract
    )
    assert code == 0 and report["ok"] and report["checked"] == 3
    # publishing again anchors nothing new
    code, again = _invoke(
        "anchor",
        "publish",
        "--db",
        str(db),
        "--rpc",
        anvil.rpc_url,
        "--contract",
        contract,
        "--validators",
        out["validator_registry"],
    )
    assert code == 0 and again["anchored_heights"] == [] and again["committee_epoch"] is None
    # a node whose block 10 was rewritten no longer matches the anchor
    con = sqlite3.connect(db)
    con.execute("UPDATE blocks SET hash = ? WHERE height = 10", ("ee" * 32,))
    (data,) = con.execute("SELECT data FROM blocks WHERE height = 10").fetchone()
    con.execute(
        "UPDATE blocks SET data = ? WHERE height = 10",
        (data.replace(b'"time_ms":', b'"time_ms":1'),),
    )
    con.commit()
    code, report = _invoke(
        "anchor", "verify", "--db", str(db), "--rpc", anvil.rpc_url, "--contract", contract
    )
    assert code == 1
    assert not report["ok"] and any("height 10" in m for m in report["mismatches"])


def test_verify_reports_missing_local_blocks(anvil: AnvilProcess, tmp_path: Path) -> None:
    long_db = _node_db(tmp_path / "long.db", blocks=21)
    code, out = _invoke(
        "anchor", "publish", "--db", str(long_db), "--rpc", anvil.rpc_url, "--deploy"
    )
    assert code == 0, out
    short_db = tmp_path / "short.db"
    store = SQLiteStore(short_db)
    for block in SQLiteStore(long_db).blocks():
        if block.height <= 12:
            store.append(block)
    from medshare.ledger import audit

    store.put_meta(audit.CONFIG_KEY, SQLiteStore(long_db).get_meta(audit.CONFIG_KEY))
    store.close()
    code, report = _invoke(
        "anchor",
        "verify",
        "--db",
        str(short_db),
        "--rpc",
        anvil.rpc_url,
        "--contract",
        out["checkpoint_registry"],
    )
    assert code == 1 and report["missing"] == [20]


def test_publish_refuses_an_unverifiable_chain(anvil: AnvilProcess, tmp_path: Path) -> None:
    db = _node_db(tmp_path / "node.db", blocks=5)
    con = sqlite3.connect(db)
    (data,) = con.execute("SELECT data FROM blocks WHERE height = 3").fetchone()
    con.execute(
        "UPDATE blocks SET data = ? WHERE height = 3",
        (data.replace(b'"time_ms":', b'"time_ms":1'),),
    )
    con.commit()
    result = CliRunner().invoke(
        app, ["anchor", "publish", "--db", str(db), "--rpc", anvil.rpc_url, "--deploy"]
    )
    assert result.exit_code == 1
    assert "block 3" in result.output and "Traceback" not in result.output


def test_anchor_errors_are_clear(tmp_path: Path) -> None:
    db = _node_db(tmp_path / "node.db", blocks=2)
    result = CliRunner().invoke(
        app,
        ["anchor", "verify", "--db", str(db), "--rpc", "http://127.0.0.1:9", "--contract", "0x0"],
    )
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output
