"""benchmarks.goals: `compare` prints issue 15's goal per row and whether our broker met it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from benchmarks.goals import GOALS, goal_for
from benchmarks.report import build_rows, markdown_table
from benchmarks.results import make_record
from benchmarks.scenarios import Params, ScenarioResult

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def _record(
    label: str, scenario: str, metrics: dict[str, float], better: str = "higher"
) -> dict[str, Any]:
    result = ScenarioResult(
        scenario, Params(publishers=10, subscribers=1).__dict__.copy(), metrics,
        next(iter(metrics)), better, list(metrics),
    )  # fmt: skip
    return make_record(result, label, [("127.0.0.1", 1883)], now=NOW)


def test_every_goal_names_a_known_direction_and_kind() -> None:
    for goal in GOALS:
        assert goal.op in (">=", "<=") and goal.of in ("ratio", "value")


def test_ratio_and_value_goals() -> None:
    fan_in = goal_for("fan-in q0 10p/1s 64B", "received_per_s")
    assert fan_in is not None
    assert fan_in.met(131.0, 100.0) is True
    assert fan_in.met(129.0, 100.0) is False
    assert fan_in.met(129.0, None) is None  # no baseline: no verdict
    memory = goal_for("conn-scale 10000 conns", "broker_kb_per_conn")
    assert memory is not None
    assert memory.met(1.9, None) is True and memory.met(2.3, 0.7) is False
    latency = goal_for("latency q0 1000/s 64B", "p99_ms")
    assert latency is not None and latency.met(0.09, 0.1) is True and latency.met(0.2, 0.1) is False
    assert goal_for("fan-in q0 10p/1s 64B", "loss_pct") is None


def test_table_shows_goal_and_verdict_for_each_of_our_labels() -> None:
    records = [
        _record("minibroker new", "fan-in", {"received_per_s": 140.0}),
        _record("minibroker old", "fan-in", {"received_per_s": 50.0}),
        _record("mosquitto 2.0", "fan-in", {"received_per_s": 100.0}),
    ]
    rows, labels = build_rows(records)
    lines = markdown_table(rows, labels, baseline="mosquitto 2.0", goals=True).splitlines()
    assert lines[0].endswith("| goal | met: minibroker new | met: minibroker old |")
    assert lines[2].endswith("| 1.40 | 0.50 | >= 1.3x | yes | **no** |")
    plain = markdown_table(rows, labels, baseline="mosquitto 2.0").splitlines()
    assert "goal" not in plain[0]
