"""The management HTTP application: `/status`, `/metrics` and the `/api/v3` sub-app.

One route table (`ROUTES`) drives everything: the aiohttp router (each path with and without a
trailing slash), `GET /api/v3/` (the route list, EMQX's list_all_api) and the OpenAPI document.
Handlers live in `handlers_*`; they reach the nodes through the `ClusterView` only.

Errors: every failure is a JSON body `{"message": ...}`. An unknown path or method is a 404
`not_found`; an unexpected exception is logged and answered 500 `internal_error`, never with a
traceback. Inside `/api/v3`, `management.envelope` renders answers and errors in the configured
format (`[management] api_format`: the seed's, or released EMQX 3.x's `{"code", "data"}`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from management import handlers_auth as auth
from management import handlers_banned as banned
from management import handlers_clients as clients
from management import handlers_cluster as cluster
from management import handlers_membership as membership
from management.apps import AppStore
from management.auth import authenticated, basic_auth_middleware, unauthorized
from management.common import APPS_KEY, SETTINGS_KEY, VIEW_KEY, ApiError, ApiSettings, reply
from management.envelope import RAW_KEY, format_middleware
from management.openapi import openapi_document
from management.prometheus import exposition
from management.view import ClusterView

log = logging.getLogger(__name__)

API_PREFIX = "/api/v3"


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint; `path` is relative to /api/v3 in API.md's form (`:param` segments)."""

    name: str
    method: str
    path: str
    descr: str
    handler: Handler
    #: What it answers, for the OpenAPI document: "<shape>:<schema>" (see management.openapi).
    returns: str
    #: Schema name of the request body (POST/PUT), "" for none.
    body: str = ""

    def params(self) -> list[str]:
        return re.findall(r":(\w+)", self.path)

    def aiohttp_paths(self) -> list[str]:
        """The path with and without its trailing slash, `{param}` style."""
        path = re.sub(r":(\w+)", r"{\1}", self.path).rstrip("/")
        return [path, path + "/"]

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "method": self.method, "path": self.path, "descr": self.descr}


async def list_all_api(request: web.Request) -> web.Response:
    return reply([route.describe() for route in ROUTES])


async def openapi_json(request: web.Request) -> web.Response:
    response = web.json_response(openapi_document(ROUTES, API_PREFIX))
    response[RAW_KEY] = True  # a document about the API, the same in both formats
    return response


