"""A small consortium per test module: real SQLite, real keys, and the ledger application
behind the in-process harness (:class:`medshare.ledger.inprocess.InProcessLedger`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medshare.records import synthetic
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.roster import StaffMember


class Clock:
    """A settable clock (ms) so expiry is tested without sleeping."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


ROSTER = (
    StaffMember("dr.wang@H001", "H001", "03", "physician"),
    StaffMember("nurse.li@H001", "H001", "03", "nurse"),
    StaffMember("dr.zhao@H001", "H001", "04", "physician"),
    StaffMember("er.sun@H001", "H001", "20", "emergency"),
    StaffMember("dr.chen@H002", "H002", "03", "physician"),
)


def one_hospital(root: Path, roster: tuple[StaffMember, ...] = (), clock=None):
    """The cheapest real consortium: hospital H001 alone, one ledger node (in-process, the
    real ABCI rules), one blob replica; in ``root / "data"``."""
    config = ServiceConfig(
        data_dir=root / "data", hospitals=("H001",), nodes=1, committee=1, replication=1
    )
    return init(config, roster=roster, clock=clock or Clock(1_800_000_000_000))


def write_bundle(directory: Path, seed: int, index: int, records: int = 30) -> Path:
    path = directory / f"bundle-{seed}-{index}.json"
    path.write_text(json.dumps(synthetic.generate_bundle(seed, index, records)))
    return path


def patient_of(bundle_file: Path) -> str:
    """The id of the Patient a bundle file written by :func:`write_bundle` is about."""
    return synthetic.patient_id(json.loads(bundle_file.read_text()))


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """(service, bundle paths): two hospitals, 4 nodes, two patients ingested at H001."""
    root = tmp_path_factory.mktemp("consortium")
    config = ServiceConfig(data_dir=root / "data", hospitals=("H001", "H002"), nodes=4, committee=4)
    clock = Clock(1_800_000_000_000)
    service = init(config, roster=ROSTER, clock=clock)
    bundles = [write_bundle(root, 7, i) for i in range(2)]
    report = service.ingest("H001", bundles)
    assert not report.rejected, report.rejected
    yield service, clock, root
    service.close()
