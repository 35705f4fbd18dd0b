"""``medshare bench crypto --quick`` writes the report the issue specifies, and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshare.cli.main import app


@pytest.mark.slow
def test_bench_crypto_quick_report_shape(tmp_path: Path) -> None:
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(
        app, ["bench", "crypto", "--quick", "--json", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["backend"].startswith("py-arkworks-bls12381")
    abe_ops = {(row["op"], row["attrs"]) for row in report["abe"]}
    for n in (5, 20):  # --quick: the ends of a shorter range (the full run: 5, 10, 20, 50)
        assert {("setup", n), ("keygen", n), ("encrypt", n), ("decrypt", n)} <= abe_ops
        assert ("issue", n) in abe_ops
    assert {("issue-online", 5), ("issue-online", 20)} <= abe_ops
    kac_rows = {(row["op"], row.get("set_size", row.get("classes"))) for row in report["kac"]}
    assert ("setup", 1024) in kac_rows
    for size in (1, 8, 64):
        assert ("extract", size) in kac_rows
        assert ("decrypt", size) in kac_rows
    for row in report["abe"] + report["kac"]:
        assert row["ms"] > 0
        assert row["bound_ms"] > 0
        assert row["ratio"] == pytest.approx(row["ms"] / row["bound_ms"], rel=0.01)
    sizes = report["sizes"]
    assert sizes["kac_key_bytes"] == 96
    assert sizes["kac_header_bytes"] == 96
    ct_sizes = {int(k): v for k, v in sizes["abe_ciphertext_bytes"].items()}
    assert sorted(ct_sizes) == [5, 20]
    # three G1 points (144 bytes) per policy row, plus the policy text
    assert ct_sizes[20] - ct_sizes[5] >= 15 * 144
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
