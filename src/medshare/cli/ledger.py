"""``medshare ledger …``: audit a chain from genesis (a node's database, or a CometBFT
node's RPC) and inclusion proofs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import EXIT_DENIED, fail, user_errors
from medshare.cli.files import open_node_db
from medshare.ledger import audit
from medshare.ledger.store import StoreCorrupted

app = typer.Typer(help="Verify a ledger database and prove transactions.", no_args_is_help=True)


@app.command("verify")
def verify(
    db: Annotated[Path | None, typer.Option("--db", help="A node's SQLite database.")] = None,
    rpc: Annotated[
        str | None,
        typer.Option("--rpc", help="A CometBFT node's RPC URL (e.g. http://127.0.0.1:26657)."),
    ] = None,
    to: Annotated[
        int | None, typer.Option("--to", min=0, help="With --rpc: stop at this height.")
    ] = None,
    genesis: Annotated[
        Path | None,
        typer.Option(
            "--genesis",
            help="With --rpc: the consortium's genesis.json, the trust anchor (else the "
            "node's own genesis is taken on trust, and the report says so).",
        ),
    ] = None,
) -> None:
    """Re-verify the whole chain from genesis; names the first bad height. Exit 1 if bad.

    With --rpc, only the node's genesis is trusted: every header, commit signature,
    validator set and transaction result is checked and the application is replayed."""
    if (db is None) == (rpc is None):
        raise fail("give exactly one of --db and --rpc")
    if (to is not None or genesis is not None) and rpc is None:
        raise fail("--to and --genesis go with --rpc")
    if rpc is not None:
        trusted = None
        if genesis is not None:
            try:
                trusted = json.loads(genesis.read_bytes())
            except (OSError, ValueError) as exc:
                raise fail(f"cannot read the genesis {genesis}: {exc}") from None
        report = _verify_rpc(rpc, to, trusted)
    else:
        with user_errors():
            store = open_node_db(db)
            try:
                report = audit.verify_chain(store).as_dict()
            finally:
                store.close()
    typer.echo(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(EXIT_DENIED)


def _verify_rpc(url: str, to: int | None, genesis: dict | None = None) -> dict:
    from medshare.ledger.cometbft import verify as cometbft_verify
    from medshare.ledger.cometbft.client import LedgerUnavailable

    with user_errors():
        try:
            return cometbft_verify.verify_node(url, to=to, genesis=genesis).as_dict()
        except LedgerUnavailable as exc:
            raise fail(f"cannot read the node at {url}: {exc}") from None


@app.command("prove")
def prove(
    tx: Annotated[str, typer.Option("--tx", help="Transaction id (hex).")],
    db: Annotated[Path | None, typer.Option("--db", help="A node's SQLite database.")] = None,
    rpc: Annotated[str | None, typer.Option("--rpc", help="A CometBFT node's RPC URL.")] = None,
) -> None:
    """Print a JSON inclusion proof for a committed transaction (from a CometBFT node with
    --rpc: CometBFT's merkle proof, the header and the commit that decided it)."""
    if (db is None) == (rpc is None):
        raise fail("give exactly one of --db and --rpc")
    txid = tx.strip().lower()
    if rpc is not None:
        from medshare.ledger.cometbft import proofs
        from medshare.ledger.cometbft.client import LedgerUnavailable

        try:
            bytes.fromhex(txid)
            proof = proofs.make(rpc, txid)
        except ValueError:
            raise fail("--tx must be a hex transaction id") from None
        except KeyError as exc:
            raise fail(str(exc.args[0]), EXIT_DENIED) from None
        except LedgerUnavailable as exc:
            raise fail(f"cannot read the node at {rpc}: {exc}") from None
        typer.echo(json.dumps(proof, indent=1))
        return
    with user_errors():
        store = open_node_db(db)
        try:
            proof = audit.make_proof(store, txid)
        except KeyError as exc:
            raise fail(str(exc.args[0]), EXIT_DENIED) from None
        except StoreCorrupted as exc:
            raise fail(f"database is corrupted: {exc}", EXIT_DENIED) from None
        finally:
            store.close()
    typer.echo(json.dumps(proof, indent=1))


@app.command("check-proof")
def check_proof(
    proof: Annotated[Path, typer.Argument(help="A proof from `medshare ledger prove`.")],
    db: Annotated[
        Path | None, typer.Option("--db", help="Check the committee against this chain.")
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option("--rpc", help="Check the committee against this CometBFT node's chain."),
    ] = None,
) -> None:
    """Check an inclusion proof: the tx against the header, the header against > 2/3 of the
    committee's signatures. Exit 1 if it fails. Without --db/--rpc the committee itself is
    taken on trust (the output says so); with --rpc the chain is re-verified from its
    genesis up to the proof's height and the committee must be the one it elected."""
    if db is not None and rpc is not None:
        raise fail("give at most one of --db and --rpc")
    with user_errors():
        try:
            doc = json.loads(proof.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            # RecursionError: arrays nested past the parser's limit (issue 12, fuzzing)
            raise fail(f"{proof} is not JSON") from None
        if isinstance(doc, dict) and str(doc.get("format", "")).startswith("medshare-cometbft"):
            summary = _check_cometbft_proof(doc, rpc)
        else:
            if rpc is not None:
                raise fail("--rpc checks proofs made with `ledger prove --rpc`")
            summary = _check_db_proof(doc, db)
    typer.echo(json.dumps(summary))


def _check_cometbft_proof(doc: dict, rpc: str | None) -> dict:
    from medshare.ledger.cometbft import proofs
    from medshare.ledger.cometbft.client import LedgerUnavailable

    trusted, chain_id = None, None
    try:
        if rpc is not None:
            trusted, chain_id = proofs.trusted_set(rpc, int(doc.get("height", 0)))
        return proofs.check(doc, trusted, chain_id)
    except proofs.ProofError as exc:
        raise fail(f"proof does not check: {exc}", EXIT_DENIED) from None
    except (LedgerUnavailable, ValueError, TypeError) as exc:
        raise fail(f"cannot check against {rpc}: {exc}", EXIT_DENIED) from None


def _check_db_proof(doc: object, db: Path | None) -> dict:
    trusted, chain_id = None, None
    if db is not None:
        store = open_node_db(db)
        try:
            trusted = audit.committee_at(store, int(doc.get("height", -1)))
            chain_id = audit.load_config(store).chain_id
        except (StoreCorrupted, ValueError, TypeError, AttributeError) as exc:
            raise fail(f"cannot read the committee from {db}: {exc}", EXIT_DENIED) from None
        finally:
            store.close()
    try:
        return audit.check_proof(doc, trusted, chain_id)
    except audit.ProofError as exc:
        raise fail(f"proof does not check: {exc}", EXIT_DENIED) from None
