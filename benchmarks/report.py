"""`report`: result files (JSON lines) -> a Markdown table and PNG charts, brokers side by side.

Records are grouped by scenario variant (the scenario name plus the parameters that change
its meaning: QoS, payload size, client counts, rate), then by broker label; each cell is the
median over the runs, with the run count. With a baseline label (`--baseline`, by default any
label containing "mosquitto"), each other label gets a ratio column `label / baseline`, so
a ratio above 1 means "more than the baseline" whichever way the metric is better.
Charts (matplotlib, imported only here and only when asked for) are one bar chart per row.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.floor_relay import LABEL as FLOOR_LABEL
from benchmarks.goals import goal_for
from benchmarks.results import append_jsonl, summary_line
from benchmarks.stats import hist_percentile, median, pooled_ratio_ci

__all__ = [
    "Row",
    "build_rows",
    "finish_rounds",
    "keep_run",
    "markdown_table",
    "render_charts",
    "variant",
]

Record = dict[str, Any]

#: Parameters named in a row's title when they differ from the scenario's usual meaning.
_VARIANT_KEYS = ("qos", "publishers", "subscribers", "connections", "size", "rate", "filters")
#: Latency percentiles whose goal is judged on the rounds' samples pooled, with a confidence
#: interval (`pooled_verdict`), when the records carry them (`latency_hist`).
POOLED = {"p50_ms": 50.0, "p99_ms": 99.0}
#: Metrics whose ratio means nothing (a percentage of loss next to another).
_NO_RATIO = frozenset({"loss_pct"})
_UNITS = {
    "received_per_s": "msg/s",
    "deliveries_per_s": "deliveries/s",
    "sent_per_s": "msg/s",
    "acked_per_s": "msg/s",
    "connects_per_s": "conn/s",
    "broker_kb_per_conn": "KB/conn",
    "filters_ratio": "x",
    "loss_pct": "%",
}


def variant(record: Record) -> str:
    """A short name for a scenario and its defining parameters, e.g. `fan-in q1 10p/1s 64B`."""
    p = record.get("params", {})
    name = str(record["scenario"])
    parts = [name]
    if name in ("conn", "conn-scale"):
        parts.append(f"{p.get('connections', '?')} conns")
        return " ".join(parts)
    parts.append(f"q{p.get('qos', 0)}")
    if name == "many-subs":
        parts.append(f"{p.get('filters', '?')} filters")
    elif name != "latency":
        parts.append(f"{p.get('publishers', '?')}p/{p.get('subscribers', '?')}s")
    if name == "spread":
        parts.append(f"{p.get('pubs_on', '?')}->{p.get('subs_on', '?')}")
    if p.get("rate"):
        parts.append(f"{p['rate']:g}/s")
    parts.append(f"{p.get('size', '?')}B")
    return " ".join(parts)


@dataclass
class Row:
    variant: str
    metric: str
    better: str
    values: dict[str, list[float]] = field(default_factory=dict)  # label -> one per run
    #: label -> round -> that run's latency samples (`stats.log_histogram`), for `POOLED` rows.
    hists: dict[str, dict[int, dict[int, int]]] = field(default_factory=dict)

    def median(self, label: str) -> float | None:
        runs = self.values.get(label)
        return median(runs) if runs else None


def build_rows(records: Iterable[Record]) -> tuple[list[Row], list[str]]:
    """Rows (variant x headline metric) in first-seen order, and the labels in first-seen order."""
    rows: dict[tuple[str, str], Row] = {}
    labels: list[str] = []
    for record in records:
        label = str(record.get("label", "?"))
        if label not in labels:
            labels.append(label)
        name = variant(record)
        metrics = record.get("metrics", {})
        for metric in record.get("headline", []) or [record.get("primary")]:
            if metric is None or metric not in metrics:
                continue
            better = (
                record.get("better", "higher")
                if metric == record.get("primary")
                else ("lower" if metric in ("loss_pct",) or metric.endswith("_ms") else "higher")
            )
            row = rows.setdefault((name, metric), Row(name, metric, better))
            row.values.setdefault(label, []).append(float(metrics[metric]))
            if metric in POOLED and record.get("latency_hist"):
                rounds = row.hists.setdefault(label, {})
                number = int(record.get("round", len(rounds) + 1))
                while number in rounds:  # the same round of another run (`report` of files)
                    number += 1000
                rounds[number] = {int(k): int(n) for k, n in record["latency_hist"]}
    return list(rows.values()), labels


@dataclass(frozen=True)
class Pooled:
    """A latency percentile over every paired round, ours against the baseline."""

    rounds: int
    mine_ms: float
    base_ms: float
    ratio: float
    low: float
    high: float
    #: The goal's verdict on the whole interval: True, False, or None (not resolved).
    met: bool | None


#: Bootstrap resamples and confidence of `pooled_verdict`.
RESAMPLES = 2000
CONFIDENCE = 0.95


def pooled_verdict(row: Row, label: str, baseline: str | None) -> Pooled | None:
    """`label`'s percentile of `row` against the baseline's, each over the rounds both ran
    (paired by round number), with the ratio's confidence interval
    (`stats.pooled_ratio_ci`) and the goal's verdict on it; None when the row has no goal,
    is not a `POOLED` metric or lacks the samples."""
    goal = goal_for(row.variant, row.metric)
    if goal is None or goal.of != "ratio" or row.metric not in POOLED or baseline is None:
        return None
    mine, base = row.hists.get(label, {}), row.hists.get(baseline, {})
    paired = sorted(set(mine) & set(base))
    if not paired:
        return None
    p = POOLED[row.metric]
    ours, theirs = [mine[r] for r in paired], [base[r] for r in paired]
    ratio, low, high = pooled_ratio_ci(ours, theirs, p, resamples=RESAMPLES, confidence=CONFIDENCE)
    return Pooled(
        len(paired),
        hist_percentile(_merge(ours), p) * 1e-6,
        hist_percentile(_merge(theirs), p) * 1e-6,
        ratio,
        low,
        high,
        goal.met_within(low, high),
    )


def _merge(hists: Iterable[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for hist in hists:
        for k, n in hist.items():
            out[k] = out.get(k, 0) + n
    return out


_WORDS = {True: "met", False: "not met", None: "not resolved"}


def _verdict(met: bool | None) -> str:
    return "not resolved" if met is None else ("yes" if met else "**no**")


def default_baseline(labels: Sequence[str]) -> str | None:
    return next((label for label in labels if "mosquitto" in label.lower()), None)


def _cell(value: float | None, runs: int) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{text} (n={runs})" if runs > 1 else text


def markdown_table(
    rows: Sequence[Row], labels: Sequence[str], baseline: str | None = None, goals: bool = False
) -> str:
    """A Markdown table: one column per label (medians), then `label / baseline` ratios; with
    `goals`, issue 15's goal of each row and, for each of our brokers' labels (and the Python
    floor's, `benchmarks.floor_relay`: could any Python broker meet it?), whether its
    median met it in this run; for a latency percentile with samples (`POOLED`), whether
    the confidence interval of the pooled ratio did ("not resolved" when it holds the bound),
    told in a note under the table."""
    others = [label for label in labels if baseline is not None and label != baseline]
    judged = [o for o in others if "minibroker" in o or o.startswith(FLOOR_LABEL)]
    ours = judged if goals else []
    head = ["scenario", "metric", *labels, *(f"{o} / {baseline}" for o in others)]
    if ours:
        head += ["goal", *(f"met: {o}" for o in ours)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    notes: list[str] = []
    for row in rows:
        unit = _UNITS.get(row.metric, "ms" if row.metric.endswith("_ms") else "")
        metric = f"{row.metric} ({unit}, {row.better} is better)" if unit else row.metric
        cells = [row.variant, metric]
        cells += [_cell(row.median(label), len(row.values.get(label, []))) for label in labels]
        base = row.median(baseline) if baseline is not None else None
        for other in others:
            mine = row.median(other)
            ok = mine is not None and base not in (None, 0.0) and row.metric not in _NO_RATIO
            cells.append(f"{mine / base:.2f}" if ok and mine is not None and base else "-")
        if ours:
            goal = goal_for(row.variant, row.metric)
            cells.append(goal.text if goal else "")
            for label in ours:
                pooled = pooled_verdict(row, label, baseline)
                if pooled is not None:
                    cells.append(_verdict(pooled.met))
                    notes.append(_note(row, label, baseline, pooled))
                    continue
                met = goal.met(row.median(label), base) if goal else None
                cells.append("" if met is None else ("yes" if met else "**no**"))
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _note(row: Row, label: str, baseline: str | None, pooled: Pooled) -> str:
    goal = goal_for(row.variant, row.metric)
    return (
        f"- {row.variant} {row.metric}, every round's samples pooled ({pooled.rounds} rounds "
        f"paired): {label} {pooled.mine_ms:.4g} ms, {baseline} {pooled.base_ms:.4g} ms, "
        f"ratio {pooled.ratio:.3f}, {CONFIDENCE:.0%} interval {pooled.low:.3f}-{pooled.high:.3f} "
        f"(bootstrap over rounds): goal {goal.text if goal else '?'} "
        f"{_WORDS[pooled.met]}."
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def render_charts(
    rows: Sequence[Row], labels: Sequence[str], outdir: str | Path, baseline: str | None = None
) -> list[Path]:
    """PNG charts: with a baseline, first `ratios.png` (each label / baseline per row, the
    figure to track); then one bar chart per row (median, min-max whiskers). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    others = [label for label in labels if baseline is not None and label != baseline]
    ratio_rows = [r for r in rows if r.metric not in _NO_RATIO and r.median(baseline or "")]
    if others and ratio_rows:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(ratio_rows) * len(others) + 1.2), dpi=100)
        names = [f"{r.variant}: {r.metric}" for r in ratio_rows]
        height = 0.8 / len(others)
        for k, other in enumerate(others):
            ratios = [
                (r.median(other) or 0.0) / (r.median(baseline or "") or 1.0) for r in ratio_rows
            ]
            ys = [i + k * height for i in range(len(ratio_rows))]
            bars = ax.barh(ys, ratios, height=height, label=f"{other} / {baseline}")
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in ratios], padding=2, fontsize=7)
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(ratio_rows))], names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title("ratio to the baseline (see each metric's direction)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / "ratios.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    for row in rows:
        present = [label for label in labels if row.values.get(label)]
        if not present:
            continue
        meds = [row.median(label) or 0.0 for label in present]
        lows = [m - min(row.values[label]) for m, label in zip(meds, present, strict=True)]
        highs = [max(row.values[label]) - m for m, label in zip(meds, present, strict=True)]
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        bars = ax.bar(
            range(len(present)),
            meds,
            yerr=[lows, highs],
            capsize=4,
            color=[f"C{i}" for i in range(len(present))],
        )
        ax.bar_label(bars, labels=[_cell(m, 1) for m in meds], padding=2, fontsize=8)
        ax.set_xticks(range(len(present)), present, fontsize=8)
        ax.set_title(f"{row.variant}: {row.metric} ({row.better} is better)", fontsize=9)
        ax.margins(y=0.15)
        fig.tight_layout()
        path = out / f"{_slug(row.variant)}-{_slug(row.metric)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def machines(records: Iterable[Record]) -> list[str]:
    """Distinct "date range, machine" descriptions for the table's caption."""
    seen: dict[str, list[str]] = defaultdict(list)
    for record in records:
        m = record.get("machine", {})
        key = f"{m.get('cpus', '?')} CPUs, {m.get('cpu_model', '?')}, {m.get('platform', '?')}"
        seen[key].append(str(record.get("date", "?")))
    return [f"{min(d)[:10]}..{max(d)[:10]} on {k}" for k, d in seen.items()]


def render_report(
    records: Sequence[Record],
    baseline: str | None = None,
    charts: str | Path | None = None,
    link_from: str | Path = ".",
    goals: bool = False,
) -> str:
    """The whole Markdown report: caption, table and (optionally) charts, linked relative to
    the directory `link_from` (where the Markdown file goes)."""
    rows, labels = build_rows(records)
    if baseline is None:
        baseline = default_baseline(labels)
    caption = "Measured " + "; ".join(machines(records)) + ".\n"
    parts = [caption, markdown_table(rows, labels, baseline, goals=goals)]
    if charts is not None:
        for path in render_charts(rows, labels, charts, baseline):
            link = Path(os.path.relpath(path.resolve(), Path(link_from).resolve()))
            parts.append(f"![{path.stem}]({link.as_posix()})")
    return "\n".join(parts) + "\n"


def keep_run(record: Record | None, records: list[Record], out: str, round_no: int) -> None:
    """One run of a multi-round command (`compare`, `cluster-scale`): append it to `out` at
    once (a later failure loses nothing) and print its summary line; None = the run failed."""
    if record is None:
        return
    records.append(record)
    append_jsonl(out, [record])
    print(f"[round {round_no}] {summary_line(record)}", flush=True)


def finish_rounds(
    records: Sequence[Record],
    out: str,
    started: float,
    markdown: str | None,
    charts: str | None,
    baseline: str | None = None,
    goals: bool = False,
) -> int:
    """Print the run count and the medians table (also to `markdown`, charts to `charts`);
    the command's exit code: 1 when no run succeeded."""
    print(f"\n{len(records)} runs in {time.monotonic() - started:.0f} s; results in {out}\n")
    if not records:
        return 1
    link_from = os.path.dirname(os.path.abspath(markdown)) if markdown else "."
    table = render_report(
        records, baseline=baseline, charts=charts, link_from=link_from, goals=goals
    )
    print(table)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(table)
    return 0
