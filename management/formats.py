"""Value formats of the EMQX 3.x management API: local datetimes, uptime, human-readable sizes."""

from __future__ import annotations

import time

_K = 1024
_M = _K * 1024
_G = _M * 1024


def local_datetime(ts: float) -> str:
    """Unix seconds as local `YYYY-MM-DD HH:MM:SS` (EMQX's `datetime`, `connected_at`...)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def uptime(seconds: float) -> str:
    """EMQX's uptime text: `5 seconds`, `1 minutes, 5 seconds`,
    `1 days,18 hours, 45 minutes, 1 seconds`.

    The odd spacing after `days,` is EMQX's (emqx_mgmt:uptime/2), kept so that tools parsing it
    keep working.
    """
    secs = max(0, int(seconds))
    if secs < 60:
        return f"{secs} seconds"
    parts = [f"{secs % 60} seconds"]
    minutes = secs // 60
    if minutes < 60:
        return f"{minutes} minutes, " + parts[0]
    parts.insert(0, f"{minutes % 60} minutes, ")
    hours = minutes // 60
    if hours < 24:
        return f"{hours} hours, " + "".join(parts)
    parts.insert(0, f"{hours % 24} hours, ")
    return f"{hours // 24} days," + "".join(parts)


def human_bytes(n: int) -> str:
    """`76.45M` style (EMQX's kmg/1): two decimals and K/M/G, plain digits below 1K."""
    if n > _G:
        return f"{n / _G:.2f}G"
    if n > _M:
        return f"{n / _M:.2f}M"
    if n > _K:
        return f"{n / _K:.2f}K"
    return str(n)


def undefined(value: str | None) -> str:
    """EMQX shows an unset optional string as `undefined`."""
    return value if value else "undefined"
