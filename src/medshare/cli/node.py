"""``medshare node`` (one ledger node in the foreground) and ``medshare net …`` (a local
network of node processes: up, down, status, submit, restart)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import fail
from medshare.ledger import localnet
from medshare.ledger.consensus import WalCorrupted
from medshare.ledger.netnode import NodeError, serve
from medshare.ledger.store import StoreCorrupted

DirOption = Annotated[Path, typer.Option("--dir", help="The network's folder.")]


def run_node(
    config: Annotated[Path, typer.Option("--config", help="The node's JSON config file.")],
) -> None:
    """Run one ledger node (HTTP on its host:port) until SIGTERM or Ctrl-C.

    Logs one line per committed block to stderr; restarts from its database and catches
    up from its peers."""
    try:
        serve(config)
    except NodeError as exc:
        raise fail(str(exc)) from None
    except (StoreCorrupted, WalCorrupted) as exc:
        raise fail(f"database {config} cannot be used: {exc}", 1) from None
    except ValueError as exc:  # e.g. the db belongs to another chain
        raise fail(f"cannot start: {exc}") from None
    except Exception:
        logging.getLogger("medshare.node").exception("node stopped on an internal error")
        raise typer.Exit(1) from None


net_app = typer.Typer(
    help="A network of node processes on this machine (for demos and tests).",
    no_args_is_help=True,
)


def _print(doc: object) -> None:
    typer.echo(json.dumps(doc, indent=1))


def _run(fn, *args, **kwargs) -> object:
    try:
        return fn(*args, **kwargs)
    except localnet.NetError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


@net_app.command("up")
def net_up(
    directory: DirOption,
    nodes: Annotated[int, typer.Option("--nodes", help="How many nodes (validators).")] = 4,
    committee: Annotated[
        int | None,
        typer.Option("--committee", help="Committee size 3f+1 ≤ N (default 4; 1 if N < 4)."),
    ] = None,
    epoch: Annotated[int, typer.Option("--epoch", help="Blocks per epoch.")] = 10,
    certificate_lag: Annotated[
        int,
        typer.Option(
            "--certificate-lag",
            help="Block h carries the commit certificate of block h-W (default 1); "
            "W > 1 lets W heights be decided at once.",
        ),
    ] = 1,
    proposer_run: Annotated[
        int,
        typer.Option(
            "--proposer-run",
            help="One leader proposes this many heights in a row (default 1: rotate).",
        ),
    ] = 1,
    base_port: Annotated[
        int | None, typer.Option("--base-port", help="Ports P, P+1, … (default: free ports).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the nodes.")] = 30.0,
) -> None:
    """Create keys, genesis and configs in DIR, start the nodes, wait until they answer.
    In a folder with a stopped network, start it again instead."""
    _print(
        _run(
            localnet.up,
            directory,
            nodes,
            committee=committee,
            epoch=epoch,
            certificate_lag=certificate_lag,
            proposer_run=proposer_run,
            base_port=base_port,
            timeout=timeout,
        )
    )


@net_app.command("down")
def net_down(directory: DirOption) -> None:
    """Stop every node (SIGTERM, then SIGKILL after 5 s). Safe to repeat."""
    _print(_run(localnet.down, directory))


@net_app.command("status")
def net_status(directory: DirOption) -> None:
    """Every node's height and head hash, as JSON."""
    _print(_run(localnet.status, directory))


@net_app.command("submit")
def net_submit(
    directory: DirOption,
    count: Annotated[int, typer.Option("--count", help="How many transactions.")] = 1,
) -> None:
    """Submit COUNT signed ANCHOR_RECORD txs from the network's client key, round-robin;
    prints their txids. Exit 1 if one was not admitted (the rest are not sent)."""
    result = _run(localnet.submit, directory, count)
    _print(result)
    if isinstance(result, dict) and "error" in result:
        raise typer.Exit(1)


@net_app.command("restart")
def net_restart(
    directory: DirOption,
    node: Annotated[int, typer.Option("--node", help="The node's index.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the node.")] = 30.0,
) -> None:
    """Start node I again from its config and database; it catches up from its peers."""
    _print(_run(localnet.restart, directory, node, timeout=timeout))
