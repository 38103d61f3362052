"""The running configuration as the file's tables, secrets masked: for the management API
(`GET /configs`) and anything else that shows an operator what the node runs with.

Read off the schema, so a new setting is shown (and a new secret masked) without touching
this module: a key declared `secret=True` is masked whole, a key of kind `url` has the password
of its user info masked (`http://user:******@host/`), the rest of it is what the operator
needs to see.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from broker.server.config.model import BrokerConfig
from broker.server.config.plugin_options import PLUGIN_OPTIONS, plugin_defaults
from broker.server.config.schema import APPS, Key, keys

__all__ = ["MASK", "running_config"]

#: What a secret is shown as.
MASK = "******"

#: `scheme://user:password@host`: the password of a URL's user info.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?=@)", re.IGNORECASE)


def _mask(key: Key, value: Any) -> Any:
    if key.spec.kind == "url" and isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>" + MASK, value)
    if not key.spec.secret or value in ("", None):
        return value
    if isinstance(value, dict):
        return dict.fromkeys(value, MASK)  # who is configured is not the secret
    return MASK


def _plain(value: Any) -> Any:
    if isinstance(value, list | dict):
        return type(value)(value)
    return value


def running_config(cfg: BrokerConfig, *, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
    """Table name ("top level", "node", "listener.tcp", ...) -> key -> value in force.

    Every declared key is present (defaults included); `[management] apps` lists the apps as
    tables; `[plugins.<name>]` tables hold the built-in defaults under what the file set.
    """
    app_keys = keys()[APPS]
    out: dict[str, dict[str, Any]] = {}
    for table, table_keys in keys().items():
        if table == APPS or table.startswith("plugins."):
            continue
        values: dict[str, Any] = {}
        for name, key in table_keys.items():
            holder = getattr(cfg, key.holder) if key.holder else cfg
            value = getattr(holder, key.attr)
            if key.spec.kind == "apps":
                value = [
                    {k: _mask(app_keys[k], v) if mask_secrets else v for k, v in app.items()}
                    for app in map(dataclasses.asdict, value)
                ]
            else:
                value = _plain(value)
            values[name] = _mask(key, value) if mask_secrets else value
        out[table] = values
    for plugin, set_keys in cfg.plugins.items():
        defaults = plugin_defaults(plugin) if plugin in PLUGIN_OPTIONS else {}
        merged = {**defaults, **set_keys}
        plugin_keys = keys().get(f"plugins.{plugin}", {})
        out[f"plugins.{plugin}"] = {
            k: _mask(plugin_keys[k], v) if mask_secrets and k in plugin_keys else v
            for k, v in merged.items()
        }
    return out
