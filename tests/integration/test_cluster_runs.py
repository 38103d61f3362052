"""The QoS 0 fast path on clustered nodes (`cluster.runs`), real nodes and real clients.

A burst of plain QoS 0 PUBLISHes written in one go by raw clients on node A reaches raw,
aiomqtt (5.0) and paho subscribers on A and on B as the very bytes the publisher sent, in
order per publisher, travelling to B as run entries of FORWARD_BATCH, with every counter
(REST metrics and the cluster stats of both nodes) exactly what the packet path counts; a
topic no other node routes takes the run path on a node with a live peer; and a peer whose
link negotiated an older protocol (3, 2) still gets every message, through the old path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import aiomqtt
import pytest
from cluster_support import ClusterNodes, converged
from rawclient import RawClient
from runs_support import rest_metrics, run_spy
from test_core_support import (
    TIMEOUT,
    collect,
    eventually,
    paho_client,
    raw_publish_qos1,
    raw_subscribe,
)

import cluster.transport as transport_module
from broker.app import NodeApp
from broker.protocol.codec import encode
from broker.protocol.packets import Packet, Publish
from cluster.wire import Body, hello_ack_body, hello_body


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[ClusterNodes]:
    cluster = ClusterNodes(tmp_path)
    yield cluster
    await cluster.stop_all()


def burst(name: str, n: int) -> list[Publish]:
    """`n` numbered messages of publisher `name` on bench/<name> (two payload sizes)."""
    return [
        Publish(f"runs/{name}", f"{name}{i:05d}".encode() * (1 if i % 4 else 3)) for i in range(n)
    ]


async def recv_n(client: RawClient, n: int) -> list[Packet]:
    async with asyncio.timeout(3 * TIMEOUT):
        return [await client.recv(3 * TIMEOUT) for _ in range(n)]


async def routed(a: NodeApp, topic: str, node: str) -> None:
    """Wait until `a` knows that `node` has a route for `topic`."""
    assert a.cluster is not None
    cluster = a.cluster
    await eventually(lambda: node in cluster.table.remote_match(topic), timeout=10)


def counters(app: NodeApp) -> dict[str, int]:
    return dict(app.node.broker.metrics.counters)


def delta(app: NodeApp, before: dict[str, int], name: str) -> int:
    return app.node.broker.metrics.counters[name] - before.get(name, 0)


def cluster_stats(app: NodeApp) -> dict[str, int]:
    assert app.cluster is not None
    return dict(app.cluster.stats)


async def test_a_burst_reaches_subscribers_on_both_nodes_as_bytes(nodes: ClusterNodes) -> None:
    a = await nodes.start("a")
    b = await nodes.start("b", a)
    await converged(a, b)
    b_name = b.config.node_name
    sub_a, _ = await RawClient.connect(a.node.tcp_port, "sub-a")
    assert await raw_subscribe(sub_a, ("runs/#", 0)) == [0]
    sub_b, _ = await RawClient.connect(b.node.tcp_port, "sub-b")
    assert await raw_subscribe(sub_b, ("runs/#", 0)) == [0]
    got_paho: list[tuple[str, bytes]] = []
    paho = paho_client("paho-b")
    paho.on_message = lambda c, u, m: got_paho.append((m.topic, m.payload))
    paho.on_connect = lambda c, u, f, rc, p: c.subscribe("runs/p1", 0)
    paho.connect("127.0.0.1", b.node.tcp_port)
    paho.loop_start()
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            b.node.tcp_port,
            identifier="aio-b",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as aio_b:
            await aio_b.subscribe("runs/p2", 0)
            await eventually(lambda: "paho-b" in b.node.broker.connected)
            await eventually(lambda: bool(b.node.broker.sessions["paho-b"].subscriptions))
            for topic in ("runs/p1", "runs/p2"):
                await routed(a, topic, b_name)
            first, second = burst("p1", 600), burst("p2", 400)
            total = len(first) + len(second) + 2  # and a QoS 1 sentinel per publisher
            before_a, before_b = counters(a), counters(b)
            stats_a, stats_b = cluster_stats(a), cluster_stats(b)
            p1, _ = await RawClient.connect(a.node.tcp_port, "p1")
            p2, _ = await RawClient.connect(a.node.tcp_port, "p2")
            with run_spy() as runs:
                p1.send_raw(b"".join(encode(m) for m in first[:300]))
                p2.send_raw(b"".join(encode(m) for m in second))
                p1.send_raw(b"".join(encode(m) for m in first[300:]))
                await raw_publish_qos1(p1, "runs/p1", b"end1", 1)
                await raw_publish_qos1(p2, "runs/p2", b"end2", 1)
            assert sum(n for n in runs if n > 0) >= total - 10, runs  # (reads may cut a run)

            want1 = [*first, Publish("runs/p1", b"end1")]
            want2 = [*second, Publish("runs/p2", b"end2")]
            for sub in (sub_a, sub_b):
                got = await recv_n(sub, total)
                # Byte for byte what was sent (QoS 0 for the sentinel: the subscription's).
                mine1 = [encode(p) for p in got if isinstance(p, Publish) and p.topic == "runs/p1"]
                mine2 = [encode(p) for p in got if isinstance(p, Publish) and p.topic == "runs/p2"]
                assert mine1 == [encode(m) for m in want1]
                assert mine2 == [encode(m) for m in want2]
            aio_got = await collect(aio_b, len(want2), timeout=3 * TIMEOUT)
            assert [m.payload for m in aio_got] == [m.payload for m in want2]
            await eventually(lambda: len(got_paho) == len(want1), timeout=3 * TIMEOUT)
            assert got_paho == [(m.topic, m.payload) for m in want1]

            # Counted as the packet path counts, on both nodes.
            assert delta(a, before_a, "messages/received") == total
            assert delta(a, before_a, "messages/forward") == total  # one other node
            assert delta(a, before_a, "messages/sent") == total  # sub-a
            assert delta(a, before_a, "messages/dropped") == 0
            assert delta(b, before_b, "messages/sent") == 2 * total  # sub-b; paho + aio
            assert delta(b, before_b, "messages/dropped") == 0
            now_a, now_b = cluster_stats(a), cluster_stats(b)
            assert now_a["forward/sent"] - stats_a.get("forward/sent", 0) == total
            assert now_b["forward/received"] - stats_b.get("forward/received", 0) == total
            # ... and most of it as run entries, delivered as runs on B.
            assert now_a["forward/runs"] - stats_a.get("forward/runs", 0) >= 2
            assert now_b["forward/runs_received"] - stats_b.get("forward/runs_received", 0) >= 2
            assert now_b.get("forward/malformed", 0) == 0
            for app in (a, b):
                rest = await rest_metrics(app)
                live = app.node.broker.metrics.counters
                for name in ("messages/received", "messages/sent", "messages/forward"):
                    assert rest[name] == live[name], (app.config.node_name, name)
            await p1.close()
            await p2.close()
    finally:
        paho.loop_stop()
        paho.disconnect()
        await sub_a.close()
        await sub_b.close()


async def test_a_topic_no_other_node_routes_takes_the_run_path(nodes: ClusterNodes) -> None:
    a = await nodes.start("a")
    b = await nodes.start("b", a)
    await converged(a, b)
    assert a.cluster is not None and a.node.broker.forward_hooks  # a live peer
    sub_b, _ = await RawClient.connect(b.node.tcp_port, "sub-b")
    assert await raw_subscribe(sub_b, ("elsewhere/#", 0)) == [0]
    await routed(a, "elsewhere/x", b.config.node_name)
    sub_a, _ = await RawClient.connect(a.node.tcp_port, "sub-a")
    assert await raw_subscribe(sub_a, ("local/#", 0)) == [0]
    messages = burst("p", 500)
    local = [Publish("local/t", m.payload) for m in messages]
    before = counters(a)
    stats = cluster_stats(a)
    publisher, _ = await RawClient.connect(a.node.tcp_port, "p")
    forward_run = mock.Mock(wraps=a.cluster.runs.forward_run)
    with run_spy() as runs, mock.patch.object(a.cluster.runs, "forward_run", forward_run):
        publisher.send_raw(b"".join(encode(m) for m in local))
        await raw_publish_qos1(publisher, "local/end", b"end", 1)
    assert runs and all(n > 0 for n in runs) and sum(runs) == len(local), runs
    assert forward_run.call_count == 0
    got = await recv_n(sub_a, len(local) + 1)
    assert [encode(p) for p in got] == [encode(m) for m in [*local, Publish("local/end", b"end")]]
    assert delta(a, before, "messages/forward") == 0
    assert cluster_stats(a).get("forward/runs", 0) == stats.get("forward/runs", 0)
    await publisher.close()
    await sub_a.close()
    await sub_b.close()


def announce(name: str, version: int) -> tuple[Callable[..., Body], Callable[..., Body]]:
    """`hello_body` and `hello_ack_body` that make node `name` speak protocol `version`."""

    def hello(cookie: str, node: str, epoch: int, address: Any) -> Body:
        body = hello_body(cookie, node, epoch, address)
        if node == name:
            body["version"] = version
        return body

    def hello_ack(
        node: str, epoch: int, address: Any, peer_version: int, error: Any = None
    ) -> Body:
        if node == name:
            peer_version = min(peer_version, version)
        return hello_ack_body(node, epoch, address, peer_version, error)

    return hello, hello_ack


@pytest.mark.parametrize("old", [3, 2])
async def test_a_peer_of_an_older_protocol_gets_every_message(
    nodes: ClusterNodes, old: int
) -> None:
    """Node B speaks protocol `old` (no run entries): A's runs to it go message by message."""
    hello, hello_ack = announce("b", old)
    with (
        mock.patch.object(transport_module, "hello_body", hello),
        mock.patch.object(transport_module, "hello_ack_body", hello_ack),
    ):
        a = await nodes.start("a")
        b = await nodes.start("b", a)
        await converged(a, b)
        assert a.cluster is not None and b.cluster is not None
        sub_b, _ = await RawClient.connect(b.node.tcp_port, "sub-b")
        assert await raw_subscribe(sub_b, ("runs/#", 0)) == [0]
        await routed(a, "runs/p", b.config.node_name)
        link = a.cluster.transport.peer_version(b.cluster.address)
        assert link == old
        messages = burst("p", 500)
        before_a, stats_a = counters(a), cluster_stats(a)
        publisher, _ = await RawClient.connect(a.node.tcp_port, "p")
        publisher.send_raw(b"".join(encode(m) for m in messages))
        await raw_publish_qos1(publisher, "runs/p", b"end", 1)
        got = await recv_n(sub_b, len(messages) + 1)
        want = [*messages, Publish("runs/p", b"end")]
        assert [encode(p) for p in got] == [encode(m) for m in want]
        assert delta(a, before_a, "messages/forward") == len(want)
        assert cluster_stats(a).get("forward/runs", 0) == stats_a.get("forward/runs", 0)
        assert cluster_stats(b).get("forward/runs_received", 0) == 0
        await publisher.close()
        await sub_b.close()


