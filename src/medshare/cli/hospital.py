"""``medshare hospital …``: run a hospital's HTTP server.

Today a server serves the consortium data directory ``medshare init`` made (one process,
every hospital of it); ``hospital init`` with one directory per hospital is to come
(issue 13). ``serve`` holds the directory's ledger for as long as it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshare.cli.records import opened

app = typer.Typer(help="A hospital's HTTP server.", no_args_is_help=True)


@app.command()
def serve(
    directory: Annotated[Path, typer.Option("--dir", help="The data directory to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8400,
) -> None:
    """Serve the hospital API (OpenAPI docs at /docs) until interrupted."""
    import uvicorn

    from medshare.server.app import create_app

    with opened(directory) as service:
        config = uvicorn.Config(
            create_app(service), host=host, port=port, log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        typer.echo(f"serving {directory} on http://{host}:{port}", err=True)
        server.run()
