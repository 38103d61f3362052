"""The speed goals of issue 15, as data, so that `compare` prints each row's goal and whether
our broker met it in that very run (a goal checked against numbers from another day means
little on a shared machine).

A goal is either relative (our median / the baseline's median, the baseline being mosquitto) or
absolute (our median alone, e.g. bytes per idle connection). Rows are matched by the start of
their variant (`benchmarks.report.variant`, e.g. "fan-in q0") and their metric. The latency
percentiles are judged on every round's samples pooled instead, with a confidence interval of
the ratio (`Goal.met_within`, `benchmarks.report`): met only when the whole interval is.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GOALS", "Goal", "goal_for"]


@dataclass(frozen=True)
class Goal:
    variant_prefix: str
    metric: str
    #: "ratio": our median / the baseline's; "value": our median itself.
    of: str
    #: ">=" or "<=".
    op: str
    bound: float
    #: How the table shows the goal.
    text: str

    def met(self, mine: float | None, base: float | None) -> bool | None:
        """Whether `mine` meets the goal (None: not measured, or no baseline for a ratio)."""
        if mine is None:
            return None
        if self.of == "ratio":
            if not base:
                return None
            value = mine / base
        else:
            value = mine
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def met_within(self, low: float, high: float) -> bool | None:
        """Whether a ratio goal is met by a whole confidence interval `low`..`high` of the
        ratio: True when every value in it meets the bound, False when none does, None when it
        holds the bound (parity: this run does not resolve the goal)."""
        if self.op == ">=":
            return True if low >= self.bound else False if high < self.bound else None
        return True if high <= self.bound else False if low > self.bound else None


GOALS: tuple[Goal, ...] = (
    Goal("fan-in q0", "received_per_s", "ratio", ">=", 1.3, ">= 1.3x"),
    Goal("fan-in q1", "acked_per_s", "ratio", ">=", 1.0, ">= 1.0x (keep ahead)"),
    Goal("fan-out q0", "deliveries_per_s", "ratio", ">=", 1.5, ">= 1.5x"),
    Goal("many-subs", "received_per_s", "ratio", ">=", 1.2, ">= 1.2x"),
    Goal("many-subs", "filters_ratio", "value", ">=", 0.8, "flat: >= 0.8"),
    # Flat in the number of filters: `python -m benchmarks.wildcard_goal` (runs per count).
    Goal("wildcards", "received_per_s", "ratio", ">=", 1.2, ">= 1.2x"),
    Goal("conn-scale", "connects_per_s", "ratio", ">=", 1.0, ">= 1.0x"),
    # /proc reports KiB: 2,000 B is 1.95 KiB.
    Goal("conn-scale", "broker_kb_per_conn", "value", "<=", 1.953, "<= 1.95 KiB (2,000 B)"),
    Goal("latency", "p50_ms", "ratio", "<=", 1.2, "<= 1.2x"),
    Goal("latency", "p99_ms", "ratio", "<=", 1.0, "<= 1.0x"),
)


def goal_for(variant: str, metric: str) -> Goal | None:
    """The goal of a table row, if issue 15 set one."""
    return next(
        (g for g in GOALS if variant.startswith(g.variant_prefix) and g.metric == metric), None
    )
