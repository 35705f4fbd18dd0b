"""``medshare anchor …``: publish checkpoints to an EVM chain and check a node against them.

The ledger is read from a CometBFT node's RPC (``--node URL``), or from a database of the
retired engine (``--db NODE.db``, kept while such databases exist).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medshare.cli.errors import EXIT_DENIED, fail, user_errors

if TYPE_CHECKING:
    from medshare.ledger.anchor import Anchorer, AnchorReport

app = typer.Typer(help="Anchor ledger checkpoints on a public EVM chain.", no_args_is_help=True)

NodeOption = Annotated[
    str | None,
    typer.Option(
        "--node", help="A CometBFT node's RPC URL (e.g. http://127.0.0.1:26657): the ledger."
    ),
]
DbOption = Annotated[
    Path | None, typer.Option("--db", help="A database of the retired engine (instead of --node).")
]
RpcOption = Annotated[str, typer.Option("--rpc", help="JSON-RPC URL of the EVM node.")]
KEY_ENV = "MEDSHARE_ANCHOR_KEY"


def _source(node: str | None, db: Path | None) -> None:
    if (node is None) == (db is None):
        raise fail("give exactly one of --node and --db")


@app.command("publish")
def publish(
    rpc: RpcOption,
    node: NodeOption = None,
    db: DbOption = None,
    contract: Annotated[
        str | None, typer.Option(help="CheckpointRegistry address (omit with --deploy).")
    ] = None,
    validators: Annotated[str | None, typer.Option(help="ValidatorRegistry address.")] = None,
    deploy: Annotated[bool, typer.Option(help="Deploy fresh contracts first.")] = False,
    every: Annotated[
        int | None,
        typer.Option(
            "--every",
            min=1,
            help="With --node: anchor every K blocks (default 10).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Anchor due checkpoints (every K blocks) and the committee.

    With --node, the node's chain is first re-verified from its genesis (headers, commits
    signed by > 2/3 of each height's validator power, the committee rule, the replayed
    application); a checkpoint of height h is (h, hash of header h, app_hash of header
    h+1), and the validator set of h is registered (epoch = h) when it changed.

    Signs with the private key in $MEDSHARE_ANCHOR_KEY, or the node's first unlocked
    account (development chains only).
    """
    _source(node, db)
    if every is not None and node is None:
        raise fail("--every goes with --node (a --db chain uses its configured anchor_every)")
    if not deploy and not (contract and validators):
        raise fail("give --contract and --validators, or --deploy")
    from medshare.ledger import anchor  # web3 takes ~1 s to import: load on use

    if node is not None:
        _probe(node)  # before deploying anything
    with user_errors():
        try:
            signer = anchor.Anchorer(rpc, private_key=os.environ.get(KEY_ENV) or None)
            if deploy:
                signer.deploy()
            else:
                assert contract and validators
                signer.use(anchor.Deployment(contract, validators))
        except anchor.AnchorError as exc:
            raise fail(str(exc), EXIT_DENIED) from None
        if node is not None:
            out = _publish_node(node, signer, every)
        else:
            assert db is not None
            out = _publish_db(db, signer)
    deployment = signer.deployment
    assert deployment is not None
    typer.echo(
        json.dumps(
            {
                "checkpoint_registry": deployment.checkpoint_registry,
                "validator_registry": deployment.validator_registry,
                **out,
            }
        )
    )


def _probe(url: str) -> None:
    from medshare.ledger.cometbft.client import LedgerClient, LedgerUnavailable

    try:
        with LedgerClient([url]) as client:
            client.height()
    except LedgerUnavailable as exc:
        raise fail(f"cannot read the node at {url}: {exc}", EXIT_DENIED) from None


def _publish_node(url: str, signer: Anchorer, every: int | None) -> dict:
    from medshare.ledger import anchor
    from medshare.ledger.cometbft import checkpoints
    from medshare.ledger.cometbft.client import LedgerUnavailable

    try:
        result = checkpoints.publish(url, signer, every=every or checkpoints.DEFAULT_EVERY)
    except LedgerUnavailable as exc:
        raise fail(f"cannot read the node at {url}: {exc}", EXIT_DENIED) from None
    except anchor.AnchorError as exc:
        raise fail(str(exc), EXIT_DENIED) from None
    return {
        "anchored_heights": result.anchored,
        "committee_epoch": result.committee_epochs[-1] if result.committee_epochs else None,
        "committee_epochs": result.committee_epochs,
        "verified_to": result.verified_to,
        "validators": None
        if result.validators is None
        else [
            {
                "address": m.address.hex().upper(),
                "evm": anchor.validator_address(m.public),
                "power": m.power,
            }
            for m in result.validators
        ],
    }


def _publish_db(db: Path, signer: Anchorer) -> dict:
    from medshare.cli.files import open_node_db
    from medshare.ledger import anchor, checkpoints
    from medshare.ledger.store import StoreCorrupted

    store = open_node_db(db)
    try:
        result = checkpoints.publish(store, signer)
    except (anchor.AnchorError, StoreCorrupted) as exc:
        raise fail(str(exc), EXIT_DENIED) from None
    finally:
        store.close()
    return {"anchored_heights": result.anchored, "committee_epoch": result.committee_epoch}


@app.command("verify")
def verify(
    rpc: RpcOption,
    contract: Annotated[str, typer.Option(help="CheckpointRegistry address.")],
    node: NodeOption = None,
    db: DbOption = None,
    validators: Annotated[
        str | None,
        typer.Option(
            help="With --node: also check the ValidatorRegistry at this address against "
            "the node's validator set at the registered height."
        ),
    ] = None,
) -> None:
    """Check that the ledger matches every anchored checkpoint. Exit 1 if not.

    With --node, for each anchored height h the hash of the node's header h (recomputed,
    and the block id the node states), the app_hash of its header h+1 and their link are
    compared; "first_mismatch" is the lowest height that differs.
    """
    _source(node, db)
    if validators is not None and node is None:
        raise fail("--validators goes with --node")
    from medshare.ledger import anchor

    with user_errors():
        try:
            if node is not None:
                report = _verify_node(node, rpc, contract, validators)
            else:
                assert db is not None
                report = _verify_db(db, rpc, contract)
        except anchor.AnchorError as exc:
            raise fail(str(exc), EXIT_DENIED) from None
    typer.echo(
        json.dumps(
            {
                "ok": report.ok,
                "checked": report.checked,
                "anchored": report.anchored,
                "latest_anchored": report.latest_anchored,
                "first_mismatch": report.first_mismatch,
                "missing": report.missing,
                "mismatches": report.mismatches,
            }
        )
    )
    if not report.ok:
        raise typer.Exit(EXIT_DENIED)


def _verify_node(url: str, rpc: str, contract: str, validators: str | None) -> AnchorReport:
    from medshare.ledger.cometbft import checkpoints
    from medshare.ledger.cometbft.client import LedgerUnavailable

    try:
        return checkpoints.verify_node(url, rpc, contract, validator_registry=validators)
    except LedgerUnavailable as exc:
        raise fail(f"cannot read the node at {url}: {exc}", EXIT_DENIED) from None


def _verify_db(db: Path, rpc: str, contract: str) -> AnchorReport:
    from medshare.cli.files import open_node_db
    from medshare.ledger import anchor, checkpoints

    store = open_node_db(db)
    try:
        return anchor.verify_against_chain(checkpoints.local_rows(store), rpc, contract)
    finally:
        store.close()
