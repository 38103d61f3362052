"""The OpenAPI 3.1 description of `/api/v3`, generated from the same route table as the router.

`SCHEMAS` are JSON Schemas (2020-12, as OpenAPI 3.1 uses) of API.md's objects; the tests also
validate real answers against them, so the document and the server cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from broker.core.metrics import METRIC_NAMES, STAT_NAMES
from broker.server.banner import broker_version
from management.routes import Route

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
NUM: Schema = {"type": "number"}


def obj(props: dict[str, Schema], optional: Sequence[str] = ()) -> Schema:
    """An object with these properties, all required but `optional`."""
    return {
        "type": "object",
        "properties": props,
        "required": [k for k in props if k not in optional],
    }


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(item: Schema) -> Schema:
    return {"type": "array", "items": item}


_BROKER = {
    k: STR for k in ("datetime", "node_status", "sysdescr", "uptime", "version", "otp_release")
}
_NODE: dict[str, Schema] = {
    **{k: STR for k in ("name", "node_status", "version", "uptime", "otp_release")},
    "memory_total": INT,
    "memory_used": INT,
    **{k: INT for k in ("process_available", "process_used", "max_fds", "connections")},
    **{k: STR for k in ("load1", "load5", "load15")},
}
_CONNECTION: dict[str, Schema] = {
    **{k: STR for k in ("client_id", "username", "ipaddress")},
    "port": INT,
    **{k: STR for k in ("node", "zone", "peercert", "proto_name")},
    "proto_ver": INT,
    "clean_start": BOOL,
    "keepalive": INT,
    "is_bridge": BOOL,
    "is_super": BOOL,
    "mountpoint": STR,
    "connected_at": STR,
    "conn_mod": STR,
    **{
        k: INT
        for k in (
            "recv_oct",
            "recv_cnt",
            "recv_pkt",
            "recv_msg",
            "send_oct",
            "send_cnt",
            "send_pkt",
            "send_msg",
            "send_pend",
            "mailbox_len",
            "heap_size",
            "reductions",
        )
    },
}
_SESSION: dict[str, Schema] = {
    "client_id": STR,
    "username": STR,
    "clean_start": BOOL,
    "binding": STR,
    "expiry_interval": INT,
    "created_at": STR,
    "node": STR,
    **{
        k: INT
        for k in (
            "subscriptions_count",
            "max_subscriptions",
            "inflight_len",
            "max_inflight",
            "mqueue_len",
            "max_mqueue",
            "mqueue_dropped",
            "awaiting_rel_len",
            "max_awaiting_rel",
            "deliver_msg",
            "enqueue_msg",
            "mailbox_len",
            "heap_size",
            "reductions",
        )
    },
}

SCHEMAS: dict[str, Schema] = {
    "error": obj({"message": STR, "code": INT}, optional=["code"]),
    "api": obj({k: STR for k in ("name", "method", "path", "descr")}),
    "broker": obj(_BROKER),
    "broker_with_node": obj({"node": STR, **_BROKER}),
    # A known node that is not running (dead or departed) is only its name and "Stopped".
    "node": {"oneOf": [obj(_NODE), obj({"name": STR, "node_status": {"const": "Stopped"}})]},
    # The list form shows memory human-readable ("76.45M").
    "node_with_node": {
        "oneOf": [
            obj({"node": STR, **_NODE, "memory_total": STR, "memory_used": STR}),
            obj({"node": STR, "name": STR, "node_status": {"const": "Stopped"}}),
        ]
    },
    "connection": obj(_CONNECTION),
    "session": obj(_SESSION),
    "subscription": obj({"node": STR, "topic": STR, "client_id": STR, "qos": INT}),
    "route": obj({"topic": STR, "node": STR}),
    # Our addition: GET /retained/ (`payload` is base64 when `encoding` says so).
    "retained": obj(
        {
            "topic": STR,
            "qos": INT,
            "payload": STR,
            "encoding": {"enum": ["plain", "base64"]},
            "client_id": STR,
            "published_at": INT,
            "node": STR,
        }
    ),
    "plugin": obj({"name": STR, "version": STR, "description": STR, "active": BOOL}),
    "node_plugins": obj({"node": STR, "plugins": array(ref("plugin"))}),
    "listener": obj(
        {
            "protocol": STR,
            "listen_on": STR,
            "acceptors": INT,
            "max_conns": {"type": "integer", "minimum": 1},
            "current_conns": INT,
            # reason -> count, always an object (EMQX renders an empty one as []).
            "shutdown_count": {"type": "object", "additionalProperties": INT},
        }
    ),
    "node_listeners": obj({"node": STR, "listeners": array(ref("listener"))}),
    "metrics": obj(dict.fromkeys(METRIC_NAMES, INT)),
    "node_metrics": obj({"node": STR, "metrics": ref("metrics")}),
    "stats": obj(dict.fromkeys(STAT_NAMES, INT)),
    "node_stats": obj({"node": STR, **dict.fromkeys(STAT_NAMES, INT)}),
    "alarm": obj(
        {
            "id": STR,
            "severity": STR,
            "title": STR,
            "summary": STR,
            "timestamp": STR,
        }
    ),
    "node_alarms": obj({"node": STR, "alarms": array(ref("alarm"))}),
    "banned": obj(
        {
            "who": STR,
            "as": {"enum": ["client_id", "username", "ip_address"]},
            "reason": STR,
            "desc": STR,
            "by": STR,
            "at": INT,
            "until": INT,
        },
        optional=["at", "until"],
    ),
    "meta": obj({"page": INT, "limit": INT, "count": INT}),
    # added after the seed
    "app": obj(
        {
            "app_id": STR,
            "name": STR,
            "desc": STR,
            "status": BOOL,
            "expired": {"type": ["integer", "null"]},
        }
    ),
    "app_secret": obj({"secret": STR}),
    "config": obj(
        {
            "key": STR,
            "value": {},
            "datatype": {"enum": ["boolean", "integer", "float", "null", "list", "map", "string"]},
            "app": STR,
        }
    ),
    "node_configs": obj({"node": STR, "configs": array(ref("config"))}),
    "publish_result": obj(
        {
            "client_id": STR,
            "topic": STR,
            "qos": INT,
            "retain": BOOL,
            "payload": STR,
            "reason_code": INT,
        },
        optional=["client_id", "topic", "qos", "retain", "payload"],
    ),
    "subscribe_result": obj(
        {"client_id": STR, "topic": STR, "qos": INT, "reason_code": INT},
        optional=["client_id", "topic", "qos"],
    ),
    "unsubscribe_result": obj(
        {"client_id": STR, "topic": STR, "reason_code": INT}, optional=["client_id", "topic"]
    ),
    # request bodies
    "publish": obj(
        {
            "topic": STR,
            "topics": STR,
            "payload": STR,
            "encoding": {"enum": ["plain", "base64"]},
            "qos": {"enum": [0, 1, 2]},
            "retain": BOOL,
            "client_id": STR,
        },
        optional=["topic", "topics", "payload", "encoding", "qos", "retain", "client_id"],
    ),
    "subscribe": obj(
        {"topic": STR, "topics": STR, "qos": {"enum": [0, 1, 2]}, "client_id": STR},
        optional=["topic", "topics", "qos"],
    ),
    "unsubscribe": obj({"topic": STR, "client_id": STR}),
    "log_level": obj({"level": {"enum": ["debug", "info", "warning", "error", "critical"]}}),
    "cluster_join": obj({"seed": STR}),
    "force_leave": obj({"node": STR, "result": {"enum": ["left", "removed"]}}),
}
# EMQX 3.2's alarm rows: ours plus `desc` (and `clear_at` once cleared).
_ALARM_DESC = obj({k: SCHEMAS["alarm"]["properties"][k] for k in ("severity", "title", "summary",
                                                                  "timestamp")})  # fmt: skip
SCHEMAS["alarm_present"] = obj({**SCHEMAS["alarm"]["properties"], "desc": _ALARM_DESC})
SCHEMAS["alarm_history"] = obj({**SCHEMAS["alarm_present"]["properties"], "clear_at": STR})
SCHEMAS["node_alarms_present"] = obj({"node": STR, "alarms": array(ref("alarm_present"))})
SCHEMAS["node_alarms_history"] = obj({"node": STR, "alarms": array(ref("alarm_history"))})
# request bodies added after the seed
SCHEMAS["app_request"] = obj(
    {
        "app_id": STR,
        "secret": STR,
        "name": STR,
        "desc": STR,
        "status": BOOL,
        "expired": {"type": ["integer", "null"]},
    },
    optional=["secret", "name", "desc", "status", "expired"],
)
_APP_UPDATE = ("name", "desc", "status", "expired")
SCHEMAS["app_update"] = obj(
    {k: SCHEMAS["app_request"]["properties"][k] for k in _APP_UPDATE}, optional=_APP_UPDATE
)
for _kind in ("publish", "subscribe", "unsubscribe"):
    SCHEMAS[f"{_kind}_batch"] = {**array(ref(_kind)), "minItems": 1}
# The request form of a ban: who and as required, the rest optional; `at` is set by the server.
SCHEMAS["banned_request"] = obj(
    {k: v for k, v in SCHEMAS["banned"]["properties"].items() if k != "at"},
    optional=["reason", "desc", "by", "until"],
)

# auth_clientid / auth_username (the plugins' REST CRUD): entries, request bodies.
SCHEMAS["auth_key"] = {"type": "string", "minLength": 1}
SCHEMAS["auth_clientid"] = obj({"clientid": SCHEMAS["auth_key"], "password": SCHEMAS["auth_key"]})
SCHEMAS["auth_username"] = obj({"username": SCHEMAS["auth_key"], "password": SCHEMAS["auth_key"]})
SCHEMAS["auth_password"] = obj({"password": SCHEMAS["auth_key"]})
#: routes that answer 409 for an entry that is there already, with their error message
_CONFLICT_409 = {
    "add_clientid": "existed: the entry is there already",
    "add_username": "existed: the entry is there already",
    "add_app": "already_existed",
}


def response_schema(returns: str) -> tuple[str, Schema]:
    """(status, schema) of a route's success answer from its `returns` descriptor."""
    shape, _, name = returns.partition(":")
    if shape == "array":
        return "200", array(ref(name))
    if shape == "object":
        return "200", ref(name)
    if shape == "page":
        return "200", obj({"items": array(ref(name)), "meta": ref("meta")})
    if shape == "created":
        return "201", ref(name)
    if shape == "ok":
        return "200", {"const": "ok"}
    if shape == "code":
        return "200", obj({"code": {"const": 0}})
    raise ValueError(f"unknown answer shape {returns!r}")


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("error")}}}


