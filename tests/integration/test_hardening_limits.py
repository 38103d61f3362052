"""Limits, configured and enforced, each hit counted in `broker.limits` and `$SYS/broker/limits`.

Raw clients over real sockets so the exact codes are visible. Every wait is bounded; nothing
asserts on timing (the connection-rate bucket is set so slow that no token can come back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rawclient import RawClient
from test_core_support import eventually, expect, ping_barrier, raw_connect, raw_subscribe

from broker.core.metrics import LIMIT_NAMES, METRIC_NAMES
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, SUBACK_FAILURE_311, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Disconnect,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.config import ConfigError, ListenerConfig, parse_config, parse_publish_limit
from broker.server.node import Node
from broker.server.systopics import sys_figures

NodeFactory = Callable[..., Any]


def tcp_listener(**fields: Any) -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=0, **fields)


async def refused_at_accept(node: Node) -> bool:
    """Open a TCP connection and send CONNECT: True if the broker closed it without a CONNACK."""
    client = await RawClient.open(node.tcp_port)
    client.send_raw(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00")  # CONNECT, empty client id
    try:
        closed = await client.closed()
        return closed and not client.pending
    finally:
        await client.close()


# -- connections ---------------------------------------------------------------------------


async def test_listener_max_connections(node_factory: NodeFactory) -> None:
    node = await node_factory(tcp=tcp_listener(max_connections=2))
    first, _ = await raw_connect(node, "c1")
    second, _ = await raw_connect(node, "c2")
    assert await refused_at_accept(node)
    assert node.broker.limits["max_listener_connections"] == 1
    assert node.listeners[0].refused == 1
    await first.close()
    await eventually(lambda: "c1" not in node.broker.connected)
    third, ack = await raw_connect(node, "c3")  # room again
    assert ack.reason_code == 0
    for client in (second, third):
        await client.close()


async def test_total_max_connections_counted(node_factory: NodeFactory) -> None:
    node = await node_factory(max_connections=1)
    first, _ = await raw_connect(node, "only")
    assert await refused_at_accept(node)
    assert node.broker.limits["max_connections"] == 1
    assert node.broker.limits["max_listener_connections"] == 0
    await first.close()


async def test_listener_connection_rate(node_factory: NodeFactory) -> None:
    """max_connection_rate: a token bucket (burst = max(rate, 1)); excess refused at accept."""
    node = await node_factory(tcp=tcp_listener(max_connection_rate=0.001))  # next in 17 min
    first, ack = await raw_connect(node, "rate-1")
    assert ack.reason_code == 0
    assert await refused_at_accept(node)
    assert await refused_at_accept(node)
    assert node.broker.limits["max_connection_rate"] == 2
    await first.close()


def test_listener_limit_keys_parse() -> None:
    cfg = parse_config(
        "max_connections = 100\n[listener.tcp]\nmax_connections = 10\nmax_connection_rate = 5\n"
        "[listener.ws]\nmax_connection_rate = 0.5\n"
    )
    assert (cfg.max_connections, cfg.tcp.max_connections, cfg.tcp.max_connection_rate) == (
        100, 10, 5.0,
    )  # fmt: skip
    assert cfg.ws.max_connection_rate == 0.5
    with pytest.raises(ConfigError, match="max_connection_rate"):
        parse_config("[listener.tcp]\nmax_connection_rate = -1\n")
    with pytest.raises(ConfigError, match="max_connections"):
        parse_config("[management]\nmax_connections = 1\n")  # MQTT listeners only


# -- queues -------------------------------------------------------------------------------


async def test_max_queued_bytes_drops_and_counts(node_factory: NodeFactory) -> None:
    """An offline persistent session queues at most max_queued_bytes of payload; the rest is
    dropped and counted, and what was queued is delivered on reconnect."""
    node = await node_factory(max_queued_bytes=100)
    sub, _ = await raw_connect(node, "qb-sub", clean=False)
    assert await raw_subscribe(sub, ("qb/t", 1)) == [1]
    await sub.close()
    await eventually(lambda: "qb-sub" not in node.broker.connected)
    pub, _ = await raw_connect(node, "qb-pub")
    for i in range(3):
        pub.send(Publish("qb/t", bytes([i]) * 40, qos=1, packet_id=i + 1))
        await expect(pub, PubAck)
    session = node.broker.sessions["qb-sub"]
    assert len(session.queue) == 2 and session.queued_bytes == 80
    assert node.broker.limits["max_queued_bytes"] == 1
    sub, ack = await raw_connect(node, "qb-sub", clean=False)
    assert ack.session_present
    got = [await expect(sub, Publish) for _ in range(2)]
    assert [p.payload[:1] for p in got] == [b"\x00", b"\x01"]
    assert session.queued_bytes == 0
    for client in (sub, pub):
        await client.close()


# -- topics -------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a/b/c/d", "x" * 21], ids=["levels", "length"])
async def test_publish_topic_over_limit_v5(node_factory: NodeFactory, topic: str) -> None:
    """5.0: QoS 1 -> PUBACK 0x90 (Topic Name invalid), the connection stays; QoS 0 (no ack) ->
    DISCONNECT 0x90."""
    node = await node_factory(max_topic_levels=3, max_topic_length=20)
    client, _ = await raw_connect(node, "tl5", version=MQTT_5)
    client.send(Publish("a/b/c", b"fits", qos=1, packet_id=1))
    assert (await expect(client, PubAck)).reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    client.send(Publish(topic, b"over", qos=1, packet_id=2))
    ack = await expect(client, PubAck)
    assert ack.reason_code == ReasonCode.TOPIC_NAME_INVALID
    client.send(Publish(topic, b"over", qos=0))
    disconnect = await expect(client, Disconnect)
    assert disconnect.reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert await client.closed()
    limit = "max_topic_levels" if "/" in topic else "max_topic_length"
    assert node.broker.limits[limit] == 2


async def test_publish_topic_over_limit_v311_closes(node_factory: NodeFactory) -> None:
    node = await node_factory(max_topic_levels=3)
    client, _ = await raw_connect(node, "tl3")
    client.send(Publish("a/b/c/d", b"over", qos=1, packet_id=1))
    assert await client.closed()
    assert not client.pending  # no PUBACK: 3.1.1 has no way to refuse it
    assert node.broker.limits["max_topic_levels"] == 1


@pytest.mark.parametrize(("version", "code"), [(MQTT_5, 0x8F), (MQTT_3_1_1, SUBACK_FAILURE_311)])
async def test_subscribe_filter_over_limit(node_factory: NodeFactory, version: int, code: int):
    node = await node_factory(max_topic_levels=3, max_topic_length=20)
    client, _ = await raw_connect(node, f"sf{version}", version=version)
    codes = await raw_subscribe(client, ("a/+/c", 1), ("a/b/c/#", 1), ("y" * 21, 0))
    assert codes == [1, code, code]
    assert node.broker.limits["max_topic_levels"] == 1
    assert node.broker.limits["max_topic_length"] == 1
    await client.close()


# -- subscriptions ------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "code"), [(MQTT_5, 0x97), (MQTT_3_1_1, SUBACK_FAILURE_311)])
async def test_max_subscriptions_quota(node_factory: NodeFactory, version: int, code: int):
    """A new filter beyond max_subscriptions: 0x97 Quota exceeded (3.1.1: 0x80); replacing an
    existing subscription is still allowed (MQTT-3.8.4-3)."""
    node = await node_factory(max_subscriptions=2)
    client, _ = await raw_connect(node, f"ms{version}", version=version)
    assert await raw_subscribe(client, ("s/1", 0), ("s/2", 1), ("s/3", 1)) == [0, 1, code]
    assert await raw_subscribe(client, ("s/1", 2), packet_id=2) == [2]
    assert await raw_subscribe(client, ("s/4", 0), packet_id=3) == [code]
    assert node.broker.limits["max_subscriptions"] == 2
    assert len(node.broker.sessions[f"ms{version}"].subscriptions) == 2
    await client.close()


# -- publish rate -------------------------------------------------------------------------


async def test_publish_limit_v5_disconnects_0x96(node_factory: NodeFactory) -> None:
    """publish_limit "2,100s": a burst of 2, then one back every 50 s: the 3rd PUBLISH now is
    over it: DISCONNECT 0x96 (Message rate too high). Others are not affected."""
    node = await node_factory(publish_limit="2,100s")
    other, _ = await raw_connect(node, "pl-other", version=MQTT_5)
    client, _ = await raw_connect(node, "pl5", version=MQTT_5)
    for i in (1, 2):
        client.send(Publish("pl/t", b"x", qos=1, packet_id=i))
        await expect(client, PubAck)
    client.send(Publish("pl/t", b"x", qos=1, packet_id=3))
    disconnect = await expect(client, Disconnect)
    assert disconnect.reason_code == ReasonCode.MESSAGE_RATE_TOO_HIGH
    assert await client.closed()
    assert node.broker.limits["publish_limit"] == 1
    other.send(Publish("pl/t", b"y", qos=1, packet_id=1))
    await expect(other, PubAck)
    await other.close()


async def test_publish_limit_v311_closes(node_factory: NodeFactory) -> None:
    node = await node_factory(publish_limit="1,100s")
    client, _ = await raw_connect(node, "pl3")
    client.send(Publish("pl/t", b"x", qos=1, packet_id=1))
    await expect(client, PubAck)
    client.send(Publish("pl/t", b"x", qos=0))
    assert await client.closed()
    assert node.broker.limits["publish_limit"] == 1


def test_publish_limit_syntax() -> None:
    assert parse_publish_limit("100,10s") == (10.0, 100.0)
    assert parse_publish_limit("50") == (50.0, 50.0)
    assert parse_publish_limit("") is None
    assert parse_config("publish_limit = 20").publish_limit == "20"
    for bad in ('"10/s"', '"0,1s"', '"a,b"', "true"):
        with pytest.raises(ConfigError, match="publish_limit"):
            parse_config(f"publish_limit = {bad}")


# -- visibility ---------------------------------------------------------------------------


async def test_limits_on_sys_and_emqx_names_unchanged(node_factory: NodeFactory) -> None:
    node = await node_factory(max_subscriptions=1)
    client, _ = await raw_connect(node, "sys-limits")
    assert await raw_subscribe(client, ("a", 0), ("b", 0)) == [0, SUBACK_FAILURE_311]
    figures = sys_figures(node.broker, "test", 0.0)
    for name in LIMIT_NAMES:
        assert f"$SYS/broker/limits/{name}" in figures
    assert figures["$SYS/broker/limits/max_subscriptions"] == "1"
    assert not set(LIMIT_NAMES) & set(METRIC_NAMES)
    assert set(node.broker.metrics.counters) == set(METRIC_NAMES)  # the 43 EMQX names only
    await ping_barrier(client)
    await client.close()


async def test_max_packet_size_counted(node_factory: NodeFactory) -> None:
    node = await node_factory(max_packet_size=64)
    client, _ = await raw_connect(node, "big", version=MQTT_5)
    client.send(Publish("big", b"x" * 100, qos=0))
    assert await client.closed()
    assert node.broker.limits["max_packet_size"] == 1


async def test_connack_first_then_limits(node_factory: NodeFactory) -> None:
    """Limits apply after CONNECT: a client that stays within them sees none of them."""
    node = await node_factory(
        max_topic_levels=4, max_subscriptions=3, publish_limit="100,1s", max_queued_bytes=1000
    )
    client, ack = await raw_connect(node, "fine", version=MQTT_5)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    client.send(Subscribe(1, [SubscriptionRequest("f/+/x", 1)]))
    await ping_barrier(client)
    client.send(Publish("f/a/x", b"ok", qos=1, packet_id=7))
    assert (await expect(client, PubAck)).packet_id == 7  # acknowledged, then delivered back
    assert isinstance(await expect(client, Publish), Publish)
    assert all(n == 0 for n in node.broker.limits.values())
    await client.close()
