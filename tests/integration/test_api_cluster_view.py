"""The API over several nodes, through a `ClusterView` like the cluster's.

Two real nodes run in this process; `WireView` answers for both (and for a third, known but down)
by sending every query's args and result through msgpack, as the cluster's RPC will. This checks
that the query table only moves plain data and that cluster-wide endpoints gather, count and act
across nodes: lists, lookups, kick, subscribe on the node holding the session, bans, 404/503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from api_support import Api, check, eventually, make_api, mqtt, next_message
from conftest import make_config

from broker.app import NodeApp
from broker.server.config import ManagementConfig
from management.queries import NodeContext
from management.view import NodeDown, UnknownNode, run_query

A, B, DOWN = "a@127.0.0.1", "b@127.0.0.1", "down@127.0.0.1"
log = logging.getLogger(__name__)


def wire(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value), raw=False)


class WireView:
    """A ClusterView over in-process nodes; `None` marks a member that does not answer."""

    def __init__(self, local: NodeContext, others: dict[str, NodeContext | None]) -> None:
        self.local_node = local.node_name
        self.nodes: dict[str, NodeContext | None] = {local.node_name: local, **others}

    def node_names(self) -> list[str]:
        return [name for name, ctx in self.nodes.items() if ctx is not None]

    def is_known(self, node: str) -> bool:
        return node in self.nodes

    def stopped_nodes(self) -> list[str]:
        """As the cluster's membership: members declared dead (here: those that never answer)."""
        return [name for name, ctx in self.nodes.items() if ctx is None]

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        if node not in self.nodes:
            raise UnknownNode(node)
        ctx = self.nodes[node]
        if ctx is None:
            raise NodeDown(node)
        return wire(await run_query(ctx, query, wire(args)))

    async def call_all(self, query: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
        out = []
        for node in self.nodes:
            try:
                out.append((node, await self.call(node, query, args)))
            except NodeDown:
                log.warning("node %s did not answer %s", node, query)
        return out


@pytest.fixture(params=["test_client", "real_http"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """The API of node A (serving a WireView over A, B and a down node); `api.peer` is B."""
    b = NodeApp(make_config(tmp_path, node_name=B, data_dir=str(tmp_path / "b")))
    a = NodeApp(make_config(tmp_path, node_name=A, data_dir=str(tmp_path / "a")))
    a.view = WireView(a.context, {B: b.context, DOWN: None})  # swapped in before start()
    started: list[NodeApp] = []
    try:
        for app in (b, a):
            await app.start()
            started.append(app)
        async for client in make_api(a, request.param):
            client.peer = b  # type: ignore[attr-defined]
            yield client
    finally:
        for app in reversed(started):
            await app.stop()


def peer(api: Api) -> Api:
    """An Api-like handle whose tcp_port is node B's (for MQTT clients on B)."""
    other = Api(api.session, api.peer, api.mode)  # type: ignore[attr-defined]
    return other


async def test_cluster_lists_span_nodes_and_count_the_whole(pair: Api) -> None:
    brokers = await pair.ok("GET", "/api/v3/brokers")
    assert [b["node"] for b in brokers] == [A, B]  # local first, the down node skipped
    nodes = await pair.ok("GET", "/api/v3/nodes/")
    check(nodes, "node_with_node[]")
    assert [n["name"] for n in nodes] == [A, B, DOWN]  # the down one as Stopped
    async with mqtt(pair, "on-a") as ca, mqtt(peer(pair), "on-b") as cb:
        await ca.subscribe("t/a")
        await cb.subscribe("t/b", qos=1)
        page = await pair.ok("GET", "/api/v3/connections?_limit=1&_page=2")
        check(page, "page:connection")
        assert page["meta"]["count"] == 2 and [r["node"] for r in page["items"]] == [B]
        sessions = await pair.ok("GET", "/api/v3/sessions")
        assert {(r["client_id"], r["node"]) for r in sessions["items"]} == {
            ("on-a", A),
            ("on-b", B),
        }
        subs = await pair.ok("GET", "/api/v3/subscriptions/on-b")
        assert subs == [{"node": B, "topic": "t/b", "client_id": "on-b", "qos": 1}]
        routes = await pair.ok("GET", "/api/v3/routes")
        assert {(r["topic"], r["node"]) for r in routes["items"]} == {("t/a", A), ("t/b", B)}
        assert await pair.ok("GET", "/api/v3/routes/t%2Fb") == [{"topic": "t/b", "node": B}]
        on_b = await pair.ok("GET", f"/api/v3/nodes/{B}/connections/on-b")
        assert [r["node"] for r in on_b] == [B]
        assert await pair.ok("GET", f"/api/v3/nodes/{A}/connections/on-b") == []
        for key in ("plugins", "listeners", "metrics", "alarms"):
            per_node = await pair.ok("GET", f"/api/v3/{key}/")
            assert [x["node"] for x in per_node] == [A, B]
        stats = await pair.ok("GET", "/api/v3/stats")
        assert [(s["node"], s["connections/count"]) for s in stats] == [(A, 1), (B, 1)]


async def test_down_node_is_503_and_unknown_node_404(pair: Api) -> None:
    # the node itself is listed and shown as Stopped (EMQX), its other endpoints are 503
    assert await pair.ok("GET", f"/api/v3/nodes/{DOWN}") == {"name": DOWN, "node_status": "Stopped"}
    nodes = await pair.ok("GET", "/api/v3/nodes")
    assert [(n["node"], n["node_status"]) for n in nodes] == [
        (A, "Running"),
        (B, "Running"),
        (DOWN, "Stopped"),
    ]
    for path in (f"/api/v3/brokers/{DOWN}",
                 f"/api/v3/nodes/{DOWN}/sessions", f"/api/v3/alarms/{DOWN}"):  # fmt: skip
        reply = await pair.get(path)
        assert (reply.status, reply.body) == (503, {"message": "nodedown"}), path
    reply = await pair.put(f"/api/v3/nodes/{DOWN}/plugins/presence/load")
    assert reply.status == 503
    reply = await pair.get("/api/v3/nodes/nobody@127.0.0.1/stats")
    assert (reply.status, reply.body) == (404, {"message": "not_found"})


async def test_actions_reach_the_node_that_holds_the_client(pair: Api) -> None:
    async with mqtt(peer(pair), "dev/b") as client, mqtt(peer(pair), "pub-b") as pub:
        body = {"client_id": "dev/b", "topic": "cmd/#", "qos": 1}
        assert await pair.ok("POST", "/api/v3/mqtt/subscribe", json=body) == {"code": 0}
        await pub.publish("cmd/1", b"via A", qos=1)
        message = await next_message(client)
        assert message.payload == b"via A"
        body = {"client_id": "dev/b", "topic": "cmd/#"}
        assert await pair.ok("POST", "/api/v3/mqtt/unsubscribe", json=body) == {"code": 0}
        assert pair.peer.broker.sessions["dev/b"].subscriptions == {}  # type: ignore[attr-defined]
        assert await pair.ok("DELETE", "/api/v3/connections/dev%2Fb") == "ok"
        await eventually(lambda: "dev/b" not in pair.peer.broker.connected)  # type: ignore[attr-defined]


async def test_a_ban_applies_on_every_node(pair: Api) -> None:
    async with mqtt(peer(pair), "evil"):
        reply = await pair.post("/api/v3/banned", json={"who": "evil", "as": "client_id"})
        assert reply.status == 201
        await eventually(lambda: "evil" not in pair.peer.broker.connected)  # type: ignore[attr-defined]
    for app in (pair.app, pair.peer):  # type: ignore[attr-defined]
        assert app.broker.banned.get("client_id", "evil") is not None
    page = await pair.ok("GET", "/api/v3/banned")
    assert page["meta"]["count"] == 1  # the union, not one row per node
    assert await pair.ok("DELETE", "/api/v3/banned/evil?as=client_id") == "ok"
    for app in (pair.app, pair.peer):  # type: ignore[attr-defined]
        assert app.broker.banned.get("client_id", "evil") is None


async def test_every_query_moves_plain_data(pair: Api) -> None:
    """Each endpoint answered through the msgpack round trip (a TypeError would be a 500)."""
    async with mqtt(pair, "x1") as c, mqtt(peer(pair), "x2"):
        await c.subscribe("q/#")
        paths = [f"/api/v3/nodes/{B}"] + [
            f"/api/v3/{key}"
            for key in ("brokers", "nodes", "connections", "sessions", "subscriptions", "routes",
                        "plugins", "listeners", "metrics", "stats", "alarms", "banned")
        ]  # fmt: skip
        for path in paths:
            assert (await pair.get(path)).status == 200, path
        assert await pair.ok("POST", "/api/v3/mqtt/publish", json={"topic": "q/1"}) == {"code": 0}
        assert await pair.ok("PUT", f"/api/v3/nodes/{B}/plugins/presence/load") == "ok"
        reply = await pair.put(f"/api/v3/nodes/{B}/plugins/presence/load")
        assert (reply.status, reply.body) == (409, {"message": "already_started"})
        assert await pair.ok("PUT", f"/api/v3/nodes/{B}/plugins/presence/unload") == "ok"


async def test_down_node_in_the_emqx_format(tmp_path: Path) -> None:
    """EMQX code 101 (badrpc) for a member that does not answer and for a stranger; the down
    member itself is listed as Stopped inside the envelope."""
    management = ManagementConfig(bind="127.0.0.1", port=0, api_format="emqx")
    a = NodeApp(make_config(tmp_path, node_name=A, management=management))
    a.view = WireView(a.context, {DOWN: None})
    await a.start()
    try:
        async for api in make_api(a, "real_http"):
            reply = await api.get(f"/api/v3/nodes/{DOWN}/stats")
            assert (reply.status, reply.body) == (200, {"code": 101, "message": "nodedown"})
            reply = await api.get("/api/v3/nodes/nobody@127.0.0.1/stats")
            assert (reply.status, reply.body) == (200, {"code": 101, "message": "not_found"})
            reply = await api.get(f"/api/v3/nodes/{DOWN}")
            assert reply.body == {"code": 0, "data": {"name": DOWN, "node_status": "Stopped"}}
    finally:
        await a.stop()
