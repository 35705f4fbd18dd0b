"""Wallet files on disk (issue 12, finding 10): folders 0700, keys 0600, and a key write
that a planted symlink or a pre-existing temporary file cannot redirect."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import typer

from medshare import fileio
from medshare.cli.errors import user_errors
from medshare.crypto.hkac import PatientSeed
from medshare.service.wallets import Wallets


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    """The usual 022 umask, under which ``mkdir`` alone gives 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_wallet_folders_are_0700_and_files_0600(tmp_path: Path, loose_umask) -> None:
    root = tmp_path / "data" / "wallets"
    wallets = Wallets(root)
    wallets.create_identity("dr.wang@H001")
    wallets.save_seed("P1", PatientSeed(bytes(range(32))))
    wallets.save_kek_seed("H001", b"k" * 32)
    wallets.save_study_secret("S-1", b"s" * 32)
    folders = [root, root / "dr.wang@H001", root / "authorities", root / "authorities" / "H001"]
    folders += [root / "studies", root / "studies" / "S-1"]
    for folder in folders:
        assert _mode(folder) == 0o700, folder
    for key in root.rglob("*"):
        if key.is_file():
            assert _mode(key) == 0o600, key
    assert not list(root.rglob(".*.tmp"))  # no temporary file is left behind


def test_an_old_0755_wallet_tree_is_closed_on_open(tmp_path: Path, loose_umask) -> None:
    root = tmp_path / "wallets"
    (root / "dr.wang@H001").mkdir(parents=True, mode=0o755)
    (root / "authorities" / "H001").mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (root / "link").symlink_to(elsewhere)
    Wallets(root)
    folders = [root, root / "dr.wang@H001", root / "authorities", root / "authorities" / "H001"]
    for folder in folders:
        assert _mode(folder) == 0o700, folder
    assert _mode(elsewhere) == 0o755  # a link in the tree is not followed


def _plant(entry: Path, target: Path, how: str) -> None:
    if how == "symlink":
        entry.symlink_to(target)
    else:
        os.link(target, entry)  # a pre-existing file sharing the attacker's inode


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_an_entry_planted_at_the_temporary_name_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The old code wrote every key through ``.<name>.tmp``: a link planted there got the
    key written into the attacker's file (and a symlink was then renamed over the key).
    Now the temporary name is fresh and opened O_EXCL, so a planted entry is skipped."""
    wallets = Wallets(tmp_path / "wallets")
    folder = tmp_path / "wallets" / "dr.wang@H001"
    folder.mkdir(parents=True)
    stolen = tmp_path / "attacker-owned"
    stolen.write_bytes(b"nothing yet")
    _plant(folder / ".identity.key.tmp", stolen, how)  # the old fixed name
    names = iter(["planted", "fresh"])

    def fresh(path: Path) -> Path:
        return path.with_name(f".{path.name}.{next(names)}.tmp")

    monkeypatch.setattr(fileio, "_temp_path", fresh, raising=False)
    _plant(folder / ".identity.key.planted.tmp", stolen, how)  # a guessed fresh name

    key = wallets.create_identity("dr.wang@H001")

    assert stolen.read_bytes() == b"nothing yet"
    identity = folder / "identity.key"
    assert not identity.is_symlink() and identity.read_bytes() == key.seed
    assert _mode(identity) == 0o600
    assert (folder / ".identity.key.planted.tmp").read_bytes() == b"nothing yet"  # left alone
    assert not (folder / ".identity.key.fresh.tmp").exists()  # renamed into place


def test_every_temporary_name_taken_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "wallets" / "dr.wang@H001"
    folder.mkdir(parents=True)
    stolen = tmp_path / "attacker-owned"
    stolen.write_bytes(b"nothing yet")
    planted = folder / ".identity.key.planted.tmp"
    planted.symlink_to(stolen)
    monkeypatch.setattr(fileio, "_temp_path", lambda path: planted, raising=False)

    with pytest.raises(fileio.UnsafeFileError, match="already exists"):
        Wallets(tmp_path / "wallets").create_identity("dr.wang@H001")
    assert stolen.read_bytes() == b"nothing yet"
    assert not (folder / "identity.key").exists()
    with pytest.raises(typer.Exit), user_errors():  # the CLI says so in one line
        Wallets(tmp_path / "wallets").create_identity("dr.wang@H001")
