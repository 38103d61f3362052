"""Brokers, nodes, listeners, metrics, stats, plugins, alarms and the Prometheus exposition."""

from __future__ import annotations

import re
import resource
import time

import pytest
from api_support import (
    ADMIN,
    NODE,
    Api,
    AppFactory,
    api_fixture,  # noqa: F401 (the `api` fixture)
    check,
    make_api,
    mqtt,
    next_message,
)
from prometheus_client.parser import text_string_to_metric_families

from broker.core.metrics import METRIC_NAMES, STAT_NAMES
from broker.server.config import AlarmsConfig, ManagementConfig

DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
UPTIME = re.compile(r"^((\d+ days,)?\d+ hours, )?(\d+ minutes, )?\d+ seconds$")


# -- brokers and nodes ---------------------------------------------------------------------------


async def test_brokers(api: Api) -> None:
    brokers = await api.ok("GET", "/api/v3/brokers/")
    check(brokers, "broker_with_node[]")
    assert [b["node"] for b in brokers] == [NODE]
    one = await api.ok("GET", f"/api/v3/brokers/{NODE}")
    check(one, "broker")
    assert "node" not in one
    assert one["node_status"] == "Running" and one["sysdescr"] == "minibroker"
    assert DATETIME.match(one["datetime"]) and UPTIME.match(one["uptime"])
    assert one["otp_release"].startswith("Python 3.") and one["version"]
    # a node name percent-encoded is decoded
    assert (await api.get("/api/v3/brokers/test%40127.0.0.1")).status == 200


async def test_nodes(api: Api) -> None:
    nodes = await api.ok("GET", "/api/v3/nodes")
    check(nodes, "node_with_node[]")
    listed = nodes[0]
    assert listed["node"] == listed["name"] == NODE
    assert re.match(r"^\d+(\.\d\d[KMG])?$", listed["memory_used"])
    async with mqtt(api, "n1"):
        one = await api.ok("GET", f"/api/v3/nodes/{NODE}/")
    check(one, "node")
    assert "node" not in one
    assert 0 < one["memory_used"] < one["memory_total"]
    assert one["max_fds"] > 0 and one["process_available"] == one["max_fds"]
    assert 0 < one["process_used"] <= one["max_fds"]
    assert one["connections"] == 1
    for key in ("load1", "load5", "load15"):
        assert re.match(r"^\d+\.\d\d$", one[key])


# -- listeners -----------------------------------------------------------------------------------


async def test_listeners(api: Api) -> None:
    async with mqtt(api, "l1"):
        everything = await api.ok("GET", "/api/v3/listeners/")
        check(everything, "node_listeners[]")
        assert everything[0]["node"] == NODE
        listeners = await api.ok("GET", f"/api/v3/nodes/{NODE}/listeners/")
        check(listeners, "listener[]")
        by = {x["protocol"]: x for x in listeners}
        assert set(by) == {"mqtt:tcp", "mqtt:ws", "http:management"}
        assert by["mqtt:tcp"]["listen_on"] == f"127.0.0.1:{api.tcp_port}"
        assert by["mqtt:tcp"]["current_conns"] == 1 and by["mqtt:ws"]["current_conns"] == 0
        assert by["http:management"]["listen_on"] == f"127.0.0.1:{api.app.http_port}"
        assert by["mqtt:tcp"]["shutdown_count"] == {}  # always an object (docs/api.md)
        # unlimited listeners report the process's open-file limit as their cap
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            assert by["mqtt:tcp"]["max_conns"] == soft
        if api.mode == "real_http":
            assert by["http:management"]["current_conns"] >= 1
    assert ("http", "127.0.0.1", api.app.http_port) in api.app.bound_listeners()


# -- metrics and stats ---------------------------------------------------------------------------


async def test_metrics_and_stats_move_with_traffic(api: Api) -> None:
    metrics0 = await api.ok("GET", f"/api/v3/nodes/{NODE}/metrics/")
    check(metrics0, "metrics")
    assert list(metrics0) == list(METRIC_NAMES)
    async with mqtt(api, "m1") as sub, mqtt(api, "m2") as pub:
        await sub.subscribe("m/#", qos=1)
        await pub.publish("m/1", b"x", qos=1)
        await pub.publish("m/2", b"kept", qos=0, retain=True)
        await next_message(sub)
        await next_message(sub)
        everything = await api.ok("GET", "/api/v3/metrics")
        check(everything, "node_metrics[]")
        metrics = await api.ok("GET", f"/api/v3/nodes/{NODE}/metrics")
        stats_all = await api.ok("GET", "/api/v3/stats")
        check(stats_all, "node_stats[]")
        stats = await api.ok("GET", f"/api/v3/nodes/{NODE}/stats")
    check(stats, "stats")
    assert list(stats) == list(STAT_NAMES)
    assert everything[0]["node"] == NODE and stats_all[0]["node"] == NODE
    assert metrics["packets/connect"] - metrics0["packets/connect"] == 2
    assert metrics["messages/qos1/received"] - metrics0["messages/qos1/received"] == 1
    assert metrics["messages/received"] - metrics0["messages/received"] == 2
    assert metrics["messages/retained"] - metrics0["messages/retained"] == 1
    assert metrics["packets/subscribe"] - metrics0["packets/subscribe"] == 1
    assert metrics["bytes/received"] > metrics0["bytes/received"]
    assert stats["connections/count"] == 2 and stats["connections/max"] >= 2
    assert stats["subscriptions/count"] == 1 and stats["routes/count"] == 1
    assert stats["retained/count"] == 1
    after = await api.ok("GET", f"/api/v3/nodes/{NODE}/stats")
    assert after["connections/count"] == 0 and after["connections/max"] >= 2  # high-water mark


