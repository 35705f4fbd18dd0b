"""The ``medshare`` command: one Typer app per noun, joined here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshare import __version__
from medshare.cli import anchor, bench, consortium, crypto, hospital, ledger, net, records, wallet

app = typer.Typer(
    help="medshare: accountable, patient-controlled sharing of medical records.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(crypto.app, name="crypto")
app.add_typer(ledger.app, name="ledger")
app.add_typer(anchor.app, name="anchor")
app.add_typer(bench.app, name="bench")
app.add_typer(net.app, name="net")
app.add_typer(consortium.app, name="consortium")
app.add_typer(hospital.app, name="hospital")
app.add_typer(wallet.app, name="wallet")
records.register(app)


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where to write the demo's files (default: a new folder).")
    ] = None,
) -> None:
    """Run the whole story end to end — hospitals as separate processes, people's keys in
    their own wallets — and check every step behaves as expected."""
    from medshare.demo import run_demo

    raise typer.Exit(run_demo(data_dir))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
