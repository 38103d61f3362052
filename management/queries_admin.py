"""Node-local queries of the endpoints added after the seed: connections by username,
alarm history, plugin reload, dropping a session, the running configuration.

They join `management.queries.QUERIES` (same rules: plain data in and out, every row carries
`node`, an expected failure is an `{"error": reason}` result). `management.view.run_query` imports
this module, so every node that serves queries serves these too.
"""

from __future__ import annotations

from typing import Any

from broker.server.config import running_config
from broker.server.config.schema import TOP
from management.queries import (
    NodeContext,
    Row,
    Rows,
    channels,
    connection_row,
    error,
    plugin_action,
    query,
)

# -- connections by username ---------------------------------------------------------------------


@query("connections_by_username")
async def connections_by_username(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    username = str(args["username"])
    return [connection_row(ctx, ch) for ch in channels(ctx) if ch.username == username]


# -- alarms (EMQX 3.2's present / history forms) -------------------------------------------------


def _alarm_32(alarm: dict[str, Any]) -> Row:
    """Our alarm object plus EMQX 3.2's `desc` map, so scripts for 3.0 and 3.2 both read it."""
    row = dict(alarm)
    row["desc"] = {k: alarm[k] for k in ("severity", "title", "summary", "timestamp") if k in alarm}
    return row


@query("alarms_present")
async def alarms_present(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    return [] if ctx.alarms is None else [_alarm_32(a) for a in ctx.alarms.list()]


@query("alarms_history")
async def alarms_history(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    """Cleared alarms, oldest first, each with `clear_at` (bounded by the alarm manager)."""
    return [] if ctx.alarms is None else [_alarm_32(a) for a in ctx.alarms.history()]


# -- plugins -------------------------------------------------------------------------------------


@query("plugin_reload")
async def plugin_reload(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """EMQX's reload: a loaded plugin is unloaded then loaded again (re-reading its config and
    files); one that is not loaded is simply loaded; an unknown one is `not_found`."""
    name = str(args["name"])
    if ctx.plugins is None:
        return error("not_found")
    names = {str(p["name"]): bool(p["active"]) for p in ctx.plugins.list()}
    if name not in names:
        return error("not_found")
    if names[name]:
        unloaded = await plugin_action(ctx, "unload", name)
        if unloaded != "ok":
            return unloaded
    return await plugin_action(ctx, "load", name)


# -- sessions ------------------------------------------------------------------------------------


@query("session_drop")
async def session_drop(ctx: NodeContext, args: dict[str, Any]) -> bool:
    """Discard the session of `client_id` on this node (a connected client is kicked first);
    False when this node has none."""
    return ctx.broker.drop_session(str(args["client_id"]))


# -- configuration -------------------------------------------------------------------------------


@query("configs")
async def configs(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    """The configuration this node runs with, secrets masked by the schema (`running_config`)."""
    return config_rows(running_config(ctx.config))


def _datatype(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {int: "integer", float: "float", list: "list", dict: "map", type(None): "null"}
    return names.get(type(value), "string")


def config_rows(tables: dict[str, dict[str, Any]]) -> Rows:
    """EMQX's `[{key, value, datatype, app}]`, sorted by key: `key` is the file's table and key,
    dotted (`listener.tcp.port`, `plugins.web_hook.url`; a top-level key alone), a list of tables
    (`[[management.apps]]`) one row per field (`management.apps.0.id`); `app` is the table's first
    part (`broker` for the top level)."""
    rows: Rows = []

    def add(key: str, value: Any, app: str) -> None:
        rows.append({"key": key, "value": value, "datatype": _datatype(value), "app": app})

    for table, values in tables.items():
        prefix = "" if table == TOP else table + "."
        app = table.split(".")[0] if prefix else "broker"
        for name, value in values.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for index, item in enumerate(value):
                    for field, leaf in item.items():
                        add(f"{prefix}{name}.{index}.{field}", leaf, app)
            else:
                add(prefix + name, value, app)
    rows.sort(key=lambda row: str(row["key"]))
    return rows
