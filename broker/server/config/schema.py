"""The schema: every TOML table and key, read off the declarations of the model.

Nothing here declares a setting. `TABLES` says which model object fills which table (`tcp` is
`[listener.tcp]`, ...); `keys()` turns the declared fields into `Key`s (table, key, attribute,
type, default, `Spec`), which the loader, `minibroker config-reference` and the README's table
all use.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

from broker.core.schema import Spec, declared
from broker.server.config.model import BrokerConfig, ManagementApp
from broker.server.config.plugin_options import PLUGIN_OPTIONS, PluginOptions

__all__ = ["TABLES", "TOP", "Key", "foreign_plugin_keys", "keys", "section_names"]

TOP = "top level"

#: BrokerConfig attribute holding a sub-model -> the table it is written as.
TABLES: dict[str, str] = {
    "tcp": "listener.tcp",
    "ws": "listener.ws",
    "ssl": "listener.ssl",
    "wss": "listener.wss",
    "management": "management",
    "cluster": "cluster",
    "alarms": "alarms",
}
APPS = "management.apps"


@dataclass(frozen=True, slots=True, eq=False)
class Key:
    """One key of one table."""

    table: str  # "top level", "node", "listener.tcp", "management.apps", "plugins.presence"
    key: str  # as written in the file
    attr: str  # the attribute it sets
    holder: str  # BrokerConfig attribute of the object it sets; "" = the BrokerConfig itself
    annotation: Any  # the field's type
    default: Any  # dataclasses.MISSING for a required key
    spec: Spec


def _default(field: dataclasses.Field[Any], instance: object | None) -> Any:
    if instance is not None:
        return getattr(instance, field.name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _keys_of(
    cls: type, table: str, holder: str, instance: object | None, *, own_table: bool = True
) -> list[Key]:
    hints = typing.get_type_hints(cls)
    out = []
    for field, spec in declared(cls):
        where = spec.section or (table if own_table else TOP)
        if spec.only and table not in spec.only:
            continue
        out.append(
            Key(where, spec.key or field.name, field.name, holder, hints[field.name],
                _default(field, instance), spec)
        )  # fmt: skip
    return out


@functools.cache
def keys() -> dict[str, dict[str, Key]]:
    """Table name -> its keys, in declaration order. Tables appear in the file's usual order."""
    defaults = BrokerConfig()
    found: list[Key] = []
    for holder, table in TABLES.items():
        sub = getattr(defaults, holder)
        found += _keys_of(type(sub), table, holder, sub)
    found += _keys_of(BrokerConfig, TOP, "", defaults, own_table=False)
    found += _keys_of(ManagementApp, APPS, "", None)
    for name, options in PLUGIN_OPTIONS.items():
        found += _keys_of(options, f"plugins.{name}", "", None)
    tables_in_order = [*TABLES.values()]
    tables_in_order.insert(tables_in_order.index("management") + 1, APPS)
    order = [TOP, "node", *tables_in_order, *(f"plugins.{n}" for n in PLUGIN_OPTIONS)]
    tables: dict[str, dict[str, Key]] = {name: {} for name in order}
    for key in found:
        tables[key.table][key.key] = key
    return tables


def section_names() -> list[str]:
    """Every table the file may contain, parents included ("listener", "plugins")."""
    names = [name for name in keys() if name != TOP]
    parents = {name.split(".")[0] for name in names if "." in name}
    return [*names, *sorted(parents - set(names))]


def foreign_plugin_keys(name: str) -> dict[str, Key]:
    """The keys every plugin's table has (`enabled`), for a plugin that is not built in."""
    return {key.key: key for key in _keys_of(PluginOptions, f"plugins.{name}", "", None)}
