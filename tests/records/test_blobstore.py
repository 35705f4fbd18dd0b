"""Replicated, content-addressed blob store: placement, read-repair, fallback, scrub."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from medshare.records.blobstore import (
    BlobReplica,
    BlobUnavailable,
    DirectoryReplica,
    InsufficientReplicas,
    ReplicatedBlobStore,
    SQLiteReplica,
    blob_id_of,
    check_blob_id,
)

BLOB = b"\x00ciphertext\xff" * 50


class DownReplica(DirectoryReplica):
    """A node that is down: every call raises."""

    def put(self, blob_id: str, data: bytes) -> None:
        raise OSError("node down")

    def get(self, blob_id: str) -> bytes | None:
        raise OSError("node down")

    def delete(self, blob_id: str) -> None:
        raise OSError("node down")

    def ids(self) -> Iterator[str]:
        raise OSError("node down")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[dict[str, BlobReplica]]:
    sql = SQLiteReplica(tmp_path / "c.sqlite", "node-c")
    reps: dict[str, BlobReplica] = {
        "node-a": DirectoryReplica(tmp_path / "a", "node-a"),
        "node-b": DirectoryReplica(tmp_path / "b", "node-b"),
        "node-c": sql,
    }
    yield reps
    sql.close()


@pytest.fixture
def store(replicas: dict[str, BlobReplica]) -> ReplicatedBlobStore:
    return ReplicatedBlobStore(list(replicas.values()), replication=2)


def holders(replicas: dict[str, BlobReplica], blob_id: str) -> set[str]:
    return {n for n, r in replicas.items() if r.get(blob_id) is not None}


def hrw_order(blob_id: str, names: list[str]) -> list[str]:
    """Independent re-statement of the placement rule."""
    key = lambda n: hashlib.sha256(blob_id.encode() + b"\x00" + n.encode()).digest()  # noqa: E731
    return sorted(names, key=key, reverse=True)


def corrupt(replica: BlobReplica, blob_id: str, tmp_path: Path) -> None:
    """Flip one byte of the stored copy, behind the replica's back."""
    if isinstance(replica, DirectoryReplica):
        p = replica.path_of(blob_id)
        raw = bytearray(p.read_bytes())
        raw[7] ^= 0x01
        p.write_bytes(bytes(raw))
    else:
        assert isinstance(replica, SQLiteReplica)
        with sqlite3.connect(replica.path) as conn:
            (raw,) = conn.execute("SELECT data FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            raw = bytearray(raw)
            raw[7] ^= 0x01
            conn.execute("UPDATE blobs SET data = ? WHERE id = ?", (bytes(raw), blob_id))
        conn.close()


def test_round_trip_two_copies_on_hrw_replicas(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica]
) -> None:
    blob_id = store.put(BLOB)
    assert blob_id == hashlib.sha256(BLOB).hexdigest() == blob_id_of(BLOB)
    expected = hrw_order(blob_id, list(replicas))[:2]
    assert store.placement(blob_id) == expected
    assert holders(replicas, blob_id) == set(expected)
    assert store.get(blob_id) == BLOB
    assert store.get(blob_id, expected_digest=blob_id.upper()) == BLOB
    assert store.put(BLOB) == blob_id  # idempotent
    assert holders(replicas, blob_id) == set(expected)


def test_placement_is_deterministic_and_spread(tmp_path: Path) -> None:
    names = ["n1", "n2", "n3", "n4"]
    s1 = ReplicatedBlobStore([DirectoryReplica(tmp_path / n, n) for n in names])
    s2 = ReplicatedBlobStore([DirectoryReplica(tmp_path / n, n) for n in reversed(names)])
    firsts = set()
    for i in range(40):
        bid = blob_id_of(i.to_bytes(2, "big"))
        assert s1.placement(bid) == s2.placement(bid) == hrw_order(bid, names)[:2]
        firsts.add(s1.placement(bid)[0])
    assert firsts == set(names)  # not everything on one node


def test_directory_layout_is_fanned_out(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica], tmp_path: Path
) -> None:
    blob_id = store.put(BLOB)
    for n, r in replicas.items():
        if isinstance(r, DirectoryReplica) and n in store.placement(blob_id):
            root = tmp_path / n[-1]
            assert (root / blob_id[:2] / blob_id[2:4] / blob_id).read_bytes() == BLOB
            assert list(r.ids()) == [blob_id]
            assert not list((root / blob_id[:2] / blob_id[2:4]).glob(".tmp-*"))


@pytest.mark.parametrize("which", [0, 1])
def test_corrupt_copy_is_detected_and_repaired(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica], tmp_path: Path, which: int
) -> None:
    blob_id = store.put(BLOB)
    bad = store.placement(blob_id)[which]
    corrupt(replicas[bad], blob_id, tmp_path)
    assert replicas[bad].get(blob_id) != BLOB

    data, report = store.get_with_report(blob_id, expected_digest=blob_id)
    assert data == BLOB
    assert report.corrupt == ([bad] if which == 0 else [])
    if which == 0:
        assert report.served_by == store.placement(blob_id)[1]
        assert report.repaired == [bad]
        assert replicas[bad].get(blob_id) == BLOB
    # a scrub finds (and fixes) the copy a read did not need to look at
    s = store.scrub()
    assert s.repaired == ([] if which == 0 else [(blob_id, bad)])
    assert replicas[bad].get(blob_id) == BLOB
    assert store.scrub().clean


