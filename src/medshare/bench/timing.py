"""Paired timing: an operation and its lower bound, interleaved so both see the same noise."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paired:
    ms: float
    bound_ms: float

    @property
    def ratio(self) -> float:
        return self.ms / self.bound_ms if self.bound_ms > 0 else float("inf")


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def paired(op: Callable[[], object], bound: Callable[[], object], repeats: int) -> Paired:
    """Best of ``repeats`` alternating runs of ``op`` and ``bound`` (after one warm-up each).

    The minimum is the least noisy estimate of a CPU-bound cost on a shared machine,
    and alternating the two keeps a burst of background load from hitting only one.
    """
    op(), bound()
    op_times, bound_times = [], []
    for _ in range(repeats):
        op_times.append(_once(op))
        bound_times.append(_once(bound))
    return Paired(min(op_times), min(bound_times))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (0 if it is gone), from
    ``/proc/<pid>/stat``: how the ledger benchmarks charge each real process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
