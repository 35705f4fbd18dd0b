"""``medshare net …``: a consortium of CometBFT nodes running our application on this
machine (or, with --p2p-host, reachable from others): up, status, load, kill, restart,
pause, resume, down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import fail
from medshare.ledger.cometbft import install, network
from medshare.ledger.cometbft.client import LedgerUnavailable, TxRefused

app = typer.Typer(
    help="A consortium of CometBFT nodes with the medshare application.", no_args_is_help=True
)

DirOption = Annotated[Path, typer.Option("--dir", help="The network's folder.")]
NodeOption = Annotated[int, typer.Option("--node", help="The node's index (0-based).")]


def _print(doc: object) -> None:
    typer.echo(json.dumps(doc, indent=1))


def _load(directory: Path) -> network.Network:
    try:
        return network.Network.load(directory)
    except network.NetworkError as exc:
        raise fail(str(exc)) from None


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (network.NetworkError, install.EngineMissing, LedgerUnavailable, TxRefused) as exc:
        raise fail(str(exc), 1) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1) from None


@app.command("install")
def net_install() -> None:
    """Build the pinned CometBFT with `go install` (a no-op when built)."""
    path = _guard(install.install)
    _print({"cometbft": install.COMETBFT_VERSION, "binary": str(path)})


@app.command("up")
def net_up(
    directory: DirOption,
    nodes: Annotated[
        int, typer.Option("--nodes", help="Consortium nodes (each a CometBFT node).")
    ] = 4,
    committee: Annotated[
        int | None,
        typer.Option("--committee", help="Elected validators (3f+1 ≤ N; default: all nodes)."),
    ] = None,
    epoch: Annotated[
        int, typer.Option("--epoch", help="Blocks per epoch (election period).")
    ] = 100,
    p2p_host: Annotated[
        str, typer.Option("--p2p-host", help="Address the p2p ports listen on.")
    ] = "127.0.0.1",
    rpc_host: Annotated[
        str, typer.Option("--rpc-host", help="Address the RPC ports listen on.")
    ] = "127.0.0.1",
) -> None:
    """Create keys, genesis and configs in DIR, start every node (app + CometBFT), wait
    until each RPC answers; prints the nodes and their RPC URLs."""
    if nodes < 1 or nodes > 64:
        raise fail("--nodes must be in 1..64")
    if epoch < 1:
        raise fail("--epoch must be ≥ 1")
    size = nodes if committee is None else committee
    if not 1 <= size <= nodes:
        raise fail(f"--committee must be in 1..{nodes}")
    net = _guard(
        network.up,
        directory,
        nodes=nodes,
        committee=size,
        epoch=epoch,
        p2p_host=p2p_host,
        rpc_host=rpc_host,
    )
    _print(
        {
            "dir": str(net.directory),
            "chain_id": net.chain_id,
            "nodes": [
                {"node": n.index, "name": n.name, "rpc": n.rpc, "p2p": n.p2p} for n in net.nodes
            ],
        }
    )


@app.command("status")
def net_status(directory: DirOption) -> None:
    """Height, validator set with power, the app's committee and reputations, per-node height."""
    _print(_guard(network.status, _load(directory)))


@app.command("load")
def net_load(
    directory: DirOption,
    seconds: Annotated[float, typer.Option("--seconds", help="Measured window.")] = 10.0,
    clients: Annotated[int, typer.Option("--clients", help="Client processes.")] = 4,
    outstanding: Annotated[
        int, typer.Option("--outstanding", help="Transactions in flight per client.")
    ] = 256,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the result here.")
    ] = None,
) -> None:
    """Committed tx/s and p50/p99 commit latency under load from CLIENTS processes."""
    from medshare.ledger.cometbft.load import run_load

    if not 0 < seconds <= 3600 or not 1 <= clients <= 64 or not 1 <= outstanding <= 4096:
        raise fail("need 0 < --seconds ≤ 3600, 1 ≤ --clients ≤ 64, 1 ≤ --outstanding ≤ 4096")
    _load(directory)
    result = _guard(run_load, directory, seconds=seconds, clients=clients, outstanding=outstanding)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1))
    _print(result)


@app.command("kill")
def net_kill(directory: DirOption, node: NodeOption) -> None:
    """SIGKILL node I's app and CometBFT (a crash; its data stays)."""
    net = _load(directory)
    _guard(net.node, node)
    network.kill(net, node)
    _print({"node": node, "running": network.running(net, node)})


@app.command("restart")
def net_restart(directory: DirOption, node: NodeOption) -> None:
    """Start node I again from its data; it catches up from its peers."""
    net = _load(directory)
    _guard(net.node, node)
    if network.running(net, node):
        network.stop(net, node)
    _guard(network.start, net, node)
    _print({"node": node, "running": network.running(net, node)})


@app.command("pause")
def net_pause(directory: DirOption, node: NodeOption) -> None:
    """SIGSTOP node I (a partition: it neither sends nor answers)."""
    net = _load(directory)
    _guard(net.node, node)
    network.pause(net, node)
    _print({"node": node, "paused": True})


@app.command("resume")
def net_resume(directory: DirOption, node: NodeOption) -> None:
    """SIGCONT node I."""
    net = _load(directory)
    _guard(net.node, node)
    network.resume(net, node)
    _print({"node": node, "paused": False})


@app.command("down")
def net_down(directory: DirOption) -> None:
    """Stop every node (SIGTERM, then SIGKILL). Data stays; safe to repeat."""
    net = _load(directory)
    network.down(net)
    _print({"stopped": len(net.nodes)})
