"""``medshare bench service``: report structure and internal consistency (never speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.bench import service as bench_service
from medshare.cli.main import app

READ_KEYS = {
    "area",
    "record_kb",
    "repeats",
    "median_ms",
    "p90_ms",
    "decrypt_ms",
    "fetch_ms",
    "log_ms",
    "bound_ms",
    "decrypt_ratio",
    "target_ms",
    "met",
}
PATTERNS = {"one record", "10 records (set)", "one department", "whole record (all)"}


@pytest.fixture(scope="module")
def report() -> dict:
    return bench_service.run(True, repeats=3)


def test_quick_plan() -> None:
    plan = bench_service.Plan.for_mode(quick=True)
    assert (plan.ingest_patients, plan.ingest_records, plan.key_sizes) == (4, 30, (10, 100))
    full = bench_service.Plan.for_mode(quick=False)
    assert full.key_sizes == (10, 100, 1000) and full.repeats > plan.repeats


@pytest.mark.slow
def test_read_rows(report: dict) -> None:
    assert report["quick"] is True
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["python"]
    rows = {row["area"]: row for row in report["read"]}
    assert set(rows) == {"institution", "personal"}
    for row in rows.values():
        assert set(row) >= READ_KEYS, row
        assert row["repeats"] == 3
        assert row["record_bytes"] >= 100_000 and row["record_kb"] >= 100
        for part in ("median_ms", "p90_ms", "decrypt_ms", "fetch_ms", "log_ms", "bound_ms"):
            assert row[part] > 0, (row["area"], part)
        assert row["p90_ms"] >= row["median_ms"]
        assert row["decrypt_ratio"] == pytest.approx(row["decrypt_ms"] / row["bound_ms"], rel=0.01)
        assert row["target_ms"] == 50
        assert row["met"] == (row["median_ms"] < row["target_ms"])  # DESIGN §7: < 50 ms
    assert rows["institution"]["bound_op"] == "abe.decrypt"
    assert rows["personal"]["bound_op"] == "hkac.open_record"


@pytest.mark.slow
def test_ingest_split(report: dict) -> None:
    ingest = report["ingest"]
    assert ingest["patients"] == 4 and ingest["records"] >= 4 * 30
    assert ingest["records_per_s"] == pytest.approx(ingest["records"] / ingest["seconds"], rel=0.01)
    split = ingest["per_record_ms"]
    assert all(v > 0 for v in split.values()), split
    assert sum(split.values()) == pytest.approx(ingest["per_record_total_ms"], rel=0.01)


@pytest.mark.slow
def test_key_overhead_on_the_service(report: dict) -> None:
    overhead = report["key_overhead"]
    measured = {row["n_records"]: row for row in overhead["measured"]}
    assert sorted(measured) == [10, 100]
    for n, row in measured.items():
        assert row["patient_seed_bytes"] == 32
        assert row["departments"] == 10
        assert row["directory_bytes"] > row["allocation_bytes"] > 0
        assert row["per_record_32B_bytes"] == 32 * n and row["per_record_96B_bytes"] == 96 * n
        assert set(row["shares"]) == PATTERNS
        for share in row["shares"].values():
            assert share["keys"] >= 1
            assert share["size_bytes"] == 96 * share["keys"]
            assert share["file_bytes"] > share["size_bytes"]
            assert share["per_record_32B_bytes"] == 32 * share["records_covered"]
            assert share["per_record_96B_bytes"] == 96 * share["records_covered"]
        assert row["shares"]["whole record (all)"]["records_covered"] == n
        assert row["shares"]["10 records (set)"]["records_covered"] == 10
        assert row["keys_match_model"], row
    assert measured[100]["directory_bytes"] > measured[10]["directory_bytes"]
    whole = measured[100]["shares"]["whole record (all)"]
    assert whole["size_bytes"] <= 2 * 96 < whole["per_record_32B_bytes"]
    assert [r["n_records"] for r in overhead["model"]["rows"]] == [10, 100, 1000]
    assert overhead["model_at_service_params"]["n"] == measured[10]["kac_classes"]


def test_bench_service_cli_writes_json_and_plot(
    tmp_path: Path, report: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's part: it runs the benchmark in its mode, prints the table, writes the
    report and the plot. The benchmark itself is the module's real run above (a second
    run here would only repeat it)."""
    asked: list[bool] = []

    def the_run_above(quick: bool, progress=None, **_: object) -> dict:
        asked.append(quick)
        return report

    monkeypatch.setattr(bench_service, "run", the_run_above)
    out, plot = tmp_path / "service.json", tmp_path / "service.png"
    result = CliRunner().invoke(
        app, ["bench", "service", "--quick", "--json", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    assert asked == [True]
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    assert {"quick", "machine", "read", "ingest", "key_overhead"} <= set(written)
    assert {row["area"] for row in written["read"]} == {"institution", "personal"}
    assert "institution" in result.output and "records/s" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