async def test_prometheus_exposition(api: Api) -> None:
    async with mqtt(api, "prom") as c:
        await c.publish("p/x", b"1", qos=1)
        reply = await api.get("/metrics", auth=None)
        metrics = await api.ok("GET", f"/api/v3/nodes/{NODE}/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    counters = {n for n, f in families.items() if f.type == "counter"}
    gauges = {n for n, f in families.items() if f.type == "gauge"}
    assert len(counters) == 43 and len(gauges) == 18
    assert "minibroker_packets_puback_missed" in counters  # the parser drops "_total"
    assert "minibroker_sessions_persistent_count" in gauges
    sample = families["minibroker_messages_qos1_received"].samples[0]
    assert sample.name == "minibroker_messages_qos1_received_total"
    assert sample.labels == {"node": NODE}
    assert sample.value == metrics["messages/qos1/received"] == 1
    conns = families["minibroker_connections_count"].samples[0]
    assert conns.value == 1


@pytest.mark.parametrize("mode", ["test_client", "real_http"])
async def test_prometheus_auth_when_configured(app_factory: AppFactory, mode: str) -> None:
    app = await app_factory(management=ManagementConfig("127.0.0.1", 0, metrics_auth=True))
    async for client in make_api(app, mode):
        reply = await client.get("/metrics", auth=None)
        assert reply.status == 401 and reply.headers["WWW-Authenticate"]
        assert (await client.get("/metrics", auth=ADMIN)).status == 200


# -- plugins -------------------------------------------------------------------------------------


async def test_plugins_list_load_unload_and_effect(api: Api) -> None:
    everything = await api.ok("GET", "/api/v3/plugins/")
    check(everything, "node_plugins[]")
    plugins = await api.ok("GET", f"/api/v3/nodes/{NODE}/plugins")
    check(plugins, "plugin[]")
    names = {p["name"] for p in plugins}
    assert {"presence", "auth_passwd", "acl_file", "delayed_publish", "web_hook"} <= names
    assert not any(p["active"] for p in plugins if p["name"] == "presence")

    base = f"/api/v3/nodes/{NODE}/plugins/presence"
    assert await api.ok("PUT", base + "/load") == "ok"
    reply = await api.put(base + "/load/")
    assert (reply.status, reply.body) == (409, {"message": "already_started"})
    plugins = await api.ok("GET", f"/api/v3/nodes/{NODE}/plugins/")
    assert next(p for p in plugins if p["name"] == "presence")["active"] is True

    async with mqtt(api, "watcher") as watcher:
        await watcher.subscribe([("$SYS/brokers/+/clients/#", 0), ("sentinel", 0)])
        async with mqtt(api, "visitor"):
            pass
        message = await next_message(watcher)
        assert message.topic.value == f"$SYS/brokers/{NODE}/clients/visitor/connected"

        assert await api.ok("PUT", base + "/unload") == "ok"
        reply = await api.put(base + "/unload")
        assert (reply.status, reply.body) == (409, {"message": "not_started"})
        async with mqtt(api, "visitor2") as v2:
            await v2.publish("sentinel", b"s")
        while True:  # visitor's disconnected event may come first; visitor2 has none
            message = await next_message(watcher)
            if message.topic.value == "sentinel":
                break
            assert "visitor2" not in message.topic.value

    for action in ("load", "unload"):
        reply = await api.put(f"/api/v3/nodes/{NODE}/plugins/nosuch/{action}")
        assert (reply.status, reply.body) == (404, {"message": "not_found"})
        reply = await api.put(f"/api/v3/nodes/other@x/plugins/presence/{action}")
        assert (reply.status, reply.body) == (404, {"message": "not_found"})


# -- alarms --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["test_client", "real_http"])
async def test_alarms_from_the_real_monitors(app_factory: AppFactory, mode: str) -> None:
    cfg = AlarmsConfig(connections_high_watermark=1, check_interval=0)
    app = await app_factory(alarms=cfg)
    async for client in make_api(app, mode):
        async with mqtt(client, "a1"), mqtt(client, "a2"):
            app.alarms.check(time.time())
            everything = await client.ok("GET", "/api/v3/alarms/")
            check(everything, "node_alarms[]")
            assert everything[0]["node"] == NODE
            alarms = await client.ok("GET", f"/api/v3/alarms/{NODE}")
            check(alarms, "alarm[]")
            mine = [a for a in alarms if a["id"] == "connections_high_watermark"]
            assert len(mine) == 1 and mine[0]["severity"] == "warning"
            assert DATETIME.match(mine[0]["timestamp"])
        app.alarms.check(time.time())
        alarms = await client.ok("GET", f"/api/v3/alarms/{NODE}/")
        assert not [a for a in alarms if a["id"] == "connections_high_watermark"]
        reply = await client.get("/api/v3/alarms/other@x")
        assert (reply.status, reply.body) == (404, {"message": "not_found"})
