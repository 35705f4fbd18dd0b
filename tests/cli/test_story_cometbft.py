"""The records service's command-line story on real CometBFT nodes (``medshare init`` with
its default ledger): init → ingest → share → read → log → verify, a key no node registered
refused by the ledger, and a node killed while the service goes on committing.

Each test has its own data directory in a short folder under /tmp (the nodes' Unix
sockets need a short path) and stops every node in a ``finally``, then checks that no
process it started survives. Without the pinned CometBFT binary (``medshare net install``)
the tests are skipped with that message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.crypto.signing import SigningKey
from medshare.ledger.app.rules import Code
from medshare.ledger.comet_port import CometLedger
from medshare.ledger.cometbft import install, network
from medshare.ledger.port import LedgerPort, TxRejected
from medshare.ledger.types import TxKind
from medshare.records import synthetic
from medshare.service.api import MedShare

pytestmark = pytest.mark.slow

CATCH_UP_S = 60.0


def medshare(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def _pids(directory: Path) -> set[int]:
    found: set[int] = set()
    for path in directory.glob("node-*/pids.json"):
        with contextlib.suppress(OSError, ValueError):
            found |= {
                v["pid"] if isinstance(v, dict) else v
                for v in json.loads(path.read_text()).values()
            }
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    try:
        install.binary()
    except install.EngineMissing as exc:
        pytest.fail(f"CometBFT binary missing ({exc}): run `medshare net install`")
    root = Path(tempfile.mkdtemp(prefix="ms-story-", dir="/tmp")).resolve()
    ledger = root / "data" / "ledger"
    seen: set[int] = set()
    try:
        yield root / "data"
    finally:
        seen |= _pids(ledger)
        with contextlib.suppress(network.NetworkError):
            network.down(network.Network.load(ledger))
        deadline = time.monotonic() + 15.0
        while any(_alive(p) for p in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [p for p in seen if _alive(p)]
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        assert not survivors, f"node processes survived network.down: {survivors}"


def _init(data_dir: Path, hospitals: int, nodes: int) -> dict:
    doc = ok_json(
        medshare(
            "init",
            "--data-dir",
            data_dir,
            "--hospitals",
            hospitals,
            "--nodes",
            nodes,
            "--committee",
            4,
        )
    )
    assert doc["ledger"]["kind"] == "cometbft"
    assert len(doc["ledger"]["rpc"]) == nodes
    return doc


def _ingest(data_dir: Path, hospital: str, index: int) -> str:
    """One synthetic patient (with internal-medicine records, department 03)."""
    bundle = data_dir.parent / f"bundle-{index}.json"
    bundle.write_text(json.dumps(synthetic.generate_bundle(7, index, 16)))
    report = ok_json(medshare("ingest", "--data-dir", data_dir, "--hospital", hospital, bundle))
    assert report["patients"] == 1 and report["records"] > 5 and report["rejected"] == []
    return ok_json(medshare("patients", "--data-dir", data_dir))[0]["id"]


def _records(data_dir: Path, patient: str) -> list[dict]:
    with MedShare.open(data_dir) as service:
        return service.records_of(patient)


def _log_txids(data_dir: Path, patient: str) -> list[str]:
    bundle = ok_json(medshare("log", "--data-dir", data_dir, "--patient", patient))
    return [
        entity["what"]["identifier"]["value"]
        for entry in bundle["entry"]
        for entity in entry["resource"].get("entity", [])
        if entity.get("what", {}).get("identifier", {}).get("system", "").endswith("ledger-tx")
    ]


def _net(data_dir: Path) -> network.Network:
    return network.Network.load(data_dir / "ledger")


def test_the_cli_story_runs_on_cometbft_nodes(data_dir: Path) -> None:
    doc = _init(data_dir, hospitals=2, nodes=4)
    assert set(doc["committee"]) <= set(doc["nodes"]) and len(doc["committee"]) == 4
    net = _net(data_dir)
    assert all(network.running(net, i) for i in range(4))  # they outlive `init`

    patient = _ingest(data_dir, "H001", 0)
    record = next(r["id"] for r in _records(data_dir, patient) if r["dept"].startswith("03"))
    share = data_dir.parent / "share.json"
    result = medshare(
        "share", "--data-dir", data_dir, "--patient", patient, "--to", "family:son",
        "--dept", "03", "--out", share,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    served = ok_json(
        medshare("read", "--data-dir", data_dir, "--as", "family:son", "--key", share,
                 "--record", record)
    )  # fmt: skip
    assert f"{served['resourceType']}/{served['id']}" == record, served
    denied = medshare(
        "read", "--data-dir", data_dir, "--as", "dr.zhao@H001", "--area", "institution",
        "--record", record,
    )  # fmt: skip
    assert denied.exit_code == 1, denied.output

    bundle = ok_json(medshare("log", "--data-dir", data_dir, "--patient", patient))
    outcomes = [e["resource"]["outcome"] for e in bundle["entry"]]
    assert "0" in outcomes and "4" in outcomes, outcomes  # the read and the refusal

    report = ok_json(medshare("verify", "--data-dir", data_dir))
    assert report["ok"] is True and report["problems"] == [], report
    # genesis names the nodes after who runs them: the chain binds H001's names to H001's nodes
    assert [c["name"] for c in report["ledger"]] == ["H001-a", "H002-a", "H001-b", "regulator"]
    assert all(c["ok"] and c["running"] for c in report["ledger"]), report["ledger"]
    assert len({c["height"] for c in report["ledger"]}) == 1, report["ledger"]

    # Stopped nodes are started again by the next command that needs the ledger.
    assert ok_json(medshare("net", "down", "--dir", data_dir / "ledger"))["stopped"] == 4
    assert not any(network.running(net, i) for i in range(4))
    again = medshare("log", "--data-dir", data_dir, "--patient", patient)
    assert again.exit_code == 0, again.output
    assert "starting ledger node(s) 0, 1, 2, 3" in again.stderr, again.stderr
    assert json.loads(again.stdout)["entry"] == bundle["entry"], again.stdout


def test_unregistered_keys_are_refused_and_a_killed_node_does_not_stop_the_service(
    data_dir: Path,
) -> None:
    _init(data_dir, hospitals=1, nodes=4)
    patient = _ingest(data_dir, "H001", 1)
    record = next(r["id"] for r in _records(data_dir, patient) if r["dept"].startswith("03"))

    with MedShare.open(data_dir) as service:
        assert isinstance(service.ledger, CometLedger) and isinstance(service.ledger, LedgerPort)
        stranger = SigningKey.generate()
        body = {"record": record, "patient": patient, "actor": "x", "area": "institution"}
        with pytest.raises(TxRejected) as refused:
            service.ledger.sign_and_submit(stranger, TxKind.ACCESS, [body])
        assert refused.value.code == Code.NOT_PERMITTED
        # Every key the service signs with is registered (people) or a node's (services).
        for person in service.people():
            if person["kind"] == "service":
                continue
            public = service.wallets.identity(person["id"]).public
            assert service.ledger.registered(public) == person["id"]
        patient_key = service.wallets.identity(f"patient:{patient}").public
        assert service.ledger.registered(patient_key) == f"patient:{patient}"
        # Applied transactions read back in chain order, each as ``find`` sees it.
        applied = list(service.ledger.txs())
        where = [(c.height, c.index) for c in applied]
        assert where == sorted(set(where)) and len(applied) > 10
        assert {c.tx.kind for c in applied} >= {TxKind.REGISTER_IDENTITY, TxKind.ANCHOR_RECORD}
    with MedShare.open(data_dir) as service:  # a fresh connection: no cache
        assert [service.ledger.find(c.tx.txid) for c in applied] == applied
        assert service.ledger.find("00" * 32) is None

    # Node 0 (the first RPC address, and the node whose key H001's records service signs
    # with) crashes; the other three of the committee of four go on.
    net = _net(data_dir)
    network.kill(net, 0)
    assert not network.running(net, 0)
    before = set(_log_txids(data_dir, patient))
    served = medshare(
        "read", "--data-dir", data_dir, "--as", "dr.wang@H001", "--area", "institution",
        "--record", record,
    )  # fmt: skip
    assert served.exit_code == 0, served.output
    added = set(_log_txids(data_dir, patient)) - before
    assert len(added) == 1  # the read's access tx, committed by the three running nodes

    report = ok_json(medshare("verify", "--data-dir", data_dir))
    assert report["ok"] is True
    down, *up = report["ledger"]
    assert down["name"] == "H001-a" and down["running"] is False and "restart" in down["error"]
    assert all(c["ok"] and c["running"] for c in up)

    network.start(net, 0)
    with MedShare.open(data_dir) as service:
        target = service.ledger.height()
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        report = ok_json(medshare("verify", "--data-dir", data_dir))
        heights = [c["height"] for c in report["ledger"]]
        if report["ok"] and all(c["running"] for c in report["ledger"]) and min(heights) >= target:
            break
        assert time.monotonic() < deadline, f"node 0 did not catch up: {report['ledger']}"
        time.sleep(0.5)
