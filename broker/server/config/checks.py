"""Value checks: a raw TOML value in, the converted value out, or one helpful sentence.

Why a small library of our own: the messages are the product (they name the key, the table,
the expected shape and what the operator wrote), and TOML already gives typed values, so a
check is a few lines. `check_for` builds the check of a declared setting from its type and
`Spec` (range, choices, kind); nothing here lists settings. A check takes the value and where it
came from ("'port' in [listener.tcp]") and raises `Invalid` without the file name, which the
loader adds.
"""

from __future__ import annotations

import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from broker.core.enhanced_auth import parse_scram_credential
from broker.core.schema import Spec
from broker.core.settings import UNLIMITED_INFLIGHT, parse_publish_limit

__all__ = ["Check", "ConfigError", "Invalid", "check_for", "show", "validate_host_port"]

Check = Callable[[object, str], Any]


class ConfigError(Exception):
    """Configuration problems, each a one-line message fit to show the operator as is
    (`problems`; `str()` is all of them, one per line)."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: list[str] = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Invalid(Exception):
    """A value check failed; the caller adds the file name."""


def toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def show(value: object) -> str:
    """A raw value as the operator wrote it, for "got ..." in a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return f"{toml_type(value)} {value!r}"


def _why(spec: Spec) -> str:
    return f" ({spec.note})" if spec.note else ""


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{where} must be true or false, got {show(value)}")
    return value


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{where} must be an integer, got {show(value)}")
    return value


def _int_range(spec: Spec) -> Check:
    lo = int(spec.lo) if spec.lo is not None else None
    hi = int(spec.hi) if spec.hi is not None else None

    def check(value: object, where: str) -> int:
        n = _int(value, where)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            if lo is not None and hi is not None:
                bound = f"between {lo} and {hi}"
            else:
                bound = f">= {lo}" if lo is not None else f"<= {hi}"
            raise Invalid(f"{where} must be {bound}, got {n}{_why(spec)}")
        return n

    return check


def _inflight(spec: Spec) -> Check:
    within = _int_range(spec)

    def check(value: object, where: str) -> int:
        n: int = within(value, where)
        return UNLIMITED_INFLIGHT if n == 0 else n  # mosquitto: 0 means "no limit"

    return check


def _queued(value: object, where: str) -> int:
    n = _int(value, where)
    if n < 1:
        raise Invalid(
            f"{where} must be >= 1, got {n}: queues are bounded so that one offline client "
            "cannot exhaust the broker's memory (unlike mosquitto, 0 = unlimited is not allowed)"
        )
    return n


def _number(value: object, where: str, what: str = "a number") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{where} must be {what}, got {show(value)}")
    return value


def _seconds(value: object, where: str) -> float:
    n = _number(value, where, "a number of seconds")
    if not math.isfinite(n) or n < 0:
        raise Invalid(f"{where} must be >= 0 seconds (0 disables it), got {n}")
    return float(n)


def _fraction(value: object, where: str) -> float:
    n = _number(value, where)
    if not math.isfinite(n) or not 0 < n <= 1:
        raise Invalid(f"{where} must be a fraction above 0 and at most 1 (0.7 = 70%), got {n}")
    return float(n)


def _positive(value: object, where: str) -> float:
    n = _number(value, where)
    if not math.isfinite(n) or n <= 0:
        raise Invalid(f"{where} must be a number above 0, got {n}")
    return float(n)


def _rate(value: object, where: str) -> float:
    n = _number(value, where, "a number per second")
    if not math.isfinite(n) or n < 0:
        raise Invalid(f"{where} must be >= 0 per second (0 = unlimited), got {n}")
    return float(n)


