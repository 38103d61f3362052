"""CONNECT handling, client identifiers and session takeover, PINGREQ
(MQTT 3.1.1 sections 3.1, 3.2, 3.12) over real sockets; the rules that need no socket (client
identifiers, anonymous refusal, a second CONNECT, PINGREQ, keepalive) run on the in-memory
harness: tests/unit/test_rules_connect.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest
from rawclient import RawClient
from test_core_support import (
    aio,
    eventually,
    expect,
    next_message,
    ping_barrier,
    raw_connect,
    raw_publish_qos1,
    raw_subscribe,
)

from broker.protocol.constants import MQTT_3_1
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.node import Node


def _s(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


def connect_bytes(
    name: bytes = b"MQTT",
    level: int = 4,
    flags: int = 0x02,
    keepalive: int = 60,
    payload: bytes = _s(b"raw"),
) -> bytes:
    """A CONNECT built by hand, so that every field can be wrong."""
    body = _s(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + payload
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


async def _send_first(node: Node, data: bytes) -> RawClient:
    client = await RawClient.open(node.tcp_port)
    client.send_raw(data)
    return client


# -- takeover -----------------------------------------------------------------------------------


async def test_second_connection_with_same_client_id_takes_over_MQTT_3_1_4_2(node: Node) -> None:
    first, _ = await raw_connect(node, "twin", clean=False)
    await raw_subscribe(first, ("twin/t", 1))
    second, ack = await raw_connect(node, "twin", clean=False)
    pub, _ = await raw_connect(node, "twin-pub")
    try:
        assert await first.closed()  # the existing client is disconnected
        assert (ack.reason_code, ack.session_present) == (0, True)
        assert "twin" in node.broker.connected
        await raw_publish_qos1(pub, "twin/t", b"to the new one", 1)
        got = await expect(second, Publish)
        assert got.payload == b"to the new one"
        second.send(PubAck(got.packet_id or 0))
        assert await ping_barrier(second) == []
    finally:
        await first.close()
        await second.close()
        await pub.close()


async def test_takeover_moves_inflight_to_new_connection_MQTT_3_1_4_3_and_4_4_0_1(
    node: Node,
) -> None:
    first, _ = await raw_connect(node, "mover", clean=False)
    pub, _ = await raw_connect(node, "mover-pub")
    try:
        await raw_subscribe(first, ("mv/t", 1))
        await raw_publish_qos1(pub, "mv/t", b"inflight", 1)
        sent = await expect(first, Publish)
        second, ack = await raw_connect(node, "mover", clean=False)
        assert ack.session_present is True
        assert await first.closed()
        again = await expect(second, Publish)
        assert (again.payload, again.dup, again.packet_id) == (b"inflight", True, sent.packet_id)
        second.send(PubAck(again.packet_id or 0))
        assert await ping_barrier(second) == []
        await second.close()
    finally:
        await first.close()
        await pub.close()


async def test_takeover_with_clean_session_starts_fresh_MQTT_3_1_2_6(node: Node) -> None:
    first, _ = await raw_connect(node, "fresh", clean=False)
    await raw_subscribe(first, ("fresh/t", 1))
    second, ack = await raw_connect(node, "fresh", clean=True)
    try:
        assert await first.closed()
        assert (ack.reason_code, ack.session_present) == (0, False)
        assert node.broker.sessions["fresh"].subscriptions == {}
    finally:
        await first.close()
        await second.close()


async def test_aiomqtt_client_taken_over(node: Node) -> None:
    """A real client sees its connection end when another connects with its id (MQTT-3.1.4-2)."""
    async with aio(node, "aio-twin") as victim:
        await victim.subscribe("aio-twin/t")
        usurper, ack = await raw_connect(node, "aio-twin")
        try:
            assert ack.reason_code == 0
            with pytest.raises(aiomqtt.MqttError, match=r"(?i)disconnect"):
                await next_message(victim)
        finally:
            await usurper.close()


# -- client identifiers -------------------------------------------------------------------------


# -- the CONNECT packet ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        PingReq(),
        Subscribe(1, [SubscriptionRequest("a", 0)]),
        Publish("a", b"x", qos=1, packet_id=1),
    ],
    ids=["pingreq", "subscribe", "publish"],
)
async def test_first_packet_not_connect_closes_MQTT_3_1_0_1(node: Node, first: Any) -> None:
    async with aio(node, "nc-watch") as watch:
        await watch.subscribe("#")
        client = await RawClient.open(node.tcp_port)
        try:
            client.send(first)
            assert await client.closed()
            assert client.pending == []  # no CONNACK, PINGRESP, SUBACK or PUBACK
        finally:
            await client.close()
        assert node.broker.connected.keys() == {"nc-watch"}


@pytest.mark.parametrize("level", [2, 6, 0x7F])
async def test_unsupported_protocol_level_gets_connack_1_MQTT_3_1_2_2(
    node: Node, level: int
) -> None:
    client = await _send_first(node, connect_bytes(level=level))
    try:
        ack = await expect(client, ConnAck)
        assert (ack.reason_code, ack.session_present) == (0x01, False)
        assert await client.closed()
    finally:
        await client.close()


async def test_wrong_protocol_name_not_accepted_MQTT_3_1_2_1(node: Node) -> None:
    client = await _send_first(node, connect_bytes(name=b"MQTX"))
    try:
        assert await client.closed()
        assert not any(isinstance(p, ConnAck) and p.reason_code == 0 for p in client.pending)
        assert node.broker.connected == {}
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("flags", "payload"),
    [
        (0x03, _s(b"raw")),  # reserved flag bit 0 set (MQTT-3.1.2-3)
        (0x02 | 0x08, _s(b"raw")),  # will QoS 1 without will flag (MQTT-3.1.2-13)
        (0x02 | 0x20, _s(b"raw")),  # will retain without will flag (MQTT-3.1.2-15)
        (0x02 | 0x04 | 0x18, _s(b"raw") + _s(b"w") + _s(b"p")),  # will QoS 3 (MQTT-3.1.2-14)
        (0x02 | 0x40, _s(b"raw") + _s(b"pw")),  # password without user name (MQTT-3.1.2-22)
        (0x02 | 0x80, _s(b"raw")),  # user name flag but no user name (MQTT-3.1.2-19)
    ],
    ids=[
        "reserved",
        "will-qos-no-flag",
        "will-retain-no-flag",
        "will-qos-3",
        "pw-no-user",
        "user-missing",
    ],
)
async def test_malformed_connect_flags_close_MQTT_3_1_2(
    node: Node, flags: int, payload: bytes
) -> None:
    client = await _send_first(node, connect_bytes(flags=flags, payload=payload))
    try:
        assert await client.closed()
        assert not any(isinstance(p, ConnAck) and p.reason_code == 0 for p in client.pending)
        assert node.broker.connected == {}
    finally:
        await client.close()


async def test_mqtt31_connack_reserved_byte_and_persistent_session(node: Node) -> None:
    """MQTT 3.1 ("MQIsdp", level 3): the first CONNACK byte is reserved (there is no Session
    Present flag before 3.1.1, MQTT-3.2.2-1 is 3.1.1's), yet a clean=0 session persists."""
    first, ack = await RawClient.connect(
        node.tcp_port, "v31", MQTT_3_1, protocol_name="MQIsdp", clean_start=False
    )
    assert isinstance(ack, ConnAck)
    assert (ack.reason_code, ack.session_present) == (0, False)
    await raw_subscribe(first, ("v31/t", 1))
    first.send(Disconnect())
    assert await first.closed()
    await first.close()
    pub, _ = await raw_connect(node, "v31-pub")
    await raw_publish_qos1(pub, "v31/t", b"kept", 1)
    await pub.close()
    second = await RawClient.open(node.tcp_port, MQTT_3_1)
    try:
        second.send(Connect("v31", MQTT_3_1, "MQIsdp", clean_start=False))
        data = await asyncio.wait_for(second.reader.readexactly(4), 5)
        assert data == b"\x20\x02\x00\x00"  # reserved byte 0, return code 0
        second.pending.extend(second.decoder.feed(data))
        second.pending.clear()
        got = await expect(second, Publish)
        assert got.payload == b"kept"  # the session was resumed
    finally:
        await second.close()


async def test_max_connections_refuses_extra_clients(node_factory: Callable[..., Any]) -> None:
    """max_connections=2: a third connection is closed at once; a slot frees when one leaves."""
    node: Node = await node_factory(max_connections=2)
    a, _ = await raw_connect(node, "mc-a")
    b, _ = await raw_connect(node, "mc-b")
    try:
        extra = await RawClient.open(node.tcp_port)
        extra.send(Connect("mc-c"))
        assert await extra.closed()
        assert extra.pending == []
        await extra.close()
        assert node.broker.connected.keys() == {"mc-a", "mc-b"}
        await a.close()
        await eventually(lambda: len(node.broker.channels) == 1)
        c, ack = await raw_connect(node, "mc-c")
        assert ack.reason_code == 0
        await c.close()
    finally:
        await a.close()
        await b.close()