ROUTES: tuple[Route, ...] = (
    Route("list_all_api", "GET", "/", "List all API", list_all_api, "array:api"),
    # brokers and nodes
    Route("list_brokers", "GET", "/brokers/", "A list of brokers in the cluster",
          cluster.list_brokers, "array:broker_with_node"),
    Route("get_broker", "GET", "/brokers/:node", "Get broker info of a node",
          cluster.get_broker, "object:broker"),
    Route("list_nodes", "GET", "/nodes/", "A list of nodes in the cluster",
          cluster.list_nodes, "array:node_with_node"),
    Route("get_node", "GET", "/nodes/:node", "Lookup a node in the cluster",
          cluster.get_node, "object:node"),
    # connections
    Route("list_connections", "GET", "/connections/", "List connections in the cluster",
          clients.list_connections, "page:connection"),
    Route("list_node_connections", "GET", "/nodes/:node/connections/",
          "List connections of a node", clients.list_node_connections, "page:connection"),
    Route("lookup_connections", "GET", "/connections/:clientid",
          "Lookup a connection in the cluster", clients.lookup_connections, "array:connection"),
    Route("lookup_node_connections", "GET", "/nodes/:node/connections/:clientid",
          "Lookup a connection on a node", clients.lookup_node_connections, "array:connection"),
    Route("kickout_connections", "DELETE", "/connections/:clientid",
          "Kick out a connection", clients.kickout_connections, "ok"),
    # sessions
    Route("list_sessions", "GET", "/sessions/", "List sessions in the cluster",
          clients.list_sessions, "page:session"),
    Route("lookup_session", "GET", "/sessions/:clientid", "Lookup a session in the cluster",
          clients.lookup_session, "array:session"),
    Route("list_node_sessions", "GET", "/nodes/:node/sessions/", "List sessions of a node",
          clients.list_node_sessions, "page:session"),
    Route("lookup_node_session", "GET", "/nodes/:node/sessions/:clientid",
          "Lookup a session on a node", clients.lookup_node_session, "array:session"),
    # subscriptions
    Route("list_subscriptions", "GET", "/subscriptions/", "List subscriptions in the cluster",
          clients.list_subscriptions, "page:subscription"),
    Route("lookup_client_subscriptions", "GET", "/subscriptions/:clientid",
          "Lookup the subscriptions of a client in the cluster",
          clients.lookup_client_subscriptions, "array:subscription"),
    Route("list_node_subscriptions", "GET", "/nodes/:node/subscriptions/",
          "List subscriptions of a node", clients.list_node_subscriptions, "page:subscription"),
    Route("lookup_client_subscriptions_with_node", "GET", "/nodes/:node/subscriptions/:clientid",
          "Lookup the subscriptions of a client on a node",
          clients.lookup_client_subscriptions_with_node, "array:subscription"),
    # routes
    Route("list_routes", "GET", "/routes/", "List routes in the cluster",
          clients.list_routes, "page:route"),
    Route("lookup_routes", "GET", "/routes/:topic", "Lookup the routes of a topic filter",
          clients.lookup_routes, "array:route"),
    # retained messages (minibroker's read-only addition, for the dashboard)
    Route("list_retained", "GET", "/retained/", "List the retained messages (our addition)",
          clients.list_retained, "page:retained"),
    Route("delete_retained", "DELETE", "/retained/:topic",
          "Delete the retained message of a topic on every node (our addition)",
          clients.delete_retained, "ok"),
    # publish / subscribe
    Route("mqtt_publish", "POST", "/mqtt/publish", "Publish a MQTT message",
          clients.mqtt_publish, "code", "publish"),
    Route("mqtt_subscribe", "POST", "/mqtt/subscribe", "Subscribe a client to topics",
          clients.mqtt_subscribe, "code", "subscribe"),
    Route("mqtt_unsubscribe", "POST", "/mqtt/unsubscribe", "Unsubscribe a client from a topic",
          clients.mqtt_unsubscribe, "code", "unsubscribe"),
    # plugins
    Route("list_all_plugins", "GET", "/plugins/", "List the plugins of every node",
          cluster.list_all_plugins, "array:node_plugins"),
    Route("list_node_plugins", "GET", "/nodes/:node/plugins/", "List the plugins of a node",
          cluster.list_node_plugins, "array:plugin"),
    Route("load_plugin", "PUT", "/nodes/:node/plugins/:plugin/load", "Load a plugin on a node",
          cluster.load_plugin, "ok"),
    Route("unload_plugin", "PUT", "/nodes/:node/plugins/:plugin/unload",
          "Unload a plugin on a node", cluster.unload_plugin, "ok"),
    # listeners
    Route("list_listeners", "GET", "/listeners/", "List the listeners of every node",
          cluster.list_listeners, "array:node_listeners"),
    Route("list_node_listeners", "GET", "/nodes/:node/listeners", "List the listeners of a node",
          cluster.list_node_listeners, "array:listener"),
    # metrics and stats
    Route("list_all_metrics", "GET", "/metrics/", "The metrics of every node",
          cluster.list_all_metrics, "array:node_metrics"),
    Route("list_node_metrics", "GET", "/nodes/:node/metrics/", "The metrics of a node",
          cluster.list_node_metrics, "object:metrics"),
    Route("list_stats", "GET", "/stats/", "The stats of every node",
          cluster.list_stats, "array:node_stats"),
    Route("lookup_node_stats", "GET", "/nodes/:node/stats/", "The stats of a node",
          cluster.lookup_node_stats, "object:stats"),
    # alarms
    Route("list_all_alarms", "GET", "/alarms/", "The alarms raised on every node",
          cluster.list_all_alarms, "array:node_alarms"),
    Route("list_node_alarms", "GET", "/alarms/:node", "The alarms raised on a node",
          cluster.list_node_alarms, "array:alarm"),
    # banned
    Route("list_banned", "GET", "/banned/", "List the banned clients",
          banned.list_banned, "page:banned"),
    Route("create_banned", "POST", "/banned/", "Ban a client id, username or IP address",
          banned.create_banned, "created:banned", "banned"),
    Route("delete_banned", "DELETE", "/banned/:who", "Lift a ban (`as` in the query string)",
          banned.delete_banned, "ok"),
    # auth_clientid / auth_username plugins (EMQX 3.x's emqx_auth_*_api; 404 plugin_not_loaded
    # while the plugin is not loaded on the node that takes the request)
    Route("list_clientid", "GET", "/auth_clientid", "List available clientid in the cluster",
          auth.CLIENTID["list"], "array:auth_key"),
    Route("lookup_clientid", "GET", "/auth_clientid/:clientid", "Lookup clientid in the cluster",
          auth.CLIENTID["lookup"], "object:auth_clientid"),
    Route("add_clientid", "POST", "/auth_clientid", "Add clientid in the cluster",
          auth.CLIENTID["add"], "ok", "auth_clientid"),
    Route("update_clientid", "PUT", "/auth_clientid/:clientid", "Update clientid in the cluster",
          auth.CLIENTID["update"], "ok", "auth_password"),
    Route("delete_clientid", "DELETE", "/auth_clientid/:clientid",
          "Delete clientid in the cluster", auth.CLIENTID["delete"], "ok"),
    Route("list_username", "GET", "/auth_username", "List available username in the cluster",
          auth.USERNAME["list"], "array:auth_key"),
    Route("lookup_username", "GET", "/auth_username/:username", "Lookup username in the cluster",
          auth.USERNAME["lookup"], "object:auth_username"),
    Route("add_username", "POST", "/auth_username", "Add username in the cluster",
          auth.USERNAME["add"], "ok", "auth_username"),
    Route("update_username", "PUT", "/auth_username/:username", "Update username in the cluster",
          auth.USERNAME["update"], "ok", "auth_password"),
    Route("delete_username", "DELETE", "/auth_username/:username",
          "Delete username in the cluster", auth.USERNAME["delete"], "ok"),
    # log level (minibroker's addition; EMQX has it in emqx_ctl only)
    Route("set_log_level", "PUT", "/log_level", "Set the log level of every node",
          cluster.set_log_level, "ok", "log_level"),
    Route("set_node_log_level", "PUT", "/nodes/:node/log_level", "Set the log level of a node",
          cluster.set_node_log_level, "ok", "log_level"),
    # cluster membership (minibroker's addition; emqx_ctl cluster join|leave|force-leave): they
    # act on the node serving the request
    Route("cluster_join", "POST", "/cluster/join",
          "This node joins the cluster of a seed (its cluster address)",
          membership.cluster_join, "ok", "cluster_join"),
    Route("cluster_leave", "POST", "/cluster/leave",
          "This node leaves the cluster and runs alone", membership.cluster_leave, "ok"),
    Route("cluster_force_leave", "POST", "/cluster/force_leave/:node",
          "Remove a node: an alive one is asked to leave, a dead one is marked left",
          membership.cluster_force_leave, "object:force_leave"),
)  # fmt: skip


