"""benchmarks.wildcard_goal: medians per (broker, filter count) and the goal lines."""

from __future__ import annotations

from typing import Any

from benchmarks.wildcard_goal import goals, markdown, medians


def _rec(label: str, filters: int, rate: float, cpu: float) -> dict[str, Any]:
    metrics = {"filters": filters, "received_per_s": rate, "broker_cpu_s_per_1m": cpu}
    return {"label": label, "metrics": {**metrics, "loss_pct": 0.0}}


def test_medians_and_goals() -> None:
    records = [
        _rec("ours", 100, 100.0, 5.0),
        _rec("ours", 100, 300.0, 7.0),
        _rec("ours", 100, 200.0, 6.0),
        _rec("ours", 10_000, 150.0, 6.5),
        _rec("mosquitto 2", 100, 100.0, 2.0),
        _rec("mosquitto 2", 10_000, 100.0, 2.0),
    ]
    table = medians(records)
    assert table[("ours", 100)] == {
        "runs": 3,
        "received_per_s": 200.0,
        "broker_cpu_s_per_1m": 6.0,
        "loss_pct": 0.0,
    }
    lines = goals(table, ["ours", "mosquitto 2"], [100, 10_000])
    assert lines == [
        "- ours: 1.50x mosquitto at 10,000 filters (goal >= 1.2x): met",
        "- ours: rate at 10,000 filters / at 100 = 0.75 (goal >= 0.8, flat): NOT met",
    ]
    text = markdown(records, ["ours", "mosquitto 2"], [100, 10_000])
    assert "| 10,000 | ours | 150 | 6.50 | 0.0 | 1.50 |" in text
