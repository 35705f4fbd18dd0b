"""The records commands (``medshare init ingest patients export share read log verify trace
refer study consent revoke consents``) through Typer's CliRunner, on one real consortium
per module: SQLite, the ledger application (``--ledger inprocess``: the harness without
consensus; tests/cli/test_story_cometbft.py tells the story on CometBFT nodes), real keys,
blob files on disk.

``medshare init`` takes seconds, so the module builds one data directory and the tests
share it. A test that damages it (corrupt blobs) puts it back before it returns. Record ids,
departments and blob ids are read from the consortium's SQLite index (read-only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.records import synthetic
from medshare.records.blobstore import DirectoryReplica, ReplicatedBlobStore
from medshare.service.roster import RESEARCHER, StaffMember, default_roster

HOSPITALS = ("H001", "H002")
ROSTER = default_roster(HOSPITALS)
MOTHER = "family:mother"


def staff(hospital: str, role: str, dept: str | None = None) -> StaffMember:
    """The default roster's member of ``hospital`` with ``role`` (and ``dept``)."""
    return next(
        m
        for m in ROSTER
        if m.hospital == hospital and m.role == role and (dept is None or m.dept == dept)
    )


PHYSICIAN = staff("H001", "physician", "03").id  # dr.wang@H001
NURSE = staff("H001", "nurse").id  # nurse.chen@H001
SURGEON = staff("H001", "physician", "04").id  # dr.zhao@H001
ER = staff("H001", "emergency").id  # er.li@H001
PARTNER = staff("H002", "physician", "03").id  # dr.liu@H002
PARTNER_SURGEON = staff("H002", "physician", "04").id  # dr.huang@H002


def medshare(*args: object) -> Result:
    """``medshare ARGS…``; exceptions are caught so a crash shows up as a failed assertion."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def assert_fails(result: Result, code: int, *messages: str) -> None:
    """A clean refusal: the exit code, one message on stderr, no crash and no traceback."""
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "error:" in result.stderr
    for message in messages:
        assert message in result.output


def stdout_json(result: Result) -> Any:
    assert_ok(result)
    return json.loads(result.stdout)


def stderr_json(result: Result) -> dict[str, Any]:
    """The one-line JSON summary a command writes to stderr (``share``)."""
    assert_ok(result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stderr
    return json.loads(lines[0])


@dataclass(frozen=True)
class Row:
    id: str
    patient: str
    dept: str
    hospital: str
    blob_id: str
    resource_type: str


@dataclass
class Consortium:
    root: Path
    data_dir: Path
    init_doc: dict[str, Any]
    ingest_doc: dict[str, Any]

    def records(self, patient: str | None = None) -> list[Row]:
        uri = f"file:{self.data_dir / 'medshare.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute(
                "SELECT id, patient, dept, hospital, blob_id, resource_type FROM records"
                " WHERE shredded_ms IS NULL ORDER BY seq"
            ).fetchall()
        found = [Row(*r) for r in rows]
        return [r for r in found if patient is None or r.patient == patient]

    @property
    def patients(self) -> list[str]:
        return sorted({r.patient for r in self.records()})

    def record_in(self, patient: str, prefix: str) -> Row:
        return next(r for r in self.records(patient) if r.dept.startswith(prefix))

    def record_not_in(self, patient: str, prefix: str) -> Row:
        return next(r for r in self.records(patient) if not r.dept.startswith(prefix))

    def blob_copies(self, blob_id: str) -> list[tuple[str, Path]]:
        """(replica, file) of each copy in HRW order: ``verify`` reads the first one first."""
        store = ReplicatedBlobStore(
            [DirectoryReplica(self.data_dir / "blobs" / h, h) for h in HOSPITALS], 2
        )
        copies = [(r.name, r.path_of(blob_id)) for r in store.ranked(blob_id)]
        assert all(path.is_file() for _, path in copies), copies
        return copies


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def restored(*paths: Path) -> Iterator[None]:
    """Put these files back as they were when the block ends (the fixture is shared)."""
    saved = {p: p.read_bytes() for p in paths}
    try:
        yield
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Two hospitals, 4 ledger nodes, the default roster; two patients ingested at H001."""
    root = tmp_path_factory.mktemp("records-cli")
    data_dir = root / "data"
    init_doc = stdout_json(
        medshare(
            "init",
            "--data-dir",
            data_dir,
            "--hospitals",
            len(HOSPITALS),
            "--nodes",
            4,
            "--committee",
            4,
            "--ledger",
            "inprocess",
        )
    )
    bundles = []
    for index in range(2):
        path = root / f"bundle-{index}.json"
        path.write_text(json.dumps(synthetic.generate_bundle(7, index, 30)))
        bundles.append(path)
    ingest_doc = stdout_json(
        medshare("ingest", "--data-dir", data_dir, "--hospital", "H001", *bundles)
    )
    return Consortium(root, data_dir, init_doc, ingest_doc)


