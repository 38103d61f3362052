"""Pure numbers: percentiles, medians, latency summaries and a bounded latency sampler.

No I/O here, so every function is unit-tested directly (tests/unit/test_bench_stats.py).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence

__all__ = ["LatencySampler", "latency_summary", "median", "percentile", "rate"]


def percentile(values: Sequence[float], p: float, *, presorted: bool = False) -> float:
    """The `p`-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as numpy's default ("linear"): rank = p/100 * (n - 1). Raises
    ValueError on an empty sequence or a `p` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= p <= 100.0 or math.isnan(p):
        raise ValueError(f"percentile must be within 0..100, got {p!r}")
    data = values if presorted else sorted(values)
    rank = p / 100.0 * (len(data) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    fraction = rank - low
    return float(data[low]) + (float(data[high]) - float(data[low])) * fraction


def median(values: Iterable[float]) -> float:
    data = sorted(values)
    if not data:
        raise ValueError("median of an empty sequence")
    return percentile(data, 50.0, presorted=True)


def rate(count: float, seconds: float) -> float:
    """`count / seconds`, 0.0 when the span is empty."""
    return count / seconds if seconds > 0 else 0.0


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p95/p99/max/mean of nanosecond samples, in milliseconds (empty dict if no samples)."""
    if not samples_ns:
        return {}
    data = sorted(samples_ns)
    ms = 1e-6
    return {
        "p50_ms": round(percentile(data, 50, presorted=True) * ms, 4),
        "p95_ms": round(percentile(data, 95, presorted=True) * ms, 4),
        "p99_ms": round(percentile(data, 99, presorted=True) * ms, 4),
        "max_ms": round(data[-1] * ms, 4),
        "mean_ms": round(sum(data) / len(data) * ms, 4),
        "samples": len(data),
    }


class LatencySampler:
    """Keeps at most `cap` samples of an unbounded stream, evenly spread over time.

    Every sample is kept until `cap` is reached; then every other kept sample is dropped and
    only every 2nd (4th, 8th...) new sample is kept. Cheap on the hot path (no random numbers)
    and unbiased for a stream whose rate is steady. Samples are signed 64-bit integers.
    """

    __slots__ = ("_skip", "cap", "offered", "stride", "values")

    def __init__(self, cap: int = 200_000) -> None:
        if cap < 2:
            raise ValueError("cap must be at least 2")
        self.cap = cap
        self.values = array("q")
        self.stride = 1
        self.offered = 0
        self._skip = 0

    def add(self, value: int) -> None:
        self.offered += 1
        if self._skip:
            self._skip -= 1
            return
        self.values.append(value)
        self._skip = self.stride - 1
        if len(self.values) >= self.cap:
            # Keep every other sample. If that drops the newest one, the next kept sample is
            # one old stride away from it, else one new stride: spacing stays even.
            dropped_newest = len(self.values) % 2 == 0
            self.values = self.values[::2]
            self._skip = self.stride - 1 if dropped_newest else 2 * self.stride - 1
            self.stride *= 2
