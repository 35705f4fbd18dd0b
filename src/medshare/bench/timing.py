"""Paired timing: an operation and its lower bound, interleaved so both see the same noise."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


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
