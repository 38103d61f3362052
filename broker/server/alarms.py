"""Alarms from the node's own monitors: memory, CPU load, connection count.

Theory of operation
-------------------
Each monitor reads one figure (from `psutil` and the broker's registries) and compares it with
its high-water mark from ``[alarms]``. Crossing the mark upwards raises the alarm once; falling
back to the mark or below clears it. Nothing in between: an alarm that stays high is not
raised again. `check(now)` is one pass over every monitor; `start()` runs it every
``check_interval`` seconds (0 = only when called, which is what the tests do).

Raised alarms are listed by `list()` (the API's alarm objects, as EMQX 3.0 formats them:
``id``, ``severity``, ``title``, ``summary``, ``timestamp`` as local ``YYYY-MM-DD HH:MM:SS``);
cleared ones move to `history()` with ``clear_at`` (at most HISTORY_LIMIT = 1000, a stated
constant; the oldest is dropped first). Every raise and clear is published on
``$SYS/brokers/<node>/alarms/alert`` and ``.../alarms/clear`` as JSON.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil

from broker.core.broker import Broker
from broker.core.message import Message
from broker.server.config import AlarmsConfig

__all__ = ["Alarm", "AlarmManager", "PsutilProbe", "SystemProbe", "format_timestamp"]

log = logging.getLogger(__name__)

HISTORY_LIMIT = 1000
SEVERITY = "warning"


def format_timestamp(ts: float) -> str:
    """EMQX 3.0's alarm timestamp: local time, ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class SystemProbe(Protocol):
    """Where the monitors read the machine's figures; tests may pass their own."""

    def system_memory(self) -> float:
        """Used system memory as a fraction of the total."""
        ...

    def process_memory(self) -> float:
        """This process's resident memory as a fraction of the system total."""
        ...

    def cpu_load(self) -> float:
        """One-minute load average divided by the number of cores."""
        ...


class PsutilProbe:
    """The real figures, read with psutil."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._cores = psutil.cpu_count() or 1

    def system_memory(self) -> float:
        return float(psutil.virtual_memory().percent) / 100.0

    def process_memory(self) -> float:
        total = float(psutil.virtual_memory().total)
        return float(self._process.memory_info().rss) / total if total else 0.0

    def cpu_load(self) -> float:
        return float(psutil.getloadavg()[0]) / self._cores


@dataclass(slots=True)
class Alarm:
    id: str
    severity: str
    title: str
    summary: str
    raised_at: float
    cleared_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "summary": self.summary,
            "timestamp": format_timestamp(self.raised_at),
        }
        if self.cleared_at is not None:
            data["clear_at"] = format_timestamp(self.cleared_at)  # EMQX 3.2's name
        return data


@dataclass(slots=True)
class _Monitor:
    id: str
    title: str
    read: Callable[[], float]
    mark: Callable[[], float]  # the high-water mark; <= 0 switches the monitor off
    describe: Callable[[float, float], str]  # (value, mark) -> summary


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


class AlarmManager:
    """The node's alarms. See the module docstring."""

    def __init__(
        self,
        broker: Broker,
        config: AlarmsConfig,
        node_name: str | None = None,
        probe: SystemProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.config = config
        self.node_name = node_name or broker.node_name
        self.probe: SystemProbe = probe or PsutilProbe()
        self.clock = clock
        self._active: dict[str, Alarm] = {}
        self._history: collections.deque[Alarm] = collections.deque(maxlen=HISTORY_LIMIT)
        self._task: asyncio.Task[None] | None = None
        cfg = config
        self._monitors = [
            _Monitor(
                "system_memory_high_watermark",
                "System memory usage is high",
                self.probe.system_memory,
                lambda: cfg.sysmem_high_watermark,
                lambda v, m: f"system memory usage {_percent(v)} is above {_percent(m)}",
            ),
            _Monitor(
                "process_memory_high_watermark",
                "Process memory usage is high",
                self.probe.process_memory,
                lambda: cfg.procmem_high_watermark,
                lambda v, m: (
                    f"broker process memory {_percent(v)} of the system is above {_percent(m)}"
                ),
            ),
            _Monitor(
                "cpu_high_watermark",
                "CPU load is high",
                self.probe.cpu_load,
                lambda: cfg.cpu_high_watermark,
                lambda v, m: (
                    f"CPU load {v:.2f} per core (load1 / {os.cpu_count() or 1} cores) "
                    f"is above {m:.2f}"
                ),
            ),
            _Monitor(
                "connections_high_watermark",
                "Too many connections",
                lambda: float(len(broker.connected)),
                lambda: float(cfg.connections_high_watermark),
                lambda v, m: f"{int(v)} connected clients are above the high-water mark {int(m)}",
            ),
        ]

    # -- queries (the management API calls these) -----------------------------------------

    def list(self) -> list[dict[str, object]]:
        """The alarms raised now, oldest first."""
        return [alarm.to_dict() for alarm in self._active.values()]

    def history(self) -> builtins.list[dict[str, object]]:
        """Cleared alarms, oldest first (with `clear_at`), at most HISTORY_LIMIT."""
        return [alarm.to_dict() for alarm in self._history]

    # -- the checks -----------------------------------------------------------------------

    def check(self, now: float | None = None) -> None:
        """One pass of every monitor: raise what crossed its mark, clear what fell back."""
        if now is None:
            now = self.clock()
        for monitor in self._monitors:
            mark = monitor.mark()
            try:
                value = monitor.read()
            except Exception:  # a probe failure must not stop the other monitors
                log.exception("alarm monitor %s failed", monitor.id)
                continue
            active = self._active.get(monitor.id)
            if mark > 0 and value > mark:
                if active is None:
                    self.raise_alarm(monitor.id, monitor.title, monitor.describe(value, mark), now)
            elif active is not None:
                self.clear_alarm(monitor.id, now)

    def raise_alarm(self, alarm_id: str, title: str, summary: str, now: float) -> Alarm | None:
        """Raise an alarm unless it is already raised; publishes the alert."""
        if alarm_id in self._active:
            return None
        alarm = Alarm(alarm_id, SEVERITY, title, summary, now)
        self._active[alarm_id] = alarm
        log.warning("alarm raised: %s: %s", alarm_id, summary)
        self._publish("alert", alarm, now)
        return alarm

    def clear_alarm(self, alarm_id: str, now: float) -> Alarm | None:
        alarm = self._active.pop(alarm_id, None)
        if alarm is None:
            return None
        alarm.cleared_at = now
        self._history.append(alarm)
        log.info("alarm cleared: %s", alarm_id)
        self._publish("clear", alarm, now)
        return alarm

    def _publish(self, kind: str, alarm: Alarm, now: float) -> None:
        payload = {**alarm.to_dict(), "node": self.node_name, "ts": now}
        topic = f"$SYS/brokers/{self.node_name}/alarms/{kind}"
        message = Message(
            topic, json.dumps(payload).encode(), 0, False, None, "", now, self.node_name
        )
        try:
            self.broker.publish(message)
        except Exception:
            log.exception("cannot publish alarm %s", topic)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        interval = self.config.check_interval
        if interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, interval: float) -> None:
        while True:
            try:
                self.check()
            except Exception:
                log.exception("alarm check failed")
            await asyncio.sleep(interval)
