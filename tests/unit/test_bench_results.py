"""benchmarks.results and benchmarks.report: JSON lines, summaries, tables and charts."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import build_rows, markdown_table, render_charts, render_report, variant
from benchmarks.results import append_jsonl, make_record, read_jsonl, summary_line
from benchmarks.scenarios import Params, ScenarioResult


def _result(rate: float, scenario: str = "fan-in", qos: int = 0) -> ScenarioResult:
    params = Params(publishers=10, subscribers=1, qos=qos)
    return ScenarioResult(
        scenario=scenario,
        params=params.__dict__.copy(),
        metrics={"received_per_s": rate, "loss_pct": 0.0},
        primary="received_per_s",
        better="higher",
        headline=["received_per_s", "loss_pct"],
        generator={"cpu_s": 0.5, "cpu_pct": 12.0, "busiest_worker_pct": 12.0},
        broker={"cpu_pct": 99.0},
    )


def _records() -> list[dict[str, Any]]:
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    out = []
    for label, rates in (
        ("minibroker 0.1.0", [90.0, 100.0, 110.0]),
        ("mosquitto 2.0", [200.0] * 3),
    ):
        for r in rates:
            out.append(make_record(_result(r), label, [("127.0.0.1", 1883)], now=now))
    out.append(
        make_record(
            ScenarioResult(
                "latency",
                Params().__dict__.copy(),
                {"p99_ms": 0.8, "p50_ms": 0.1},
                "p99_ms",
                "lower",
                ["p99_ms"],
            ),
            "minibroker 0.1.0",
            [("127.0.0.1", 1883)],
            now=now,
        )
    )
    return out


def test_record_fields() -> None:
    record = make_record(_result(5.0), "x 1.0", [("h", 1)], extra={"round": 2})
    assert record["label"] == "x 1.0"
    assert record["scenario"] == "fan-in"
    assert record["params"]["publishers"] == 10
    assert record["metrics"]["received_per_s"] == 5.0
    assert record["targets"] == ["h:1"]
    assert record["round"] == 2
    assert record["machine"]["cpus"] >= 1
    assert "platform" in record["machine"]
    assert dt.datetime.fromisoformat(record["date"]).tzinfo is not None


def test_jsonl_appends_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    records = _records()
    append_jsonl(path, records[:2])
    append_jsonl(path, records[2:])
    lines = path.read_text().splitlines()
    assert len(lines) == len(records)
    assert all(json.loads(line)["scenario"] for line in lines)
    assert list(read_jsonl([path])) == json.loads(json.dumps(records))


def test_jsonl_dash_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    append_jsonl("-", _records()[:1])
    assert json.loads(capsys.readouterr().out)["label"] == "minibroker 0.1.0"


def test_read_jsonl_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scenario": "x"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        list(read_jsonl([bad]))
    other = tmp_path / "other.jsonl"
    other.write_text('{"no": "scenario"}\n')
    with pytest.raises(ValueError, match="not a benchmark record"):
        list(read_jsonl([other]))


def test_summary_line_shows_headline_and_cpu() -> None:
    line = summary_line(_records()[0])
    assert line.startswith("minibroker 0.1.0 fan-in:")
    assert "received_per_s=90" in line
    assert "generator cpu" in line and "broker cpu 99%" in line


def test_variant_names() -> None:
    record = _records()[0]
    assert variant(record) == "fan-in q0 10p/1s 64B"
    record["params"]["rate"] = 1000.0
    assert variant(record) == "fan-in q0 10p/1s 1000/s 64B"
    assert variant({"scenario": "conn-scale", "params": {"connections": 5}}) == "conn-scale 5 conns"


def test_table_medians_and_ratio() -> None:
    rows, labels = build_rows(_records())
    assert labels == ["minibroker 0.1.0", "mosquitto 2.0"]
    table = markdown_table(rows, labels, baseline="mosquitto 2.0")
    lines = table.strip().splitlines()
    head = "| scenario | metric | minibroker 0.1.0 | mosquitto 2.0 |"
    assert lines[0] == head + " minibroker 0.1.0 / mosquitto 2.0 |"
    fan_in = next(line for line in lines if "received_per_s" in line)
    assert "| 100 (n=3) | 200 (n=3) | 0.50 |" in fan_in
    latency = next(line for line in lines if "p99_ms" in line)
    assert "lower is better" in latency
    assert latency.endswith("| 0.8 | - | - |")


def test_table_without_baseline_has_no_ratio_column() -> None:
    rows, labels = build_rows(_records()[:3])
    table = markdown_table(rows, labels, baseline=None)
    assert "/" not in table.splitlines()[0]


def test_render_report_picks_mosquitto_as_baseline() -> None:
    text = render_report(_records())
    assert "minibroker 0.1.0 / mosquitto 2.0" in text
    assert "Measured 2026-11-25..2026-11-25 on" in text


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib missing")
def test_charts_are_png_files(tmp_path: Path) -> None:
    rows, labels = build_rows(_records())
    paths = render_charts(rows, labels, tmp_path)
    assert len(paths) == len(rows)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib missing")
def test_report_links_charts_relative_to_the_markdown_file(tmp_path: Path) -> None:
    text = render_report(_records(), charts=tmp_path / "out" / "charts", link_from=tmp_path / "out")
    assert "![ratios](charts/ratios.png)" in text
    assert (tmp_path / "out" / "charts" / "ratios.png").exists()
