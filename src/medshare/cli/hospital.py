"""``medshare hospital …``: run a hospital's HTTP server.

Today a server serves the consortium data directory ``medshare init`` made (one process,
every hospital of it); ``hospital init`` with one directory per hospital is to come
(issue 13). ``serve`` holds the directory's ledger for as long as it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.errors import fail
from medshare.cli.records import opened

app = typer.Typer(help="A hospital's HTTP server.", no_args_is_help=True)


@app.command()
def serve(
    directory: Annotated[Path, typer.Option("--dir", help="The data directory to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8400,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM); serve HTTPS with --ssl-keyfile.")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
) -> None:
    """Serve the hospital API (OpenAPI docs at /docs) until interrupted. Anywhere but
    127.0.0.1, give it a TLS certificate: releases are sealed to an area's key, not to
    the one reader, so a captured release opens for any holder of that area's key."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together")
    import uvicorn

    from medshare.server.app import create_app

    with opened(directory) as service:
        config = uvicorn.Config(
            create_app(service),
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
