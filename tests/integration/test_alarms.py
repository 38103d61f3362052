"""Alarms: thresholds lowered so that real monitors cross them; check() driven directly."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from plugin_support import app_config, client, json_payload, running_app
from test_core_support import next_message

from broker.server.alarms import AlarmManager, PsutilProbe
from broker.server.config import AlarmsConfig

NODE = "test@127.0.0.1"
ALERT = f"$SYS/brokers/{NODE}/alarms/alert"
CLEAR = f"$SYS/brokers/{NODE}/alarms/clear"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


class FakeProbe:
    def __init__(self) -> None:
        self.sysmem = 0.1
        self.procmem = 0.01
        self.load = 0.1

    def system_memory(self) -> float:
        return self.sysmem

    def process_memory(self) -> float:
        return self.procmem

    def cpu_load(self) -> float:
        return self.load


def _quiet(**marks: Any) -> AlarmsConfig:
    """No timer, and only the given monitors low enough to fire (the machine running the tests
    may well be busy: the other marks are out of reach)."""
    unreachable = AlarmsConfig(
        sysmem_high_watermark=1.0,
        procmem_high_watermark=1.0,
        cpu_high_watermark=1e9,
        connections_high_watermark=0,
        check_interval=0,
    )
    return dataclasses.replace(unreachable, **marks)


async def test_connections_alarm_raised_once_and_cleared(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, alarms=_quiet(connections_high_watermark=2))
    async with running_app(cfg) as app, client(app, "watcher") as watcher:
        await watcher.subscribe(f"$SYS/brokers/{NODE}/alarms/#")
        app.alarms.check()
        assert app.alarms.list() == []
        async with client(app, "c2"), client(app, "c3"):
            app.alarms.check()
            app.alarms.check()  # still high: not raised twice
            (alarm,) = app.alarms.list()
            assert alarm["id"] == "connections_high_watermark"
            assert alarm["severity"] == "warning"
            assert isinstance(alarm["title"], str) and "3 connected" in str(alarm["summary"])
            assert TIMESTAMP.match(str(alarm["timestamp"]))
            message = await next_message(watcher)
            assert message.topic.value == ALERT
            data = json_payload(message)
            assert data["id"] == "connections_high_watermark" and data["node"] == NODE
        app.alarms.check()
        assert app.alarms.list() == []
        (cleared,) = app.alarms.history()
        assert cleared["id"] == "connections_high_watermark"
        assert TIMESTAMP.match(str(cleared["clear_at"]))
        message = await next_message(watcher)
        assert message.topic.value == CLEAR
        assert json_payload(message)["id"] == "connections_high_watermark"


async def test_real_memory_monitors(tmp_path: Path) -> None:
    # every machine uses some memory, and this process some of it: tiny marks are crossed
    marks = _quiet(sysmem_high_watermark=1e-6, procmem_high_watermark=1e-9)
    async with running_app(app_config(tmp_path, alarms=marks)) as app:
        app.alarms.check()
        ids = {a["id"] for a in app.alarms.list()}
        assert {"system_memory_high_watermark", "process_memory_high_watermark"} <= ids
        # marks of 100% cannot be exceeded: both alarms clear
        app.alarms.config.sysmem_high_watermark = 1.0
        app.alarms.config.procmem_high_watermark = 1.0
        app.alarms.check()
        ids = {a["id"] for a in app.alarms.list()}
        assert not ids & {"system_memory_high_watermark", "process_memory_high_watermark"}


def test_psutil_probe_reads_sane_figures() -> None:
    probe = PsutilProbe()
    assert 0 < probe.system_memory() <= 1
    assert 0 < probe.process_memory() < 1
    assert probe.cpu_load() >= 0


async def test_cpu_alarm_with_probe(tmp_path: Path) -> None:
    async with running_app(app_config(tmp_path)) as app:
        probe = FakeProbe()
        alarms = AlarmManager(app.broker, _quiet(cpu_high_watermark=0.8), NODE, probe=probe)
        async with client(app, "watcher") as watcher:
            await watcher.subscribe(f"$SYS/brokers/{NODE}/alarms/#")
            probe.load = 0.95
            alarms.check(now=1_700_000_000.0)
            assert [a["id"] for a in alarms.list()] == ["cpu_high_watermark"]
            assert "0.95" in str(alarms.list()[0]["summary"])
            message = await next_message(watcher)
            assert message.topic.value == ALERT
            assert json_payload(message)["ts"] == 1_700_000_000.0
            probe.load = 0.8  # at the mark is not above it
            alarms.check(now=1_700_000_060.0)
            assert alarms.list() == []
            assert (await next_message(watcher)).topic.value == CLEAR
            assert [a["id"] for a in alarms.history()] == ["cpu_high_watermark"]


async def test_failing_probe_does_not_stop_other_monitors(tmp_path: Path) -> None:
    class Broken(FakeProbe):
        def system_memory(self) -> float:
            raise OSError("no /proc")

    async with running_app(app_config(tmp_path)) as app:
        probe = Broken()
        probe.procmem = 0.5
        alarms = AlarmManager(app.broker, _quiet(procmem_high_watermark=0.05), NODE, probe=probe)
        alarms.check()
        assert [a["id"] for a in alarms.list()] == ["process_memory_high_watermark"]


async def test_timer_runs_checks(tmp_path: Path) -> None:
    from test_core_support import eventually

    cfg = app_config(tmp_path, alarms=_quiet(check_interval=0.01, sysmem_high_watermark=1e-6))
    async with running_app(cfg) as app:
        await eventually(lambda: bool(app.alarms.list()))