def openapi_path(path: str) -> str:
    """`/nodes/:node/` -> `/nodes/{node}/`."""
    return re.sub(r":(\w+)", r"{\1}", path)


def operation(route: Route) -> Schema:
    status, schema = response_schema(route.returns)
    parameters: list[Schema] = [
        {
            "name": p,
            "in": "path",
            "required": True,
            "schema": STR,
            "description": "percent-encoded when it contains '/', '#' or '+'",
        }
        for p in route.params()
    ]
    if route.returns.startswith("page:"):
        parameters += [
            {
                "name": "_page",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "default": 1},
            },
            {
                "name": "_limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
            },
        ]
    if route.name == "delete_banned":
        parameters.append(
            {
                "name": "as",
                "in": "query",
                "required": True,
                "schema": {"enum": ["client_id", "username", "ip_address"]},
            }
        )
    responses: dict[str, Schema] = {
        status: {"description": "success", "content": {"application/json": {"schema": schema}}},
        "400": _error("bad input"),
        "401": _error("missing or wrong credentials"),
        "404": _error("unknown node, client, plugin or route"),
        "500": _error("internal fault"),
    }
    if "node" in route.params():
        responses["503"] = _error("the node does not answer (nodedown)")
    if route.name in ("load_plugin", "unload_plugin"):
        responses["409"] = _error("already_started / not_started")
    if route.name in _CONFLICT_409:
        responses["409"] = _error(_CONFLICT_409[route.name])
    if route.path.startswith(("/auth_clientid", "/auth_username")):
        responses["404"] = _error("plugin_not_loaded on the node asked, or not_found")
    op: Schema = {
        "operationId": route.name,
        "summary": route.descr,
        "parameters": parameters,
        "responses": responses,
    }
    if route.body:
        body = "banned_request" if route.body == "banned" else route.body
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return op


def openapi_document(routes: Sequence[Route], prefix: str) -> Schema:
    paths: dict[str, dict[str, Schema]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "minibroker management API",
            "version": broker_version(),
            "description": "The EMQX 3.x-style /api/v3 REST API of minibroker (see API.md).",
        },
        "servers": [{"url": prefix}],
        "security": [{"basicAuth": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
        },
    }
