"""Handlers of the other endpoints released EMQX 3.x had beyond the seed: connections by username,
alarms present/history, plugin reload, dropping a persistent session, the running configuration.

Cluster forms ask every running node (`call_all`) and tag answers with `node`; node forms ask
that node only (404 unknown, 503 down), as in `handlers_cluster`.
"""

from __future__ import annotations

from aiohttp import web

from management.common import (
    all_rows,
    check_result,
    node_call,
    reply,
    view_of,
)
from management.errors import SessionNotFound


def _node(request: web.Request) -> str:
    return request.match_info["node"]


# -- connections by username ---------------------------------------------------------------------


async def lookup_connections_by_username(request: web.Request) -> web.Response:
    args = {"username": request.match_info["username"]}
    return reply(await all_rows(request, "connections_by_username", args))


async def lookup_node_connections_by_username(request: web.Request) -> web.Response:
    args = {"username": request.match_info["username"]}
    rows = await node_call(request, _node(request), "connections_by_username", args)
    return reply(rows)


# -- alarms: [{node, alarms}] in both forms (API.md) ---------------------------------------------


async def _alarms(request: web.Request, query: str) -> web.Response:
    if "node" in request.match_info:
        node = _node(request)
        return reply([{"node": node, "alarms": await node_call(request, node, query, {})}])
    answers = await view_of(request).call_all(query, {})
    return reply([{"node": node, "alarms": alarms} for node, alarms in answers])


async def list_present_alarms(request: web.Request) -> web.Response:
    return await _alarms(request, "alarms_present")


async def list_alarm_history(request: web.Request) -> web.Response:
    return await _alarms(request, "alarms_history")


# -- plugin reload -------------------------------------------------------------------------------


async def reload_plugin(request: web.Request) -> web.Response:
    """EMQX's reload: unload then load a loaded plugin, load one that is not loaded."""
    args = {"name": request.match_info["plugin"]}
    result = await node_call(request, _node(request), "plugin_reload", args)
    return reply(check_result(result))


# -- persistent sessions -------------------------------------------------------------------------


async def clean_persistent_session(request: web.Request) -> web.Response:
    """Drop the session of a client id on every node that holds one (EMQX's clean_session);
    a connected client is disconnected first (EMQX 3.x killed the session process, which took
    its connection down). 404 `session_not_found` when no node had one."""
    args = {"client_id": request.match_info["clientid"]}
    answers = await view_of(request).call_all("session_drop", args)
    if not any(dropped is True for _node, dropped in answers):
        raise SessionNotFound()
    return reply("ok")


# -- configuration -------------------------------------------------------------------------------


async def list_configs(request: web.Request) -> web.Response:
    answers = await view_of(request).call_all("configs", {})
    return reply([{"node": node, "configs": rows} for node, rows in answers])


async def list_node_configs(request: web.Request) -> web.Response:
    return reply(await node_call(request, _node(request), "configs", {}))
