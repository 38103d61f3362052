"""`minibroker-bench memory` prints issue 15's goal and whether the median met it."""

from __future__ import annotations

from typing import Any

from benchmarks.memory import GOAL_BYTES, render


def _round(rss: float) -> dict[str, Any]:
    return {
        "connections": 10_000,
        "rss_per_conn": rss,
        "traced": 1_000,
        "by_group": {"broker/core/": 700.0},
        "by_line": {"broker/core/broker.py:1": 100.0},
        "by_type": {"Channel": (1.0, 296.0)},
        "objects": [],
    }


def test_the_goal_is_the_one_compare_checks() -> None:
    assert GOAL_BYTES == 2000


def test_met_when_the_median_is_within_the_goal() -> None:
    text = render([_round(1300), _round(1332), _round(2500)], "asyncio")
    assert "RSS per idle connection: 1,332 B" in text
    assert "<= 2,000 B per idle connection: met on asyncio (-668 B)" in text


def test_not_met_above_it() -> None:
    text = render([_round(2261)], "uvloop")
    assert "NOT met on uvloop (+261 B)" in text
