"""``medshare delete``: crypto-shredding from the command line, logged on the ledger."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medshare.cli.main import app
from medshare.records import synthetic


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_delete_shreds_logs_and_refuses_twice(tmp_path):
    data = tmp_path / "data"
    result = _run(
        "init", "--data-dir", data, "--hospitals", 1, "--nodes", 4, "--ledger", "inprocess"
    )
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(synthetic.generate_bundle(11, 0, 8)))
    assert _run("ingest", "--data-dir", data, "--hospital", "H001", bundle).exit_code == 0
    patient = json.loads(_run("patients", "--data-dir", data).stdout)[0]["id"]
    export = tmp_path / "before.ndjson"
    assert _run("export", "--data-dir", data, "--patient", patient, "--out", export).exit_code == 0
    victim = json.loads(export.read_text().splitlines()[-1])
    rid = f"{victim['resourceType']}/{victim['id']}"

    done = _run("delete", "--data-dir", data, "--record", rid, "--reason", "patient request")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["deleted"] is True

    again = _run("delete", "--data-dir", data, "--record", rid)
    assert again.exit_code == 2 and "already deleted" in again.output
    unknown = _run("delete", "--data-dir", data, "--record", "Observation/nope")
    assert unknown.exit_code == 1 and "unknown record" in unknown.output

    after = tmp_path / "after.ndjson"
    assert _run("export", "--data-dir", data, "--patient", patient, "--out", after).exit_code == 0
    assert len(after.read_text().splitlines()) == len(export.read_text().splitlines()) - 1
    log = json.loads(_run("log", "--data-dir", data, "--patient", patient).stdout)
    assert any(e["resource"]["action"] == "D" for e in log["entry"])
    assert _run("verify", "--data-dir", data).exit_code == 0
