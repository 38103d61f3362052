"""Handlers of the client-level endpoints: connections, sessions, subscriptions, routes, pub/sub.

Cluster lists gather the rows of every running node (each row carries `node`) and paginate the
whole, so `meta.count` is the cluster total. Lookups by client id ask every node too: a client id
is connected on at most one node, but an offline session may remain on another.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.core.topics import validate_topic_filter, validate_topic_name
from management.common import (
    ApiError,
    all_rows,
    as_bool,
    as_int,
    as_str,
    check_result,
    json_array,
    missing,
    node_call,
    paginate,
    params,
    reply,
    view_of,
)
from management.errors import (
    CODE_BAD_PARAM,
    BadParam,
    BadTopic,
    ClientNotFound,
    MissingParams,
    SessionNotFound,
)
from management.view import RouteSource


def _client_id(request: web.Request) -> str:
    return request.match_info["clientid"]


async def _cluster_list(request: web.Request, query: str) -> web.Response:
    return paginate(request, await all_rows(request, query, {}))


async def _node_list(request: web.Request, query: str) -> web.Response:
    rows = await node_call(request, request.match_info["node"], query, {})
    return paginate(request, rows)


async def _cluster_lookup(request: web.Request, query: str) -> web.Response:
    return reply(await all_rows(request, query, {"client_id": _client_id(request)}))


async def _node_lookup(request: web.Request, query: str) -> web.Response:
    args = {"client_id": _client_id(request)}
    return reply(await node_call(request, request.match_info["node"], query, args))


# -- connections ---------------------------------------------------------------------------------


async def list_connections(request: web.Request) -> web.Response:
    return await _cluster_list(request, "connections")


async def list_node_connections(request: web.Request) -> web.Response:
    return await _node_list(request, "connections")


async def lookup_connections(request: web.Request) -> web.Response:
    return await _cluster_lookup(request, "connections")


async def lookup_node_connections(request: web.Request) -> web.Response:
    return await _node_lookup(request, "connections")


async def kickout_connections(request: web.Request) -> web.Response:
    answers = await view_of(request).call_all("kick", {"client_id": _client_id(request)})
    if not any(kicked for _node, kicked in answers):
        raise ClientNotFound()
    return reply("ok")


# -- sessions and subscriptions ------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    return await _cluster_list(request, "sessions")


async def lookup_session(request: web.Request) -> web.Response:
    return await _cluster_lookup(request, "sessions")


async def list_node_sessions(request: web.Request) -> web.Response:
    return await _node_list(request, "sessions")


async def lookup_node_session(request: web.Request) -> web.Response:
    return await _node_lookup(request, "sessions")


async def list_subscriptions(request: web.Request) -> web.Response:
    return await _cluster_list(request, "subscriptions")


async def lookup_client_subscriptions(request: web.Request) -> web.Response:
    return await _cluster_lookup(request, "subscriptions")


async def list_node_subscriptions(request: web.Request) -> web.Response:
    return await _node_list(request, "subscriptions")


async def lookup_client_subscriptions_with_node(request: web.Request) -> web.Response:
    return await _node_lookup(request, "subscriptions")


# -- routes --------------------------------------------------------------------------------------


async def _route_rows(request: web.Request) -> list[dict[str, Any]]:
    """The cluster route table (filter, node): the replicated table when clustered, else built
    from each node's local route filters."""
    view = view_of(request)
    if isinstance(view, RouteSource):
        return [{"topic": topic, "node": node} for topic, node in view.route_rows()]
    answers = await view.call_all("local_routes", {})
    return [{"topic": topic, "node": node} for node, topics in answers for topic in topics]


async def list_routes(request: web.Request) -> web.Response:
    return paginate(request, await _route_rows(request))


