"""``medshare anchor …``: publish checkpoints to an EVM chain and check a node against them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import EXIT_DENIED, fail, user_errors
from medshare.cli.files import open_node_db
from medshare.ledger.store import StoreCorrupted

app = typer.Typer(help="Anchor ledger checkpoints on a public EVM chain.", no_args_is_help=True)

DbOption = Annotated[Path, typer.Option("--db", help="A node's SQLite database.")]
RpcOption = Annotated[str, typer.Option("--rpc", help="JSON-RPC URL of the EVM node.")]
KEY_ENV = "MEDSHARE_ANCHOR_KEY"


@app.command("publish")
def publish(
    db: DbOption,
    rpc: RpcOption,
    contract: Annotated[
        str | None, typer.Option(help="CheckpointRegistry address (omit with --deploy).")
    ] = None,
    validators: Annotated[str | None, typer.Option(help="ValidatorRegistry address.")] = None,
    deploy: Annotated[bool, typer.Option(help="Deploy fresh contracts first.")] = False,
) -> None:
    """Anchor due checkpoints (every K blocks) and the current committee.

    Signs with the private key in $MEDSHARE_ANCHOR_KEY, or the node's first unlocked
    account (development chains only).
    """
    from medshare.ledger import anchor, checkpoints  # web3 takes ~1 s to import: load on use

    with user_errors():
        store = open_node_db(db)
        try:
            signer = anchor.Anchorer(rpc, private_key=os.environ.get(KEY_ENV) or None)
            if deploy:
                signer.deploy()
            elif contract and validators:
                signer.use(anchor.Deployment(contract, validators))
            else:
                raise fail("give --contract and --validators, or --deploy")
            result = checkpoints.publish(store, signer)
        except (anchor.AnchorError, StoreCorrupted) as exc:
            raise fail(str(exc), EXIT_DENIED) from None
        finally:
            store.close()
    deployment = signer.deployment
    typer.echo(
        json.dumps(
            {
                "checkpoint_registry": deployment.checkpoint_registry,
                "validator_registry": deployment.validator_registry,
                "anchored_heights": result.anchored,
                "committee_epoch": result.committee_epoch,
            }
        )
    )


@app.command("verify")
def verify(
    db: DbOption,
    rpc: RpcOption,
    contract: Annotated[str, typer.Option(help="CheckpointRegistry address.")],
) -> None:
    """Check that the local chain matches every anchored checkpoint. Exit 1 if not."""
    from medshare.ledger import anchor, checkpoints

    with user_errors():
        store = open_node_db(db)
        try:
            report = anchor.verify_against_chain(checkpoints.local_rows(store), rpc, contract)
        except anchor.AnchorError as exc:
            raise fail(str(exc), EXIT_DENIED) from None
        finally:
            store.close()
    typer.echo(
        json.dumps(
            {
                "ok": report.ok,
                "checked": report.checked,
                "anchored": report.anchored,
                "missing": report.missing,
                "mismatches": report.mismatches,
            }
        )
    )
    if not report.ok:
        raise typer.Exit(EXIT_DENIED)
