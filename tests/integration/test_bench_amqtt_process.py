"""The real amqtt as the benchmark starts it: its config is accepted, it answers a CONNECT, and
the load tool's pub/sub path runs through it. Skipped when amqtt is not installed
(`python -m venv /opt/amqtt-venv && /opt/amqtt-venv/bin/pip install amqtt`, or `AMQTT_BIN`).

One amqtt process for the module, stopped at the end through its own handle. No timing asserts;
every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from benchmarks.brokers import RunningBroker, find_amqtt, mqtt_probe, start_amqtt
from benchmarks.results import make_record, summary_line
from benchmarks.scenarios import Settings, make_params, run_scenario

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(find_amqtt() is None, reason="amqtt not installed"),
]


@pytest.fixture(scope="module")
def amqtt() -> Iterator[RunningBroker]:
    with start_amqtt() as broker:
        yield broker


def test_amqtt_starts_on_its_generated_config(amqtt: RunningBroker) -> None:
    assert amqtt.label.startswith("amqtt 0.")
    assert amqtt.proc.poll() is None
    assert mqtt_probe(*amqtt.target)
    assert (amqtt.workdir / "amqtt.yaml").read_text().count("127.0.0.1:") == 1


async def test_load_tool_pub_sub_through_amqtt(amqtt: RunningBroker) -> None:
    settings = Settings(targets=[amqtt.target], procs=0, progress=False, broker_pid=amqtt.pid)
    params = make_params(
        "fan-in", publishers=2, subscribers=1, qos=1, count=50, duration=5.0, drain=5.0
    )
    async with asyncio.timeout(20):
        result = await run_scenario("fan-in", settings, params)
    assert result.errors == []
    assert result.metrics["sent"] == 100
    assert result.metrics["received"] == 100
    assert result.metrics["loss_pct"] == 0.0
    assert "fan-in" in summary_line(make_record(result, amqtt.label, settings.targets))
