"""``medshare bench …``: measured speed, as JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medshare.cli.files import write_file

app = typer.Typer(
    help="Benchmarks against bare lower bounds, measured in one run.", no_args_is_help=True
)


@app.command("crypto")
def crypto(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")],
    plot: Annotated[Path | None, typer.Option(help="Where to write a PNG plot.")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer repetitions (under a minute).")] = False,
) -> None:
    """CP-ABE and KAC: each operation vs its bare group-operation bound."""
    from medshare.bench import crypto as bench_crypto

    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        report = bench_crypto.run(quick, progress=lambda msg: status.update(msg))
    write_file(json_out, json.dumps(report, indent=1).encode() + b"\n")
    if plot is not None:
        from medshare.bench.plot import plot_crypto

        plot_crypto(report, plot)
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
