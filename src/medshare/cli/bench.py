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

from medshare.cli.errors import fail
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
    quick: Annotated[
        bool, typer.Option(help="Fewer repetitions, ABE at 5 and 20 attributes only (a smoke run).")
    ] = False,
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


def _node_counts(text: str) -> tuple[int, ...]:
    """``16,64`` → (16, 64): each N at least the committee of 7 and at most 1,024."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise fail(f"--nodes takes comma-separated integers, not {text!r}") from None
    if not counts or not all(7 <= n <= 1024 for n in counts):
        raise fail("--nodes: each N must be between 7 and 1024")
    return counts


@app.command("ledger")
def ledger(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write a PNG plot.")] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="Calibrate on N = 4 and 8 only (8 s runs), fewer modelled heights (a few minutes)."
        ),
    ] = False,
    sim: Annotated[
        bool, typer.Option(help="Calibrate the CometBFT model and run its curve over N.")
    ] = True,
    real: Annotated[
        bool, typer.Option(help="Run real CometBFT processes and etcd on this machine.")
    ] = True,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--calibration-runs",
            help="Fit on the real runs of an earlier report (its calibration.runs) instead "
            "of measuring new ones.",
        ),
    ] = None,
    nodes: Annotated[
        str | None,
        typer.Option(
            help="The model's curve over these N only (comma-separated, e.g. 16,64; "
            "default 16,32,64,128,256). The summary's 7-vs-64 ratios need 64."
        ),
    ] = None,
) -> None:
    """Real CometBFT processes under load next to etcd; the CometBFT model calibrated
    against real runs on this machine; and the model's curve over N = 16 … 256."""
    from medshare.bench import ledger as bench_ledger

    plan = None if nodes is None else bench_ledger.curve_plan(_node_counts(nodes))
    earlier = None
    if runs is not None:
        doc = json.loads(runs.read_text())
        earlier = doc["calibration"]["runs"] if "calibration" in doc else doc
    real_report = _real_ledger(quick) if real else None
    if not sim:
        write_file(json_out, json.dumps({"real": real_report}, indent=1).encode() + b"\n")
        typer.echo(f"report written to {json_out}")
        return

    def run_both(quick: bool, progress: Callable[[str], None]) -> dict:
        report = bench_ledger.run(quick, progress=progress, runs=earlier, curve_plan_=plan)
        if real_report is not None:
            report["real"] = real_report
        return report

    report = _run_and_save(run_both, "plot_ledger", quick, json_out, plot)
    console = Console()
    fit = report["calibration"]["fit"]
    costs = fit["costs_us"]
    console.print(
        "fitted costs (µs, this machine): "
        + ", ".join(
            f"{name} {costs[name]:.1f}"
            for name in (
                "verify_us", "sign_us", "msg_us", "kb_us", "abci_request_us", "tx_go_us",
                "height_go_us", "rpc_tx_us", "app_tx_us", "recheck_app_us", "app_height_us",
                "client_tx_us",
            )
        )
        + f" (R² Go {fit['go_r2']:.3f}, app {fit['app_r2']:.3f})"
    )  # fmt: skip
    table = Table(title="calibration: real CometBFT runs on this machine vs the model")
    columns = ("N", "m", "cores", "tx/s", "model", "ratio", "p50 ms", "model", "ratio", "±30 %")
    for column in columns:
        table.add_column(column, justify="right")

    def fmt(value: object, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for row in report["calibration"]["rows"]:
        table.add_row(
            str(row["nodes"]),
            str(row["validators"]),
            fmt(row["cores_available"], ".2f"),
            fmt(row["measured_tx_per_s"], ".0f"),
            fmt(row["predicted_tx_per_s"], ".0f"),
            fmt(row["tx_per_s_ratio"], ".2f"),
            fmt(row["measured_p50_ms"], ".0f"),
            fmt(row["predicted_p50_ms"], ".0f"),
            fmt(row["p50_ratio"], ".2f"),
            "yes" if row["within_30pct"] else "no: " + "; ".join(row["reasons"]),
        )
    console.print(table)
    table = Table(title="the model over N (2 cores per node, links 5–80 ms, full mesh)")
    columns = (
        "N", "m", "block txs", "tx/s", "p50 ms", "interval ms", "msgs/block",
        "vote msgs/block", "KB/block", "CPU ms/block/node", "CPU use",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for row in report["curve"]:
        table.add_row(
            str(row["nodes"]),
            str(row["validators"]),
            str(row["block_txs"]),
            f"{row['tx_per_s']:.1f}",
            fmt(row["p50_ms"], ".0f"),
            f"{row['block_interval_ms']:.0f}",
            f"{row['messages_per_block']:,}",
            f"{row['vote_messages_per_block']:,}",
            f"{row['bytes_per_block'] / 1024:,.0f}",
            f"{row['cpu_ms_per_block_max']:.1f}",
            f"{row['cpu_utilisation_max']:.2f}" + (" (saturated)" if row["saturated"] else ""),
        )
    console.print(table)
    summary = report["summary"]
    targets = summary["targets"]
    console.print(
        f"committee of 7 vs all 64 validators, 10-tx blocks (model): "
        f"{summary['tx_per_s_ratio_7_vs_64_at_10tx']}× tx/s "
        f"(target ≥ {targets['tx_per_s_ratio_min']}×: "
        f"{'met' if targets['tx_per_s_ratio_met'] else 'not met'}); "
        f"{summary['messages_ratio_7_vs_64_at_10tx']}× fewer p2p messages per block, "
        f"{summary['vote_messages_ratio_7_vs_64_at_10tx']}× fewer vote messages "
        f"(target ≥ {targets['messages_ratio_min']}×: "
        f"{'met' if targets['messages_ratio_met'] else 'not met'} for all messages, "
        f"{'met' if targets['vote_messages_ratio_met'] else 'not met'} for vote messages)"
    )
    console.print(
        f"calibration rows within ±30 %: {summary['calibration_rows_within_30pct']} of "
        f"{summary['calibration_rows']}; runtime {report['runtime_s']}"
    )
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
    for column in ("p50", "p90", "decrypt", "fetch", "log", "other", "bound", "ratio", "met"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["area"],
            f"{row['median_ms']:.1f}",
            f"{row['p90_ms']:.1f}",
            f"{row['decrypt_ms']:.1f}",
            f"{row['fetch_ms']:.1f}",
            f"{row['log_ms']:.1f}",
            f"{row['other_ms']:.1f}",
            f"{row['bound_ms']:.1f}",
            f"{row['decrypt_ratio']:.2f}",
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


@app.command("http")
def http(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write a PNG plot.")] = None,
    quick: Annotated[
        bool, typer.Option(help="1 and 4 wallets × 5 reads (else 1, 2, 4, 8 × 20).")
    ] = False,
) -> None:
    """Reads over HTTP between real processes (hospital server, CometBFT nodes, wallets
    in this process, one thread each) under concurrent load: latency percentiles and
    throughput per number of concurrent wallets."""
    from medshare.bench import http_service

    report = _run_and_save(http_service.run, "plot_http", quick, json_out, plot)
    setup = report["setup"]
    table = Table(
        title=f"medshare bench http: {setup['record_bytes'] // 1000} kB read, signed request "
        "→ access tx committed → sealed release → decrypted in the wallet (ms)",
        caption=f"{setup['hospitals']} hospitals, {setup['nodes']} CometBFT nodes; targets: "
        f"p50 < {setup['target_p50_ms']:g} ms, p99 < {setup['target_p99_ms']:g} ms",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    columns = ("wallets", "reads", "errors", "p50", "p90", "p99", "max", "reads/s", "per block")
    for column in (*columns, "met"):
        table.add_column(column, justify="right")
    for row in report["levels"]:
        table.add_row(
            *(
                str(row[k]) if row[k] is not None else "-"
                for k in ("wallets", "reads", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                          "reads_per_s", "reads_per_block")
            ),
            "yes" if row["met"] else "no",
        )  # fmt: skip
    Console().print(table)
    ingest = report["ingest"]
    rates = ", ".join(f"{code} {h['records_per_s']:g}" for code, h in ingest["hospitals"].items())
    typer.echo(
        f"ingest over HTTP: {ingest['records']} records by {len(ingest['hospitals'])} records "
        f"officers at once in {ingest['seconds']:g} s = {ingest['records_per_s']:g} records/s "
        f"(per hospital: {rates}; target ≥ {ingest['target_per_hospital_per_s']:g} each)"
    )
    typer.echo(f"report written to {json_out}" + (f", plot to {plot}" if plot else ""))


@app.command("fuzz")
def fuzz(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    examples: Annotated[
        int, typer.Option(min=1, help="Malformed inputs per target (after its regressions).")
    ] = 10_000,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Run only this target (repeatable; default: all)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Hypothesis seed for new inputs (default: derandomized, repeatable)."),
    ] = None,
) -> None:
    """Fuzz every decoder and entry point with malformed input; exit 1 on any failure.

    A failure is an exception the entry point does not document (or a broken contract:
    state stored for rejected input, a CLI traceback); each is reported with its input in
    hex. Needs Hypothesis (the test extra)."""
    try:
        from medshare.bench import fuzz as bench_fuzz
    except ImportError as exc:  # Hypothesis is a test dependency
        raise typer.BadParameter(f"medshare bench fuzz needs Hypothesis ({exc})") from None
    unknown = sorted(set(target or ()) - set(bench_fuzz.TARGETS))
    if unknown:
        raise typer.BadParameter(
            f"unknown target(s) {', '.join(unknown)}; known: {', '.join(bench_fuzz.TARGETS)}",
            param_hint="--target",
        )
    with Console(stderr=True).status("fuzzing") as status:
        report = bench_fuzz.run(
            examples, targets=target, seed=seed, progress=lambda msg: status.update(msg)
        )
    write_file(json_out, json.dumps(report, indent=1).encode() + b"\n")
    table = Table(
        title=f"medshare bench fuzz: {examples} inputs per target, {report['runtime_s']} s",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("target", "examples", "accepted", "errors and answers seen", "failures", "s"):
        table.add_column(column, justify="left" if column[0] in "te" else "right")
    for row in report["targets"]:
        seen = {**row["errors"], **row["outcomes"]}
        table.add_row(
            row["target"],
            str(row["examples"]),
            str(row["accepted"]),
            ", ".join(f"{name} {count}" for name, count in seen.items()),
            str(len(row["failures"])),
            f"{row['seconds']:.0f}",
        )
    console = Console()
    console.print(table)
    for row in report["targets"]:
        for failure in row["failures"]:
            console.print(
                f"FAIL {row['target']}: {failure['exception']} at {failure['traceback']} "
                f"({failure['count']}×, smallest input {failure['input_bytes']} bytes)",
                markup=False,
                highlight=False,
            )
        if row["harness_error"]:
            console.print(
                f"INCOMPLETE {row['target']}: {row['harness_error']}", markup=False, highlight=False
            )
    typer.echo(f"report written to {json_out}")
    if report["failures"] or report["harness_errors"]:
        raise typer.Exit(1)