@pytest.fixture(scope="module")
def mother_share(consortium: Consortium) -> tuple[Path, dict[str, Any]]:
    """The first patient shares department 03 (with its sub-tree) with family:mother."""
    patient = consortium.patients[0]
    out = consortium.root / "mother-share.json"
    result = medshare(
        "share",
        "--data-dir",
        consortium.data_dir,
        "--patient",
        patient,
        "--to",
        MOTHER,
        "--dept",
        "03",
        "--out",
        out,
    )
    return out, stderr_json(result)


# -- init ---------------------------------------------------------------------------------


def test_init_prints_the_consortium(consortium: Consortium) -> None:
    doc = consortium.init_doc
    assert doc["data_dir"] == str(consortium.data_dir)
    assert doc["hospitals"] == list(HOSPITALS)
    assert doc["nodes"] == ["H001-a", "H002-a", "H001-b", "regulator"]
    assert len(doc["committee"]) == 4 and set(doc["committee"]) <= set(doc["nodes"])
    assert doc["ledger"] == {"kind": "inprocess", "dir": str(consortium.data_dir / "ledger")}
    people = {p["id"]: p for p in doc["people"]}
    assert set(people) == {m.id for m in ROSTER} | {
        RESEARCHER,
        "records@H001",
        "records@H002",
        "authority@H001",
        "authority@H002",
    }
    for member in ROSTER:
        assert people[member.id] == {
            "id": member.id,
            "kind": "clinician",
            "hospital": member.hospital,
            "roles": [member.role],
            "dept": member.dept,
        }
    assert people[RESEARCHER]["roles"] == ["researcher"]
    assert (consortium.data_dir / "medshare.json").is_file()


def test_init_refuses_a_non_empty_directory(consortium: Consortium, tmp_path: Path) -> None:
    config = (consortium.data_dir / "medshare.json").read_bytes()
    result = medshare("init", "--data-dir", consortium.data_dir, "--hospitals", 2)
    assert_fails(result, 2, "is not empty", str(consortium.data_dir))
    assert result.stdout == ""
    assert (consortium.data_dir / "medshare.json").read_bytes() == config

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert_fails(medshare("init", "--data-dir", other), 2, "is not empty")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]

    assert_fails(medshare("init", "--data-dir", tmp_path / "x", "--hospitals", 0), 2, "--hospitals")


# -- ingest -------------------------------------------------------------------------------


def test_ingest_reports_patients_and_records(consortium: Consortium) -> None:
    doc = consortium.ingest_doc
    assert set(doc) >= {"patients", "records", "rejected"}
    assert doc["patients"] == 2
    assert doc["rejected"] == []
    assert doc["records"] == len(consortium.records()) >= 60

    again = stdout_json(
        medshare(
            "ingest",
            "--data-dir",
            consortium.data_dir,
            "--hospital",
            "H001",
            consortium.root / "bundle-0.json",
        )
    )
    assert again["patients"] == 0 and again["records"] == 0 and again["rejected"] == []
    bundle = json.loads((consortium.root / "bundle-0.json").read_text())
    patient = synthetic.patient_id(bundle)
    assert again["unchanged"] == len(consortium.records(patient))


