"""The endpoints added after the seed across a real cluster (NodeApps joined over the cluster
port, HTTP to each node's management listener): an app changed through one node is in force on
the others before the call answers, a node that joins later pulls the apps (tombstones too), a
persistent session is dropped on the node that holds it, and the cluster forms list every node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, basic, eventually, q
from cluster_support import ClusterNodes, converged, live

from broker.app import NodeApp
from management.apps import make_app, open_table

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"
TIMEOUT = aiohttp.ClientTimeout(total=10)

Start = Callable[..., Awaitable[NodeApp]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Start]:
    """Start a clustered NodeApp on port 0 (`join`: the apps to join through)."""
    nodes = ClusterNodes(tmp_path)
    yield nodes.start
    await nodes.stop_all()


async def call(
    app: NodeApp, method: str, path: str, auth: tuple[str, str] = ADMIN, **kw: Any
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{app.http_port}/api/v3{path}"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.request(method, url, headers=basic(*auth), **kw) as response,
    ):
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


async def status_as(app: NodeApp, auth: tuple[str, str]) -> int:
    status, _ = await call(app, "GET", "/brokers", auth)
    return status


async def test_an_app_changed_on_one_node_is_in_force_on_every_node_at_once(
    start_node: Start,
) -> None:
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)

    status, body = await call(a, "POST", "/apps", json={"app_id": "ops", "secret": "s3"})
    assert (status, body) == (200, {"secret": "s3"})
    ops = ("ops", "s3")
    # written on B before A answered: no waiting here
    assert await status_as(b, ops) == 200
    assert [r["app_id"] for r in (await call(b, "GET", "/apps"))[1]] == ["admin", "ops"]

    assert await call(a, "PUT", "/apps/ops", json={"status": False}) == (200, "ok")
    assert await status_as(b, ops) == 401
    assert await status_as(a, ops) == 401
    assert await call(b, "PUT", "/apps/ops", json={"status": True}) == (200, "ok")
    assert await status_as(a, ops) == 200

    assert await call(a, "DELETE", "/apps/ops") == (200, "ok")
    assert await status_as(b, ops) == 401
    assert (await call(b, "GET", "/apps/ops"))[0] == 404

    # the default app disabled through B is refused by A
    status, _ = await call(b, "POST", "/apps", json={"app_id": "root", "secret": "r"})
    assert status == 200
    assert await call(b, "PUT", "/apps/admin", json={"status": False}) == (200, "ok")
    assert await status_as(a, ADMIN) == 401
    assert await status_as(a, ("root", "r")) == 200


async def test_a_node_that_joins_later_pulls_the_apps_and_their_deletions(
    start_node: Start,
) -> None:
    a = await start_node(A)
    for app_id in ("kept", "gone"):
        status, _ = await call(a, "POST", "/apps", json={"app_id": app_id, "secret": "pw"})
        assert status == 200
    assert await call(a, "DELETE", "/apps/gone") == (200, "ok")
    # C holds an older copy of `gone` (from before the deletion) and an app of its own
    c_dir = Path(a.config.data_dir).parent / C
    table = open_table(c_dir)  # saved at once, as `minibroker apps add` does
    for app in (make_app("gone", "pw", now=1.0), make_app("local", "pw")):
        table.put(app.id, app.value(), app.updated_at)
    c = await start_node(C, a)
    await converged(a, c)
    assert c.apps.apps().get("local") is not None
    await eventually(lambda: c.apps.apps().get("kept") is not None)
    await eventually(lambda: c.apps.apps().get("gone") is None)  # the newer tombstone won
    assert await status_as(c, ("kept", "pw")) == 200
    assert await status_as(c, ("gone", "pw")) == 401
    # A pulled C's own app in turn (both sides resync when a node joins)
    await eventually(lambda: a.apps.apps().get("local") is not None)


async def test_drop_a_persistent_session_held_by_another_node(start_node: Start) -> None:
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)
    port = b.node.tcp_port
    async with aiomqtt.Client("127.0.0.1", port, identifier="keeper", clean_session=False) as c:
        await c.subscribe("keep/#", qos=1)
    await eventually(lambda: "keeper" not in b.broker.connected)
    assert "keeper" in b.broker.sessions
    status, rows = await call(a, "GET", "/sessions/keeper")
    assert status == 200 and [r["node"] for r in rows] == [B]

    assert await call(a, "DELETE", "/sessions/persistent/keeper") == (200, "ok")
    assert "keeper" not in b.broker.sessions
    assert await call(a, "GET", "/sessions/keeper") == (200, [])
    assert b.cluster is not None
    table = b.cluster.table
    await eventually(lambda: all(f != "keep/#" for f, _ in table.routes()))
    status, body = await call(a, "DELETE", "/sessions/persistent/keeper")
    assert (status, body["message"]) == (404, "session_not_found")


async def test_cluster_forms_list_every_node(start_node: Start) -> None:
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)
    b.alarms.raise_alarm("b_alarm", "on B", "raised on B", 1.0)
    b.alarms.clear_alarm("b_alarm", 2.0)
    status, history = await call(a, "GET", "/alarms/history")
    assert status == 200 and sorted(h["node"] for h in history) == [A, B]
    on_b = next(h for h in history if h["node"] == B)
    assert [x["id"] for x in on_b["alarms"]] == ["b_alarm"]
    status, node_history = await call(a, "GET", f"/alarms/history/{q(B)}")
    assert status == 200 and node_history == [on_b]

    status, configs = await call(a, "GET", "/configs")
    assert status == 200 and sorted(c["node"] for c in configs) == [A, B]
    status, rows = await call(a, "GET", f"/nodes/{q(B)}/configs")
    assert status == 200 and {r["key"]: r["value"] for r in rows}["node.name"] == B

    async with aiomqtt.Client("127.0.0.1", b.node.tcp_port, identifier="u1", username="carol"):
        status, rows = await call(a, "GET", "/connection/username/carol")
        assert status == 200 and [(r["client_id"], r["node"]) for r in rows] == [("u1", B)]

    assert await call(a, "PUT", f"/nodes/{q(B)}/plugins/presence/reload") == (200, "ok")
    assert b.plugins.get("presence") is not None and a.plugins.get("presence") is None


async def test_apps_changed_on_both_sides_of_a_partition_converge_when_it_heals(
    start_node: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each side drops every frame of the other until both see the other dead; apps changed
    meanwhile through each side's API converge (newest record wins) once frames flow again."""
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)
    assert a.cluster is not None and b.cluster is not None
    for app_id in ("both", "gone_on_a"):
        assert (await call(a, "POST", "/apps", json={"app_id": app_id, "secret": "pw"}))[0] == 200
    cut = True

    def unless_cut(other: str, handler: Callable[..., None]) -> Callable[..., None]:
        def filtered(hello: Any, *rest: Any) -> None:
            if not (cut and hello.name == other):
                handler(hello, *rest)

        return filtered

    for node, other in ((a, B), (b, A)):
        transport = node.cluster.transport  # type: ignore[union-attr]
        monkeypatch.setattr(transport, "on_frame", unless_cut(other, transport.on_frame))
        monkeypatch.setattr(transport, "on_heard", unless_cut(other, transport.on_heard))
    await eventually(lambda: live(a) == [A] and live(b) == [B], timeout=20)

    assert await call(a, "DELETE", "/apps/gone_on_a") == (200, "ok")
    assert await call(b, "PUT", "/apps/both", json={"desc": "changed on b"}) == (200, "ok")
    assert (await call(b, "POST", "/apps", json={"app_id": "new_on_b", "secret": "n"}))[0] == 200
    assert await status_as(b, ("gone_on_a", "pw")) == 200  # B has not heard of it yet
    cut = False
    await converged(a, b)
    for node in (a, b):
        await eventually(lambda node=node: "gone_on_a" not in node.apps.apps(), timeout=10)
        await eventually(lambda node=node: "new_on_b" in node.apps.apps(), timeout=10)
        assert node.apps.apps()["both"].desc == "changed on b"
    assert await status_as(b, ("gone_on_a", "pw")) == 401
    assert await status_as(a, ("new_on_b", "n")) == 200
