"""A read-only view of a node's running configuration for `GET /configs`, secrets masked.

Why generic: the configuration object is a tree of dataclasses, dicts and lists whose layout
belongs to `broker.server.config` (and changes with it). This module knows none of its names: it
walks whatever object the node holds and flattens it to EMQX's rows `{key, value, datatype, app}`
with dotted keys (`tcp.port`, `management.apps.0.id`, `plugins.web_hook.url`).

Masking: a value is replaced by `MASK` when a segment of its key names a secret (password,
secret, cookie, token, credential, private key, psk; but not `*_file`, which is a path) or when
it holds PEM text; the password in a URL (`http://user:pw@host`) is masked too. A masked dict or
list is masked whole, so a table of credentials does not leak its user names either. We never
read the files the configuration names.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "config_rows", "is_secret_key"]

MASK = "******"

_SECRET_WORDS = re.compile(r"password|passwd|secret|cookie|token|credential|private_key|psk")
_PEM = "-----BEGIN"
#: `scheme://user:password@host`: the password of a URL's user info.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?=@)", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True for a key whose value is a secret (a `*_file` or `*file` key is a path, not one)."""
    lowered = name.lower()
    if lowered.endswith("file") or lowered.endswith("_path"):
        return False
    return _SECRET_WORDS.search(lowered) is not None


def _datatype(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return "string"


def _plain(value: Any) -> Any:
    """A JSON-able leaf value."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _children(value: Any) -> list[tuple[str, Any]] | None:
    """The (name, child) pairs of a container; None for a leaf."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [(str(i), v) for i, v in enumerate(value)]
    return None


def config_rows(config: Any, max_depth: int = 8) -> list[dict[str, Any]]:
    """The configuration as `[{key, value, datatype, app}]`, sorted by key, secrets masked.

    `app` is the first segment of the key for nested settings (`management`, `plugins`...) and
    `broker` for the top-level ones (EMQX names the application that owns a setting there).
    """
    rows: list[dict[str, Any]] = []

    def walk(prefix: list[str], value: Any, depth: int) -> None:
        key = ".".join(prefix)
        secret = any(is_secret_key(part) for part in prefix)
        kids = _children(value)
        if kids is None or secret or depth >= max_depth or (not kids and prefix):
            if secret and value not in (None, "", [], {}):
                shown: Any = MASK
            elif kids is not None:
                shown = [] if isinstance(value, list | tuple) else {}
                if kids:  # too deep: say so (its text could hold a nested secret)
                    shown = "..."
            else:
                shown = _plain(value)
                if isinstance(shown, str):
                    shown = MASK if _PEM in shown else _URL_PASSWORD.sub(r"\g<head>" + MASK, shown)
            app = prefix[0] if len(prefix) > 1 else "broker"
            rows.append({"key": key, "value": shown, "datatype": _datatype(shown), "app": app})
            return
        for name, child in kids:
            walk([*prefix, name], child, depth + 1)

    walk([], config, 0)
    rows.sort(key=lambda row: row["key"])
    return rows
