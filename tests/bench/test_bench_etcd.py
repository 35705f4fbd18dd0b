"""The etcd reference row runs a real 3-member cluster: it commits, survives one crash, stops.

Real etcd processes on loopback, no mocks: the row is only a reference if it measures
what a Raft quorum actually does on this machine.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from medshare.bench.etcd import EtcdCluster, etcd_binary, measure_writes

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _etcd_installed() -> None:
    """etcd is a real component of the benchmark: `.ci/run` installs it; never skipped."""
    if etcd_binary() is None:
        pytest.fail("etcd is not installed (apt-get install etcd-server)")


ROW_KEYS = {
    "system",
    "version",
    "members",
    "clients",
    "seconds",
    "committed",
    "tx_per_s",
    "p50_ms",
    "p99_ms",
    "errors",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _leader_index(urls: list[str]) -> int:
    """Which member the cluster currently follows, from each member's own status."""
    with httpx.Client(timeout=2.0) as client:
        for index, url in enumerate(urls):
            status = client.post(f"{url}/v3/maintenance/status", json={}).json()
            if status["header"]["member_id"] == status["leader"]:
                return index
    raise AssertionError("no member reports itself as leader")


def test_cluster_commits_concurrent_writes_and_leaves_no_process(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path, members=3) as cluster:
        pids = cluster.pids
        assert len(pids) == 3
        assert len(set(cluster.client_urls)) == 3
        assert all(_alive(pid) for pid in pids)
        row = measure_writes(cluster.client_urls, seconds=1.0, clients=2)
        for index in range(3):
            assert cluster.log_path(index).is_file()
    assert set(row) == ROW_KEYS
    assert row["system"] == "etcd"
    assert row["version"].startswith("3.")
    assert row["members"] == 3
    assert row["clients"] == 2
    assert row["committed"] > 0
    assert row["errors"] == 0
    assert 1.0 <= row["seconds"] < 7.0
    assert row["tx_per_s"] == pytest.approx(row["committed"] / row["seconds"])
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert not any(_alive(pid) for pid in pids), "an etcd member outlived the cluster"
    assert all(process.returncode is not None for process in cluster.processes)


def test_writes_commit_with_two_of_three_members_after_the_leader_is_killed(
    tmp_path: Path,
) -> None:
    with EtcdCluster(tmp_path, members=3) as cluster:
        # The leader, not a follower: the two survivors must elect a new one first, so
        # this also shows that a write is only acknowledged once a quorum is back.
        leader = _leader_index(cluster.client_urls)
        os.kill(cluster.pids[leader], signal.SIGKILL)
        cluster.processes[leader].wait(timeout=5)
        survivors = [url for i, url in enumerate(cluster.client_urls) if i != leader]
        cluster.wait_healthy(timeout=15.0)
        row = measure_writes(survivors, seconds=1.0, clients=2)
        assert row["members"] == 3  # the cluster still has three members, two of them up
        assert row["committed"] > 0
        assert row["errors"] == 0


def test_measure_against_nothing_fails_fast_and_clearly() -> None:
    with socket.socket() as sock:  # a port nothing listens on once this is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=f"no etcd server answers at {url}"):
        measure_writes([url], seconds=1.0, clients=2)
    assert time.monotonic() - began < 3.0


def test_a_server_that_never_answers_is_bounded_by_the_request_timeout() -> None:
    with socket.socket() as sock:  # accepts connections (backlog) but never replies
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(RuntimeError, match="no etcd server answers"):
            measure_writes([url], seconds=1.0, clients=1, timeout=0.5)
        assert time.monotonic() - began < 3.0


def test_a_member_that_cannot_start_fails_start_up_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:  # member 0's client port is already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        cluster = EtcdCluster(tmp_path, members=3, base_port=taken.getsockname()[1])
        began = time.monotonic()
        with pytest.raises(RuntimeError, match="exited while starting") as failure:
            cluster.__enter__()
    assert time.monotonic() - began < 10.0
    assert "member 0 (exited" in str(failure.value)
    assert "address already in use" in str(failure.value)
    assert not any(_alive(pid) for pid in cluster.pids)
