"""The endpoints released EMQX 3.x had beyond the seed, on one node, over both transports:
/apps, connections by username, the batch pub/sub calls, alarms present/history, plugin reload,
DELETE /sessions/persistent/:clientid, /configs. Answers are checked against the OpenAPI schemas.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from api_support import (
    ADMIN,
    NODE,
    Api,
    AppFactory,
    api_fixture,  # noqa: F401 (the `api` fixture)
    check,
    eventually,
    make_api,
    mqtt,
    next_message,
    q,
)
from rawclient import RawClient

from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId
from broker.protocol.packets import ConnAck, Disconnect
from broker.server.config import ManagementApp, ManagementConfig
from management.apps import apps_path

BROKERS = "/api/v3/brokers"

# -- /apps ---------------------------------------------------------------------------------------


async def test_apps_crud_and_refused_at_once(api: Api) -> None:
    reply = await api.post("/api/v3/apps/", json={"app_id": "ops", "name": "Ops", "desc": "d"})
    assert reply.status == 200, reply.text
    check(reply.body, "app_secret")
    secret = reply.body["secret"]
    assert len(secret) >= 20
    ops = ("ops", secret)
    assert (await api.get(BROKERS, auth=ops)).status == 200
    assert (await api.get(BROKERS, auth=("ops", secret + "x"))).status == 401

    rows = await api.ok("GET", "/api/v3/apps")
    check(rows, "app[]")
    assert {r["app_id"] for r in rows} == {"admin", "ops"}
    assert secret not in json.dumps(rows)
    row = await api.ok("GET", "/api/v3/apps/ops")
    assert row == {"app_id": "ops", "name": "Ops", "desc": "d", "status": True, "expired": None}
    stored = apps_path(api.app.config.data_dir).read_text()
    assert secret not in stored and "pbkdf2_sha256$" in stored

    # disabled: refused by the very next request; enabled again: accepted
    assert await api.ok("PUT", "/api/v3/apps/ops", json={"status": False}) == "ok"
    assert (await api.get(BROKERS, auth=ops)).status == 401
    assert await api.ok("PUT", "/api/v3/apps/ops", json={"status": True, "desc": "e"}) == "ok"
    assert (await api.get(BROKERS, auth=ops)).status == 200
    assert (await api.ok("GET", "/api/v3/apps/ops"))["desc"] == "e"
    # expired
    past = int(time.time()) - 5
    assert await api.ok("PUT", "/api/v3/apps/ops", json={"expired": past}) == "ok"
    assert (await api.get(BROKERS, auth=ops)).status == 401
    assert await api.ok("PUT", "/api/v3/apps/ops", json={"expired": None}) == "ok"
    assert (await api.get(BROKERS, auth=ops)).status == 200
    # deleted
    assert await api.ok("DELETE", "/api/v3/apps/ops") == "ok"
    assert (await api.get(BROKERS, auth=ops)).status == 401
    assert (await api.get("/api/v3/apps/ops")).status == 404
    assert (await api.delete("/api/v3/apps/ops")).status == 404
    assert (await api.put("/api/v3/apps/ops", json={"status": True})).status == 404
    # a new app of the same id, with the secret given
    body = {"app_id": "ops", "secret": "chosen-secret", "status": True}
    assert await api.ok("POST", "/api/v3/apps", json=body) == {"secret": "chosen-secret"}
    assert (await api.get(BROKERS, auth=("ops", "chosen-secret"))).status == 200
    assert (await api.get(BROKERS, auth=ops)).status == 401


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "missing mandatory params: ['app_id']"),
        ({"app_id": "admin"}, 409, "already_existed"),
        ({"app_id": "x", "status": "maybe"}, 400, "bad_status"),
        ({"app_id": "x", "expired": "soon"}, 400, "bad_expired"),
    ],
)
async def test_apps_bad_input(api: Api, body: dict[str, object], status: int, message: str) -> None:
    reply = await api.post("/api/v3/apps", json=body)
    assert (reply.status, reply.body["message"]) == (status, message)


async def test_deleting_the_default_app_refuses_it(api: Api) -> None:
    await api.ok("POST", "/api/v3/apps", json={"app_id": "root", "secret": "r00t"})
    root = ("root", "r00t")
    assert await api.ok("DELETE", "/api/v3/apps/admin", auth=root) == "ok"
    assert (await api.get(BROKERS, auth=ADMIN)).status == 401
    assert [r["app_id"] for r in await api.ok("GET", "/api/v3/apps", auth=root)] == ["root"]
    assert not api.app.apps.default_in_use()


async def test_apps_persist_across_a_restart(app_factory: AppFactory, tmp_path: Path) -> None:
    data_dir = str(tmp_path / "keep")
    app = await app_factory(data_dir=data_dir)
    async for api in make_api(app, "real_http"):
        await api.ok("POST", "/api/v3/apps", json={"app_id": "kept", "secret": "k"})
        await api.ok("POST", "/api/v3/apps", json={"app_id": "gone", "secret": "g"})
        await api.ok("DELETE", "/api/v3/apps/gone")
        await api.ok("PUT", "/api/v3/apps/admin", json={"status": False})
    await app.stop()
    again = await app_factory(data_dir=data_dir)
    async for api in make_api(again, "real_http"):
        assert (await api.get(BROKERS, auth=("kept", "k"))).status == 200
        assert (await api.get(BROKERS, auth=("gone", "g"))).status == 401
        assert (await api.get(BROKERS, auth=ADMIN)).status == 401  # disabled, also after restart


# -- connections by username ---------------------------------------------------------------------


async def test_connections_by_username(api: Api) -> None:
    async with (
        mqtt(api, "a1", username="alice"),
        mqtt(api, "a2", username="alice"),
        mqtt(api, "b1", username="bob"),
        mqtt(api, "anon"),
    ):
        rows = await api.ok("GET", "/api/v3/connection/username/alice")
        check(rows, "connection[]")
        assert sorted(r["client_id"] for r in rows) == ["a1", "a2"]
        assert {r["username"] for r in rows} == {"alice"} and rows[0]["node"] == NODE
        path = f"/api/v3/nodes/{q(NODE)}/connection/username/bob"
        assert [r["client_id"] for r in await api.ok("GET", path)] == ["b1"]
        assert await api.ok("GET", "/api/v3/connection/username/nobody") == []
    reply = await api.get("/api/v3/nodes/other@x/connection/username/alice")
    assert reply.status == 404


# -- batch publish / subscribe / unsubscribe -----------------------------------------------------


async def test_publish_batch_one_result_per_element(api: Api) -> None:
    async with mqtt(api, "sub") as sub:
        await sub.subscribe("batch/#", qos=1)
        body = [
            {"topic": "batch/1", "payload": "one", "qos": 1},
            {"topic": "bad/#", "payload": "never"},
            {"payload": "no topic"},
            {"topic": "batch/2", "payload": "two", "qos": 5},
            "not an object",
            {"topics": "batch/3,batch/4", "payload": "many", "retain": False},
        ]
        results = await api.ok("POST", "/api/v3/mqtt/publish_batch", json=body)
        check(results, "publish_result[]")
        assert [r["reason_code"] for r in results] == [0, 115, 107, 108, 108, 0]
        assert results[0] == {"topic": "batch/1", "payload": "one", "qos": 1, "reason_code": 0}
        assert results[5]["topic"] == "batch/3,batch/4"
        got = [await next_message(sub) for _ in range(3)]
        assert [(str(m.topic), m.payload) for m in got] == [
            ("batch/1", b"one"), ("batch/3", b"many"), ("batch/4", b"many")]  # fmt: skip


async def test_subscribe_and_unsubscribe_batch(api: Api) -> None:
    async with mqtt(api, "c1") as c1, mqtt(api, "pub") as pub:
        body = [
            {"client_id": "c1", "topic": "s/a", "qos": 1},
            {"client_id": "nobody", "topic": "s/b"},
            {"client_id": "c1", "topic": "s/#/bad"},
            {"client_id": "c1", "topics": "s/c,s/d", "qos": 2},
        ]
        results = await api.ok("POST", "/api/v3/mqtt/subscribe_batch", json=body)
        check(results, "subscribe_result[]")
        assert [r["reason_code"] for r in results] == [0, 112, 115, 0]
        assert results[1] == {"client_id": "nobody", "topic": "s/b", "reason_code": 112}
        subs = await api.ok("GET", "/api/v3/subscriptions/c1")
        assert sorted((s["topic"], s["qos"]) for s in subs) == [("s/a", 1), ("s/c", 2), ("s/d", 2)]
        await pub.publish("s/c", b"x", qos=1)
        assert (await next_message(c1)).payload == b"x"

        body = [
            {"client_id": "c1", "topic": "s/a"},
            {"client_id": "ghost", "topic": "s/a"},
            {"client_id": "c1"},
            {"client_id": "c1", "topic": "s/c"},
        ]
        results = await api.ok("POST", "/api/v3/mqtt/unsubscribe_batch", json=body)
        check(results, "unsubscribe_result[]")
        assert [r["reason_code"] for r in results] == [0, 112, 107, 0]
        subs = await api.ok("GET", "/api/v3/subscriptions/c1")
        assert [s["topic"] for s in subs] == ["s/d"]


@pytest.mark.parametrize("kind", ["publish", "subscribe", "unsubscribe"])
async def test_batch_needs_a_non_empty_array(api: Api, kind: str) -> None:
    path = f"/api/v3/mqtt/{kind}_batch"
    reply = await api.post(path, json={"topic": "t"})
    assert (reply.status, reply.body) == (400, {"message": "bad_json", "code": 109})
    reply = await api.post(path, data="not json")
    assert reply.status == 400 and reply.body["code"] == 109
    reply = await api.post(path, json=[])
    assert (reply.status, reply.body) == (400, {"message": "bad_topic", "code": 115})


# -- alarms present / history --------------------------------------------------------------------


async def test_alarms_present_and_history(api: Api) -> None:
    alarms = api.app.alarms
    now = time.time()
    alarms.raise_alarm("test_alarm", "A test alarm", "raised by the test", now)
    present = await api.ok("GET", "/api/v3/alarms/present")
    check(present, "node_alarms_present[]")
    assert [p["node"] for p in present] == [NODE]
    (alarm,) = [a for a in present[0]["alarms"] if a["id"] == "test_alarm"]
    assert alarm["desc"]["title"] == "A test alarm" and alarm["summary"] == "raised by the test"
    assert await api.ok("GET", "/api/v3/alarms/history") == [{"node": NODE, "alarms": []}]

    alarms.clear_alarm("test_alarm", now + 1)
    history = await api.ok("GET", f"/api/v3/alarms/history/{q(NODE)}")
    check(history, "node_alarms_history[]")
    (cleared,) = history[0]["alarms"]
    assert cleared["id"] == "test_alarm" and "clear_at" in cleared
    assert cleared["clear_at"] >= cleared["timestamp"]
    present = await api.ok("GET", f"/api/v3/alarms/present/{q(NODE)}")
    assert all(a["id"] != "test_alarm" for a in present[0]["alarms"])
    # the 3.0 form is unchanged, and an unknown node is a 404 in the new forms
    check(await api.ok("GET", "/api/v3/alarms/"), "node_alarms[]")
    assert (await api.get("/api/v3/alarms/present/other@x")).status == 404
    assert (await api.get("/api/v3/alarms/history/other@x")).status == 404


async def test_alarm_history_is_bounded(api: Api) -> None:
    from broker.server.alarms import HISTORY_LIMIT

    alarms = api.app.alarms
    for i in range(HISTORY_LIMIT + 5):
        alarms.raise_alarm(f"a{i}", "t", "s", float(i))
        alarms.clear_alarm(f"a{i}", float(i) + 0.5)
    (node,) = await api.ok("GET", "/api/v3/alarms/history")
    assert len(node["alarms"]) == HISTORY_LIMIT
    assert node["alarms"][0]["id"] == "a5"  # the oldest went first


# -- plugin reload -------------------------------------------------------------------------------


async def test_plugin_reload(api: Api) -> None:
    base = f"/api/v3/nodes/{q(NODE)}/plugins"
    plugins = api.app.plugins
    assert plugins.get("presence") is None
    # not loaded: reload loads it (EMQX's emqx_plugins:reload)
    assert await api.ok("PUT", f"{base}/presence/reload") == "ok"
    first = plugins.get("presence")
    assert first is not None
    # loaded: unloaded then loaded again, a new instance
    assert await api.ok("PUT", f"{base}/presence/reload") == "ok"
    second = plugins.get("presence")
    assert second is not None and second is not first
    listed = await api.ok("GET", f"{base}/")
    assert next(p for p in listed if p["name"] == "presence")["active"] is True
    assert (await api.put(f"{base}/nosuch/reload")).status == 404
    assert (await api.put("/api/v3/nodes/other@x/plugins/presence/reload")).status == 404


# -- DELETE /sessions/persistent/:clientid -------------------------------------------------------


async def test_drop_an_offline_persistent_session(api: Api) -> None:
    async with mqtt(api, "keeper", clean_session=False) as c:
        await c.subscribe("keep/#", qos=1)
    await eventually(lambda: "keeper" not in api.app.broker.connected)
    assert len(await api.ok("GET", "/api/v3/sessions/keeper")) == 1
    assert await api.ok("DELETE", "/api/v3/sessions/persistent/keeper") == "ok"
    assert await api.ok("GET", "/api/v3/sessions/keeper") == []
    assert await api.ok("GET", "/api/v3/subscriptions/keeper") == []
    assert all(r["topic"] != "keep/#" for r in (await api.ok("GET", "/api/v3/routes"))["items"])
    # MQTT-3.2.2-3: a session present is reported only when the server has one
    client, packet = await RawClient.connect(api.tcp_port, "keeper", MQTT_3_1_1, clean_start=False)
    try:
        assert isinstance(packet, ConnAck) and packet.session_present is False
    finally:
        await client.close()
    reply = await api.delete("/api/v3/sessions/persistent/nobody")
    assert (reply.status, reply.body) == (404, {"message": "session_not_found", "code": 112})


async def test_drop_the_session_of_a_connected_client(api: Api) -> None:
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: 3600}
    client, packet = await RawClient.connect(api.tcp_port, "online", MQTT_5, properties=props)
    try:
        assert isinstance(packet, ConnAck) and packet.reason_code == 0
        assert await api.ok("DELETE", f"/api/v3/sessions/persistent/{q('online')}") == "ok"
        packet = await client.recv()
        assert isinstance(packet, Disconnect) and packet.reason_code == 0x98  # admin action
        assert await client.closed()
    finally:
        await client.close()
    assert await api.ok("GET", "/api/v3/sessions/online") == []


# -- /configs ------------------------------------------------------------------------------------


async def test_configs_are_shown_with_secrets_masked(app_factory: AppFactory) -> None:
    management = ManagementConfig(
        bind="127.0.0.1", port=0, apps=[ManagementApp("ops", "app-secret-value")]
    )
    plugins = {"web_hook": {"url": "http://hook:hook-pass@127.0.0.1:9/x"}}
    app = await app_factory(cookie="cookie-secret-value", management=management, plugins=plugins)
    async for api in make_api(app, "real_http"):
        reply = await api.get("/api/v3/configs")
        assert reply.status == 200
        for secret in ("cookie-secret-value", "app-secret-value", "hook-pass"):
            assert secret not in reply.text
        check(reply.body, "node_configs[]")
        (node,) = reply.body
        rows = {r["key"]: r for r in node["configs"]}
        assert node["node"] == NODE
        assert rows["node.cookie"]["value"] == "******"
        assert rows["management.apps.0.secret"]["value"] == "******"
        assert rows["management.apps.0.id"]["value"] == "ops"
        assert rows["plugins.web_hook.url"]["value"] == "http://hook:******@127.0.0.1:9/x"
        inflight = {"key": "max_inflight_messages", "value": 32, "datatype": "integer"}
        assert rows["max_inflight_messages"] == {**inflight, "app": "broker"}
        assert rows["listener.tcp.port"]["app"] == "listener"
        assert rows["node.name"] == {"key": "node.name", "value": NODE, "datatype": "string",
                                     "app": "node"}  # fmt: skip
        per_node = await api.ok("GET", f"/api/v3/nodes/{q(NODE)}/configs")
        check(per_node, "config[]")
        assert per_node == node["configs"]
        assert (await api.get("/api/v3/nodes/other@x/configs")).status == 404


async def test_a_dropped_session_does_not_come_back_after_a_restart(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "persist")
    app = await app_factory(data_dir=data_dir, persistence=True)
    async for api in make_api(app, "real_http"):
        for client_id in ("dropped", "kept"):
            async with mqtt(api, client_id, clean_session=False) as c:
                await c.subscribe(f"{client_id}/#", qos=1)
        await eventually(lambda: not app.broker.connected)
        assert await api.ok("DELETE", "/api/v3/sessions/persistent/dropped") == "ok"
    await app.stop()  # flushes what changed
    again = await app_factory(data_dir=data_dir, persistence=True)
    assert "kept" in again.broker.sessions  # persistence works, and
    assert "dropped" not in again.broker.sessions  # the dropped one stayed dropped
