"""``medshare bench …``: measured speed, as JSON and a plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from medshare.cli.files import write_file

app = typer.Typer(
    help="Benchmarks against bare lower bounds, measured in one run.", no_args_is_help=True
)


def _run_and_save(
    run: Callable[..., dict], plotter: str, quick: bool, json_out: Path, plot: Path | None
) -> dict:
    """Run a benchmark with a progress line, write its JSON report and, if asked, its plot."""
    with Console(stderr=True).status("benchmarking") as status:
        report = run(quick, progress=lambda msg: status.update(msg))
    write_file(json_out, json.dumps(report, indent=1).encode() + b"\n")
    if plot is not None:
        from medshare.bench import plot as plots  # matplotlib loads only when plotting

        getattr(plots, plotter)(report, plot)
    return report


@app.command("crypto")
def crypto(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write a PNG plot.")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer repetitions (under a minute).")] = False,
) -> None:
    """CP-ABE and KAC: each operation vs its bare group-operation bound."""
    from medshare.bench import crypto as bench_crypto

    report = _run_and_save(bench_crypto.run, "plot_crypto", quick, json_out, plot)
    table = Table(title=f"medshare bench crypto ({report['backend']})")
    for column in ("scheme", "op", "size", "ms", "bound ms", "ratio"):
        table.add_column(column, justify="right" if column not in ("scheme", "op") else "left")
    for scheme in ("abe", "kac"):
        for row in report[scheme]:
            size = row.get("attrs", row.get("set_size", row.get("classes")))
            table.add_row(
                scheme,
                row["op"],
                str(size),
                f"{row['ms']:.2f}",
                f"{row['bound_ms']:.2f}",
                f"{row['ratio']:.2f}",
            )
    Console().print(table)
    Console().print(f"sizes: {json.dumps(report['sizes'])}")
    typer.echo(f"report written to {json_out}" + (f", plot to {plot}" if plot else ""))


def _real_ledger(quick: bool) -> dict:
    from medshare.bench import ledger_real

    with Console(stderr=True).status("benchmarking real processes") as status:
        report = ledger_real.run(quick, progress=lambda msg: status.update(msg))
    table = Table(title="medshare bench ledger: real processes on this machine, one run")
    columns = ("case", "system", "tx/s", "p50 ms", "p99 ms", "CPU s/block", "vote KB/block")
    for column in columns:
        table.add_column(column, justify="left" if column in ("case", "system") else "right")

    def fmt(value: object, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for row in report["rows"]:
        table.add_row(
            row["case"],
            row.get("system", ""),
            fmt(row.get("tx_per_s"), ".0f"),
            fmt(row.get("p50_ms"), ".0f"),
            fmt(row.get("p99_ms"), ".0f"),
            fmt(row.get("cpu_s_per_block"), ".3f"),
            fmt(
                row.get("vote_bytes_per_block", 0) / 1024
                if "vote_bytes_per_block" in row
                else None,
                ".1f",
            ),
        )
    Console().print(table)
    Console().print(f"real-process summary: {json.dumps(report['summary'])}")
    return report


@app.command("ledger")
def ledger(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write a PNG plot.")] = None,
    quick: Annotated[
        bool, typer.Option(help="N up to 64, block-size curve at N = 64 only (under a minute).")
    ] = False,
    sim: Annotated[bool, typer.Option(help="Run the simulated model.")] = True,
    real: Annotated[
        bool, typer.Option(help="Run real CometBFT processes and etcd on this machine.")
    ] = True,
) -> None:
    """Real CometBFT processes under load next to etcd; the elected committee vs every node
    a validator; and the simulated model over larger N."""
    from medshare.bench import ledger as bench_ledger

    real_report = _real_ledger(quick) if real else None
    if not sim:
        write_file(json_out, json.dumps({"real": real_report}, indent=1).encode() + b"\n")
        typer.echo(f"report written to {json_out}")
        return

    def run_both(quick: bool, progress: Callable[[str], None]) -> dict:
        report = bench_ledger.run(quick, progress=progress)
        if real_report is not None:
            report["real"] = real_report
        return report

    report = _run_and_save(run_both, "plot_ledger", quick, json_out, plot)
    costs = report["costs"]
    Console().print(
        "calibrated costs (this machine, this run): "
        f"verify {costs['verify_us']:.1f} µs, sign {costs['sign_us']:.1f} µs, "
        f"SHA-256 {costs['hash_us_per_kb']:.2f} µs/KiB, "
        f"per message {costs['per_message_us']:.1f} µs"
    )
    table = Table(title="medshare bench ledger (simulated; same seed, links and costs)")
    columns = (
        "mode",
        "N",
        "m",
        "silent",
        "block txs",
        "in flight",
        "tx/s",
        "steady tx/s",
        "latency ms",
        "msgs/block",
        "KB/block",
        "ceiling tx/s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in report["sim"]:
        table.add_row(
            row["mode"],
            str(row["nodes"]),
            str(row["committee"]),
            str(row.get("byzantine", 0)),
            str(row["block_txs"]),
            str(row.get("certificate_lag", 1)),
            f"{row['tps']:.1f}",
            f"{row['steady_tps']:.1f}",
            f"{row['latency_ms']:.1f}",
            f"{row['messages_per_block']:.0f}",
            f"{row['bytes_per_block'] / 1024:.0f}",
            f"{row['ceiling_tps']:.0f}",
        )
    Console().print(table)
    Console().print(
        "in flight: heights decided at once (1: one after another, latency-bound in both "
        "modes; more: overlapping heights, the rows the summary's pipelined ratio compares). "
        "steady tx/s: the rate once the first quarter of the heights is decided. "
        "ceiling tx/s: the rate at which the busiest node's CPU or uplink would saturate "
        "with the same work per block."
    )
    local = report["inprocess"]
    Console().print(
        f"in-process cluster ({local['nodes']} nodes, SQLite, real signatures): "
        f"{local['tps']:.0f} tx/s ({local['txs']} txs in blocks of {local['block_txs']})"
    )
    summary = report["summary"]
    piped = summary.get("pipelined_at_64")
    met = "met" if summary["targets"]["tps_ratio_met"] else "not met"
    Console().print(
        f"committee of 7 vs all 64 nodes, 10-tx blocks: "
        f"{summary['committee7_vs_all_at_64_tps_ratio']}× one height at a time"
        + (f", {piped['tps_ratio']}× with heights overlapping" if piped else "")
        + f" (target ≥ {summary['targets']['tps_ratio_min']}×: {met})"
    )
    Console().print(f"summary: {json.dumps(summary)}")
    typer.echo(f"report written to {json_out}" + (f", plot to {plot}" if plot else ""))


@app.command("service")
def service(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write a PNG plot.")] = None,
    quick: Annotated[
        bool, typer.Option(help="10 reads per area, 4 × 30 ingested, N = 10, 100 (under a minute).")
    ] = False,
) -> None:
    """The records service: 100 kB reads end to end, ingest rate, patient key overhead."""
    from medshare.bench import service as bench_service

    report = _run_and_save(bench_service.run, "plot_service", quick, json_out, plot)
    console = Console()
    rows = report["read"]
    table = Table(
        title=f"medshare bench service: read of a {rows[0]['record_kb']} kB record (ms)",
        caption="p50 = median, parts are medians over the repeats; bound: "
        + ", ".join(f"{r['bound_op']} ({r['area']})" for r in rows)
        + f"; target: median < {rows[0]['target_ms']:g} ms",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("area", no_wrap=True)
    for column in ("p50", "p90", "gate", "fetch", "log", "other", "bound", "ratio", "met"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["area"],
            f"{row['median_ms']:.1f}",
            f"{row['p90_ms']:.1f}",
            f"{row['gate_ms']:.1f}",
            f"{row['fetch_ms']:.1f}",
            f"{row['log_ms']:.1f}",
            f"{row['other_ms']:.1f}",
            f"{row['bound_ms']:.1f}",
            f"{row['gate_ratio']:.2f}",
            "yes" if row["met"] else "no",
        )
    console.print(table)
    ingest = report["ingest"]
    split = ", ".join(f"{k} {v:.2f}" for k, v in ingest["per_record_ms"].items())
    console.print(
        f"ingest: {ingest['records_per_s']:.1f} records/s ({ingest['records']} records from "
        f"{ingest['patients']} bundles in {ingest['seconds']:.2f} s); ms per record: {split}"
    )
    keys = Table(
        title="patient key overhead, measured on the service (bytes)",
        caption="seed: the patient's secret; dir: public directory; key B: 96 B per key; "
        "file: the share file; 32 B / 96 B: one key per record covered",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    columns = ("N", "seed", "dir", "share", "keys", "key B", "file", "covered", "32 B")
    for column in (*columns, "96 B"):
        keys.add_column(column, justify="left" if column == "share" else "right")
    for row in report["key_overhead"]["measured"]:
        first = True
        for label, share in row["shares"].items():
            head = (
                (str(row["n_records"]), str(row["patient_seed_bytes"]), str(row["directory_bytes"]))
                if first
                else ("", "", "")
            )
            keys.add_row(
                *head,
                label,
                str(share["keys"]),
                str(share["size_bytes"]),
                str(share["file_bytes"]),
                str(share["records_covered"]),
                str(share["per_record_32B_bytes"]),
                str(share["per_record_96B_bytes"]),
            )
            first = False
    console.print(keys)
    typer.echo(f"report written to {json_out}" + (f", plot to {plot}" if plot else ""))