async def test_while_a_moved_session_is_followed_runs_take_the_packet_path(
    nodes: ClusterNodes,
) -> None:
    """`cluster.handoff` looks at every message while a session moved lately: no run then,
    on the publisher's node nor on the receiving one, and every message still arrives."""
    from cluster.handoff import Handoff

    a = await nodes.start("a")
    b = await nodes.start("b", a)
    await converged(a, b)
    sub_b, _ = await RawClient.connect(b.node.tcp_port, "sub-b")
    assert await raw_subscribe(sub_b, ("runs/#", 0)) == [0]
    await routed(a, "runs/p", b.config.node_name)
    messages = burst("p", 300)
    publisher, _ = await RawClient.connect(a.node.tcp_port, "p")
    active = mock.PropertyMock(return_value=True)
    on_message = mock.Mock()
    with (
        run_spy() as runs,
        mock.patch.object(Handoff, "active", active),
        mock.patch.object(Handoff, "on_message", on_message),
    ):
        publisher.send_raw(b"".join(encode(m) for m in messages))
        await raw_publish_qos1(publisher, "runs/p", b"end", 1)
        got = await recv_n(sub_b, len(messages) + 1)
    assert runs and all(n < 0 for n in runs), runs
    want = [*messages, Publish("runs/p", b"end")]
    assert [encode(p) for p in got] == [encode(m) for m in want]
    # each message seen by the handoff on both nodes (published on A, arrived on B)
    assert on_message.call_count == 2 * len(want)
    await publisher.close()
    await sub_b.close()
