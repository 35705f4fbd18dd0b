"""A hospital server as a real process on 127.0.0.1 (``medshare hospital serve``) and
wallets as real processes (``medshare wallet read``): the record crosses HTTP sealed and
is decrypted by the wallet process with the holder's key; refusals exit 1 and are logged."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import unquote

import pytest

from medshare.server.process import ServerProcess, medshare_command
from medshare.service.consortium import add_person
from medshare.service.roster import StaffMember
from service.conftest import one_hospital, write_bundle

ROSTER = (
    StaffMember("dr.wang@H001", "H001", "03", "physician"),
    StaffMember("dr.zhao@H001", "H001", "04", "physician"),
)
START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(data dir, URL, record of department 03, share file of the patient's 03 records)."""
    root = tmp_path_factory.mktemp("hospital-process")
    data = root / "data"
    service = one_hospital(root, ROSTER)
    try:
        assert not service.ingest("H001", [write_bundle(root, 7, 0, 20)]).rejected
        patient = service.patients()[0]["id"]
        record = next(r["id"] for r in service.records_of(patient) if r["dept"].startswith("03"))
        share = service.share(patient, "dr.wang@H001", dept="03")
        share_file = root / "share.json"
        share_file.write_bytes(share.to_bytes())
        # a new hire, enrolled on the ledger but holding no key yet
        add_person(service, "dr.new@H001", "clinician", "H001", ["physician"], "03")
    finally:
        service.close()
    with ServerProcess(data, root / "server.log") as server:
        yield data, server.url, record, share_file


def _wallet_read(data, url, who, record, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        medshare_command(
            "wallet", "read", "--dir", data / "wallets", "--as", who, "--hospital", url,
            "--record", record, *extra,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_a_wallet_process_reads_through_a_hospital_process(served):
    data, url, record, share_file = served
    got = _wallet_read(data, url, "dr.wang@H001", record, "--area", "institution")
    assert got.returncode == 0, got.stderr
    resource = json.loads(got.stdout)
    assert f"{resource['resourceType']}/{resource['id']}" == record
    personal = _wallet_read(data, url, "dr.wang@H001", record, "--area", "personal",
                            "--key", share_file)  # fmt: skip
    assert personal.returncode == 0, personal.stderr
    assert json.loads(personal.stdout) == resource


def test_a_refused_wallet_read_exits_1_with_one_line_and_is_logged(served):
    data, url, record, _ = served
    denied = _wallet_read(data, url, "dr.zhao@H001", record, "--area", "institution")
    assert denied.returncode == 1, (denied.stdout, denied.stderr)
    assert "not allowed" in denied.stderr and "Traceback" not in denied.stderr
    assert denied.stdout == ""
    stranger = _wallet_read(data, url, "nobody@H001", record)
    assert stranger.returncode == 2 and "Traceback" not in stranger.stderr
    down = _wallet_read(data, "http://127.0.0.1:9", "dr.wang@H001", record)
    assert down.returncode == 2 and "Traceback" not in down.stderr


def test_a_wallet_process_obtains_a_key_from_the_hospital_process_and_reads(served):
    """``wallet issue`` runs the holder's side of issuance in the wallet process: the key
    is written to the wallet, its tag registered on the ledger by the holder's own key."""
    data, url, record, _ = served
    issued = subprocess.run(
        medshare_command("wallet", "issue", "--dir", data / "wallets", "--as", "dr.new@H001",
                  "--hospital", url, "--authority", "H001"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    summary = json.loads(issued.stdout)
    assert "dept:03" in summary["attributes"] and len(summary["tag_txid"]) == 64
    got = _wallet_read(data, url, "dr.new@H001", record, "--area", "institution")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["resourceType"]


def test_a_patient_wallet_lists_its_records_and_log_and_only_a_patient_may(served):
    data, url, record, _ = served
    holders = [unquote(folder.name) for folder in (data / "wallets").iterdir()]
    (patient,) = [h for h in holders if h.startswith("patient:")]  # the one ingested

    def wallet(command: str, who: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            medshare_command("wallet", command, "--dir", data / "wallets", "--as", who,
                      "--hospital", url),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    listed = wallet("records", patient)
    assert listed.returncode == 0, listed.stderr
    assert record in {r["id"] for r in json.loads(listed.stdout)}
    logged = wallet("log", patient)
    assert logged.returncode == 0, logged.stderr
    assert json.loads(logged.stdout)["resourceType"] == "Bundle"
    staff = wallet("records", "dr.wang@H001")
    assert staff.returncode == 2 and "patient's identity" in staff.stderr