async def lookup_routes(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    return reply([r for r in await _route_rows(request) if r["topic"] == topic])


async def list_retained(request: web.Request) -> web.Response:
    """The retained messages (our read-only addition): every node holds the same replicated set,
    so the node that takes the call answers for the cluster."""
    view = view_of(request)
    return paginate(request, await node_call(request, view.local_node, "retained", {}))


async def delete_retained(request: web.Request) -> web.Response:
    """Delete the retained message of a topic on every node (each holds a replica)."""
    topic = request.match_info["topic"]
    if not validate_topic_name(topic):
        raise BadTopic()
    view = view_of(request)
    stamp = await node_call(request, view.local_node, "hlc_now", {})  # one clear, one stamp
    answers = await view.call_all("retained_delete", {"topic": topic, "hlc": stamp})
    if not any(deleted for _node, deleted in answers):
        raise ApiError(404, "not_found")
    return reply("ok")


# -- publish / subscribe / unsubscribe -----------------------------------------------------------


def _topics(p: dict[str, Any]) -> list[str]:
    """`topic` and `topics`, each a comma-separated string (or a JSON array), merged."""
    out: list[str] = []
    for key in ("topic", "topics"):
        value = p.get(key)
        if value is None:
            continue
        parts = value if isinstance(value, list) else as_str(value, key).split(",")
        for part in parts:
            topic = as_str(part, key).strip()
            if topic:
                out.append(topic)
    if not out:
        raise MissingParams(["topic"])
    return out


def _bad_topic() -> ApiError:
    return BadTopic()


async def _publish(request: web.Request, p: dict[str, Any]) -> None:
    topics = _topics(p)
    if not all(validate_topic_name(t) for t in topics):
        raise _bad_topic()
    payload = p.get("payload", "")
    if not isinstance(payload, str):
        payload = json.dumps(payload)  # a JSON value given unquoted is published as JSON text
    encoding = as_str(p.get("encoding", "plain"), "encoding")
    if encoding not in ("plain", "base64"):
        raise BadParam("encoding", show_code=False)
    args = {
        "topics": topics,
        "payload": payload,
        "encoding": encoding,
        "qos": as_int(p.get("qos", 0), "qos", 0, 2),
        "retain": as_bool(p.get("retain", False), "retain"),
        "client_id": as_str(p.get("client_id", "http_api"), "client_id"),
    }
    view = view_of(request)
    check_result(await node_call(request, view.local_node, "publish", args))


async def _session_node(request: web.Request, client_id: str) -> str:
    """The node that holds the session of `client_id` (404 session_not_found if none)."""
    for node, rows in await view_of(request).call_all("sessions", {"client_id": client_id}):
        if rows:
            return node
    raise SessionNotFound()


async def _subscribe(request: web.Request, p: dict[str, Any]) -> None:
    missing(p, "client_id")
    client_id = as_str(p["client_id"], "client_id")
    topics = _topics(p)
    if not all(validate_topic_filter(t) for t in topics):
        raise _bad_topic()
    qos = as_int(p.get("qos", 0), "qos", 0, 2)
    node = await _session_node(request, client_id)
    args = {"client_id": client_id, "topics": topics, "qos": qos}
    check_result(await node_call(request, node, "subscribe", args))


async def _unsubscribe(request: web.Request, p: dict[str, Any]) -> None:
    missing(p, "client_id")
    client_id = as_str(p["client_id"], "client_id")
    missing(p, "topic")
    topic = as_str(p["topic"], "topic").strip()
    if not validate_topic_filter(topic):
        raise _bad_topic()
    node = await _session_node(request, client_id)
    args = {"client_id": client_id, "topic": topic}
    check_result(await node_call(request, node, "unsubscribe", args))


async def mqtt_publish(request: web.Request) -> web.Response:
    await _publish(request, await params(request))
    return reply({"code": 0})


async def mqtt_subscribe(request: web.Request) -> web.Response:
    await _subscribe(request, await params(request))
    return reply({"code": 0})


async def mqtt_unsubscribe(request: web.Request) -> web.Response:
    await _unsubscribe(request, await params(request))
    return reply({"code": 0})


# -- the batch forms (EMQX 3.2.4) ----------------------------------------------------------------

Action = Callable[[web.Request, dict[str, Any]], Awaitable[None]]

#: The fields of a request element echoed in its result, per action (EMQX 3.2.4's).
_ECHO: dict[str, tuple[str, ...]] = {
    "publish": ("client_id", "topic", "qos", "retain", "payload"),
    "subscribe": ("client_id", "topic", "qos"),
    "unsubscribe": ("client_id", "topic"),
}


async def _batch(request: web.Request, kind: str, action: Action) -> web.Response:
    """One result per element, in order: the element's fields and `reason_code` (0 = done).

    As EMQX 3.2.4 does: an element's failure does not stop the others, the call itself answers
    200 with the list, and an empty list is `bad_topic`.
    """
    elements = await json_array(request)
    if not elements:
        raise _bad_topic()
    results: list[dict[str, Any]] = []
    for element in elements:
        if isinstance(element, dict):
            echo = {k: element[k] for k in _ECHO[kind] if k in element}
            if "topic" not in echo and "topics" in element:
                echo["topic"] = element["topics"]
            try:
                await action(request, dict(element))
                code = 0
            except ApiError as exc:
                code = exc.code  # EMQX's code of that error (management.errors)
        else:
            echo, code = {}, CODE_BAD_PARAM
        results.append({**echo, "reason_code": code})
    return reply(results)


async def mqtt_publish_batch(request: web.Request) -> web.Response:
    return await _batch(request, "publish", _publish)


async def mqtt_subscribe_batch(request: web.Request) -> web.Response:
    return await _batch(request, "subscribe", _subscribe)


async def mqtt_unsubscribe_batch(request: web.Request) -> web.Response:
    return await _batch(request, "unsubscribe", _unsubscribe)