def test_ingest_lists_malformed_fhir_as_rejected(consortium: Consortium, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Observation", "status": 12}')
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    before = len(consortium.records())
    result = medshare(
        "ingest", "--data-dir", consortium.data_dir, "--hospital", "H001", bad, broken
    )
    doc = stdout_json(result)
    assert doc["patients"] == 0 and doc["records"] == 0
    rejected = {r["item"]: r["reason"] for r in doc["rejected"]}
    assert set(rejected) == {"bad.json", "broken.json"}
    assert "Observation" in rejected["bad.json"] and "status" in rejected["bad.json"]
    assert "invalid JSON" in rejected["broken.json"]
    assert len(consortium.records()) == before


def test_ingest_at_an_unknown_hospital_names_it(consortium: Consortium) -> None:
    result = medshare(
        "ingest",
        "--data-dir",
        consortium.data_dir,
        "--hospital",
        "H009",
        consortium.root / "bundle-0.json",
    )
    assert result.exit_code in (1, 2), result.output
    assert_fails(result, result.exit_code, "H009", "H001, H002")


def test_ingest_into_an_uninitialised_directory(consortium: Consortium, tmp_path: Path) -> None:
    result = medshare(
        "ingest",
        "--data-dir",
        tmp_path / "never-initialised",
        "--hospital",
        "H001",
        consortium.root / "bundle-0.json",
    )
    assert_fails(result, 2, "medshare init", "not a medshare data directory")


# -- patients, export -------------------------------------------------------------------


def test_patients_lists_ids_names_and_counts(consortium: Consortium) -> None:
    listed = stdout_json(medshare("patients", "--data-dir", consortium.data_dir))
    assert [p["id"] for p in listed] == consortium.patients
    for entry in listed:
        assert set(entry) == {"id", "name", "records"}
        assert entry["name"] and entry["name"] != "(no name)"
        assert entry["records"] == len(consortium.records(entry["id"]))


def test_export_writes_one_ndjson_line_per_record(consortium: Consortium, tmp_path: Path) -> None:
    patient = consortium.patients[0]
    out = tmp_path / "export.ndjson"
    result = medshare(
        "export", "--data-dir", consortium.data_dir, "--patient", patient, "--out", out
    )
    assert_ok(result)
    rows = consortium.records(patient)
    lines = out.read_bytes().splitlines()
    assert len(lines) == len(rows)
    assert f"wrote {len(rows)} records" in result.stderr
    resources = [json.loads(line) for line in lines]
    assert [f"{r['resourceType']}/{r['id']}" for r in resources] == [r.id for r in rows]
    assert (resources[0]["resourceType"], resources[0]["id"]) == ("Patient", patient)


def test_export_of_an_unknown_patient_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    out = tmp_path / "nobody.ndjson"
    result = medshare(
        "export", "--data-dir", consortium.data_dir, "--patient", "nobody", "--out", out
    )
    assert_fails(result, 1, "unknown patient 'nobody'")
    assert not out.exists()


# -- share and read (personal area) -------------------------------------------------------


def read(consortium: Consortium, who: str, record: str, *options: object) -> Result:
    return medshare(
        "read", "--data-dir", consortium.data_dir, "--as", who, "--record", record, *options
    )


def test_share_then_read_prints_the_fhir_resource(consortium: Consortium, mother_share) -> None:
    path, summary = mother_share
    assert summary["to"] == MOTHER and summary["scope"] == "departments"
    assert summary["keys"] >= 1 and summary["key_bytes"] == 96 * summary["keys"]
    assert summary["out"] == str(path) and len(summary["share"]) == 32
    assert json.loads(path.read_text())["grantee"] == MOTHER

    row = consortium.record_in(consortium.patients[0], "03")
    resource = stdout_json(read(consortium, MOTHER, row.id, "--key", path))
    assert resource["resourceType"] == row.resource_type
    assert f"{resource['resourceType']}/{resource['id']}" == row.id


def test_read_outside_the_share_is_not_allowed(consortium: Consortium, mother_share) -> None:
    path, _ = mother_share
    patient = consortium.patients[0]
    outside = consortium.record_not_in(patient, "03")
    assert_fails(read(consortium, MOTHER, outside.id, "--key", path), 1, "not allowed")
    # Another patient's record, even in department 03, is not covered either.
    other = consortium.record_in(consortium.patients[1], "03")
    assert_fails(read(consortium, MOTHER, other.id, "--key", path), 1, "not allowed")


def test_read_with_someone_elses_share_is_not_allowed(consortium: Consortium, mother_share) -> None:
    path, _ = mother_share
    row = consortium.record_in(consortium.patients[0], "03")
    result = read(consortium, PHYSICIAN, row.id, "--key", path)
    assert_fails(result, 1, "not allowed", f"not given to {PHYSICIAN}")
    assert result.stdout == ""


def test_a_damaged_share_file_is_bad_input(consortium: Consortium, mother_share, tmp_path) -> None:
    path, _ = mother_share
    row = consortium.record_in(consortium.patients[0], "03")
    text = path.read_text()

    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    assert_fails(read(consortium, MOTHER, row.id, "--key", truncated), 2, "is not a share key file")

    doc = json.loads(text)
    key = doc["keys"][0]["key"]["key"]
    middle = len(key) // 2
    doc["keys"][0]["key"]["key"] = (
        key[:middle] + ("B" if key[middle] == "A" else "A") + key[middle + 1 :]
    )
    flipped = tmp_path / "flipped.json"
    flipped.write_text(json.dumps(doc))
    assert_fails(read(consortium, MOTHER, row.id, "--key", flipped), 2, "is not a share key file")

    assert_fails(read(consortium, MOTHER, row.id, "--key", tmp_path / "absent.json"), 2, "no such")


def test_share_input_errors(consortium: Consortium, tmp_path: Path) -> None:
    patient = consortium.patients[0]
    out = tmp_path / "s.json"
    base = ("share", "--data-dir", consortium.data_dir, "--patient", patient, "--out", out)
    assert_fails(medshare(*base, "--to", MOTHER, "--all", "--until", "2000-01-01"), 2, "future")
    assert_fails(medshare(*base, "--to", MOTHER, "--dept", "03", "--all"), 2, "exactly one")
    assert_fails(medshare(*base, "--to", MOTHER, "--all", "--until", "soon"), 2, "ISO date")
    assert_fails(medshare(*base, "--to", MOTHER, "--dept", "9999"), 2, "unknown department")
    assert_fails(medshare(*base, "--to", "bad name!", "--all"), 2, "not a valid name")
    assert not out.exists()
    result = medshare(
        "share",
        "--data-dir",
        consortium.data_dir,
        "--patient",
        "nobody",
        "--to",
        MOTHER,
        "--all",
        "--out",
        out,
    )
    assert_fails(result, 1, "unknown patient")
    assert not out.exists()


# -- read through the CP-ABE areas --------------------------------------------------------


def test_institution_area_follows_the_department(consortium: Consortium) -> None:
    row = consortium.record_in(consortium.patients[0], "03")
    resource = stdout_json(read(consortium, PHYSICIAN, row.id, "--area", "institution"))
    assert f"{resource['resourceType']}/{resource['id']}" == row.id
    assert_fails(
        read(consortium, SURGEON, row.id, "--area", "institution"), 1, "not allowed", SURGEON
    )
    assert_fails(read(consortium, PHYSICIAN, "Observation/nope", "--area", "institution"), 1)
    # The personal area (the default) needs a share key; a key is for the personal area only.
    assert_fails(read(consortium, PHYSICIAN, row.id), 2, "--key")


def test_an_unknown_area_is_bad_input(consortium: Consortium) -> None:
    row = consortium.record_in(consortium.patients[0], "03")
    result = read(consortium, PHYSICIAN, row.id, "--area", "bogus")
    assert_fails(result, 2, "unknown area 'bogus'", "institution")


def test_emergency_needs_a_reason(consortium: Consortium) -> None:
    row = consortium.record_in(consortium.patients[0], "03")
    assert_fails(read(consortium, ER, row.id, "--area", "emergency"), 2, "--reason")
    result = read(
        consortium, ER, row.id, "--area", "emergency", "--reason", "unconscious on arrival"
    )
    resource = stdout_json(result)
    assert f"{resource['resourceType']}/{resource['id']}" == row.id


# -- log ----------------------------------------------------------------------------------


def test_log_is_a_bundle_of_audit_events_with_the_refusals(
    consortium: Consortium, mother_share
) -> None:
    path, _ = mother_share
    patient = consortium.patients[0]
    row = consortium.record_in(patient, "03")
    assert_fails(read(consortium, SURGEON, row.id, "--area", "institution"), 1)
    assert_fails(read(consortium, PHYSICIAN, row.id, "--key", path), 1)
    assert_ok(read(consortium, MOTHER, row.id, "--key", path))

    bundle = stdout_json(medshare("log", "--data-dir", consortium.data_dir, "--patient", patient))
    assert bundle["resourceType"] == "Bundle"
    events = [e["resource"] for e in bundle["entry"]]
    assert events and all(e["resourceType"] == "AuditEvent" for e in events)
    assert bundle["total"] == len(events)

    def actor(event: dict[str, Any]) -> str:
        return event["agent"][0]["who"]["identifier"]["value"]

    def about(event: dict[str, Any]) -> set[str]:
        return {e["what"].get("reference") for e in event.get("entity", [])}

    denied = [e for e in events if e["outcome"] == "4"]
    assert {actor(e) for e in denied} >= {SURGEON, PHYSICIAN}
    assert all(row.id in about(e) for e in denied if actor(e) in (SURGEON, PHYSICIAN))
    assert any("do not satisfy" in e.get("outcomeDesc", "") for e in denied)
    assert any(f"not given to {PHYSICIAN}" in e.get("outcomeDesc", "") for e in denied)
    served = [e for e in events if e["outcome"] == "0" and actor(e) == MOTHER]
    assert any(row.id in about(e) for e in served)

    assert_fails(medshare("log", "--data-dir", consortium.data_dir, "--patient", "nobody"), 1)


# -- verify -------------------------------------------------------------------------------


def verify(consortium: Consortium, *options: object) -> Result:
    return medshare("verify", "--data-dir", consortium.data_dir, *options)


def test_verify_checks_every_node_and_record(consortium: Consortium) -> None:
    report = stdout_json(verify(consortium))
    assert report["ok"] is True
    assert report["problems"] == [] and report["repaired"] == []
    assert report["records_checked"] == len(consortium.records())
    # The in-process ledger is one replica, replayed from genesis through the application.
    (check,) = report["ledger"]
    assert check["ok"] is True and check["running"] is True and check["height"] > 0


def test_verify_repairs_a_corrupt_copy_from_the_other_replica(consortium: Consortium) -> None:
    row = consortium.records(consortium.patients[1])[2]
    (name, first), _ = consortium.blob_copies(row.blob_id)
    with restored(first):
        flip_byte(first)
        assert hashlib.sha256(first.read_bytes()).hexdigest() != row.blob_id
        report = stdout_json(verify(consortium))
        assert report["ok"] is True and report["problems"] == []
        assert report["repaired"] == [f"{row.blob_id} on {name}"]
        assert hashlib.sha256(first.read_bytes()).hexdigest() == row.blob_id
    again = stdout_json(verify(consortium, "--record", row.id))
    assert again["ok"] is True and again["repaired"] == [] and again["records_checked"] == 1


def test_verify_repairs_a_corrupt_copy_on_the_second_replica(consortium: Consortium) -> None:
    row = consortium.records(consortium.patients[1])[3]
    _, (name, second) = consortium.blob_copies(row.blob_id)
    with restored(second):
        flip_byte(second)
        report = stdout_json(verify(consortium, "--record", row.id))
        assert report["repaired"] == [f"{row.blob_id} on {name}"]
        assert hashlib.sha256(second.read_bytes()).hexdigest() == row.blob_id


def test_verify_exits_3_when_every_copy_is_corrupt(consortium: Consortium) -> None:
    row = consortium.record_in(consortium.patients[1], "03")
    copies = [path for _, path in consortium.blob_copies(row.blob_id)]
    with restored(*copies):
        for path in copies:
            flip_byte(path)
        result = verify(consortium)
        assert result.exit_code == 3, result.output
        report = json.loads(result.stdout)
        assert report["ok"] is False
        assert [p["record"] for p in report["problems"]] == [row.id]
        assert row.blob_id in report["problems"][0]["problem"]
        single = verify(consortium, "--record", row.id)
        assert single.exit_code == 3 and json.loads(single.stdout)["records_checked"] == 1
        # Reading it is an integrity failure too, not a refusal and not a crash.
        assert_fails(
            read(consortium, PHYSICIAN, row.id, "--area", "institution"), 3, "integrity", row.id
        )
    assert_ok(verify(consortium, "--record", row.id))
    assert_fails(verify(consortium, "--record", "Observation/nope"), 1, "unknown record")


# -- trace --------------------------------------------------------------------------------


def test_trace_rejects_a_garbage_key_file(consortium: Consortium, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"this is not a key")
    result = medshare("trace", "--data-dir", consortium.data_dir, garbage)
    assert_fails(result, 2, "not a CP-ABE key file")
    assert_fails(medshare("trace", "--data-dir", consortium.data_dir, tmp_path / "none"), 2)


def test_trace_a_leaked_nurse_key_names_and_revokes_her(
    consortium: Consortium, tmp_path: Path
) -> None:
    row = consortium.record_in(consortium.patients[0], "03")
    assert_ok(read(consortium, NURSE, row.id, "--area", "institution"))
    folder = consortium.data_dir / "wallets" / quote(NURSE, safe="@.+-_")
    wallet = sorted(folder.glob("abe-H001-*.key"))[-1]
    leaked = tmp_path / "leaked.key"
    shutil.copyfile(wallet, leaked)

    verdict = stdout_json(medshare("trace", "--data-dir", consortium.data_dir, leaked))
    assert verdict["verdict"] == "user"
    assert verdict["identity"] == NURSE and verdict["authority"] == "H001"
    assert re.fullmatch(r"[0-9a-f]{64}", verdict["txid"])
    assert verdict["revocation"]["revoked"] == NURSE
    assert verdict["revocation"]["epoch"] >= 1

    assert_fails(read(consortium, NURSE, row.id, "--area", "institution"), 1, "not allowed")
    # The department's other staff keep reading (their keys were re-issued).
    assert_ok(read(consortium, PHYSICIAN, row.id, "--area", "institution"))
    # The leaked key is already revoked: tracing it again records the verdict again and
    # says there was nothing left to revoke.
    again = medshare("trace", "--data-dir", consortium.data_dir, leaked)
    assert_ok(again)
    repeat = stdout_json(again)
    assert repeat["identity"] == NURSE and repeat["revocation"] == {"already_revoked": True}


# -- refer, study, consent, revoke, consents -------------------------------------------------


def test_refer_to_a_partner_physician(consortium: Consortium) -> None:
    patient = consortium.patients[0]
    row = consortium.record_in(patient, "03")
    base = ("refer", "--data-dir", consortium.data_dir, "--patient", patient, "--hospital", "H001")
    assert_fails(read(consortium, PARTNER, row.id, "--area", "collaboration"), 1, "no referral")
    referral = stdout_json(medshare(*base, "--to", PARTNER, "--dept", "03"))["referral"]
    assert referral.startswith("R")
    resource = stdout_json(read(consortium, PARTNER, row.id, "--area", "collaboration"))
    assert f"{resource['resourceType']}/{resource['id']}" == row.id
    outside = consortium.record_not_in(patient, "03")
    assert_fails(
        read(consortium, PARTNER, outside.id, "--area", "collaboration"), 1, "covers this record"
    )
    assert_fails(read(consortium, PARTNER_SURGEON, row.id, "--area", "collaboration"), 1)


def test_refer_within_the_same_hospital_is_bad_input(consortium: Consortium) -> None:
    patient = consortium.patients[0]
    base = ("refer", "--data-dir", consortium.data_dir, "--patient", patient, "--hospital", "H001")
    assert_fails(medshare(*base, "--to", PHYSICIAN), 2, "partner hospital", PHYSICIAN)
    assert_fails(medshare(*base, "--to", PARTNER, "--until", "2000-01-01"), 2, "future")
    assert_fails(medshare(*base, "--to", "nobody@H002"), 1, "unknown person")


def test_study_approval(consortium: Consortium) -> None:
    base = ("study", "--data-dir", consortium.data_dir, "--hospital", "H001")
    doc = stdout_json(medshare(*base, "--id", "S-APPROVE", "--researcher", RESEARCHER))
    assert doc == {"study": "S-APPROVE", "researcher": RESEARCHER}
    assert_fails(medshare(*base, "--id", "S-APPROVE", "--researcher", RESEARCHER), 2, "exists")
    assert_fails(medshare(*base, "--id", "S-X", "--researcher", "nobody@uni"), 1, "unknown person")


def test_consent_makes_deidentified_copies_for_the_study(consortium: Consortium) -> None:
    patient = consortium.patients[0]
    study = ("study", "--data-dir", consortium.data_dir, "--hospital", "H001")
    assert_ok(medshare(*study, "--id", "S-CONSENT", "--researcher", RESEARCHER))
    base = ("consent", "--data-dir", consortium.data_dir, "--patient", patient)
    doc = stdout_json(medshare(*base, "--study", "S-CONSENT"))
    assert doc == {
        "study": "S-CONSENT",
        "patient": patient,
        "derivatives": len([r for r in consortium.records(patient) if r.hospital == "H001"]),
    }
    copy = stdout_json(read(consortium, RESEARCHER, f"Patient/{patient}", "--area", "research"))
    assert copy["resourceType"] == "Patient"
    assert copy["id"] != patient and "name" not in copy

    assert_fails(medshare(*base, "--study", "S-UNKNOWN"), 1, "unknown study 'S-UNKNOWN'")
    assert_fails(medshare(*base, "--study", "S-CONSENT"), 2, "already consented")


def test_revoke_a_share(consortium: Consortium, tmp_path: Path) -> None:
    patient = consortium.patients[1]
    row = consortium.records(patient)[3]
    key = tmp_path / "friend.json"
    summary = stderr_json(
        medshare(
            "share",
            "--data-dir",
            consortium.data_dir,
            "--patient",
            patient,
            "--to",
            "dr.friend",
            "--record",
            row.id,
            "--out",
            key,
        )
    )
    assert summary["scope"] == "records" and summary["keys"] == 1
    assert_ok(read(consortium, "dr.friend", row.id, "--key", key))

    revoke = ("revoke", "--data-dir", consortium.data_dir, "--grant")
    out = stdout_json(medshare(*revoke, summary["share"]))
    assert out["grant"] == summary["share"] and out["records_resealed"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", out["txid"])
    assert_fails(read(consortium, "dr.friend", row.id, "--key", key), 1, "revoked")
    assert_fails(medshare(*revoke, summary["share"]), 2, "already revoked")
    assert_fails(medshare(*revoke, "no-such-grant"), 1, "unknown grant 'no-such-grant'")


def test_consents_lists_the_grants_as_fhir_consents(consortium: Consortium, mother_share) -> None:
    _, summary = mother_share
    patient = consortium.patients[0]
    out = consortium.root / "dated-share.json"
    dated = stderr_json(
        medshare(
            "share",
            "--data-dir",
            consortium.data_dir,
            "--patient",
            patient,
            "--to",
            "family:sister",
            "--all",
            "--until",
            "2999-12-31",
            "--out",
            out,
        )
    )
    consents = stdout_json(
        medshare("consents", "--data-dir", consortium.data_dir, "--patient", patient)
    )
    assert consents and all(c["resourceType"] == "Consent" for c in consents)
    by_grant = {c["identifier"][0]["value"]: c for c in consents}
    mother = by_grant[summary["share"]]
    assert mother["status"] == "active"
    assert mother["patient"] == {"reference": f"Patient/{patient}"}
    assert mother["provision"]["actor"][0]["reference"]["display"] == MOTHER
    codes = [c["coding"][0]["code"] for c in mother["provision"]["code"]]
    assert "03" in codes and all(code.startswith("03") for code in codes)  # with its sub-tree
    sister = by_grant[dated["share"]]
    assert sister["provision"]["period"]["end"].startswith("3000-01-01")
    assert_fails(medshare("consents", "--data-dir", consortium.data_dir, "--patient", "x"), 1)
