"""A checked story: steps that each say whether what happened is what should, run in
order, summed up in one table, and a verdict as the exit code (the story of
:mod:`medshare.demo_parties` is told with it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from medshare.ledger.cometbft.client import LedgerClient, LedgerUnavailable

CATCH_UP_S = 60.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


Step = tuple[str, Callable[[Any], Outcome]]
Result = tuple[str, Outcome, float]


def run_steps(
    story: Any, steps: Sequence[Step], console: Console, *, go_on: Callable[[], bool]
) -> list[Result]:
    """Each step in order (a crashing step is a failed step, reported plainly); after a
    failed one, the story goes on only while ``go_on()`` says there is something to go on
    with."""
    results: list[Result] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("medshare demo", total=len(steps))
        for name, step in steps:
            progress.update(task, description=name)
            start = time.perf_counter()
            try:
                outcome = step(story)
            except Exception as exc:
                outcome = Outcome(False, f"unexpected {type(exc).__name__}: {exc}")
            results.append((name, outcome, time.perf_counter() - start))
            progress.advance(task)
            if not outcome.ok and not go_on():
                break
    return results


def verdict(
    console: Console, title: str, results: list[Result], steps: Sequence[Step], out: Path
) -> int:
    """Print the summary table and the verdict; the process exit code."""
    table = Table(title=title)
    for column in ("step", "result", "what happened", "ms"):
        table.add_column(column)
    for name, outcome, seconds in results:
        mark = "[green]ok[/]" if outcome.ok else "[bold red]FAILED[/]"
        table.add_row(name, mark, outcome.detail, f"{seconds * 1e3:.0f}")
    console.print(table)
    failed = [name for name, outcome, _ in results if not outcome.ok]
    if failed or len(results) != len(steps):
        console.print(f"[bold red]demo failed:[/] {', '.join(failed) or 'stopped early'}")
        return 1
    console.print(f"all {len(steps)} steps behaved as expected; outputs are in {out}")
    return 0


def catch_up(url: str, height: int, timeout_s: float = CATCH_UP_S) -> bool:
    """Whether the node at ``url`` reaches ``height`` within the timeout."""
    deadline = time.monotonic() + timeout_s
    with LedgerClient([url], timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.height() >= height:
                    return True
            except LedgerUnavailable:  # its RPC may refuse for a moment after its start
                pass
            time.sleep(0.2)
    return False
