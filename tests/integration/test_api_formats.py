"""`[management] api_format`: every route in both formats, EMQX's error codes, bodies as JSON.

The route walk takes the route table itself (`management.routes.ROUTES`), so a route added later is
walked too (and this test says what request it lacks). Each answer is checked against the
OpenAPI schema of the seed body; in the `emqx` format, inside the released 3.x envelope
(`{"code": 0, "data"[, "meta"]}`, actions `{"code": 0}`). Errors: the seed's HTTP status and
body, and the EMQX format's HTTP 200 + `{"code": N, "message"}` for each code of emqx_mgmt.hrl
that we answer (101, 102, 107-112, 115); 401, 404 (unknown path) and 413 keep their status.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, NODE, AppFactory, basic, check, eventually, q

from broker.app import NodeApp
from broker.plugins.auth_table import credential
from broker.server.config import ListenerConfig, ManagementConfig
from management.routes import ROUTES, Route

CLIENT = "fmt/c1"
TOPIC = "fmt/t"
BANNED = "fmt-banned"
#: A value for each path parameter of the route table.
PARAMS = {"node": NODE, "clientid": CLIENT, "topic": TOPIC, "plugin": "presence", "who": BANNED,
          "appid": "admin", "username": "fmt-user"}  # fmt: skip
#: A request body for each body schema of the route table.
BODIES: dict[str, Any] = {
    "publish": {"topic": TOPIC, "payload": "x"},
    "subscribe": {"client_id": CLIENT, "topic": "fmt/other"},
    "unsubscribe": {"client_id": CLIENT, "topic": TOPIC},
    "banned": {"who": "fmt-new", "as": "client_id"},
    "log_level": {"level": "warning"},
    "app_request": {"app_id": "fmt-app"},
    "app_update": {"desc": "changed"},
    "auth_clientid": {"clientid": "fmt-new", "password": "p"},
    "auth_username": {"username": "fmt-new", "password": "p"},
    "auth_password": {"password": "p2"},
    "cluster_join": {"seed": "127.0.0.1:1"},  # replaced by the peer's address (_cluster_route)
}
for _kind in ("publish", "subscribe", "unsubscribe"):
    BODIES[f"{_kind}_batch"] = [BODIES[_kind]]  # the batch form: an array of single bodies


class Http:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self, method: str, path: str, *, auth: tuple[str, str] | None = ADMIN, **kw: Any
    ) -> tuple[int, Any]:
        headers = {**(basic(*auth) if auth else {}), **kw.pop("headers", {})}
        async with self.session.request(method, path, headers=headers, **kw) as reply:
            text = await reply.text()
            try:
                return reply.status, json.loads(text)
            except ValueError:
                return reply.status, text


async def start(app_factory: AppFactory, api_format: str) -> NodeApp:
    management = ManagementConfig(bind="127.0.0.1", port=0, api_format=api_format)
    app: NodeApp = await app_factory(management=management)
    return app


@pytest.fixture(params=["seed", "emqx"])
async def node(request: pytest.FixtureRequest, app_factory: AppFactory) -> AsyncIterator[Any]:
    app = await start(app_factory, request.param)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        yield request.param, app, Http(session)


def request_for(route: Route) -> tuple[str, dict[str, Any]]:
    missing = [p for p in route.params() if p not in PARAMS]
    if missing or (route.body and route.body not in BODIES):
        pytest.fail(f"route {route.name}: add a value for {missing or route.body} to this test")
    path = "/api/v3" + route.path
    for name in route.params():
        path = path.replace(f":{name}", q(PARAMS[name]))
    if route.name == "delete_banned":
        path += "?as=client_id"
    return path, ({"json": BODIES[route.body]} if route.body else {})


def check_seed_body(route: Route, status: int, body: Any) -> None:
    shape, _, schema = route.returns.partition(":")
    if shape == "created":
        assert status == 201
        check(body, schema)
        return
    assert status == 200, (route.name, body)
    if shape == "ok":
        assert body == "ok"
    elif shape == "code":
        assert body == {"code": 0}
    elif shape == "array":
        check(body, schema + "[]")
    elif shape == "page":
        check(body, "page:" + schema)
    else:
        check(body, schema)


def check_emqx_body(route: Route, status: int, body: Any) -> None:
    assert status == 200, (route.name, body)
    shape, _, schema = route.returns.partition(":")
    assert isinstance(body, dict) and body.get("code") == 0, (route.name, body)
    if shape in ("ok", "code"):
        assert body == {"code": 0}
    elif shape == "page":
        assert set(body) == {"code", "data", "meta"}
        check({"items": body["data"], "meta": body["meta"]}, "page:" + schema)
    else:
        assert set(body) == {"code", "data"}, (route.name, body)
        check(body["data"], schema + "[]" if shape == "array" else schema)


async def _cluster_route(
    app_factory: AppFactory, tmp_path: Path, api_format: str, route: Route
) -> None:
    """The membership routes need a cluster: this node and a peer joined to it, which
    `force_leave` removes and whose address `join` gives as the seed."""
    management = ManagementConfig(bind="127.0.0.1", port=0, api_format=api_format)
    apps: list[NodeApp] = []
    for name in (NODE, "peer@127.0.0.1"):
        apps.append(
            await app_factory(
                node_name=name,
                data_dir=str(tmp_path / name),
                management=management,
                cluster=ListenerConfig(bind="127.0.0.1", port=0, enabled=True),
                cluster_join=[f"127.0.0.1:{a.cluster_port}" for a in apps],
            )
        )
    app, peer = apps
    assert app.cluster is not None
    await eventually(lambda: app.cluster.live_nodes() == [NODE, "peer@127.0.0.1"])  # type: ignore[union-attr]
    path = "/api/v3" + route.path.replace(":node", q("peer@127.0.0.1"))
    kw = {"json": {"seed": f"127.0.0.1:{peer.cluster_port}"}} if route.body else {}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        status, body = await Http(session).call(route.method, path, **kw)
    if api_format == "seed":
        check_seed_body(route, status, body)
    else:
        check_emqx_body(route, status, body)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
async def test_every_route_in_both_formats(
    node: Any, route: Route, app_factory: AppFactory, tmp_path: Path
) -> None:
    api_format, app, http = node
    if route.path.startswith("/cluster/"):
        await _cluster_route(app_factory, tmp_path, api_format, route)
        return
    if route.name == "unload_plugin" and not _active(app, "presence"):
        await _maybe(app.plugins.load("presence"))
    if route.name == "load_plugin" and _active(app, "presence"):
        await _maybe(app.plugins.unload("presence"))
    status, _ = await http.call("POST", "/api/v3/banned", json={"who": BANNED, "as": "client_id"})
    assert status in (200, 201)
    async with mqtt_client(app) as client:
        await client.subscribe(TOPIC)
        await eventually(lambda: CLIENT in app.broker.connected)
        if route.name == "delete_retained":  # a retained message to delete (PUBACK: stored)
            await client.publish(TOPIC, b"r", qos=1, retain=True)
        if route.path.startswith("/auth_"):  # a plugin's routes: loaded, with the entry named
            plugin, field = route.path.split("/")[1], route.path.split("_")[1].split("/")[0]
            if not _active(app, plugin):
                await _maybe(app.plugins.load(plugin))
            app.broker.replicated.table(plugin).put(PARAMS[field], credential("p"), time.time())
        path, kw = request_for(route)
        status, body = await http.call(route.method, path, **kw)
        if api_format == "seed":
            check_seed_body(route, status, body)
        else:
            check_emqx_body(route, status, body)


def _active(app: NodeApp, name: str) -> bool:
    return any(p["name"] == name and p["active"] for p in app.plugins.list())


async def _maybe(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value


def mqtt_client(app: NodeApp) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=CLIENT, timeout=5.0)


# -- errors ----------------------------------------------------------------------------------


ERRORS: list[tuple[str, str, dict[str, Any], int, dict[str, Any], int]] = [
    # method, path, kwargs, seed status, seed body, EMQX code
    ("GET", f"/api/v3/nodes/{q('nobody@127.0.0.1')}/stats", {}, 404,
     {"message": "not_found"}, 101),
    ("PUT", f"/api/v3/nodes/{q(NODE)}/plugins/no_such_plugin/load", {}, 404,
     {"message": "not_found"}, 102),
    ("POST", "/api/v3/banned", {"json": {"who": "x"}}, 400,
     {"message": "missing mandatory params: ['as']"}, 107),
    ("POST", "/api/v3/mqtt/publish", {"json": {"topic": "a", "qos": 5}}, 400,
     {"message": "bad_qos", "code": 108}, 108),
    ("POST", "/api/v3/mqtt/publish", {"data": b"{not json", "headers": {"Content-Type":
     "application/json"}}, 400, {"message": "bad_json", "code": 109}, 109),
    ("PUT", f"/api/v3/nodes/{q(NODE)}/plugins/presence/load", {}, 409,
     {"message": "already_started"}, 110),
    ("PUT", f"/api/v3/nodes/{q(NODE)}/plugins/acl_file/unload", {}, 409,
     {"message": "not_started"}, 111),
    ("POST", "/api/v3/mqtt/subscribe", {"json": {"client_id": "ghost", "topic": "a"}}, 404,
     {"message": "session_not_found", "code": 112}, 112),
    ("DELETE", "/api/v3/connections/ghost", {}, 404, {"message": "not_found"}, 112),
    ("POST", "/api/v3/mqtt/publish", {"json": {"topic": "a/#"}}, 400,
     {"message": "bad_topic", "code": 115}, 115),
    ("POST", "/api/v3/cluster/leave", {}, 400, {"message": "cluster_disabled", "code": 108}, 108),
]  # fmt: skip


@pytest.mark.parametrize("api_format", ["seed", "emqx"])
@pytest.mark.parametrize(
    "case", ERRORS, ids=[f"{c[5]}-{c[0]}-{c[1].rsplit('/', 2)[-2]}" for c in ERRORS]
)
async def test_error_codes(app_factory: AppFactory, api_format: str, case: Any) -> None:
    method, path, kw, seed_status, seed_body, code = case
    app = await start(app_factory, api_format)
    if "presence/load" in path and not _active(app, "presence"):
        await _maybe(app.plugins.load("presence"))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        status, body = await Http(session).call(method, path, **kw)
    if api_format == "seed":
        assert (status, body) == (seed_status, seed_body)
    else:
        assert (status, body) == (200, {"code": code, "message": seed_body["message"]})


@pytest.mark.parametrize("api_format", ["seed", "emqx"])
async def test_statuses_kept_in_both_formats(app_factory: AppFactory, api_format: str) -> None:
    """401, 404 for an unknown path and 413 keep their HTTP status; /status and /metrics are
    the same text in both formats."""
    management = ManagementConfig(
        bind="127.0.0.1", port=0, api_format=api_format, max_body_size=2048
    )
    app: NodeApp = await app_factory(management=management)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        http = Http(session)
        assert await http.call("GET", "/api/v3/brokers", auth=("admin", "wrong")) == (
            401,
            {"message": "unauthorized"},
        )
        assert await http.call("GET", "/api/v3/no/such/path") == (404, {"message": "not_found"})
        status, _ = await http.call("POST", "/api/v3/mqtt/publish", data=b"x" * 4096)
        assert status == 413
        status, text = await http.call("GET", "/status", auth=None)
        assert status == 200 and text.startswith("Node ")
        status, text = await http.call("GET", "/metrics", auth=None)
        assert status == 200 and "minibroker_messages_received_total" in text


@pytest.mark.parametrize("api_format", ["seed", "emqx"])
async def test_plugin_that_cannot_load_answers_its_reason(
    app_factory: AppFactory, api_format: str
) -> None:
    """auth_passwd without a password file: the reason, not a bare load_failed. 409 in the
    seed format (the request is fine, the node's configuration prevents it), 102 in EMQX's."""
    app = await start(app_factory, api_format)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        status, body = await Http(session).call(
            "PUT", f"/api/v3/nodes/{q(NODE)}/plugins/auth_passwd/load"
        )
    reason = "no password file: set password_file, or file in [plugins.auth_passwd]"
    if api_format == "seed":
        assert (status, body) == (409, {"message": reason})
    else:
        assert (status, body) == (200, {"code": 102, "message": reason})


# -- bodies are JSON whatever the Content-Type --------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "application/json"],
)
async def test_json_body_whatever_the_content_type(
    app_factory: AppFactory, content_type: str | None
) -> None:
    app = await start(app_factory, "seed")
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"who": "ct-test", "as": "client_id", "until": 1893456000})
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        http = Http(session)
        status, stored = await http.call(
            "POST", "/api/v3/banned", data=body.encode(), headers=headers
        )
        assert status == 201, stored
        assert stored["until"] == 1893456000 and isinstance(stored["until"], int)
        assert isinstance(stored["at"], int)
        # the query string still wins over the body
        status, _ = await http.call(
            "DELETE", "/api/v3/banned/ct-test?as=client_id", data=b'{"as": "username"}'
        )
        assert status == 200
        status, page = await http.call("GET", "/api/v3/banned")
        assert page["meta"]["count"] == 0
        # a real form body is still read as a form; other non-JSON is 400 bad_json
        status, reply = await http.call(
            "POST", "/api/v3/mqtt/publish", data={"topic": "form/t", "payload": "p"}
        )
        assert (status, reply) == (200, {"code": 0})
        status, reply = await http.call(
            "POST", "/api/v3/mqtt/publish", data=b"topic: x", headers={"Content-Type": "text/plain"}
        )
        assert (status, reply) == (400, {"message": "bad_json", "code": 109})
