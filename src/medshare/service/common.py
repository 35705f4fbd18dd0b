"""Small shared pieces of the service: clocks, service identities, time formatting."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from medshare.ledger.app import published

Clock = Callable[[], int]
# Bound of the service's per-process caches of decoded keys, ciphertexts and key tags.
DECODE_CACHE_ENTRIES = 256
K = TypeVar("K")
V = TypeVar("V")


def memoized(cache: dict[K, V], key: K, compute: Callable[[], V]) -> V:
    """``cache[key]``, computed on a miss; at most :data:`DECODE_CACHE_ENTRIES` entries, the
    oldest dropped first."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= DECODE_CACHE_ENTRIES:
            cache.pop(next(iter(cache)))
        value = cache[key] = compute()
    return value


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def service_principal(hospital: str) -> str:
    """A hospital's records service: it signs anchors, referrals and study approvals with
    the key of the hospital's ledger node (:meth:`MedShare.node_key`)."""
    return f"records@{hospital}"


def authority_principal(hospital: str) -> str:
    """The identity a hospital's attribute authority signs key revocations with (its trace
    verdicts are recorded by the hospital's node: only nodes may send them) and publishes
    its public keys with; the chain's rules know the name too."""
    return published.authority_identity(hospital)


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso(ms: int | None) -> str:
    return "never" if ms is None else utc(ms).isoformat(timespec="seconds")


def valid_at(until_ms: int | None, now_ms: int) -> bool:
    return until_ms is None or now_ms < until_ms
