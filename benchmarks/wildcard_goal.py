"""Issue 15's wildcard goal: routed msg/s with many wildcard filters, against mosquitto, and flat.

`minibroker-bench wildcard-goal` (also `python -m benchmarks.wildcard_goal`) runs the `wildcards`
scenario (10 publishers, each cycling
through 1,000 topics `bench/wc/<p>/<k>`; one subscriber on `bench/wc/+/+` gets every message;
`--filters` more wildcard filters lie on the same paths without matching, see
`topics.path_filters`) for each filter count and broker, `--rounds` times, every run on a freshly
started broker pinned to core 0 with the generator on core 1 (as `compare` does), alternating
the order of the brokers. 10,000 distinct topics are more than a per-topic match cache holds, so
every message is matched afresh (`--topics 1` measures the cached case instead).

It prints, per filter count, the medians of received msg/s and of the broker's CPU seconds per
1,000,000 delivered messages (from /proc/<pid>/stat: less sensitive than msg/s to other jobs
sharing the machine), each broker's ratio to mosquitto, and the two goals:

- **>= 1.2x mosquitto** in msg/s at 10,000 filters (or the nearest count run);
- **flat**: the rate at the largest filter count within 20% of the rate at the smallest.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from benchmarks.brokers import start_broker
from benchmarks.compare import _pin_self, select_brokers
from benchmarks.goals import goal_for
from benchmarks.results import Record, append_jsonl, make_record
from benchmarks.scenarios import Settings, make_params, run_scenario

__all__ = ["add_arguments", "goals", "main", "medians", "run"]

_GOAL = goal_for("wildcards", "received_per_s")
GOAL_RATIO = _GOAL.bound if _GOAL is not None else 1.2  # ours / mosquitto, msg/s (goals.py)
GOAL_FLAT = 0.8  # rate at the most filters / at the fewest
GOAL_FILTERS = 10_000


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not counts or any(c < 0 for c in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: give counts >= 0")
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--brokers",
        default="minibroker,mosquitto",
        help="as for compare: minibroker, minibroker@DIR, mosquitto (minibroker,mosquitto)",
    )
    p.add_argument(
        "--filters",
        type=_counts,
        default=[100, 1_000, 10_000, 100_000],
        help="filter counts, comma-separated (100,1000,10000,100000)",
    )
    p.add_argument("--topics", type=int, default=1000, help="topics per publisher (1000)")
    p.add_argument("--rounds", type=int, default=3, help="runs per count and broker (3)")
    p.add_argument("-d", "--duration", type=float, default=4.0, help="publishing seconds (4)")
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait after (5)")
    p.add_argument("--broker-core", type=int, default=0, help="core for the brokers (0)")
    p.add_argument("--load-core", type=int, default=1, help="core for the generator (1)")
    p.add_argument("--out", default=None, help="also append every run to this JSON lines file")
    p.add_argument("--markdown", default=None, help="also write the table to this file")


def _one_run(name: str, filters: int, args: argparse.Namespace, round_no: int) -> Record | None:
    broker = start_broker(name, core=args.broker_core)
    try:
        settings = Settings(targets=[broker.target], broker_pid=broker.pid, progress=False)
        params = make_params(
            "wildcards",
            filters=filters,
            topics=args.topics,
            duration=args.duration,
            drain=args.drain,
        )
        result = asyncio.run(run_scenario("wildcards", settings, params))
    except Exception as exc:  # one failed run must not lose the others
        print(f"{broker.label} {filters} filters: run failed: {exc}", file=sys.stderr)
        return None
    finally:
        broker.stop()
    return make_record(result, broker.label, [broker.target], extra={"round": round_no})


def medians(records: list[Record]) -> dict[tuple[str, int], dict[str, float]]:
    """(label, filters) -> median received_per_s, broker_cpu_s_per_1m, loss_pct (and runs)."""
    groups: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        groups.setdefault((r["label"], int(r["metrics"]["filters"])), []).append(r)
    out: dict[tuple[str, int], dict[str, float]] = {}
    for key, runs in groups.items():
        row: dict[str, float] = {"runs": len(runs)}
        for metric in ("received_per_s", "broker_cpu_s_per_1m", "loss_pct"):
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            if values:
                row[metric] = statistics.median(values)
        out[key] = row
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(
    table: dict[tuple[str, int], dict[str, float]], labels: list[str], counts: list[int]
) -> list[str]:
    """One line per broker and goal, saying met or not met with the figure."""
    lines: list[str] = []
    mosquitto = next((label for label in labels if label.startswith("mosquitto")), None)
    at = min(counts, key=lambda c: abs(c - GOAL_FILTERS))
    lo, hi = min(counts), max(counts)
    for label in labels:
        if label == mosquitto:
            continue
        if mosquitto is not None:
            ours = table.get((label, at), {}).get("received_per_s")
            theirs = table.get((mosquitto, at), {}).get("received_per_s")
            r = _ratio(ours, theirs)
            if r is not None:
                verdict = "met" if r >= GOAL_RATIO else "NOT met"
                lines.append(
                    f"- {label}: {r:.2f}x mosquitto at {at:,} filters "
                    f"(goal >= {GOAL_RATIO}x): {verdict}"
                )
        if hi != lo:
            flat = _ratio(
                table.get((label, hi), {}).get("received_per_s"),
                table.get((label, lo), {}).get("received_per_s"),
            )
            if flat is not None:
                verdict = "met" if flat >= GOAL_FLAT else "NOT met"
                lines.append(
                    f"- {label}: rate at {hi:,} filters / at {lo:,} = {flat:.2f} "
                    f"(goal >= {GOAL_FLAT}, flat): {verdict}"
                )
    return lines


def markdown(records: list[Record], labels: list[str], counts: list[int]) -> str:
    table = medians(records)
    mosquitto = next((label for label in labels if label.startswith("mosquitto")), None)
    head = "| filters | broker | received msg/s | CPU s per 1M msgs | loss % | msg/s vs mosquitto |"
    rows = [head, "|---:|---|---:|---:|---:|---:|"]
    for count in counts:
        for label in labels:
            row: dict[str, Any] = table.get((label, count), {})
            if not row:
                continue
            ref = table.get((mosquitto, count), {}) if mosquitto else {}
            ratio = _ratio(row.get("received_per_s"), ref.get("received_per_s"))
            rows.append(
                f"| {count:,} | {label} | {row.get('received_per_s', 0):,.0f} "
                f"| {row.get('broker_cpu_s_per_1m', float('nan')):.2f} "
                f"| {row.get('loss_pct', 0):.1f} "
                f"| {'-' if ratio is None else f'{ratio:.2f}'} |"
            )
    return "\n".join([*rows, "", *goals(table, labels, counts)]) + "\n"


def run(args: argparse.Namespace) -> int:
    brokers = select_brokers(args.brokers)
    if not brokers:
        return 2
    if not _pin_self(args.load_core):
        print("note: generator not pinned (fewer than 2 usable cores)", file=sys.stderr)
    records: list[Record] = []
    labels: list[str] = []
    started = time.monotonic()
    for round_no in range(1, args.rounds + 1):
        for count in args.filters:
            order = brokers if (round_no + count) % 2 else list(reversed(brokers))
            for name in order:
                record = _one_run(name, count, args, round_no)
                if record is None:
                    continue
                m = record["metrics"]
                print(
                    f"[round {round_no}] {record['label']} {count:,} filters: "
                    f"{m['received_per_s']:,.0f} msg/s, "
                    f"{m.get('broker_cpu_s_per_1m', float('nan')):.2f} CPU s per 1M, "
                    f"loss {m.get('loss_pct', 0):.1f}%",
                    file=sys.stderr,
                    flush=True,
                )
                records.append(record)
                if record["label"] not in labels:
                    labels.append(record["label"])
                if args.out:
                    append_jsonl(args.out, [record])
    text = markdown(records, labels, args.filters)
    print(f"\n{len(records)} runs in {time.monotonic() - started:.0f} s\n")
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wildcard_goal", description=(__doc__ or "").split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
