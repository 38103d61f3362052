"""Reading a process's CPU time and resident memory from /proc (Linux), and machine facts."""

from __future__ import annotations

import os
import platform

__all__ = ["cpu_seconds", "machine_info", "rss_kb", "runtime_seconds"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (all its threads), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runtime_seconds(pid: int) -> float | None:
    """CPU seconds of `pid`'s live threads from the scheduler's own count in nanoseconds
    (/proc/<pid>/task/*/schedstat), or None if it cannot be read. Why: `cpu_seconds` counts in
    clock ticks (10 ms), too coarse for a few microseconds per message over seconds."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in KiB from /proc/<pid>/status, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """What a result needs to be compared with another: cores, CPU model, OS and Python."""
    return {
        "cpus": os.cpu_count() or 1,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
