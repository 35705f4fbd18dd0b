"""Which ledger a data directory uses: the choice in its configuration, node labels, and
the folder of CometBFT nodes (no node is started here; tests/cli/test_story_cometbft.py
runs them)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from medshare.ledger.inprocess import InProcessLedger
from medshare.ledger.port import LedgerUnavailable
from medshare.service import ledgers
from medshare.service.config import ConfigError, ServiceConfig


def test_the_ledger_kind_is_checked_and_kept_in_the_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ledger must be one of cometbft, inprocess"):
        ServiceConfig(data_dir=tmp_path, ledger="etcd")
    with pytest.raises(ConfigError, match="every hospital runs a ledger node"):
        ServiceConfig(data_dir=tmp_path, hospitals=("H001", "H002", "H003"), nodes=2, committee=1)
    config = ServiceConfig(data_dir=tmp_path, ledger="cometbft")
    config.save()
    assert json.loads((tmp_path / "medshare.json").read_text())["ledger"] == "cometbft"
    assert ServiceConfig.load(tmp_path).ledger == "cometbft"


def test_nodes_are_labelled_by_the_hospital_that_runs_them(tmp_path: Path) -> None:
    config = ServiceConfig(data_dir=tmp_path)
    assert ledgers.node_labels(config) == [
        "H001-a", "H002-a", "H003-a", "H001-b", "H002-b", "H003-b", "regulator",
    ]  # fmt: skip
    assert [config.hospital_node(h) for h in config.hospitals] == [0, 1, 2]
    two = ServiceConfig(data_dir=tmp_path, hospitals=("H001", "H002"), nodes=4)
    assert ledgers.node_labels(two) == ["H001-a", "H002-a", "H001-b", "regulator"]


def test_an_in_process_ledger_is_created_and_reopened(tmp_path: Path) -> None:
    config = ServiceConfig(data_dir=tmp_path / "data", nodes=4)
    ledger = ledgers.create(config)
    try:
        assert isinstance(ledger, InProcessLedger) and len(ledger.node_names) == 4
    finally:
        ledger.close()
    with ledgers.open_ledger(config) as again:
        assert again.chain_id == ledger.chain_id
    assert ledgers.stop(config) is False  # nothing runs


def test_a_data_directory_of_the_removed_embedded_engine_is_named(tmp_path: Path) -> None:
    config = ServiceConfig(data_dir=tmp_path)
    config.ledger_dir.mkdir()
    (config.ledger_dir / "ledger.json").write_text("{}")
    with pytest.raises(LedgerUnavailable, match="embedded engine"):
        ledgers.open_ledger(config)


def test_a_long_data_directory_gets_its_nodes_in_a_short_linked_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = Path(os.path.realpath("/tmp")) / f"ms-state-{os.getpid()}-{tmp_path.name[-8:]}"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    try:
        short = ServiceConfig(data_dir=Path("/tmp/d"), ledger="cometbft")
        assert ledgers._network_dir(short, None) == Path("/tmp/d/ledger")
        deep = tmp_path / ("x" * 60) / "data"
        deep.mkdir(parents=True)
        config = ServiceConfig(data_dir=deep, ledger="cometbft")
        notes: list[str] = []
        directory = ledgers._network_dir(config, notes.append)
        assert directory == config.ledger_dir and directory.is_symlink()
        target = directory.resolve()
        assert target.parent == state / "medshare" / "ledgers"
        assert len(str(target)) <= ledgers.SOCKET_ROOM and "linked from" in notes[0]
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_hospitals_own_directory_is_checked(tmp_path: Path) -> None:
    """``local`` names a member, never holds patients' seeds, and its peers are the other
    members at http(s) addresses; it is kept across save and load."""
    base = {"data_dir": tmp_path, "patient_keys": "device"}
    with pytest.raises(ConfigError, match="not a member"):
        ServiceConfig(**base, local="H009")
    with pytest.raises(ConfigError, match="never holds patients' seeds"):
        ServiceConfig(data_dir=tmp_path, local="H001")
    with pytest.raises(ConfigError, match="other member hospitals"):
        ServiceConfig(**base, local="H001", peers={"H001": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="other member hospitals"):
        ServiceConfig(**base, local="H001", peers={"H009": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="http"):
        ServiceConfig(**base, local="H001", peers={"H002": "file:///etc/passwd"})
    config = ServiceConfig(**base, local="H002", peers={"H001": "http://127.0.0.1:8401"})
    assert config.served == ("H002",)
    config.save()
    again = ServiceConfig.load(tmp_path)
    assert again.local == "H002" and again.peers == {"H001": "http://127.0.0.1:8401"}
    assert ServiceConfig(data_dir=tmp_path).served == ("H001", "H002", "H003")