def test_corrupt_sqlite_row_is_repaired(tmp_path: Path) -> None:
    sql = SQLiteReplica(tmp_path / "only.sqlite", "sql")
    d = DirectoryReplica(tmp_path / "d", "dir")
    try:
        store = ReplicatedBlobStore([sql, d], replication=2)
        blob_id = store.put(BLOB)
        corrupt(sql, blob_id, tmp_path)
        corrupt(d, blob_id, tmp_path)
        # both bad → nothing to serve
        with pytest.raises(BlobUnavailable, match=f"no good copy of blob {blob_id}"):
            store.get(blob_id)
        d.put(blob_id, BLOB)
        data, report = store.get_with_report(blob_id)
        assert data == BLOB and report.served_by == "dir"
        assert sql.get(blob_id) == BLOB
        assert "sql" in report.repaired
    finally:
        sql.close()


def test_missing_copy_falls_back_and_is_repaired(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica]
) -> None:
    blob_id = store.put(BLOB)
    first, second = store.placement(blob_id)
    replicas[first].delete(blob_id)
    data, report = store.get_with_report(blob_id)
    assert data == BLOB
    assert (report.served_by, report.missing, report.repaired) == (second, [first], [first])
    assert report.corrupt == []
    assert replicas[first].get(blob_id) == BLOB
    # the replica outside the placement set was not given a copy
    assert holders(replicas, blob_id) == {first, second}


def test_both_copies_bad_raises_clear_error(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica], tmp_path: Path
) -> None:
    blob_id = store.put(BLOB)
    first, second = store.placement(blob_id)
    corrupt(replicas[first], blob_id, tmp_path)
    replicas[second].delete(blob_id)
    with pytest.raises(BlobUnavailable) as exc:
        store.get(blob_id)
    msg = str(exc.value)
    assert blob_id in msg and f"corrupt=['{first}']" in msg and second in msg
    # nothing was "repaired" with bad data
    assert replicas[second].get(blob_id) is None
    assert replicas[first].get(blob_id) not in (None, BLOB)


def test_expected_digest_mismatch_refuses_and_repairs_nothing(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica]
) -> None:
    blob_id = store.put(BLOB)
    first, second = store.placement(blob_id)
    replicas[first].delete(blob_id)
    ledger_digest = blob_id_of(b"what the ledger says")
    with pytest.raises(BlobUnavailable, match="expected \\(ledger\\) digest"):
        store.get(blob_id, expected_digest=ledger_digest)
    assert replicas[first].get(blob_id) is None  # not repaired
    assert replicas[second].get(blob_id) == BLOB  # not touched
    other = next(n for n in replicas if n not in (first, second))
    assert replicas[other].get(blob_id) is None
    assert replicas[other].get(ledger_digest) is None


def test_down_replica_is_skipped(tmp_path: Path) -> None:
    a = DirectoryReplica(tmp_path / "a", "a")
    b = DirectoryReplica(tmp_path / "b", "b")
    down = DownReplica(tmp_path / "down", "down")
    store = ReplicatedBlobStore([a, b, down], replication=2)
    # find a blob whose placement includes the down node first
    data = next(
        d
        for d in (bytes([i]) * 100 for i in range(64))
        if store.placement(blob_id_of(d))[0] == "down"
    )
    blob_id = store.put(data)
    assert {n for n, r in (("a", a), ("b", b)) if r.get(blob_id) == data} == {"a", "b"}
    got, report = store.get_with_report(blob_id)
    assert got == data and report.unavailable == ["down"] and report.repaired == []
    assert store.delete(blob_id) == ["down"]
    s = store.scrub()
    assert s.unavailable == ["down"] and s.blobs_checked == 0


def test_put_with_too_few_healthy_replicas_fails(tmp_path: Path) -> None:
    a = DirectoryReplica(tmp_path / "a", "a")
    store = ReplicatedBlobStore(
        [a, DownReplica(tmp_path / "x", "x"), DownReplica(tmp_path / "y", "y")], replication=2
    )
    with pytest.raises(InsufficientReplicas, match="only 1 of the 2 required") as exc:
        store.put(BLOB)
    assert exc.value.stored_on == ["a"]
    assert exc.value.blob_id == blob_id_of(BLOB)
    assert "NOT stored" in str(exc.value) and "node down" in str(exc.value)