def _publish_limit(value: object, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else ""
    if not isinstance(value, str):
        raise Invalid(f'{where} must be "N,seconds" or a number per second, got {show(value)}')
    try:
        parse_publish_limit(value)
    except ValueError as exc:
        raise Invalid(f"{where}: {exc}") from None
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{where} must be a string, got {show(value)}")
    return value


def _alternatives(choices: tuple[str, ...]) -> str:
    if len(choices) == 2:
        return f'"{choices[0]}" or "{choices[1]}"'
    return f"one of {', '.join(choices)}"


def _choice(spec: Spec) -> Check:
    def check(value: object, where: str) -> str:
        s = _str(value, where)
        if s not in spec.choices:
            raise Invalid(f"{where} must be {_alternatives(spec.choices)}{_why(spec)}, got {s!r}")
        return s

    return check


def _choice_list(spec: Spec) -> Check:
    def check(value: object, where: str) -> list[str]:
        if not isinstance(value, list):
            raise Invalid(f"{where} must be an array of event names, got {show(value)}")
        for item in value:
            if item not in spec.choices:
                raise Invalid(
                    f"{where} entries must be among {', '.join(spec.choices)}, got {show(item)}"
                )
        return list(value)

    return check


def _nonempty_str(value: object, where: str) -> str:
    s = _str(value, where)
    if not s.strip():
        raise Invalid(f"{where} must not be empty")
    return s


def _node_name(value: object, where: str) -> str:
    s = _nonempty_str(value, where)
    if any(c.isspace() for c in s) or len(s) > 255:
        raise Invalid(f"{where} must be at most 255 characters without spaces, got {s!r}")
    return s


def _bind(value: object, where: str) -> str:
    s = _str(value, where)
    if not s or any(c.isspace() for c in s):
        raise Invalid(
            f"{where} must be an address or host name without spaces "
            f'(use "0.0.0.0" or "::" for all interfaces), got {s!r}'
        )
    return s


def _ws_path(value: object, where: str) -> str:
    s = _str(value, where)
    if not s.startswith("/") or any(c.isspace() for c in s):
        raise Invalid(f"{where} must be a URL path starting with '/', got {s!r}")
    return s


def _http_url(value: object, where: str) -> str:
    s = _str(value, where)
    if not re.match(r"^https?://[^\s/]+", s) or any(c.isspace() for c in s):
        raise Invalid(f"{where} must be an http:// or https:// URL, got {s!r}")
    return s


def _scram_credentials(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Invalid(
            f"{where} must be a table of user name = stored credential, got {show(value)}"
        )
    out: dict[str, str] = {}
    for user, entry in value.items():
        if not isinstance(entry, str):
            raise Invalid(f"{where}: the entry of {user!r} must be a string, got {show(entry)}")
        try:
            parse_scram_credential(entry)
        except ValueError as exc:
            raise Invalid(
                f"{where}: the entry of {user!r} is not a SCRAM-SHA-256 credential ({exc}); "
                "make one with: python -m broker.core.enhanced_auth USERNAME"
            ) from None
        out[user] = entry
    return out


def _advertise(value: object, where: str) -> str:
    """`host`, `host:port` or `[ipv6]:port` (no port: the bound cluster port)."""
    text = _str(value, where).strip()
    if not text:
        return ""
    has_port = text.startswith("[") or text.count(":") == 1
    bracketed = f"[{text}]" if ":" in text else text
    try:
        validate_host_port(text if has_port else f"{bracketed}:1")
    except ConfigError as exc:
        raise Invalid(f"{where}: {exc}") from None
    return text


def _peers(value: object, where: str) -> list[str]:
    if not isinstance(value, list):
        raise Invalid(f'{where} must be an array of "host:port" strings, got {show(value)}')
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise Invalid(f'{where} entries must be "host:port" strings, got {show(item)}')
        text = item.strip()
        try:
            # "dns:NAME:PORT": every A/AAAA record of NAME, re-resolved (cluster discovery)
            validate_host_port(text[4:] if text.startswith("dns:") else text)
        except ConfigError as exc:
            raise Invalid(f"{where}: {exc}") from None
        out.append(text)
    return out


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def validate_host_port(s: str) -> tuple[str, int]:
    """Parse a peer address ``host:port`` or ``[ipv6]:port``; port must be 1..65535.

    Returned host has no brackets, ready for ``asyncio.open_connection``.
    """
    text = s.strip()
    usage = f"{s!r} is not a valid peer address: expected HOST:PORT or [IPv6]:PORT"
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(usage)
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{usage} ({host!r} is not an IPv6 address)") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(usage)
        if ":" in host:
            raise ConfigError(f"{usage} (put IPv6 addresses in brackets: [{host}]:{port_text})")
        if not _HOSTNAME_RE.match(host):
            raise ConfigError(f"{usage} ({host!r} is not a host name or address)")
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigError(f"{usage} (port {port_text!r} is not a number)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{usage} (port must be between 1 and 65535, got {port})")
    return host, port


#: `Spec.kind` -> the check it names (given the declaration, for the range-based ones).
KINDS: dict[str, Callable[[Spec], Check]] = {
    "inflight": _inflight,
    "queued": lambda spec: _queued,
    "seconds": lambda spec: _seconds,
    "fraction": lambda spec: _fraction,
    "positive": lambda spec: _positive,
    "rate": lambda spec: _rate,
    "publish_limit": lambda spec: _publish_limit,
    "scram": lambda spec: _scram_credentials,
    "node_name": lambda spec: _node_name,
    "nonempty": lambda spec: _nonempty_str,
    "bind": lambda spec: _bind,
    "ws_path": lambda spec: _ws_path,
    "url": lambda spec: _http_url,
    "peers": lambda spec: _peers,
    "advertise": lambda spec: _advertise,
}


def base_type(annotation: object) -> object:
    """`bool | None` -> bool: the type a value must have when it is given."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def check_for(annotation: object, spec: Spec) -> Check:
    """The check of a declared setting: its kind's, else one from its type, range and choices."""
    if spec.kind:
        return KINDS[spec.kind](spec)
    tp = base_type(annotation)
    if tp is bool:
        return _bool
    if tp is int:
        return _int_range(spec)
    if tp is str:
        return _choice(spec) if spec.choices else _str
    if typing.get_origin(tp) is list and spec.choices:
        return _choice_list(spec)
    raise TypeError(f"no check for a setting of type {annotation!r} without a kind")
