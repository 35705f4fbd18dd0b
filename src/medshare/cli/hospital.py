"""``medshare hospital …``: a hospital's own directory and HTTP server: join a running
consortium (``init --join``, then ``admit`` at the members), enrol its people, ingest,
serve. ``serve`` holds the directory's ledger for as long as it runs, so ``enrol``,
``ingest`` and ``admit`` run while the server is stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import fail
from medshare.cli.records import opened, service_errors

app = typer.Typer(help="A hospital's HTTP server.", no_args_is_help=True)


@app.command()
def enrol(
    directory: Annotated[Path, typer.Option("--dir", help="The hospital's data directory.")],
    patient: Annotated[str | None, typer.Option(help="Enrol this patient id.")] = None,
    name: Annotated[str | None, typer.Option(help="The patient's display name.")] = None,
    staff: Annotated[str | None, typer.Option(help="Enrol this staff member (name@CODE).")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            "--roles",
            help="physician, nurse, emergency, records, auditor, ethics or researcher.",
        ),
    ] = None,
    dept: Annotated[str | None, typer.Option(help="The staff member's department code.")] = None,
    hospital: Annotated[
        str | None, typer.Option(help="Which hospital of the directory (default: the first).")
    ] = None,
    days: Annotated[int, typer.Option(help="Days the code stays valid.")] = 7,
) -> None:
    """Print a one-time code (JSON) for a patient or a staff member: their `medshare
    wallet new --code` makes their keys on their own device and redeems it."""
    from medshare.service.enrolment import MAX_CODE_TTL_MS

    if (patient is None) == (staff is None):
        raise fail("enrol either --patient PID or --staff NAME@CODE")
    if not 0 < days <= MAX_CODE_TTL_MS // 86_400_000:
        raise fail("--days is between 1 and 90")
    with opened(directory) as service:
        code = hospital or service.config.hospitals[0]
        if patient is not None:
            got = service.enrol(
                code, f"patient:{patient}", kind="patient", name=name, ttl_ms=days * 86_400_000
            )
        else:
            got = service.enrol(
                code, staff, kind="clinician", role=role, dept=dept, ttl_ms=days * 86_400_000
            )
    typer.echo(json.dumps({**got.as_dict(), "hospital": code}, indent=2))


@app.command()
def ingest(
    directory: Annotated[Path, typer.Option("--dir", help="The hospital's data directory.")],
    files: Annotated[list[Path], typer.Argument(help="FHIR Bundles, NDJSON or resources.")],
    hospital: Annotated[
        str | None, typer.Option(help="Which hospital of the directory (default: the first).")
    ] = None,
) -> None:
    """Ingest FHIR R4 as this hospital's records (validated, classified, encrypted,
    replicated, anchored); JSON {"patients", "records", "rejected": [{"item", "reason"}]}.
    Over HTTP a records officer posts the same to /v1/ingest."""
    with opened(directory) as service:
        report = service.ingest(hospital or service.config.hospitals[0], files)
    typer.echo(json.dumps(report.as_dict(), indent=2))


@app.command()
def init(
    directory: Annotated[Path, typer.Option("--dir", help="The new hospital's directory.")],
    code: Annotated[str, typer.Option(help="The hospital's code (e.g. H004).")],
    join: Annotated[str, typer.Option(help="The API URL of any member of the consortium.")],
    chain_id: Annotated[
        str,
        typer.Option(
            "--chain-id",
            help="The consortium's chain id, as its members told you (consortium up prints "
            "it): the member's answer must be that chain's.",
        ),
    ],
    host: Annotated[
        str, typer.Option(help="The address the other members reach this machine at.")
    ] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="The port its server will listen on.")] = None,
) -> None:
    """Join a running consortium from this machine: the node key, the authority's keys and
    the database are made here. Writes DIR/join-request.json for the members' `medshare
    hospital admit` and prints it with the first records officer's one-time code (keep
    that one here). Then `medshare hospital serve --dir DIR --port PORT`."""
    from medshare.server import join as joining

    with service_errors():
        try:
            request = joining.prepare(
                directory, code, join, chain_id=chain_id, host=host, port=port
            )
        except joining.JoinError as exc:
            raise fail(str(exc), 1) from None
    typer.echo(json.dumps(request, indent=2))


@app.command()
def admit(
    directory: Annotated[Path, typer.Option("--dir", help="This member's directory.")],
    request: Annotated[Path, typer.Argument(help="The join request hospital init printed.")],
) -> None:
    """Approve a hospital's node on the chain (signed by this member's node; it is admitted
    once more than 2/3 of the active nodes approved) and add it to this member's peers.
    Run with this member's server stopped; restart it afterwards."""
    from medshare.server import join as joining

    try:
        doc = json.loads(request.read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read the join request {request}: {exc}") from None
    with opened(directory) as service:
        answer = joining.admit(service, doc)
    typer.echo(json.dumps(answer, indent=2))


@app.command()
def serve(
    directory: Annotated[Path, typer.Option("--dir", help="The data directory to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8400,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM); serve HTTPS with --ssl-keyfile.")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    precompute: Annotated[
        int,
        typer.Option(help="Issuance offers whose Paillier randomness is kept ready per authority."),
    ] = 2,
) -> None:
    """Serve the hospital API (OpenAPI docs at /docs) until interrupted. Anywhere but
    127.0.0.1, give it a TLS certificate: releases are sealed to an area's key, not to
    the one reader, so a captured release opens for any holder of that area's key."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together")
    import sys

    import uvicorn

    from medshare.server.app import SERVER_RECURSION_LIMIT, create_app

    sys.setrecursionlimit(SERVER_RECURSION_LIMIT)  # see server.app: deep JSON must raise

    with opened(directory) as service:
        if service.config.local is not None:
            from medshare.server import join as joining

            try:
                if joining.activate(service):
                    typer.echo(f"{service.config.local}'s authority published", err=True)
            except joining.JoinError as exc:
                raise fail(str(exc), 1) from None
        config = uvicorn.Config(
            create_app(service, precompute_offers=max(0, min(precompute, 16))),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        )
        server = uvicorn.Server(config)
        scheme = "https" if ssl_certfile else "http"
        typer.echo(f"serving {directory} on {scheme}://{host}:{port}", err=True)
        server.run()
