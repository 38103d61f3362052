"""Process logging: human-readable lines by default, JSON lines with ``--log-format json``.

A JSON line has ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message`` and, when the record
carries an exception, ``exc_info`` (the formatted traceback). The level can be changed at run time
(`set_level`, used by the management query ``log_set_level``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys

__all__ = ["LEVELS", "LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure", "set_level"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
#: Level names accepted at run time (lower case), as in EMQX's `log set-level`.
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exc_info, stack_info)."""

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
        out: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: int = logging.INFO, fmt: str = "text") -> None:
    """Install one stderr handler on the root logger in the given format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def set_level(name: str) -> bool:
    """Set the root logger's level by name (case-insensitive); False for an unknown name."""
    level = LEVELS.get(name.strip().lower())
    if level is None:
        return False
    logging.getLogger().setLevel(level)
    return True
