"""The cluster runtime in one process: three `NodeApp`s with the cluster on port 0 join node A.

Real sockets throughout (MQTT clients with aiomqtt, the cluster links, the management API over
HTTP). Every wait is bounded (`eventually`); nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, basic, eventually, next_message, q
from cluster_support import ClusterNodes, converged, live
from rawclient import RawClient

from broker.app import NodeApp
from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_5, ReasonCode
from broker.protocol.packets import ConnAck, PubAck, Publish, Subscribe, SubscriptionRequest
from cluster.members import MemberState
from cluster.rpc import NodeUnreachable, RemoteError
from cluster.transport import TransportConfig
from cluster.wire import Address, Body, MessageType

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"
TIMEOUT = 5.0

Start = Callable[..., Awaitable[NodeApp]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Start]:
    """Start a NodeApp with the cluster enabled on port 0 (`join`: apps to join through)."""
    nodes = ClusterNodes(tmp_path)
    yield nodes.start
    await nodes.stop_all()


@pytest.fixture
async def trio(start_node: Start) -> tuple[NodeApp, NodeApp, NodeApp]:
    a = await start_node(A)
    b = await start_node(B, a)
    c = await start_node(C, a)
    await converged(a, b, c)
    return a, b, c


def client(app: NodeApp, client_id: str, **kwargs: Any) -> aiomqtt.Client:
    kwargs.setdefault("timeout", TIMEOUT)
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, **kwargs)


def routes(app: NodeApp) -> list[tuple[str, str]]:
    assert app.cluster is not None
    return app.cluster.table.routes()


def counter(app: NodeApp, name: str) -> int:
    return app.broker.metrics.counters[name]


async def routed(filt: str, node: str, *apps: NodeApp) -> None:
    await eventually(lambda: all((filt, node) in routes(app) for app in apps))


async def test_cross_node_delivery_keeps_qos(trio: tuple[NodeApp, NodeApp, NodeApp]) -> None:
    a, b, c = trio
    async with client(c, "sub2") as sub2, client(b, "sub1") as sub1, client(a, "pub") as pub:
        await sub2.subscribe("x/#", qos=2)
        await sub1.subscribe("x/#", qos=1)
        await routed("x/#", C, a)
        await routed("x/#", B, a)
        for qos in (0, 1, 2):
            payload = f"q{qos}".encode()
            await pub.publish(f"x/{qos}", payload, qos=qos)
            got2 = await next_message(sub2)
            got1 = await next_message(sub1)
            assert (got2.payload, got2.qos) == (payload, qos)  # min(pub, sub 2)
            assert (got1.payload, got1.qos) == (payload, min(qos, 1))
    # one FORWARD per node with a matching route, not per subscriber
    assert counter(a, "messages/forward") == 6
    assert counter(b, "messages/forward") == counter(c, "messages/forward") == 0


async def test_one_forward_per_node_whatever_the_subscribers(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, _ = trio
    async with client(b, "s1") as s1, client(b, "s2") as s2, client(a, "pub") as pub:
        await s1.subscribe("m/+")
        await s2.subscribe("m/#")
        await routed("m/+", B, a)
        await routed("m/#", B, a)
        await pub.publish("m/1", b"one")
        assert (await next_message(s1)).payload == b"one"
        assert (await next_message(s2)).payload == b"one"
    assert counter(a, "messages/forward") == 1
    assert counter(a, "messages/dropped") == 0  # forwarded is not dropped


async def test_puback_success_when_only_remote_subscribers_match_MQTT_3_4_2_1(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    """A 5.0 publisher whose only subscriber is on another node gets PUBACK 0x00, not 0x10."""
    a, b, _ = trio
    async with client(b, "far-sub") as sub:
        await sub.subscribe("far/t", qos=1)
        await routed("far/t", B, a)
        pub, ack = await RawClient.connect(a.node.tcp_port, "near-pub", MQTT_5)
        try:
            assert isinstance(ack, ConnAck) and ack.reason_code == 0
            pub.send(Publish("far/t", b"x", qos=1, packet_id=7))
            puback = await pub.recv()
            assert isinstance(puback, PubAck) and puback.packet_id == 7
            assert puback.reason_code == ReasonCode.SUCCESS
            assert (await next_message(sub)).payload == b"x"
        finally:
            await pub.close()


async def test_route_withdrawn_when_the_last_subscriber_leaves(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    async with client(b, "w1") as w1, client(b, "w2") as w2, client(a, "pub") as pub:
        await w1.subscribe("w/t")
        await w2.subscribe("w/t")
        await routed("w/t", B, a, c)
        await pub.publish("w/t", b"1")
        await next_message(w1)
        assert counter(a, "messages/forward") == 1
        await w1.unsubscribe("w/t")
        await asyncio.sleep(0.3)  # (a withdrawal would have reached A by now: it must not)
        assert ("w/t", B) in routes(a)
        await w2.unsubscribe("w/t")
        await eventually(lambda: ("w/t", B) not in routes(a) and ("w/t", B) not in routes(c))
        dropped = counter(a, "messages/dropped")
        await pub.publish("w/t", b"2", qos=1)
        await eventually(lambda: counter(a, "messages/dropped") == dropped + 1)
        assert counter(a, "messages/forward") == 1  # no subscriber anywhere: not forwarded


async def test_retained_replicated_to_every_node(
    trio: tuple[NodeApp, NodeApp, NodeApp], start_node: Start
) -> None:
    a, b, c = trio
    async with client(a, "pub") as pub:
        await pub.publish("r/1", b"kept", qos=1, retain=True)
        await eventually(lambda: all(app.broker.retained.get("r/1") for app in trio))
        async with client(c, "late") as late:
            await late.subscribe("r/#", qos=1)
            got = await next_message(late)
            assert (got.topic.value, got.payload, got.retain) == ("r/1", b"kept", True)
        # a node that joins later pulls the retained set
        d = await start_node("d@127.0.0.1", b)
        await eventually(lambda: d.broker.retained.get("r/1") is not None)
        async with client(d, "on-d") as on_d:
            await on_d.subscribe("r/1")
            assert (await next_message(on_d)).payload == b"kept"
        # clearing with an empty payload clears it on every node (that A knows of)
        await converged(*trio, d)
        await pub.publish("r/1", b"", qos=1, retain=True)
        await eventually(lambda: all(app.broker.retained.get("r/1") is None for app in (*trio, d)))


async def http(app: NodeApp, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(
            f"http://127.0.0.1:{app.http_port}", headers=basic(*ADMIN)
        ) as session,
        session.request(method, path, **kw) as reply,
    ):
        return reply.status, await reply.json()


async def test_rest_api_of_any_node_sees_the_cluster(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    async with client(b, "dev-b") as dev_b, client(c, "dev-c"):
        await dev_b.subscribe("rest/#")
        await routed("rest/#", B, a, c)
        status, page = await http(a, "GET", "/api/v3/connections")
        assert status == 200
        assert {(r["client_id"], r["node"]) for r in page["items"]} == {("dev-b", B), ("dev-c", C)}
        status, nodes = await http(c, "GET", "/api/v3/nodes")
        assert status == 200 and [n["name"] for n in nodes] == [C, A, B]  # local first
        status, on_b = await http(a, "GET", f"/api/v3/nodes/{q(B)}/connections")
        assert status == 200 and [r["client_id"] for r in on_b["items"]] == ["dev-b"]
        status, page = await http(c, "GET", "/api/v3/routes")
        assert status == 200 and {"topic": "rest/#", "node": B} in page["items"]
        status, body = await http(a, "GET", "/api/v3/nodes/nobody@127.0.0.1/connections")
        assert (status, body) == (404, {"message": "not_found"})
        # actions reach the node holding the client: publish on A, kick on B
        status, body = await http(a, "POST", "/api/v3/mqtt/publish",
                                  json={"topic": "rest/1", "payload": "hi", "qos": 1})  # fmt: skip
        assert (status, body) == (200, {"code": 0})
        assert (await next_message(dev_b)).payload == b"hi"
        status, body = await http(c, "DELETE", "/api/v3/connections/dev-b")
        assert (status, body) == (200, "ok")
        await eventually(lambda: "dev-b" not in b.broker.connected)


async def test_ban_from_any_node_and_pulled_by_a_new_node(
    trio: tuple[NodeApp, NodeApp, NodeApp], start_node: Start
) -> None:
    _, b, c = trio
    async with client(c, "evil"):
        status, _ = await http(b, "POST", "/api/v3/banned", json={"who": "evil", "as": "client_id"})
        assert status == 201
        await eventually(lambda: "evil" not in c.broker.connected)
    for app in trio:
        assert app.broker.banned.get("client_id", "evil") is not None
    d = await start_node("d@127.0.0.1", c)
    await eventually(lambda: d.broker.banned.get("client_id", "evil") is not None)
    with pytest.raises(aiomqtt.MqttError):
        async with client(d, "evil"):
            pass


async def test_leaving_node_is_purged_and_answers_503(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    keep = client(c, "keep")
    await keep.__aenter__()
    try:
        await keep.subscribe("bye/#")
        await routed("bye/#", C, a, b)
        await c.stop()  # a graceful leave, with the route still there
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await keep.__aexit__(None, None, None)
    await eventually(lambda: live(a) == [A, B] and ("bye/#", C) not in routes(a))
    assert a.cluster is not None and a.cluster.membership.get(C) is not None
    assert a.cluster.membership.get(C).state is MemberState.LEFT  # type: ignore[union-attr]
    status, body = await http(a, "GET", f"/api/v3/nodes/{q(C)}/stats")
    assert (status, body) == (503, {"message": "nodedown"})
    # /nodes lists the departed member as Stopped, as EMQX does (API.md, "Added after the seed")
    status, nodes = await http(a, "GET", "/api/v3/nodes")
    assert status == 200 and [(n["name"], n["node_status"]) for n in nodes] == [
        (A, "Running"),
        (B, "Running"),
        (C, "Stopped"),
    ]
    assert nodes[2] == {"node": C, "name": C, "node_status": "Stopped"}
    status, body = await http(a, "GET", f"/api/v3/nodes/{q(C)}")
    assert (status, body) == (200, {"name": C, "node_status": "Stopped"})


async def test_rpc_call_and_errors(trio: tuple[NodeApp, NodeApp, NodeApp]) -> None:
    a, b, _ = trio
    assert a.cluster is not None and b.cluster is not None

    async def echo(args: dict[str, Any], from_node: str) -> Any:
        return {"args": args, "from": from_node}

    b.cluster.register_rpc("test.echo", echo)
    assert await a.cluster.call(B, "test.echo", {"x": [1, b"2"]}) == {
        "args": {"x": [1, b"2"]},
        "from": A,
    }
    assert (await a.cluster.call(B, "stats", {}))["connections/count"] == 0  # a query
    with pytest.raises(RemoteError):
        await a.cluster.call(B, "no.such.method", {})
    with pytest.raises(NodeUnreachable):
        await a.cluster.call("nobody@127.0.0.1", "stats", {})
    answers = await a.cluster.call_all("test.echo", {})
    assert [node for node, _ in answers] == [B]  # A and C have no such method: skipped


async def test_wrong_cookie_is_refused(start_node: Start) -> None:
    a = await start_node(A)
    stranger = await start_node("x@127.0.0.1", a, cookie="not-the-cookie")
    assert a.cluster is not None and stranger.cluster is not None
    await eventually(lambda: a.cluster.transport.stats["refused"] >= 1)  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert live(a) == [A] and live(stranger) == ["x@127.0.0.1"]
    assert a.cluster.membership.get("x@127.0.0.1") is None


async def test_send_queue_is_bounded_and_drops_are_counted(start_node: Start) -> None:
    a = await start_node(A)
    assert a.cluster is not None
    transport = a.cluster.transport
    transport.config = TransportConfig(max_queue=3, backoff_min=5.0)
    from cluster.wire import MessageType

    # a peer address where nobody listens: the first sends queue while connecting, then the
    # link fails and the queue is dropped; during the backoff every send is dropped at once
    sent = [transport.send(("127.0.0.1", 1), MessageType.GOSSIP, {"from": A}) for _ in range(5)]
    assert sent == [True, True, True, False, False]
    await eventually(lambda: transport.stats["dropped"] == 5)
    assert transport.stats["dropped/queue_full"] == 2
    assert transport.stats["dropped/link_failed"] == 3
    assert not transport.send(("127.0.0.1", 1), MessageType.GOSSIP, {"from": A})
    assert transport.stats["dropped/unreachable"] == 1


async def test_a_congested_link_holds_the_publisher_and_loses_nothing(start_node: Start) -> None:
    """Flow control end to end: a QoS 0 flood to a subscriber on the other node congests the
    link (a tiny `hold_queue_bytes`), the publisher is held until the link drains, and every message
    arrives, in order, none dropped."""
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)
    assert a.cluster is not None
    # (forwards go in one FORWARD_BATCH per loop turn: the bytes waiting make the congestion)
    a.cluster.transport.config = TransportConfig(hold_queue=8, hold_queue_bytes=4096)
    sub, _ = await RawClient.connect(b.node.tcp_port, "flood-sub", MQTT_5)
    pub, _ = await RawClient.connect(a.node.tcp_port, "flooder", MQTT_5)
    try:
        sub.send(Subscribe(1, [SubscriptionRequest("flood/#", 0)]))
        await sub.recv()  # SUBACK
        await routed("flood/#", B, a)
        n = 3000
        # one write: the node reads hundreds of PUBLISHes at a time, more than `hold_queue`
        pub.send_raw(b"".join(encode(Publish(f"flood/{i}", b"x" * 64), MQTT_5) for i in range(n)))
        topics: list[str] = []
        while len(topics) < n:
            packet = await sub.recv(timeout=TIMEOUT)
            assert isinstance(packet, Publish)
            topics.append(packet.topic)
        assert topics == [f"flood/{i}" for i in range(n)]
        assert a.cluster.stats["forward/held"] >= 1
        assert a.cluster.transport.stats["dropped"] == 0
        assert counter(a, "messages/dropped") == 0
    finally:
        pub.writer.close()
        sub.writer.close()


async def test_frames_from_a_node_answer_its_probes_when_its_acks_are_lost(
    start_node: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B answers no PING (as when its ACKs wait behind megabytes of FORWARDs), but it keeps
    sending frames to A (its own probes, gossip): A does not suspect it."""
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)
    assert a.cluster is not None and b.cluster is not None
    membership = b.cluster.membership
    handle = membership.handle

    def no_acks(from_addr: Address, msg_type: MessageType, body: Body, now: float) -> list[Any]:
        return [] if msg_type is MessageType.PING else handle(from_addr, msg_type, body, now)

    monkeypatch.setattr(membership, "handle", no_acks)
    stats = a.cluster.membership.stats
    failures = stats["probe_failures"]
    probes = stats["probes"]
    cfg = a.cluster.membership.config
    await asyncio.sleep(5 * cfg.probe_interval)
    assert stats["probes"] - probes >= 3
    assert stats["probes/answered_by_traffic"] >= 3
    assert stats["probe_failures"] == failures
    member = a.cluster.membership.get(B)
    assert member is not None and member.state is MemberState.ALIVE


