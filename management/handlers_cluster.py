"""Handlers of the node-level endpoints: brokers, nodes, plugins, listeners, metrics, stats, alarms.

Cluster forms (`/brokers/`, `/metrics/`...) ask every running node through the view and tag each
answer with `node`; node forms (`/nodes/:node/...`) ask that node only (404 unknown, 503 down).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.server.logs import LEVELS
from management.common import (
    ApiError,
    as_str,
    check_result,
    missing,
    node_call,
    params,
    reply,
    view_of,
)
from management.errors import BadParam, NodeDownError
from management.queries import node_info_list_form
from management.view import MemberSource


def _node(request: web.Request) -> str:
    return request.match_info["node"]


async def _per_node(request: web.Request, query: str, key: str | None) -> web.Response:
    """`[{node, <key>: answer}]`, or `[{node, **answer}]` when key is None (flat)."""
    out: list[dict[str, Any]] = []
    for node, answer in await view_of(request).call_all(query, {}):
        out.append({"node": node, **answer} if key is None else {"node": node, key: answer})
    return reply(out)


async def _of_node(request: web.Request, query: str) -> web.Response:
    return reply(await node_call(request, _node(request), query, {}))


# -- brokers and nodes ---------------------------------------------------------------------------


async def list_brokers(request: web.Request) -> web.Response:
    return await _per_node(request, "broker_info", None)


async def get_broker(request: web.Request) -> web.Response:
    return await _of_node(request, "broker_info")


def _stopped(node: str) -> dict[str, Any]:
    """A known node that is not running (EMQX shows a stopped node this way)."""
    return {"name": node, "node_status": "Stopped"}


def _stopped_nodes(request: web.Request) -> list[str]:
    view = view_of(request)
    return view.stopped_nodes() if isinstance(view, MemberSource) else []


async def list_nodes(request: web.Request) -> web.Response:
    """Every known node: the running ones with their figures, then the others (dead, departed,
    or not answering) as Stopped."""
    view = view_of(request)
    answers = await view.call_all("node_info", {})
    rows = [{"node": node, **node_info_list_form(info)} for node, info in answers]
    answered = {node for node, _info in answers}
    others = [n for n in [*view.node_names(), *_stopped_nodes(request)] if n not in answered]
    rows += [{"node": node, **_stopped(node)} for node in dict.fromkeys(others)]
    return reply(rows)


async def get_node(request: web.Request) -> web.Response:
    node = _node(request)
    if node in _stopped_nodes(request):
        return reply(_stopped(node))
    try:
        return await _of_node(request, "node_info")
    except NodeDownError:
        return reply(_stopped(node))


# -- plugins -------------------------------------------------------------------------------------


async def list_all_plugins(request: web.Request) -> web.Response:
    return await _per_node(request, "plugins", "plugins")


async def list_node_plugins(request: web.Request) -> web.Response:
    return await _of_node(request, "plugins")


async def _plugin_action(request: web.Request, query: str) -> web.Response:
    plugin = request.match_info["plugin"]
    if not plugin:
        raise ApiError(404, "not_found")
    result = await node_call(request, _node(request), query, {"name": plugin})
    return reply(check_result(result))


async def load_plugin(request: web.Request) -> web.Response:
    return await _plugin_action(request, "plugin_load")


async def unload_plugin(request: web.Request) -> web.Response:
    return await _plugin_action(request, "plugin_unload")


# -- listeners, metrics, stats, alarms -----------------------------------------------------------


async def list_listeners(request: web.Request) -> web.Response:
    return await _per_node(request, "listeners", "listeners")


async def list_node_listeners(request: web.Request) -> web.Response:
    return await _of_node(request, "listeners")


async def list_all_metrics(request: web.Request) -> web.Response:
    return await _per_node(request, "metrics", "metrics")


async def list_node_metrics(request: web.Request) -> web.Response:
    return await _of_node(request, "metrics")


async def list_stats(request: web.Request) -> web.Response:
    return await _per_node(request, "stats", None)


async def lookup_node_stats(request: web.Request) -> web.Response:
    return await _of_node(request, "stats")


async def list_all_alarms(request: web.Request) -> web.Response:
    return await _per_node(request, "alarms", "alarms")


async def list_node_alarms(request: web.Request) -> web.Response:
    return await _of_node(request, "alarms")


# -- log level -----------------------------------------------------------------------------------


async def _level(request: web.Request) -> str:
    p = await params(request)
    missing(p, "level")
    level = as_str(p["level"], "level").strip().lower()
    if level not in LEVELS:
        raise BadParam("level")
    return level


async def set_node_log_level(request: web.Request) -> web.Response:
    level = await _level(request)
    result = await node_call(request, _node(request), "log_set_level", {"level": level})
    return reply(check_result(result))


async def set_log_level(request: web.Request) -> web.Response:
    """Every running node (a node that does not answer is skipped, as in the cluster lists)."""
    level = await _level(request)
    for _node_name, answer in await view_of(request).call_all("log_set_level", {"level": level}):
        check_result(answer)
    return reply("ok")
