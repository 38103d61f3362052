"""`minibroker ctl cluster join | leave | force-leave` against real nodes (REST over HTTP, the
cluster over TCP, MQTT clients). Three `NodeApp`s in this process with the cluster on port 0;
the ctl (blocking urllib) runs in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from api_support import eventually, next_message
from cluster_support import ClusterNodes

from broker.app import NodeApp
from broker.cli import main

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"
Start = Callable[..., Awaitable[NodeApp]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Start]:
    nodes = ClusterNodes(tmp_path)
    yield nodes.start
    await nodes.stop_all()


async def ctl(capsys: pytest.CaptureFixture[str], app: NodeApp, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    url = f"http://127.0.0.1:{app.http_port}"
    code = await asyncio.to_thread(main, ["ctl", "--url", url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def live(app: NodeApp) -> list[str]:
    assert app.cluster is not None
    return sorted(app.cluster.live_nodes())


def routes(app: NodeApp) -> list[tuple[str, str]]:
    assert app.cluster is not None
    return app.cluster.table.routes()


def client(app: NodeApp, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, timeout=5.0)


@pytest.fixture
async def trio(start_node: Start) -> tuple[NodeApp, NodeApp, NodeApp]:
    a = await start_node(A)
    b = await start_node(B, a)
    c = await start_node(C, a)
    await eventually(lambda: all(live(x) == [A, B, C] for x in (a, b, c)))
    return a, b, c


async def test_leave_then_join_again(
    trio: tuple[NodeApp, NodeApp, NodeApp], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = trio
    async with client(b, "on-b") as on_b, client(a, "on-a") as on_a:
        await on_b.subscribe("x/#", qos=1)
        await eventually(lambda: ("x/#", B) in routes(a))
        code, out, err = await ctl(capsys, b, "cluster", "leave")
        assert code == 0, err
        assert out.strip() == f"ok: {B} left the cluster; it runs alone until `cluster join`"
        # the others hear the LEAVE at once (no failure detection needed); b stands alone
        await eventually(lambda: live(a) == live(c) == [A, C])
        assert live(b) == [B] and ("x/#", B) not in routes(a)
        assert a.cluster is not None and b.cluster is not None
        assert a.cluster.membership.get(B).state.name == "LEFT"  # type: ignore[union-attr]
        await asyncio.sleep(1.5)  # a join retry / reconnect period: b stays alone
        assert live(b) == [B] and live(a) == [A, C]
        await on_a.publish("x/1", b"not for b", qos=1)
        # ...and joins again through a's cluster address
        code, out, err = await ctl(capsys, b, "cluster", "join", f"127.0.0.1:{a.cluster_port}")
        assert code == 0, err
        assert out.strip() == f"ok: {B} joins the cluster through 127.0.0.1:{a.cluster_port}"
        await eventually(lambda: all(live(x) == [A, B, C] for x in (a, b, c)))
        await eventually(lambda: ("x/#", B) in routes(a))  # its routes are announced again
        await on_a.publish("x/2", b"for b again", qos=1)
        assert (await next_message(on_b)).payload == b"for b again"


async def test_force_leave_of_an_alive_node_asks_it_to_leave(
    trio: tuple[NodeApp, NodeApp, NodeApp], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = trio
    code, out, err = await ctl(capsys, a, "cluster", "force-leave", C)
    assert code == 0, err
    assert out.strip() == f"ok: {C} was asked to leave and left"
    await eventually(lambda: live(a) == live(b) == [A, B] and live(c) == [C])
    # it left for good: a join retry period later it is still alone
    await asyncio.sleep(1.5)
    assert live(c) == [C] and live(a) == [A, B]


async def test_force_leave_of_a_dead_node_marks_it_left_everywhere(
    start_node: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await start_node(A)
    b = await start_node(B, a)
    c = await start_node(C, a)
    await eventually(lambda: all(live(x) == [A, B, C] for x in (a, b, c)))
    assert a.cluster is not None and b.cluster is not None and c.cluster is not None
    # c dies without a word: its cluster runtime stops answering (its timer and listener go)
    c.cluster._running = False
    await c.cluster.transport.close()
    await eventually(lambda: a.cluster.membership.get(C).state.name == "DEAD", timeout=15)  # type: ignore[union-attr]
    code, out, err = await ctl(capsys, a, "cluster", "force-leave", C)
    assert code == 0, err
    assert out.strip() == f"ok: {C} is marked left"
    await eventually(lambda: b.cluster.membership.get(C).state.name == "LEFT")  # type: ignore[union-attr]
    code, _, err = await ctl(capsys, a, "cluster", "force-leave", C)
    assert code == 1 and "not found" in err


async def test_errors(
    trio: tuple[NodeApp, NodeApp, NodeApp], capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, _ = trio
    code, _, err = await ctl(capsys, a, "cluster", "force-leave", "nobody@127.0.0.1")
    assert code == 1 and "not found: node 'nobody@127.0.0.1'" in err
    code, _, err = await ctl(capsys, a, "cluster", "force-leave", A)
    assert code == 1 and "use `cluster leave`" in err
    code, _, err = await ctl(capsys, a, "cluster", "join", "no-port")
    assert code == 1 and "bad seed 'no-port'" in err
    assert live(a) == [A, B, C]


async def test_a_node_without_cluster_says_so(
    app_factory: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    app: NodeApp = await app_factory()
    for argv in (("leave",), ("join", "127.0.0.1:7946"), ("force-leave", "x@h")):
        code, _, err = await ctl(capsys, app, "cluster", *argv)
        assert code == 1 and "without [cluster]" in err, argv