def test_scrub_re_replicates_wiped_replica_and_removes_corrupt(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    reps = {n: DirectoryReplica(tmp_path / n, n) for n in names}
    store = ReplicatedBlobStore(list(reps.values()), replication=2)
    blobs = [bytes([i]) * (10 + i) for i in range(12)]
    ids = [store.put(b) for b in blobs]
    on_a = [i for i in ids if "a" in store.placement(i)]
    assert on_a

    shutil.rmtree(tmp_path / "a")  # node a lost its disk
    assert list(reps["a"].ids()) == []
    report = store.scrub()
    assert sorted(report.repaired) == sorted((i, "a") for i in on_a)
    assert not (report.lost or report.under_replicated or report.removed)
    for i, b in zip(ids, blobs, strict=True):
        assert {n for n in names if reps[n].get(i) == b} == set(store.placement(i))

    # a stray corrupt copy on a replica outside the placement set is removed
    i0 = ids[0]
    extra = next(n for n in names if n not in store.placement(i0))
    (tmp_path / extra / i0[:2] / i0[2:4]).mkdir(parents=True, exist_ok=True)
    reps[extra].path_of(i0).write_bytes(b"garbage")
    # and a corrupt placed copy is overwritten with the good one
    i1 = ids[1]
    placed = store.placement(i1)[0]
    reps[placed].path_of(i1).write_bytes(b"rot")
    report = store.scrub()
    assert report.removed == [(i0, extra)]
    assert report.repaired == [(i1, placed)]
    assert reps[extra].get(i0) is None
    assert reps[placed].get(i1) == blobs[1]
    assert store.scrub().clean


def test_scrub_reports_lost_blob_and_keeps_evidence(tmp_path: Path) -> None:
    reps = [DirectoryReplica(tmp_path / n, n) for n in "ab"]
    store = ReplicatedBlobStore(reps, replication=2)
    blob_id = store.put(BLOB)
    for r in reps:
        r.path_of(blob_id).write_bytes(b"rot")
    report = store.scrub()
    assert report.lost == [blob_id] and report.removed == []
    assert all(r.get(blob_id) == b"rot" for r in reps)


def test_scrub_under_replicated_when_nodes_down(tmp_path: Path) -> None:
    a = DirectoryReplica(tmp_path / "a", "a")
    store = ReplicatedBlobStore([a, DownReplica(tmp_path / "x", "x")], replication=2)
    blob_id = blob_id_of(BLOB)
    a.put(blob_id, BLOB)
    report = store.scrub()
    assert report.under_replicated == [blob_id] and report.unavailable == ["x"]


def test_delete_removes_every_copy(
    store: ReplicatedBlobStore, replicas: dict[str, BlobReplica]
) -> None:
    blob_id = store.put(BLOB)
    assert store.delete(blob_id) == []
    assert holders(replicas, blob_id) == set()
    with pytest.raises(BlobUnavailable):
        store.get(blob_id)
    assert store.scrub().blobs_checked == 0


def test_bad_ids_and_config_rejected(tmp_path: Path) -> None:
    d = DirectoryReplica(tmp_path / "d", "d")
    for bad in ["../" + "a" * 61, "A" * 64, "a" * 63, ""]:
        with pytest.raises(ValueError, match="not a blob id"):
            check_blob_id(bad)
        with pytest.raises(ValueError):
            d.put(bad, b"x")
    with pytest.raises(ValueError, match="unique"):
        ReplicatedBlobStore([d, DirectoryReplica(tmp_path / "e", "d")])
    with pytest.raises(ValueError, match="at least 2 replicas"):
        ReplicatedBlobStore([d], replication=2)
    assert isinstance(d, BlobReplica)


def test_read_repair_restores_placement_not_every_replica(tmp_path: Path) -> None:
    reps = {n: DirectoryReplica(tmp_path / n, n) for n in ["p", "q", "r", "s"]}
    store = ReplicatedBlobStore(list(reps.values()), replication=2)
    blob_id = blob_id_of(BLOB)
    order = [r.name for r in store.ranked(blob_id)]
    reps[order[3]].put(blob_id, BLOB)  # only the last-ranked node has it
    data, report = store.get_with_report(blob_id)
    assert data == BLOB and report.served_by == order[3]
    assert report.missing == order[:3]
    assert report.repaired == order[:2]
    assert holders(reps, blob_id) == {order[0], order[1], order[3]}


def test_put_many_stores_each_blob_as_put_does_and_returns_ids_in_order(replicas, store):
    blobs = [BLOB + bytes([i]) for i in range(20)]
    ids = store.put_many(blobs, workers=4)
    assert ids == [blob_id_of(b) for b in blobs]
    for blob, blob_id in zip(blobs, ids, strict=True):
        assert holders(replicas, blob_id) == set(store.placement(blob_id))
        assert store.get(blob_id) == blob


def test_put_many_raises_when_a_blob_cannot_reach_its_replication(tmp_path):
    up = DirectoryReplica(tmp_path / "up", "up")
    store = ReplicatedBlobStore([up, DownReplica(tmp_path / "down", "down")], replication=2)
    with pytest.raises(InsufficientReplicas, match="stored on only 1 of the 2"):
        store.put_many([BLOB + b"1", BLOB + b"2", BLOB + b"3"], workers=3)
