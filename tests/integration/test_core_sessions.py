"""Sessions: clean vs persistent, offline queueing, inflight redelivery, limits, expiry
(MQTT 3.1.1 sections 3.1.2.4, 3.2.2.2, 4.1, 4.4) over real sockets; redelivery, QoS 2 state
and expiry rules that need no socket run on the in-memory harness:
tests/unit/test_rules_sessions.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rawclient import RawClient
from test_core_support import (
    TIMEOUT,
    aio,
    eventually,
    expect,
    paho_client,
    ping_barrier,
    raw_connect,
    raw_publish_qos1,
    raw_subscribe,
)

from broker.protocol.packets import (
    Disconnect,
    PubAck,
    Publish,
)
from broker.server.node import Node


async def _disconnect(node: Node, client: RawClient, client_id: str) -> None:
    """Clean DISCONNECT (which keeps a clean=0 session) and wait until the broker handled it."""
    client.send(Disconnect())
    assert await client.closed()
    await client.close()
    assert client_id not in node.broker.connected


async def test_connack_session_present_0_for_clean_session_MQTT_3_2_2_1(node: Node) -> None:
    persistent, ack = await raw_connect(node, "sp-clean", clean=False)
    await _disconnect(node, persistent, "sp-clean")
    client, ack = await raw_connect(node, "sp-clean", clean=True)
    try:
        assert ack.reason_code == 0
        assert ack.session_present is False  # even though a session existed
    finally:
        await client.close()


async def test_session_present_0_then_1_for_persistent_session_MQTT_3_2_2_2_and_3(
    node: Node,
) -> None:
    first, ack = await raw_connect(node, "sp-persist", clean=False)
    assert (ack.reason_code, ack.session_present) == (0, False)  # MQTT-3.2.2-3: new session
    await _disconnect(node, first, "sp-persist")
    second, ack = await raw_connect(node, "sp-persist", clean=False)
    try:
        assert (ack.reason_code, ack.session_present) == (0, True)  # MQTT-3.2.2-2
    finally:
        await second.close()


async def test_clean_session_discards_previous_and_own_state_MQTT_3_1_2_6(node: Node) -> None:
    sub, _ = await raw_connect(node, "cs", clean=False)
    await raw_subscribe(sub, ("cs/t", 1))
    await _disconnect(node, sub, "cs")
    pub, _ = await raw_connect(node, "cs-pub")
    try:
        await raw_publish_qos1(pub, "cs/t", b"queued", 1)
        assert len(node.broker.sessions["cs"].queue) == 1
        clean, ack = await raw_connect(node, "cs", clean=True)
        assert ack.session_present is False
        assert await ping_barrier(clean) == []  # the queued message went with the old session
        assert node.broker.sessions["cs"].subscriptions == {}
        await raw_publish_qos1(pub, "cs/t", b"unsubscribed", 2)
        assert await ping_barrier(clean) == []
        await _disconnect(node, clean, "cs")
        # The clean session ended with the connection: nothing left to resume.
        assert "cs" not in node.broker.sessions
        again, ack = await raw_connect(node, "cs", clean=False)
        assert ack.session_present is False
        await again.close()
    finally:
        await pub.close()


async def test_persistent_session_keeps_subscriptions_and_queues_qos1_2_MQTT_3_1_2_4_and_5(
    node: Node,
) -> None:
    """paho-mqtt, clean_session=False: subscribe, go away, messages published meanwhile (QoS 1
    and 2) arrive on reconnect, with session_present=1 (MQTT-3.2.2-2)."""
    loop = asyncio.get_running_loop()

    def make(on_connect: Callable[..., None], on_message: Callable[..., None] | None = None) -> Any:
        client = paho_client("paho-persist", clean_session=False)
        client.on_connect = on_connect
        if on_message is not None:
            client.on_message = on_message
        return client

    connected: asyncio.Future[bool] = loop.create_future()
    subscribed: asyncio.Future[None] = loop.create_future()

    def on_connect1(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        loop.call_soon_threadsafe(connected.set_result, bool(flags.session_present))

    first = make(on_connect1)
    first.on_subscribe = lambda *_a: loop.call_soon_threadsafe(subscribed.set_result, None)
    await asyncio.to_thread(first.connect, "127.0.0.1", node.tcp_port, 30)
    first.loop_start()
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await connected is False
            first.subscribe("persist/#", qos=2)
            await subscribed
    finally:
        await asyncio.to_thread(first.disconnect)
        await asyncio.to_thread(first.loop_stop)
    await eventually(lambda: "paho-persist" not in node.broker.connected)

    async with aio(node, "persist-pub") as pub:
        await pub.publish("persist/a", b"one", qos=1)
        await pub.publish("persist/b", b"two", qos=2)
        await pub.publish("persist/c", b"three", qos=1)
    assert len(node.broker.sessions["paho-persist"].queue) == 3

    reconnected: asyncio.Future[bool] = loop.create_future()
    received: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()

    def on_connect2(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        loop.call_soon_threadsafe(reconnected.set_result, bool(flags.session_present))

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        loop.call_soon_threadsafe(received.put_nowait, (msg.topic, msg.payload, msg.qos))

    second = make(on_connect2, on_message)
    await asyncio.to_thread(second.connect, "127.0.0.1", node.tcp_port, 30)
    second.loop_start()
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await reconnected is True
            got = [await received.get() for _ in range(3)]
    finally:
        await asyncio.to_thread(second.disconnect)
        await asyncio.to_thread(second.loop_stop)
    assert sorted(got) == [
        ("persist/a", b"one", 1),
        ("persist/b", b"two", 2),
        ("persist/c", b"three", 1),
    ]


async def test_max_inflight_messages_window(node_factory: Callable[..., Any]) -> None:
    """max_inflight_messages=2 (mosquitto semantics): a subscriber that does not acknowledge has
    at most 2 QoS 1 messages outstanding; each PUBACK lets the next queued one out, in order
    (MQTT-4.6.0-6)."""
    node: Node = await node_factory(max_inflight_messages=2)
    sub, _ = await raw_connect(node, "window")
    pub, _ = await raw_connect(node, "window-pub")
    try:
        await raw_subscribe(sub, ("win/t", 1))
        for i in range(5):
            await raw_publish_qos1(pub, "win/t", str(i).encode(), i + 1)
        got = [await expect(sub, Publish) for _ in range(2)]
        assert await ping_barrier(sub) == []  # nothing beyond the window
        assert len(node.broker.sessions["window"].queue) == 3
        payloads = [p.payload for p in got]
        while len(payloads) < 5:
            acked = got.pop(0)
            sub.send(PubAck(acked.packet_id or 0))
            released = await ping_barrier(sub)
            assert len(released) == 1
            assert isinstance(released[0], Publish)
            got.append(released[0])
            payloads.append(released[0].payload)
            assert len(node.broker.sessions["window"].inflight) == 2
        assert payloads == [b"0", b"1", b"2", b"3", b"4"]
        for packet in got:
            sub.send(PubAck(packet.packet_id or 0))
        assert await ping_barrier(sub) == []
        assert node.broker.sessions["window"].inflight == {}
    finally:
        await sub.close()
        await pub.close()


async def test_offline_queue_bounded_and_drops_counted(node_factory: Callable[..., Any]) -> None:
    """max_queued_messages=5: of 10 QoS 1 messages for an offline session, 5 are kept (the first
    ones, as mosquitto does) and delivered on reconnect; 5 are dropped and counted."""
    node: Node = await node_factory(max_queued_messages=5)
    sub, _ = await raw_connect(node, "bounded", clean=False)
    await raw_subscribe(sub, ("bq/t", 1))
    await _disconnect(node, sub, "bounded")
    counters = node.broker.metrics.counters
    dropped_before = counters["messages/dropped"]
    pub, _ = await raw_connect(node, "bounded-pub")
    try:
        for i in range(10):
            await raw_publish_qos1(pub, "bq/t", str(i).encode(), i + 1)
        assert counters["messages/dropped"] - dropped_before == 5
        sub, ack = await raw_connect(node, "bounded", clean=False)
        assert ack.session_present is True
        got = [await expect(sub, Publish) for _ in range(5)]
        for packet in got:
            sub.send(PubAck(packet.packet_id or 0))
        assert await ping_barrier(sub) == []
        assert [p.payload for p in got] == [str(i).encode() for i in range(5)]
    finally:
        await sub.close()
        await pub.close()
