"""Handlers of `/apps`: the API's own apps (AppID/AppSecret), EMQX 3.x's emqx_mgmt_api_apps.

Reads answer from this node's store (every node holds the same table). A change is computed here
once (a new secret hashed once, the row's time set) and written on every running node with the
idempotent `table_put` / `table_delete` queries of the replicated table `apps` before the call
answers, so a disabled, expired or deleted app is refused at once by every node; a node that was
away pulls the table when it comes back (`cluster.replicas`, last writer wins). Rows never show
the secret nor its hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Any

from aiohttp import web

from management import queries_tables  # noqa: F401 (registers the table_* queries)
from management.apps import TABLE, App, AppStore, hash_secret, make_app
from management.common import (
    APPS_KEY,
    ApiError,
    as_bool,
    as_int,
    as_str,
    check_result,
    missing,
    node_call,
    params,
    reply,
    view_of,
)

#: Largest `expired` accepted (Unix seconds; the year 10000).
MAX_EXPIRED = 253_402_300_800
#: Bytes of randomness in a generated secret (EMQX's are 27 base62 characters, ~160 bits).
SECRET_BYTES = 24


def _store(request: web.Request) -> AppStore:
    return request.config_dict[APPS_KEY]


def _app_id(request: web.Request) -> str:
    return request.match_info["appid"]


def _expired(value: Any) -> int | None:
    if value in (None, "", "undefined"):
        return None
    return as_int(value, "expired", 0, MAX_EXPIRED)


async def _write_everywhere(request: web.Request, query: str, args: dict[str, Any]) -> None:
    """`query` (table_put / table_delete on the apps table) on every running node; this node's
    answer must be a success (a node that misses it pulls the row when it meets us again)."""
    view = view_of(request)
    stamp = await node_call(request, view.local_node, "hlc_now", {})
    for node, answer in await view.call_all(query, {"table": TABLE, "hlc": stamp, **args}):
        if node == view.local_node:
            check_result(answer)


async def _put_everywhere(request: web.Request, app: App) -> None:
    args = {"key": app.id, "value": app.value(), "at": app.updated_at}
    await _write_everywhere(request, "table_put", args)


def _current(request: web.Request) -> App:
    app = _store(request).apps().get(_app_id(request))
    if app is None:
        raise ApiError(404, "not_found")
    return app


async def _editable(app: App) -> App:
    """A data_dir copy of `app` to change and write everywhere (a default or config app gets
    its clear secret hashed, off the event loop: PBKDF2 takes a while)."""
    secret_hash = app.secret_hash
    if app.secret is not None:
        secret_hash = await asyncio.to_thread(hash_secret, app.secret)
    return dataclasses.replace(app, source="data_dir", secret=None, secret_hash=secret_hash)


def _after(app: App) -> float:
    """A change time later than the record it replaces, even if the clock went back."""
    return max(time.time(), app.updated_at + 0.001)


async def list_apps(request: web.Request) -> web.Response:
    return reply([app.row() for app in _store(request).apps().values()])


async def lookup_app(request: web.Request) -> web.Response:
    return reply(_current(request).row())


async def add_app(request: web.Request) -> web.Response:
    p = await params(request)
    missing(p, "app_id")
    app_id = as_str(p["app_id"], "app_id")
    if _store(request).apps().get(app_id) is not None:
        raise ApiError(409, "already_existed")
    given = p.get("secret")
    secret = as_str(given, "secret") if given not in (None, "") else ""
    secret = secret or secrets.token_urlsafe(SECRET_BYTES)
    app = await asyncio.to_thread(
        make_app,
        app_id,
        secret,
        name=as_str(p.get("name", ""), "name"),
        desc=as_str(p.get("desc", ""), "desc"),
        status=as_bool(p.get("status", True), "status"),
        expired=_expired(p.get("expired")),
    )
    await _put_everywhere(request, app)
    return reply({"secret": secret})


async def update_app(request: web.Request) -> web.Response:
    current = await _editable(_current(request))
    p = await params(request)
    changes: dict[str, Any] = {"updated_at": _after(current)}
    for key in ("name", "desc"):
        if key in p:
            changes[key] = as_str(p[key], key)
    if "status" in p:
        changes["status"] = as_bool(p["status"], "status")
    if "expired" in p:
        changes["expired"] = _expired(p["expired"])
    await _put_everywhere(request, dataclasses.replace(current, **changes))
    return reply("ok")


async def delete_app(request: web.Request) -> web.Response:
    current = _current(request)
    args = {"key": current.id, "at": _after(current)}
    await _write_everywhere(request, "table_delete", args)
    return reply("ok")
