"""CPU cost model for the network simulator, calibrated on this machine (DESIGN §4).

The simulator charges every node for the work a message costs, not only for the time it
spends on the wire. The figures come from a micro-benchmark taken in the same run as the
simulation (:func:`calibrate`) and are printed with the results (:meth:`CostModel.as_dict`),
so a curve is always read next to the machine speed that produced it.

All figures are microseconds; ``hash_us_per_kb`` is per KiB (1,024 bytes) of SHA-256 input.
A simulation is reproducible from ``(seed, CostModel)``: a calibrated model differs between
machines and runs, so a replay must pass the printed model back in, or use
:meth:`CostModel.fixed`, which tests do so that they never depend on the machine.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

#: Size of the message signed and verified in the benchmark (a vote is about this large).
SIGNED_MESSAGE_BYTES = 200
#: Size of the buffer hashed in the benchmark.
HASHED_BYTES = 64 * 1024
_BATCH = 10


@dataclass(frozen=True)
class CostModel:
    """Per-operation CPU costs in microseconds.

    ``verify_us``: one Ed25519 signature verification. ``sign_us``: one Ed25519 signature.
    ``hash_us_per_kb``: SHA-256 per KiB. ``per_message_us``: fixed handling overhead every
    received message pays (decoding, dispatch), whatever its content.
    """

    verify_us: float
    sign_us: float
    hash_us_per_kb: float
    per_message_us: float = 5.0

    def __post_init__(self) -> None:
        for name in ("verify_us", "sign_us", "hash_us_per_kb", "per_message_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")

    @classmethod
    def fixed(cls) -> CostModel:
        """The DESIGN's figures (Ed25519 via ``cryptography``: sign 37 µs, verify 107 µs;
        SHA-256 2.5 µs/KiB), independent of the machine — for tests and replays."""
        return cls(verify_us=107.0, sign_us=37.0, hash_us_per_kb=2.5, per_message_us=5.0)

    def hash_us(self, size_bytes: int) -> float:
        """CPU time to SHA-256 ``size_bytes`` bytes."""
        if size_bytes < 0:
            raise ValueError("size_bytes must be >= 0")
        return size_bytes / 1024 * self.hash_us_per_kb

    def as_dict(self) -> dict[str, float]:
        """The figures, for printing next to the results they produced."""
        return {k: float(v) for k, v in asdict(self).items()}


def _median_us_per_op(op: Callable[[], object], samples: int) -> float:
    """Median over batches of the mean per-operation time, in µs (robust to the odd
    scheduler hiccup, which would skew a plain mean)."""
    batch = min(_BATCH, samples)
    n_batches = max(1, math.ceil(samples / batch))
    for _ in range(3):  # warm-up: caches, lazy initialisation
        op()
    per_op: list[float] = []
    perf_counter = time.perf_counter
    for _ in range(n_batches):
        start = perf_counter()
        for _ in range(batch):
            op()
        per_op.append((perf_counter() - start) / batch)
    return statistics.median(per_op) * 1e6


def calibrate(samples: int = 200, *, per_message_us: float = 5.0) -> CostModel:
    """Measure Ed25519 sign/verify (``cryptography``, a 200-byte message) and SHA-256
    (``hashlib``, 64 KiB) on this machine with ``time.perf_counter``.

    ``samples`` operations of each kind are timed in batches of 10; the median batch is
    kept. ``per_message_us`` is not measured (it is a modelling choice) and passed through.
    """
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError("samples must be an int")
    if samples < 1:
        raise ValueError("samples must be >= 1")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = bytes(range(256))[:SIGNED_MESSAGE_BYTES]
    signature = key.sign(message)
    buffer = b"\xa5" * HASHED_BYTES

    sign_us = _median_us_per_op(lambda: key.sign(message), samples)
    verify_us = _median_us_per_op(lambda: public.verify(signature, message), samples)
    hash_us = _median_us_per_op(lambda: hashlib.sha256(buffer).digest(), samples)
    return CostModel(
        verify_us=verify_us,
        sign_us=sign_us,
        hash_us_per_kb=hash_us / (HASHED_BYTES / 1024),
        per_message_us=per_message_us,
    )
