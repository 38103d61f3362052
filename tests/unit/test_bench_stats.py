"""benchmarks.stats and benchmarks.topics: percentiles, samplers, topic patterns, filter sets."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from benchmarks.stats import (
    HIST_STEP,
    LatencySampler,
    hist_percentile,
    latency_summary,
    log_histogram,
    median,
    percentile,
    pooled_ratio_ci,
    rate,
)
from benchmarks.topics import expand, path_filters, unrelated_filters


def _numpy_linear(values: list[float], p: float) -> float:
    """numpy.percentile(..., method="linear") written out, as the reference."""
    data = sorted(values)
    rank = p / 100 * (len(data) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def test_percentile_known_values() -> None:
    data = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(data, 0) == 15.0
    assert percentile(data, 100) == 50.0
    assert percentile(data, 50) == 35.0
    assert percentile(data, 40) == pytest.approx(29.0)
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.5


def test_percentile_matches_linear_definition_on_random_data() -> None:
    rng = random.Random(5)
    for _ in range(50):
        data = [rng.uniform(0, 1000) for _ in range(rng.randint(1, 60))]
        for p in (0, 1, 50, 95, 99, 99.9, 100):
            assert percentile(data, p) == pytest.approx(_numpy_linear(data, p))


def test_percentile_does_not_sort_the_caller_list_and_honours_presorted() -> None:
    data = [3.0, 1.0, 2.0]
    assert percentile(data, 100) == 3.0
    assert data == [3.0, 1.0, 2.0]
    assert percentile([1.0, 2.0, 3.0], 100, presorted=True) == 3.0


@pytest.mark.parametrize("p", [-1, 100.5, float("nan")])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], p)


def test_percentile_and_median_reject_empty() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        median([])


def test_median_and_rate() -> None:
    assert median([5, 1, 3]) == 3
    assert median([4, 1, 3, 2]) == 2.5
    assert rate(10, 2) == 5
    assert rate(10, 0) == 0.0


def test_latency_summary_in_milliseconds() -> None:
    samples = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    s = latency_summary(samples)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["max_ms"] == 100.0
    assert s["samples"] == 100
    assert latency_summary([]) == {}


def test_sampler_keeps_everything_below_cap() -> None:
    sampler = LatencySampler(cap=100)
    for i in range(99):
        sampler.add(i)
    assert list(sampler.values) == list(range(99))
    assert sampler.stride == 1


@pytest.mark.parametrize("cap", [100, 101, 7])
def test_sampler_decimates_evenly_above_cap(cap: int) -> None:
    sampler = LatencySampler(cap=cap)
    for i in range(10_000):
        sampler.add(i)
    assert sampler.offered == 10_000
    assert len(sampler.values) < cap
    values = list(sampler.values)
    assert values == sorted(values)
    gaps = {b - a for a, b in itertools.pairwise(values)}
    assert gaps == {sampler.stride}  # evenly spread over the whole stream
    assert values[-1] >= 10_000 - sampler.stride  # and up to its end


def test_sampler_cap_must_allow_halving() -> None:
    with pytest.raises(ValueError):
        LatencySampler(cap=1)


def test_expand_patterns() -> None:
    assert expand("bench/%i", 7) == "bench/7"
    assert expand("t/%c/x", 3, "bench-pub-3") == "t/bench-pub-3/x"
    assert expand("100%%/%i", 2) == "100%/2"
    assert expand("plain/topic", 9) == "plain/topic"
    assert expand("%i%i", 1) == "11"


@pytest.mark.parametrize("pattern", ["bench/%", "bench/%x", "%d"])
def test_expand_rejects_unknown_sequences(pattern: str) -> None:
    with pytest.raises(ValueError):
        expand(pattern, 1)


def _matches(filt: str, topic: str) -> bool:
    f, t = filt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def test_unrelated_filters_count_spread_and_never_match_the_published_topics() -> None:
    lists = unrelated_filters(1000, 100)
    assert len(lists) == 100
    assert all(len(fl) == 10 for fl in lists)
    flat = [f for fl in lists for f in fl]
    assert len(set(flat)) == 1000
    assert any("+" in f for f in flat) and any(f.endswith("#") for f in flat)
    for f in flat:
        for n in range(20):
            assert not _matches(f, f"bench/ms/pub/{n}"), f
    assert _matches("bench/ms/pub/+", "bench/ms/pub/3")  # the scenario's real subscriber


def test_unrelated_filters_fewer_filters_than_clients() -> None:
    lists = unrelated_filters(10, 100)
    assert len(lists) == 10
    assert sum(len(fl) for fl in lists) == 10
    with pytest.raises(ValueError):
        unrelated_filters(10, 0)


def test_path_filters_lie_on_the_published_paths_and_never_match() -> None:
    """Every filter shares the `bench/wc/...` prefix with the published topics (so a trie walk
    meets it), only the subscriber's `bench/wc/+/+` matches them."""
    publishers, topics = 3, 7
    lists = path_filters(999, 10, publishers, topics)
    flat = [f for fl in lists for f in fl]
    assert len(lists) == 10 and len(flat) == len(set(flat)) == 999
    assert {f.count("/") for f in flat} >= {3, 4, 5}
    published = [f"bench/wc/{p}/{k}" for p in range(publishers) for k in range(topics)]
    for f in flat:
        assert f.startswith("bench/wc/")
        assert not any(_matches(f, t) for t in published), f
    # Each lies on some published topic's path: its first 3 levels fit one.
    for f in flat:
        head = f.split("/")[:3]
        assert any(
            all(h in ("+", lvl) for h, lvl in zip(head, t.split("/"), strict=False))
            for t in published
        ), f
    assert all(_matches("bench/wc/+/+", t) for t in published)
    with pytest.raises(ValueError):
        path_filters(10, 1, 0, 1)


