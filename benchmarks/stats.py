"""Pure numbers: percentiles, medians, latency summaries and a bounded latency sampler.

No I/O here, so every function is unit-tested directly (tests/unit/test_bench_stats.py).
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "HIST_STEP",
    "LatencySampler",
    "hist_percentile",
    "latency_summary",
    "log_histogram",
    "median",
    "percentile",
    "pooled_ratio_ci",
    "rate",
]

#: Width of a `log_histogram` bucket: each is 0.5% wider than the one before, so a percentile
#: read from it is within 0.25% of the samples' own.
HIST_STEP = 1.005
_LOG_STEP = math.log(HIST_STEP)


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


def log_histogram(samples: Iterable[float]) -> dict[int, int]:
    """Counts of positive samples per logarithmic bucket (`HIST_STEP` wide): bucket `k` holds
    the values that round to `HIST_STEP ** k`. Why: a round's tens of thousands of latency
    samples fit a few hundred (bucket, count) pairs in a result file, and rounds pool by
    adding counts (`pooled_ratio_ci`). Non-positive samples (a clock step) go to bucket 0."""
    counts: dict[int, int] = {}
    log, step = math.log, _LOG_STEP
    for value in samples:
        k = round(log(value) / step) if value > 0 else 0
        counts[k] = counts.get(k, 0) + 1
    return counts


def hist_percentile(hist: Mapping[int, int], p: float) -> float:
    """The `p`-th percentile (0..100) of a `log_histogram`: the value of the bucket holding
    the sample of rank p/100 * (n - 1) (lowest rank first), in the samples' unit."""
    if not 0.0 <= p <= 100.0 or math.isnan(p):
        raise ValueError(f"percentile must be within 0..100, got {p!r}")
    total = sum(hist.values())
    if not total:
        raise ValueError("percentile of an empty histogram")
    rank = math.floor(p / 100.0 * (total - 1))
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen > rank:
            return float(HIST_STEP**k)
    raise AssertionError("unreachable: the ranks end within the total")  # pragma: no cover


class _Rounds:
    """Rounds' `log_histogram`s as dense rows over one sorted key list, so that a pooled
    percentile of any multiset of rounds is a scan that stops at its rank (from the nearer end:
    for a p99, the top 1% of buckets only)."""

    def __init__(self, hists: Sequence[Mapping[int, int]], keys: Sequence[int]) -> None:
        self.keys = keys
        self.rows = [[h.get(k, 0) for k in keys] for h in hists]
        self.totals = [sum(row) for row in self.rows]

    def percentile(self, weights: Sequence[int], p: float) -> float:
        """The `p`-th percentile of the rounds pooled with these weights (times drawn)."""
        picked = [(w, row) for w, row in zip(weights, self.rows, strict=True) if w]
        total = sum(w * t for w, t in zip(weights, self.totals, strict=True))
        if not total:
            raise ValueError("percentile of an empty histogram")
        rank = math.floor(p / 100.0 * (total - 1))
        top = p >= 50.0
        target = total - 1 - rank if top else rank
        order = range(len(self.keys) - 1, -1, -1) if top else range(len(self.keys))
        seen = 0
        for j in order:
            seen += sum(w * row[j] for w, row in picked)
            if seen > target:
                return float(HIST_STEP ** self.keys[j])
        raise AssertionError("unreachable: the ranks end within the total")  # pragma: no cover


def pooled_ratio_ci(
    mine: Sequence[Mapping[int, int]],
    base: Sequence[Mapping[int, int]],
    p: float,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 15,
) -> tuple[float, float, float]:
    """The ratio of the `p`-th percentiles of `mine` and `base`, each pooled over its rounds
    (`log_histogram`s; round i of one paired with round i of the other), and a `confidence`
    interval of that ratio by bootstrap over the pairs of rounds: each resample draws as many
    round indices as there are, with replacement, and pools those rounds of both.

    Why rounds and not samples: a tail percentile on a shared machine moves with the machine
    from one round to the next (7x between rounds for mosquitto at the p99), and the samples of
    one round share that state; resampling single samples would give an interval far too
    narrow. Pairing keeps the rounds that ran side by side together. Seeded: the same data give
    the same interval. Returns (ratio, low, high)."""
    if len(mine) != len(base) or not mine:
        raise ValueError("needs the same number (at least 1) of rounds on both sides")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("resamples must be >= 1 and confidence within (0, 1)")
    keys = sorted(set().union(*mine, *base))
    ours, theirs = _Rounds(mine, keys), _Rounds(base, keys)
    n = len(mine)
    every = [1] * n
    ratio = ours.percentile(every, p) / theirs.percentile(every, p)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        weights = [0] * n
        for _ in range(n):
            weights[rng.randrange(n)] += 1
        ratios.append(ours.percentile(weights, p) / theirs.percentile(weights, p))
    ratios.sort()
    tail = (1.0 - confidence) / 2 * 100.0
    return (
        ratio,
        percentile(ratios, tail, presorted=True),
        percentile(ratios, 100.0 - tail, presorted=True),
    )
