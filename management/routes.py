"""The route table of `/api/v3`: one `Route` per endpoint, in API.md's path form.

It drives the aiohttp router (`management.api`), `GET /api/v3/` (EMQX's list_all_api) and the
OpenAPI document (`management.openapi`); both import it, so neither has to know the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from management import handlers_admin as admin
from management import handlers_apps as apps
from management import handlers_auth as auth
from management import handlers_banned as banned
from management import handlers_clients as clients
from management import handlers_cluster as cluster
from management import handlers_membership as membership
from management.common import reply


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
    # alarms (EMQX 3.2's present/history before the 3.0 `/alarms/:node`, which would match them)
    Route("list_present_alarms", "GET", "/alarms/present", "The alarms raised on every node",
          admin.list_present_alarms, "array:node_alarms_present"),
    Route("list_node_present_alarms", "GET", "/alarms/present/:node",
          "The alarms raised on a node", admin.list_present_alarms, "array:node_alarms_present"),
    Route("list_alarm_history", "GET", "/alarms/history", "The alarms cleared on every node",
          admin.list_alarm_history, "array:node_alarms_history"),
    Route("list_node_alarm_history", "GET", "/alarms/history/:node",
          "The alarms cleared on a node", admin.list_alarm_history, "array:node_alarms_history"),
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
    # apps (EMQX 3.x emqx_mgmt_api_apps)
    Route("list_apps", "GET", "/apps/", "List the API apps", apps.list_apps, "array:app"),
    Route("add_app", "POST", "/apps/", "Add an API app (answers its secret)",
          apps.add_app, "object:app_secret", "app_request"),
    Route("lookup_app", "GET", "/apps/:appid", "Lookup an API app", apps.lookup_app,
          "object:app"),
    Route("update_app", "PUT", "/apps/:appid", "Update an API app", apps.update_app, "ok",
          "app_update"),
    Route("del_app", "DELETE", "/apps/:appid", "Delete an API app", apps.delete_app, "ok"),
    # connections by username (EMQX 3.1+)
    Route("lookup_connections_via_username", "GET", "/connection/username/:username",
          "Lookup the connections of a username in the cluster",
          admin.lookup_connections_by_username, "array:connection"),
    Route("lookup_node_connections_via_username", "GET",
          "/nodes/:node/connection/username/:username",
          "Lookup the connections of a username on a node",
          admin.lookup_node_connections_by_username, "array:connection"),
    # batch publish / subscribe / unsubscribe (EMQX 3.2.4)
    Route("mqtt_publish_batch", "POST", "/mqtt/publish_batch", "Publish MQTT messages in a batch",
          clients.mqtt_publish_batch, "array:publish_result", "publish_batch"),
    Route("mqtt_subscribe_batch", "POST", "/mqtt/subscribe_batch", "Batch subscribes topics",
          clients.mqtt_subscribe_batch, "array:subscribe_result", "subscribe_batch"),
    Route("mqtt_unsubscribe_batch", "POST", "/mqtt/unsubscribe_batch",
          "Batch unsubscribes topics", clients.mqtt_unsubscribe_batch,
          "array:unsubscribe_result", "unsubscribe_batch"),
    # plugin reload, persistent sessions, configuration
    Route("reload_plugin", "PUT", "/nodes/:node/plugins/:plugin/reload",
          "Reload a plugin on a node (unload, then load)", admin.reload_plugin, "ok"),
    Route("clean_persistent_session", "DELETE", "/sessions/persistent/:clientid",
          "Drop a persistent session in the cluster", admin.clean_persistent_session, "ok"),
    Route("get_all_configs", "GET", "/configs/", "The running configuration of every node",
          admin.list_configs, "array:node_configs"),
    Route("get_node_configs", "GET", "/nodes/:node/configs/",
          "The running configuration of a node", admin.list_node_configs, "array:config"),
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
