"""Wallets made on their holders' devices, as real processes against a real hospital
server process: ``hospital enrol`` prints one-time codes, ``wallet new`` makes the keys
in the wallet's own folder, the patient's records (ingested before the wallet existed)
are sealed to the block keys the wallet published, and the patient reads, exports and
shares with the seed that only the wallet holds. Afterwards no holder's secret is in
any file of the hospital's data directory."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from medshare.server.process import ServerProcess, medshare_command
from medshare.service.areas import top_department
from medshare.service.config import ServiceConfig
from medshare.service.consortium import init
from medshare.service.roster import StaffMember
from medshare.wallet.device import PersonalWallet
from service.conftest import Clock, write_bundle


def _run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(medshare_command(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """A hospital whose patients' keys are on their devices (``patient_keys=device``),
    records ingested before anyone has a wallet, codes printed, server started."""
    root = tmp_path_factory.mktemp("device-process")
    data = root / "data"
    config = ServiceConfig(
        data_dir=data, hospitals=("H001",), nodes=1, committee=1, replication=1,
        patient_keys="device",
    )  # fmt: skip
    roster = (StaffMember("dr.wang@H001", "H001", "03", "physician"),)
    service = init(config, roster=roster, clock=Clock(int(time.time() * 1000)))
    try:
        report = service.ingest("H001", [write_bundle(root, 5, 0, 20)])
        assert not report.rejected and report.patients == 1
        patient = service.patients()[0]["id"]
        assert not service.wallets.has_seed(patient)
        records = service.records_of(patient)
        clinical = next(r for r in records if r["type"] != "Patient")
        dept = top_department(clinical["dept"], service.taxonomy)
    finally:
        service.close()
    patient_code = _run("hospital", "enrol", "--dir", data, "--patient", patient)
    assert patient_code.returncode == 0, patient_code.stderr
    staff_code = _run("hospital", "enrol", "--dir", data, "--staff", "dr.dev@H001",
                      "--role", "physician", "--dept", dept)  # fmt: skip
    assert staff_code.returncode == 0, staff_code.stderr
    auditor_code = _run("hospital", "enrol", "--dir", data, "--staff", "audit@H001",
                        "--role", "auditor", "--dept", dept)  # fmt: skip
    assert auditor_code.returncode == 0, auditor_code.stderr
    with ServerProcess(data, root / "server.log") as server:
        yield {
            "root": root,
            "data": data,
            "url": server.url,
            "patient": patient,
            "records": records,
            "clinical": clinical["id"],
            "patient_code": json.loads(patient_code.stdout)["code"],
            "staff_code": json.loads(staff_code.stdout)["code"],
            "auditor_code": json.loads(auditor_code.stdout)["code"],
        }


@pytest.fixture(scope="module")
def wallets(hospital):
    root, url = hospital["root"], hospital["url"]
    made = _run("wallet", "new", "--dir", root / "patient", "--hospital", url,
                "--code", hospital["patient_code"])  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["sealed"] == len(hospital["records"])
    staff = _run("wallet", "new", "--dir", root / "dr.dev", "--hospital", url,
                 "--code", hospital["staff_code"])  # fmt: skip
    assert staff.returncode == 0, staff.stderr
    assert [k["authority"] for k in json.loads(staff.stdout)["keys"]] == ["H001"]
    return root / "patient", root / "dr.dev"


def test_the_patient_reads_exports_and_shares_from_their_own_wallet(hospital, wallets):
    patient_dir, staff_dir = wallets
    listed = _run("wallet", "records", "--dir", patient_dir)
    assert listed.returncode == 0, listed.stderr
    assert {r["id"] for r in json.loads(listed.stdout)} == {r["id"] for r in hospital["records"]}
    rid = hospital["clinical"]
    own = _run("wallet", "read", "--dir", patient_dir, "--record", rid)
    assert own.returncode == 0, own.stderr
    resource = json.loads(own.stdout)
    assert f"{resource['resourceType']}/{resource['id']}" == rid
    out = hospital["root"] / "export.ndjson"
    exported = _run("wallet", "export", "--dir", patient_dir, "--out", out)
    assert exported.returncode == 0, exported.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == len(hospital["records"]) and json.loads(exported.stdout)["pending"] == []
    assert resource in [json.loads(line) for line in lines]
    # The staff member reads through the institution area with keys made on their device,
    # and through the patient's share with the key file the patient handed them.
    institution = _run("wallet", "read", "--dir", staff_dir, "--record", rid)
    assert institution.returncode == 0, institution.stderr
    assert json.loads(institution.stdout) == resource
    share_file = hospital["root"] / "share.json"
    shared = _run("wallet", "share", "--dir", patient_dir, "--to", "dr.dev@H001",
                  "--record", rid, "--out", share_file)  # fmt: skip
    assert shared.returncode == 0, shared.stderr
    through_share = _run("wallet", "read", "--dir", staff_dir, "--record", rid,
                         "--key", share_file)  # fmt: skip
    assert through_share.returncode == 0, through_share.stderr
    assert json.loads(through_share.stdout) == resource


def test_consents_and_an_auditors_trace_from_their_wallets(hospital, wallets):
    patient_dir, staff_dir = wallets
    listed = _run("wallet", "consents", "--dir", patient_dir)
    assert listed.returncode == 0, listed.stderr
    assert all(c["resourceType"] == "Consent" for c in json.loads(listed.stdout))
    auditor_dir = hospital["root"] / "audit"
    made = _run("wallet", "new", "--dir", auditor_dir, "--hospital", hospital["url"],
                "--code", hospital["auditor_code"])  # fmt: skip
    assert made.returncode == 0, made.stderr
    leaked = PersonalWallet(staff_dir).keys.abe_key_files("dr.dev@H001", "H001")[0]
    traced = _run("wallet", "trace", "--dir", auditor_dir, leaked)
    assert traced.returncode == 0, traced.stderr
    assert json.loads(traced.stdout)["identity"] == "dr.dev@H001"
    refused = _run("wallet", "trace", "--dir", patient_dir, leaked)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr


def test_backup_shares_restore_the_wallet_on_another_device(hospital, wallets):
    patient_dir, _ = wallets
    made = _run("wallet", "backup", "--dir", patient_dir, "--threshold", "2", "--shares", "3")
    assert made.returncode == 0, made.stderr
    shares = json.loads(made.stdout)["shares"]
    words = hospital["root"] / "two-shares.txt"
    words.write_text("\n".join(shares[:2]) + "\n")
    new_device = hospital["root"] / "new-phone"
    restored = _run("wallet", "restore", "--dir", new_device, "--hospital", hospital["url"],
                    "--patient", hospital["patient"], "--shares", words)  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    listed = _run("wallet", "records", "--dir", new_device)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == len(hospital["records"])
    one = hospital["root"] / "one-share.txt"
    one.write_text(shares[2] + "\n")
    refused = _run("wallet", "restore", "--dir", hospital["root"] / "x2", "--hospital",
                   hospital["url"], "--patient", hospital["patient"], "--shares", one)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


def test_a_code_is_good_once_and_refusals_are_one_line(hospital, wallets):
    again = _run("wallet", "new", "--dir", hospital["root"] / "thief", "--hospital",
                 hospital["url"], "--code", hospital["patient_code"])  # fmt: skip
    assert again.returncode == 1 and "not valid" in again.stderr
    assert "Traceback" not in again.stderr
    garbled = _run("wallet", "new", "--dir", hospital["root"] / "x", "--hospital",
                   hospital["url"], "--code", "no-slash-here")  # fmt: skip
    assert garbled.returncode == 2 and "Traceback" not in garbled.stderr
    staff_dir = wallets[1]
    not_a_patient = _run("wallet", "export", "--dir", staff_dir, "--out", hospital["root"] / "y")
    assert not_a_patient.returncode == 2 and "Traceback" not in not_a_patient.stderr


def test_no_holders_secret_is_in_the_hospitals_files(hospital, wallets):
    """The key scan: the patient's seed and identity key, the staff member's identity key
    and CP-ABE key bytes appear in no file of the hospital's data directory (database,
    its WAL, blobs, ledger, wallets of the harness's own staff)."""
    patient, staff = (PersonalWallet(d) for d in wallets)
    secrets = {
        "patient seed": patient.seed().secret_bytes(),
        "patient identity": patient.identity_key().seed,
        "staff identity": staff.identity_key().seed,
    }
    for path in staff.keys.abe_key_files("dr.dev@H001", "H001"):
        secrets[f"staff key {path.name}"] = path.read_bytes()
    scanned = 0
    for path in hospital["data"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            scanned += 1
            for what, secret in secrets.items():
                assert secret not in content, f"{what} found in {path}"
                assert secret.hex().encode() not in content, f"{what} (hex) found in {path}"
    assert scanned > 10
