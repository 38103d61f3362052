"""Connections, sessions, subscriptions and routes through the API, against real MQTT clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest
from api_support import (
    NODE,
    Api,
    AppFactory,
    api_fixture,  # noqa: F401 (the `api` fixture)
    check,
    eventually,
    make_api,
    mqtt,
    q,
)
from rawclient import RawClient

from broker.protocol.constants import MQTT_5
from broker.protocol.packets import ConnAck, Disconnect
from broker.server.config import ManagementConfig
from management.view import run_query

ODD_ID = "dev/1#a+b %"


# -- connections ---------------------------------------------------------------------------------


async def test_connections_list_lookup_and_node_forms(api: Api) -> None:
    async with mqtt(api, "c1", username="alice"), mqtt(api, ODD_ID):
        page = await api.ok("GET", "/api/v3/connections")
        check(page, "page:connection")
        assert page["meta"] == {"page": 1, "limit": 10000, "count": 2}
        rows = {row["client_id"]: row for row in page["items"]}
        assert set(rows) == {"c1", ODD_ID}
        c1 = rows["c1"]
        assert c1["username"] == "alice" and rows[ODD_ID]["username"] == "undefined"
        assert c1["node"] == NODE and c1["ipaddress"] == "127.0.0.1" and c1["port"] > 0
        assert (c1["proto_name"], c1["proto_ver"], c1["conn_mod"]) == ("MQTT", 4, "tcp")
        assert c1["peercert"] == "nossl" and c1["clean_start"] is True
        assert c1["keepalive"] == 60 and c1["recv_pkt"] >= 1 and c1["send_pkt"] >= 1
        assert len(c1["connected_at"]) == 19  # YYYY-MM-DD HH:MM:SS

        node_page = await api.ok("GET", f"/api/v3/nodes/{NODE}/connections/")
        assert node_page["meta"]["count"] == 2
        found = await api.ok("GET", f"/api/v3/connections/{q(ODD_ID)}")
        check(found, "connection[]")
        assert [r["client_id"] for r in found] == [ODD_ID]
        found = await api.ok("GET", f"/api/v3/nodes/{NODE}/connections/{q(ODD_ID)}/")
        assert [r["client_id"] for r in found] == [ODD_ID]
        assert await api.ok("GET", "/api/v3/connections/nobody") == []
        reply = await api.get("/api/v3/nodes/other@host/connections/c1")
        assert (reply.status, reply.body) == (404, {"message": "not_found"})


async def test_v5_and_websocket_connections_are_described(api: Api) -> None:
    ws = aiomqtt.Client("127.0.0.1", api.app.node.ws_port, identifier="ws1", transport="websockets",
                        websocket_path="/mqtt", timeout=5)  # fmt: skip
    async with mqtt(api, "v5", v5=True), ws:
        rows = {r["client_id"]: r for r in (await api.ok("GET", "/api/v3/connections"))["items"]}
        assert rows["v5"]["proto_ver"] == 5 and rows["ws1"]["conn_mod"] == "ws"


async def test_kick_disconnects_the_client(api: Api) -> None:
    client, connack = await RawClient.connect(api.tcp_port, ODD_ID, MQTT_5)
    assert isinstance(connack, ConnAck) and connack.reason_code == 0
    try:
        assert await api.ok("DELETE", f"/api/v3/connections/{q(ODD_ID)}") == "ok"
        packet = await client.recv()
        assert isinstance(packet, Disconnect) and packet.reason_code == 0x98  # admin action
        assert await client.closed()
    finally:
        await client.close()
    tcp_stats = next(s for s in api.app.node.listeners if s.protocol == "mqtt:tcp")
    await eventually(lambda: tcp_stats.current == 0)
    reply = await api.delete(f"/api/v3/connections/{q(ODD_ID)}")
    assert (reply.status, reply.body) == (404, {"message": "not_found"})
    listeners = await api.ok("GET", f"/api/v3/nodes/{NODE}/listeners")
    tcp = next(x for x in listeners if x["protocol"] == "mqtt:tcp")
    assert tcp["shutdown_count"].get("kicked") == 1


async def test_kick_an_aiomqtt_client(api: Api) -> None:
    async with mqtt(api, "victim") as client:
        assert await api.ok("DELETE", "/api/v3/connections/victim/") == "ok"
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(5):
                async for _ in client.messages:
                    pass


# -- sessions ------------------------------------------------------------------------------------


async def test_sessions_online_and_offline_persistent(api: Api) -> None:
    async with mqtt(api, "keeper", clean_session=False) as c:
        await c.subscribe("keep/#", qos=1)
    await eventually(lambda: "keeper" not in api.app.broker.connected)
    async with mqtt(api, "online"):
        page = await api.ok("GET", "/api/v3/sessions/")
        check(page, "page:session")
        rows = {r["client_id"]: r for r in page["items"]}
        assert set(rows) == {"keeper", "online"}
        keeper = rows["keeper"]
        assert keeper["clean_start"] is False and keeper["expiry_interval"] > 0
        assert keeper["subscriptions_count"] == 1 and keeper["binding"] == "local"
        assert keeper["node"] == NODE and keeper["max_inflight"] == 32

        # an offline session queues QoS 1 messages: mqueue_len shows them
        async with mqtt(api, "pub") as pub:
            await pub.publish("keep/x", b"1", qos=1)
        found = await api.ok("GET", "/api/v3/sessions/keeper")
        check(found, "session[]")
        assert found[0]["mqueue_len"] == 1 and found[0]["enqueue_msg"] == 1
        found = await api.ok("GET", f"/api/v3/nodes/{NODE}/sessions/keeper")
        assert [r["client_id"] for r in found] == ["keeper"]
        assert await api.ok("GET", "/api/v3/sessions/nobody") == []
        node_page = await api.ok("GET", f"/api/v3/nodes/{NODE}/sessions")
        assert node_page["meta"]["count"] == 2


# -- subscriptions and routes --------------------------------------------------------------------


async def test_subscriptions_and_routes(api: Api) -> None:
    async with mqtt(api, ODD_ID) as a, mqtt(api, "b") as b:
        await a.subscribe([("s/+/x", 1), ("$share/g/s/shared", 0)])
        await b.subscribe("s/+/x", qos=2)
        page = await api.ok("GET", "/api/v3/subscriptions")
        check(page, "page:subscription")
        got = {(r["client_id"], r["topic"], r["qos"]) for r in page["items"]}
        assert got == {(ODD_ID, "s/+/x", 1), (ODD_ID, "s/shared", 0), ("b", "s/+/x", 2)}
        mine = await api.ok("GET", f"/api/v3/subscriptions/{q(ODD_ID)}")
        check(mine, "subscription[]")
        assert {r["topic"] for r in mine} == {"s/+/x", "s/shared"}
        mine = await api.ok("GET", f"/api/v3/nodes/{NODE}/subscriptions/{q(ODD_ID)}")
        assert len(mine) == 2
        node_page = await api.ok("GET", f"/api/v3/nodes/{NODE}/subscriptions/")
        assert node_page["meta"]["count"] == 3

        routes = await api.ok("GET", "/api/v3/routes")
        check(routes, "page:route")
        assert sorted(r["topic"] for r in routes["items"]) == ["s/+/x", "s/shared"]
        assert all(r["node"] == NODE for r in routes["items"])
        found = await api.ok("GET", f"/api/v3/routes/{q('s/+/x')}")
        check(found, "route[]")
        assert found == [{"topic": "s/+/x", "node": NODE}]
        assert await api.ok("GET", f"/api/v3/routes/{q('s/#')}") == []


# -- pagination ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["test_client", "real_http"])
async def test_pagination_edges(app_factory: AppFactory, mode: str) -> None:
    app = await app_factory(management=ManagementConfig("127.0.0.1", 0, max_row_limit=4))
    async for client in make_api(app, mode):
        async with contextlib.AsyncExitStack() as stack:
            for i in range(5):
                await stack.enter_async_context(mqtt(client, f"p{i}"))
            page = await client.ok("GET", "/api/v3/connections")
            assert page["meta"] == {"page": 1, "limit": 4, "count": 5}  # default = the cap
            assert len(page["items"]) == 4
            page = await client.ok("GET", "/api/v3/connections?_page=2")
            assert len(page["items"]) == 1 and page["meta"]["count"] == 5
            page = await client.ok("GET", "/api/v3/connections?_limit=100")
            assert page["meta"]["limit"] == 4  # capped at max_row_limit
            seen = []
            for n in range(1, 6):
                page = await client.ok("GET", f"/api/v3/connections?_page={n}&_limit=1")
                assert page["meta"] == {"page": n, "limit": 1, "count": 5}
                seen += [r["client_id"] for r in page["items"]]
            assert sorted(seen) == [f"p{i}" for i in range(5)]
            page = await client.ok("GET", "/api/v3/connections?_page=99&_limit=2")
            assert page == {"items": [], "meta": {"page": 99, "limit": 2, "count": 5}}
            for bad in ("_page=0", "_page=-1", "_page=x", "_limit=0", "_limit=1.5", "_limit="):
                reply = await client.get(f"/api/v3/sessions?{bad}")
                assert reply.status == 400, bad
                assert reply.body["message"] in ("bad_page", "bad_limit")


async def test_session_reports_the_configured_max_subscriptions(
    app_factory: Callable[..., Any],
) -> None:
    """`max_subscriptions` is the limit the broker enforces (0 = unlimited), not a constant."""
    app = await app_factory(max_subscriptions=7)
    async with aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier="capped"):
        rows = await run_query(app.context, "sessions", {"client_id": "capped"})
    assert [r["max_subscriptions"] for r in rows] == [7]
