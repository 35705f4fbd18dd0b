"""``medshare demo``: where the story's files go, then the story with every party apart
(:mod:`medshare.demo_parties`)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console


def run_demo(data_dir: Path | None, console: Console | None = None) -> int:
    """Run the story in ``data_dir`` (a new folder by default; an existing one must be
    empty, so nothing of the user's is touched) and return the process exit code."""
    from medshare import demo_parties

    console = console or Console()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (data_dir or Path.cwd() / f"medshare-demo-{stamp}").resolve()
    if out.exists() and any(out.iterdir()):
        console.print(f"[bold red]error:[/] {out} is not empty; choose a new --data-dir")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    return demo_parties.run_demo(out, console)
