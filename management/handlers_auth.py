"""Handlers of `/auth_clientid` and `/auth_username`: the credentials of those two plugins.

As EMQX 3.x's emqx_auth_clientid_api / emqx_auth_username_api:
  GET    /auth_clientid             the client ids, a JSON array of strings
  POST   /auth_clientid             {"clientid", "password"}; 409 `existed` when it is there
  GET    /auth_clientid/:clientid   {"clientid", "password": its stored $7$ hash}; 404
  PUT    /auth_clientid/:clientid   {"password"}; 404 `not_found` for an unknown client id
  DELETE /auth_clientid/:clientid   "ok" (also for an unknown one, as EMQX)
and the same with `username` for `/auth_username`.

Where the routes exist: EMQX registered them with the plugin and filtered each request on
whether the plugin was running on the node that got it (404 otherwise). Here the routes are
always in the table (the route list, the OpenAPI document) and answer **HTTP 404
`plugin_not_loaded`** (in both API formats) while the plugin is not loaded on the node that
takes the request.

Writes: the password is hashed here, once (`$7$`, salt included), and the row is stamped with
the time; the same row is then applied on every running node (`table_put`/`table_delete`),
so all nodes hold the same hash. Reads merge every node's rows (the newest wins), so a node
that missed a write does not show a stale entry. A write's time is kept after the newest row
of its key, so a node with a slow clock cannot write "into the past" and be ignored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.core.replicated import ReplicatedTable, Row
from broker.plugins.auth_table import TABLE_AUTH, TableAuth, credential
from management import queries_tables  # noqa: F401  (registers the table queries)
from management.common import (
    ApiError,
    as_str,
    check_result,
    missing,
    node_call,
    params,
    view_of,
)
from management.errors import BadParam, PluginRouteNotLoaded

#: MQTT strings (client id, username) and the password field are at most 65535 bytes.
MAX_BYTES = 65535
#: A write is stamped at least this much after the newest row of its key.
_STEP = 0.001

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _require_loaded(request: web.Request, spec: TableAuth) -> None:
    view = view_of(request)
    rows = await node_call(request, view.local_node, "plugins", {})
    if not any(row.get("name") == spec.plugin and row.get("active") for row in rows):
        raise PluginRouteNotLoaded


async def _merged(request: web.Request, spec: TableAuth) -> ReplicatedTable:
    """The table as the whole cluster knows it (each node's rows, the newest of each key)."""
    merged = ReplicatedTable(spec.plugin)
    for _node, answer in await view_of(request).call_all("table_dump", {"table": spec.plugin}):
        rows: list[Row] = []
        for item in check_result(answer):
            try:
                rows.append(Row.from_dict(item))
            except (KeyError, TypeError, ValueError):
                continue
        merged.merge(rows)
    return merged


def _text(value: Any, name: str) -> str:
    text = as_str(value, name)
    if not text or len(text.encode("utf-8")) > MAX_BYTES or "\x00" in text:
        raise BadParam(name)
    return text


def _stamp(merged: ReplicatedTable, key: str) -> float:
    row = merged.row(key)
    now = time.time()
    return now if row is None else max(now, row.at + _STEP)


async def _write(request: web.Request, query: str, args: dict[str, Any]) -> None:
    """The same row, stamped once here (`hlc_now`), written on every running node."""
    view = view_of(request)
    stamp = await node_call(request, view.local_node, "hlc_now", {})
    for _node, answer in await view.call_all(query, {**args, "hlc": stamp}):
        check_result(answer)


def handlers(spec: TableAuth) -> dict[str, Handler]:
    """list, lookup, add, update, delete for one of the two plugins."""

    async def list_entries(request: web.Request) -> web.Response:
        await _require_loaded(request, spec)
        return web.json_response((await _merged(request, spec)).keys())

    async def lookup(request: web.Request) -> web.Response:
        await _require_loaded(request, spec)
        key = request.match_info[spec.field]
        record = (await _merged(request, spec)).get(key)
        if record is None:
            raise ApiError(404, "not_found")
        return web.json_response({spec.field: key, "password": record.get("password", "")})

    async def add(request: web.Request) -> web.Response:
        await _require_loaded(request, spec)
        p = await params(request)
        missing(p, spec.field, "password")
        key, password = _text(p[spec.field], spec.field), _text(p["password"], "password")
        merged = await _merged(request, spec)
        if merged.get(key) is not None:
            raise ApiError(409, "existed")
        args = {"table": spec.plugin, "key": key, "value": credential(password),
                "at": _stamp(merged, key)}  # fmt: skip
        await _write(request, "table_put", args)
        return web.json_response("ok")

    async def update(request: web.Request) -> web.Response:
        await _require_loaded(request, spec)
        key = request.match_info[spec.field]
        p = await params(request)
        missing(p, "password")
        password = _text(p["password"], "password")
        merged = await _merged(request, spec)
        if merged.get(key) is None:
            raise ApiError(404, "not_found")
        args = {"table": spec.plugin, "key": key, "value": credential(password),
                "at": _stamp(merged, key)}  # fmt: skip
        await _write(request, "table_put", args)
        return web.json_response("ok")

    async def delete(request: web.Request) -> web.Response:
        await _require_loaded(request, spec)
        key = request.match_info[spec.field]
        merged = await _merged(request, spec)
        if merged.get(key) is not None:
            args = {"table": spec.plugin, "key": key, "at": _stamp(merged, key)}
            await _write(request, "table_delete", args)
        return web.json_response("ok")

    return {"list": list_entries, "lookup": lookup, "add": add, "update": update, "delete": delete}


CLIENTID = handlers(TABLE_AUTH["auth_clientid"])
USERNAME = handlers(TABLE_AUTH["auth_username"])
