"""``medshare consortium …``: member hospitals as separate processes, each its own data
directory, ledger node and server (see :mod:`medshare.server.consortium`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import fail, user_errors
from medshare.cli.records import service_errors
from medshare.ledger.cometbft import install, network
from medshare.ledger.port import LedgerUnavailable
from medshare.server import consortium
from medshare.service.config import ConfigError

app = typer.Typer(
    help="Member hospitals as separate parties: each its own directory, node and server.",
    no_args_is_help=True,
)

DirOption = Annotated[Path, typer.Option("--dir", help="The consortium's folder.")]


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _guard(fn, *args, **kwargs):
    try:
        with user_errors(), service_errors():
            return fn(*args, **kwargs)
    except (
        consortium.ConsortiumError,
        network.NetworkError,
        install.EngineMissing,
        LedgerUnavailable,
        ConfigError,
    ) as exc:
        raise fail(str(exc), 1) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1) from None


@app.command("up")
def up(
    directory: DirOption,
    hospitals: Annotated[int, typer.Option(help="Member hospitals (on creation).")] = 3,
    host: Annotated[
        str, typer.Option(help="Address the servers and nodes listen on.")
    ] = "127.0.0.1",
    precompute: Annotated[
        int, typer.Option(help="Issuance offers each server keeps ready per authority.")
    ] = 2,
) -> None:
    """Create (when new) and start the consortium; JSON: each hospital's code, API URL,
    data directory and node RPC (on creation also each hospital's records-officer code:
    `medshare wallet new --hospital API --code CODE` on the officer's device)."""
    summary = _guard(
        consortium.up,
        directory,
        hospitals=hospitals,
        host=host,
        precompute=max(0, min(precompute, 16)),
        progress=_say,
    )
    typer.echo(json.dumps(summary, indent=2))


@app.command("down")
def down(directory: DirOption) -> None:
    """Stop every server and ledger node of the consortium (their data stays)."""
    summary = _guard(consortium.down, directory, progress=_say)
    typer.echo(json.dumps(summary, indent=2))


@app.command("status")
def status(directory: DirOption) -> None:
    """Which servers and nodes run, and where each hospital's data lives."""
    typer.echo(json.dumps(_guard(consortium.status, directory), indent=2))
