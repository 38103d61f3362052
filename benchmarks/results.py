"""Result records as JSON lines: one object per scenario run, appended to `--out FILE`.

A record carries what a later `report` needs to compare brokers: the broker `label`, the
`scenario` and its `params`, the `metrics` with the `primary` one and its direction, the
generator's and (when known) the broker's CPU use, the date and the machine.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.procfs import machine_info
from benchmarks.scenarios import ScenarioResult

__all__ = ["append_jsonl", "make_record", "read_jsonl", "summary_line"]

Record = dict[str, Any]


def make_record(
    result: ScenarioResult,
    label: str,
    targets: list[tuple[str, int]],
    *,
    extra: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Record:
    record: Record = {"label": label}
    record.update(asdict(result))
    record["targets"] = [f"{host}:{port}" for host, port in targets]
    record["date"] = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    record["machine"] = machine_info()
    if extra:
        record.update(extra)
    return record


def append_jsonl(path: str | Path, records: Iterable[Record]) -> None:
    """Append one JSON object per line; `-` writes to stdout. Creates parent directories."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if str(path) == "-":
        sys.stdout.write(lines)
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as f:
        f.write(lines)


def read_jsonl(paths: Iterable[str | Path]) -> Iterator[Record]:
    """Every record of every file, skipping blank lines; a malformed line is an error."""
    for path in paths:
        with Path(path).open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
                if not isinstance(record, dict) or "scenario" not in record:
                    raise ValueError(f"{path}:{number}: not a benchmark record")
                yield record


def _fmt(value: object) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int | float):
        return f"{int(value):,}"
    return str(value)


def summary_line(record: Record) -> str:
    """One human line: label, scenario, headline metrics, generator and broker CPU."""
    metrics = record.get("metrics", {})
    parts = [f"{record.get('label', '?')} {record['scenario']}:"]
    parts += [
        f"{name}={_fmt(metrics[name])}" for name in record.get("headline", []) if name in metrics
    ]
    gen = record.get("generator", {})
    if gen:
        phase = " (connect phase)" if gen.get("phase") == "connect" else ""
        phase += " (spinning)" if gen.get("spin") else ""
        parts.append(
            f"| generator cpu{phase} {gen.get('cpu_s', 0):.2f}s = {gen.get('cpu_pct', 0):.0f}%"
            f" of a core (busiest worker {gen.get('busiest_worker_pct', 0):.0f}%)"
        )
    broker = record.get("broker", {})
    if "cpu_pct" in broker:
        parts.append(f"| broker cpu {broker['cpu_pct']:.0f}%")
    if record.get("errors"):
        parts.append(f"| {len(record['errors'])} errors, first: {record['errors'][0]}")
    return " ".join(parts)