# -- middlewares ---------------------------------------------------------------------------------


def _not_found() -> web.Response:
    return web.json_response({"message": "not_found"}, status=404)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors everywhere; 404 for unknown paths and methods; no traceback ever leaks."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.seed_body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return _not_found()
        if exc.status < 400:
            raise
        reason = re.sub(r"\W+", "_", exc.reason.lower()).strip("_") or "error"
        return web.json_response({"message": reason}, status=exc.status)
    except Exception:
        log.exception("management API: %s %s failed", request.method, request.path)
        return web.json_response({"message": "internal_error"}, status=500)


# -- outside /api/v3 -----------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    view = request.config_dict[VIEW_KEY]
    text = f"Node {view.local_node} is started\nminibroker is running"
    return web.Response(text=text, content_type="text/plain")


async def prometheus_metrics(request: web.Request) -> web.Response:
    if request.config_dict[SETTINGS_KEY].metrics_auth and not await authenticated(request):
        return unauthorized()
    body, content_type = await exposition(request.config_dict[VIEW_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# -- the application -----------------------------------------------------------------------------


def make_api_app() -> web.Application:
    """The `/api/v3` sub-app: Basic auth, the response format, then the route table."""
    api = web.Application(middlewares=[basic_auth_middleware, format_middleware])
    for route in ROUTES:
        for path in route.aiohttp_paths():
            api.router.add_route(route.method, path, route.handler, name=None)
    api.router.add_get("/openapi.json", openapi_json)
    return api


def make_app(
    view: ClusterView, apps: AppStore, settings: ApiSettings | None = None
) -> web.Application:
    """The whole management app (what the node serves on its management listener)."""
    settings = settings or ApiSettings()
    # client_max_size: a larger body is refused with 413 (JSON, via error_middleware) when read.
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_size)
    app[VIEW_KEY] = view
    app[APPS_KEY] = apps
    app[SETTINGS_KEY] = settings
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", prometheus_metrics)
    app.add_subapp(API_PREFIX, make_api_app())
    return app


def route_table() -> list[dict[str, Any]]:
    """`GET /api/v3/` as data (for tests and docs)."""
    return [route.describe() for route in ROUTES]