def test_log_histogram_buckets_and_percentiles_within_half_a_step() -> None:
    rng = random.Random(3)
    samples = [rng.lognormvariate(11.0, 0.8) for _ in range(5000)]
    hist = log_histogram(samples)
    assert sum(hist.values()) == 5000
    assert len(hist) < 1000  # far fewer pairs than samples
    for p in (0, 50, 90, 99, 99.9, 100):
        exact = sorted(samples)[math.floor(p / 100 * 4999)]
        assert abs(hist_percentile(hist, p) / exact - 1) <= (HIST_STEP - 1) / 2 + 1e-9
    assert log_histogram([0.0, -5.0]) == {0: 2}  # (a clock step) counted, in bucket 0
    with pytest.raises(ValueError):
        hist_percentile({}, 50)
    with pytest.raises(ValueError):
        hist_percentile(hist, 101)


def _rounds(scale: float, spreads: list[float], seed: int) -> list[dict[int, int]]:
    """One histogram per round; a round's tail is stretched by its `spread` (the machine)."""
    rng = random.Random(seed)
    return [
        log_histogram(
            scale * (rng.expovariate(1.0) * (spread if rng.random() < 0.02 else 1.0) + 1.0)
            for _ in range(4000)
        )
        for spread in spreads
    ]


def test_pooled_ratio_ci_holds_the_ratio_and_narrows_with_steady_rounds() -> None:
    steady = [1.0] * 8
    ratio, low, high = pooled_ratio_ci(_rounds(1.2, steady, 1), _rounds(1.0, steady, 2), 99)
    assert low <= ratio <= high
    assert low > 1.1 and high < 1.3  # 1.2x, resolved
    # rounds whose tail swings with the machine: the same 1.2x, but the interval is wide
    swings = [1.0, 7.0, 1.0, 3.0, 1.0, 7.0, 1.0, 3.0]
    mine, base = _rounds(1.2, swings, 3), _rounds(1.0, [7.0, 1.0, 3.0, 1.0] * 2, 4)
    _, wide_low, wide_high = pooled_ratio_ci(mine, base, 99)
    assert wide_high - wide_low > 3 * (high - low)
    assert pooled_ratio_ci(mine, base, 99) == pooled_ratio_ci(mine, base, 99)  # seeded


def test_pooled_ratio_ci_pools_rounds_before_the_percentile() -> None:
    # round 1: mine all 1, base all 1; round 2: mine all 3, base all 2. Pooled p99: 3 vs 2
    mine = [{0: 100}, {round(math.log(3) / math.log(HIST_STEP)): 100}]
    base = [{0: 100}, {round(math.log(2) / math.log(HIST_STEP)): 100}]
    ratio, low, high = pooled_ratio_ci(mine, base, 99, resamples=200)
    assert abs(ratio - 1.5) < 0.01
    assert abs(low - 1.0) < 0.01 and abs(high - 1.5) < 0.01  # resamples of round 1 only: 1.0
    with pytest.raises(ValueError):
        pooled_ratio_ci(mine, base[:1], 99)
    with pytest.raises(ValueError):
        pooled_ratio_ci([], [], 99)
