"""The management API's frame: /status, route list, OpenAPI, 404s, errors, auth and apps."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from api_support import (
    ADMIN,
    NODE,
    Api,
    AppFactory,
    api_fixture,  # noqa: F401 (the `api` fixture)
    basic,
    check,
    concrete,
    make_api,
)
from openapi_spec_validator import validate as validate_spec

from broker.cli import main
from broker.server.config import ManagementApp, ManagementConfig
from management.apps import AppStore, add_app, apps_path, hash_secret, stored_apps, verify_secret
from management.routes import ROUTES

API_NAMES = {
    "list_all_api", "list_brokers", "get_broker", "list_nodes", "get_node", "list_connections",
    "list_node_connections", "lookup_connections", "lookup_node_connections",
    "kickout_connections", "list_sessions", "lookup_session", "list_node_sessions",
    "lookup_node_session", "list_subscriptions", "lookup_client_subscriptions",
    "list_node_subscriptions", "lookup_client_subscriptions_with_node", "list_routes",
    "lookup_routes", "mqtt_publish", "mqtt_subscribe", "mqtt_unsubscribe", "list_all_plugins",
    "list_node_plugins", "load_plugin", "unload_plugin", "list_listeners", "list_node_listeners",
    "list_all_metrics", "list_node_metrics", "list_stats", "lookup_node_stats",
    "list_all_alarms", "list_node_alarms", "list_banned", "create_banned", "delete_banned",
    "set_log_level", "set_node_log_level", "list_retained", "delete_retained",
    # added after the seed
    "list_present_alarms", "list_node_present_alarms", "list_alarm_history",
    "list_node_alarm_history", "list_apps", "add_app", "lookup_app", "update_app", "del_app",
    "lookup_connections_via_username", "lookup_node_connections_via_username",
    "mqtt_publish_batch", "mqtt_subscribe_batch", "mqtt_unsubscribe_batch", "reload_plugin",
    "clean_persistent_session", "get_all_configs", "get_node_configs",
    # the auth_clientid / auth_username plugins' CRUD (routes always listed)
    "list_clientid", "lookup_clientid", "add_clientid", "update_clientid", "delete_clientid",
    "list_username", "lookup_username", "add_username", "update_username", "delete_username",
    # cluster membership (emqx_ctl's cluster join / leave / force-leave)
    "cluster_join", "cluster_leave", "cluster_force_leave",
}  # fmt: skip


# -- /status, the route list, OpenAPI ------------------------------------------------------------


async def test_status_is_plain_text_without_auth(api: Api) -> None:
    reply = await api.get("/status", auth=None)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text == f"Node {NODE} is started\nminibroker is running"


async def test_list_all_api_names_every_endpoint_with_and_without_slash(api: Api) -> None:
    for path in ("/api/v3", "/api/v3/"):
        body = await api.ok("GET", path)
        check(body, "api[]")
        assert {r["name"] for r in body} == API_NAMES
        assert len(body) == len(API_NAMES)
    pairs = {(r["method"], r["path"]) for r in body}
    assert ("GET", "/brokers/") in pairs and ("DELETE", "/banned/:who") in pairs


async def test_every_get_route_answers_with_and_without_trailing_slash(api: Api) -> None:
    for route in ROUTES:
        if route.method != "GET":
            continue
        base = "/api/v3" + concrete(route.path).rstrip("/")
        for path in (base, base + "/"):
            reply = await api.get(path)
            if route.path.startswith("/auth_"):  # the plugins are not loaded on this node
                assert (reply.status, reply.body) == (404, {"message": "plugin_not_loaded"})
                continue
            # a lookup of an unknown client answers [] (200); nothing is a router 404
            assert reply.status == 200, (path, reply.status, reply.text)


async def test_openapi_document_is_valid_and_matches_the_route_list(api: Api) -> None:
    doc = await api.ok("GET", "/api/v3/openapi.json")
    validate_spec(doc)
    listed = await api.ok("GET", "/api/v3/")
    in_doc = {
        (method.upper(), re.sub(r"\{(\w+)\}", r":\1", path), op["operationId"])
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert in_doc == {(r["method"], r["path"], r["name"]) for r in listed}
    assert doc["servers"] == [{"url": "/api/v3"}]


# -- not found, bad input, internal errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v3/nothing"),
        ("GET", "/api/v3/brokers/a/b"),
        ("POST", "/api/v3/brokers"),
        ("PUT", "/api/v3/connections/x"),
        ("GET", "/nothing"),
        ("POST", "/status"),
        ("GET", "/api/v3/nodes/nosuch@host/connections"),
        ("GET", "/api/v3/brokers/nosuch@host"),
        ("GET", "/api/v3/alarms/nosuch@host"),
        ("PUT", "/api/v3/nodes/nosuch@host/plugins/presence/load"),
    ],
)
async def test_unknown_path_method_or_node_is_json_404(api: Api, method: str, path: str) -> None:
    reply = await api.request(method, path)
    assert reply.status == 404
    assert reply.body == {"message": "not_found"}


async def test_bad_json_body_is_400(api: Api) -> None:
    reply = await api.post(
        "/api/v3/mqtt/publish", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert reply.status == 400 and reply.body["message"] == "bad_json"
    reply = await api.post("/api/v3/mqtt/publish", json=[1, 2])
    assert reply.status == 400 and reply.body["message"] == "bad_json"


class ExplodingView:
    """A cluster view whose every call fails as a bug would."""

    local_node = NODE

    def node_names(self) -> list[str]:
        return [NODE]

    def is_known(self, node: str) -> bool:
        return node == NODE

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        raise RuntimeError("secret internals")

    async def call_all(self, query: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
        raise RuntimeError("secret internals")


async def test_internal_error_is_500_without_traceback(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory()
    app.view = ExplodingView()
    assert app.management is not None
    app.management.view = app.view
    async for client in make_api(app, "test_client"):
        reply = await client.get("/api/v3/brokers")
        assert reply.status == 500
        assert reply.body == {"message": "internal_error"}
        assert "secret" not in reply.text and "Traceback" not in reply.text
    assert "secret internals" in caplog.text  # logged for the operator


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("admin", "wrong"),
        basic("nobody", "public"),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + "YWRtaW4="},  # "admin" without a colon
    ],
)
async def test_missing_or_wrong_credentials_are_401(api: Api, headers: dict[str, str]) -> None:
    reply = await api.get("/api/v3/brokers", auth=None, headers=headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="minibroker"'
    assert reply.body == {"message": "unauthorized"}


async def test_every_route_requires_auth(api: Api) -> None:
    for route in ROUTES:
        reply = await api.request(route.method, "/api/v3" + concrete(route.path), auth=None)
        assert reply.status == 401, route.name
    assert (await api.get("/api/v3/openapi.json", auth=None)).status == 401


def management(**kw: Any) -> ManagementConfig:
    return ManagementConfig(bind="127.0.0.1", port=0, **kw)


@pytest.mark.parametrize("mode", ["test_client", "real_http"])
async def test_configured_apps_disabled_expired_and_no_default(
    app_factory: AppFactory, mode: str
) -> None:
    now = int(time.time())
    apps = [
        ManagementApp("ops", "s3cret", "Ops"),
        ManagementApp("off", "pw", status=False),
        ManagementApp("old", "pw", expired=now - 10),
        ManagementApp("later", "pw", expired=now + 3600),
    ]
    app = await app_factory(management=management(default_app=False, apps=apps))
    async for client in make_api(app, mode):
        assert (await client.get("/api/v3/brokers", auth=("ops", "s3cret"))).status == 200
        assert (await client.get("/api/v3/brokers", auth=("later", "pw"))).status == 200
        for auth in (("off", "pw"), ("old", "pw"), ADMIN, ("ops", "S3cret")):
            reply = await client.get("/api/v3/brokers", auth=auth)
            assert reply.status == 401, auth
            assert reply.headers["WWW-Authenticate"] == 'Basic realm="minibroker"'


async def test_default_app_warning_logged(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await app_factory()
    assert "default app admin/public" in caplog.text
    caplog.clear()
    await app_factory(management=management(apps=[ManagementApp("admin", "other")]))
    assert "default app admin/public" not in caplog.text


async def test_apps_added_in_the_data_dir_while_running(app_factory: AppFactory) -> None:
    app = await app_factory()
    data_dir = app.config.data_dir
    async for client in make_api(app, "real_http"):
        assert (await client.get("/api/v3/brokers", auth=("cli", "pw1"))).status == 401
        add_app(data_dir, "cli", "pw1", name="from cli")
        assert (await client.get("/api/v3/brokers", auth=("cli", "pw1"))).status == 200
        assert (await client.get("/api/v3/brokers", auth=("cli", "pw2"))).status == 401
        add_app(data_dir, "gone", "pw", expired=int(time.time()) - 1)
        add_app(data_dir, "off", "pw", status=False)
        assert (await client.get("/api/v3/brokers", auth=("gone", "pw"))).status == 401
        assert (await client.get("/api/v3/brokers", auth=("off", "pw"))).status == 401
        # an `admin` app in the data dir replaces the default secret
        add_app(data_dir, "admin", "n3w")
        assert (await client.get("/api/v3/brokers", auth=ADMIN)).status == 401
        assert (await client.get("/api/v3/brokers", auth=("admin", "n3w"))).status == 200


async def test_apps_of_a_development_builds_apps_json_stay_in_force(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    # before the apps became a replicated table, `minibroker apps` wrote <data_dir>/apps.json
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    records = [
        {"id": "admin", "secret_hash": hash_secret("n3w", iterations=1000), "name": "",
         "desc": "", "status": True, "expired": None},
        {"id": "tool", "secret_hash": hash_secret("t00l", iterations=1000), "name": "T",
         "desc": "", "status": True, "expired": None, "updated_at": 5.0, "deleted": False},
        {"id": "gone", "deleted": True, "updated_at": 6.0},
    ]  # fmt: skip
    (data_dir / "apps.json").write_text(json.dumps({"apps": records}))
    app = await app_factory(data_dir=str(data_dir))
    async for client in make_api(app, "real_http"):
        assert (await client.get("/api/v3/brokers", auth=ADMIN)).status == 401  # no default
        assert (await client.get("/api/v3/brokers", auth=("admin", "n3w"))).status == 200
        assert (await client.get("/api/v3/brokers", auth=("tool", "t00l"))).status == 200
    assert sorted(a.id for a in stored_apps(data_dir)) == ["admin", "tool"]


def test_secret_hashing() -> None:
    secret = "correct horse battery staple"  # long enough never to appear by chance in base64
    stored = hash_secret(secret, iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$") and secret not in stored
    assert verify_secret(secret, stored) and not verify_secret(secret.upper(), stored)
    assert not verify_secret("pw", "garbage") and not verify_secret("pw", "md5$1$a$b")
    assert hash_secret("pw") != hash_secret("pw")  # salted


async def test_app_store_refuses_unknown_and_caches_verification(tmp_path: Path) -> None:
    add_app(tmp_path, "a", "pw")
    store = AppStore(tmp_path, default_app=False)
    assert not store.default_in_use()
    assert await store.authenticate("a", "pw") and await store.authenticate("a", "pw")
    assert not await store.authenticate("a", "px") and not await store.authenticate("b", "pw")


def test_apps_cli_add_list_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "data")
    assert main(["apps", "--data-dir", d, "add", "ops", "s3cret", "--name", "Ops",
                 "--desc", "dash", "--expired", "4102444800"]) == 0  # fmt: skip
    assert main(["apps", "--data-dir", d, "add", "ro", "pw", "--disabled"]) == 0
    stored = json.loads(apps_path(d).read_text())
    assert "s3cret" not in json.dumps(stored)
    assert apps_path(d).stat().st_mode & 0o077 == 0
    apps = {a.id: a for a in stored_apps(d)}
    assert apps["ops"].name == "Ops" and apps["ops"].expired == 4102444800
    assert apps["ro"].status is False
    capsys.readouterr()
    assert main(["apps", "--data-dir", d, "list"]) == 0
    out = capsys.readouterr().out
    assert "ops\tOps\tenabled\texpired=4102444800\tdash" in out
    assert "ro\t\tdisabled\texpired=never" in out
    assert main(["apps", "--data-dir", d, "add", "ops", "again"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["apps", "--data-dir", d, "delete", "ops"]) == 0
    assert main(["apps", "--data-dir", d, "delete", "ops"]) == 1
    assert [a.id for a in stored_apps(d)] == ["ro"]
    assert main(["apps", "--data-dir", d]) == 2  # an action is required


async def test_cli_app_authenticates_on_a_node(app_factory: AppFactory, tmp_path: Path) -> None:
    d = str(tmp_path / "cli-data")
    assert main(["apps", "--data-dir", d, "add", "tool", "t00l"]) == 0
    app = await app_factory(data_dir=d)
    async for client in make_api(app, "real_http"):
        assert (await client.get("/api/v3/brokers", auth=("tool", "t00l"))).status == 200