async def test_the_forward_hook_is_on_the_publish_path_only_while_a_peer_is_alive(
    start_node: Start,
) -> None:
    a = await start_node(A)
    assert a.cluster is not None
    assert a.cluster.forward not in a.broker.forward_hooks, "alone: nothing to forward to"
    b = await start_node(B, a)
    await converged(a, b)
    assert a.cluster.forward in a.broker.forward_hooks
    async with client(b, "far") as far:
        await far.subscribe("hook/#", qos=1)
        await routed("hook/#", B, a)
        async with client(a, "near") as near:
            await near.publish("hook/x", b"crosses", qos=1)
        async with asyncio.timeout(5):
            got = await anext(aiter(far.messages))
        assert got.payload == b"crosses"
    await b.stop()
    await eventually(lambda: live(a) == [A])
    assert a.cluster.forward not in a.broker.forward_hooks, "alone again"


async def test_client_bytes_forwarded_in_a_batch_reach_both_protocol_versions(
    start_node: Start,
) -> None:
    """A QoS 0 PUBLISH from a 3.1.1 client travels with its own bytes (`raw` in the batch):
    the other node's 3.1.1 subscriber gets those bytes, its 5.0 subscriber a 5.0 encoding,
    and both decode to the message sent, in order."""
    a = await start_node(A)
    b = await start_node(B, a)
    await converged(a, b)
    v3, _ = await RawClient.connect(b.node.tcp_port, "v3-sub")
    v5, _ = await RawClient.connect(b.node.tcp_port, "v5-sub", MQTT_5)
    pub, _ = await RawClient.connect(a.node.tcp_port, "v3-pub")
    try:
        for sub in (v3, v5):
            sub.send(Subscribe(1, [SubscriptionRequest("raw/#", 0)]))
            await sub.recv()  # SUBACK
        await routed("raw/#", B, a)
        pub.send_raw(b"".join(encode(Publish(f"raw/{i}", b"p%d" % i)) for i in range(50)))
        for sub in (v3, v5):
            got = [await sub.recv() for _ in range(50)]
            assert all(isinstance(p, Publish) and p.qos == 0 for p in got)
            assert [(p.topic, p.payload) for p in got] == [  # type: ignore[attr-defined]
                (f"raw/{i}", b"p%d" % i) for i in range(50)
            ]
        assert a.cluster is not None and a.cluster.stats["forward/batched"] == 50
    finally:
        for client in (v3, v5, pub):
            client.writer.close()
