"""Hostile and broken input over real sockets.

For each case the offending connection must be closed (with the 5.0 reason code where the spec
gives one), and a healthy aiomqtt subscriber connected alongside must keep receiving a QoS 1
stream with nothing lost. Normative statements are named after MQTT 3.1.1 where the brief does
(MQTT-1.5.3-x is MQTT-1.5.4-x in 5.0). Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from rawclient import RawClient

from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingResp,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from broker.protocol.properties import encode_varint
from broker.server.node import Node

TIMEOUT = 5.0
HEALTHY_TOPIC = "healthy/stream"


# --------------------------------------------------------------------------- the healthy witness


class Healthy:
    """An aiomqtt QoS 1 subscriber and publisher beside the hostile connection."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.received: list[bytes] = []
        self.sent = 0
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Healthy:
        port = self.node.tcp_port
        self.sub = await self._stack.enter_async_context(
            aiomqtt.Client("127.0.0.1", port, identifier="healthy-sub")
        )
        await self.sub.subscribe(HEALTHY_TOPIC, qos=1)
        self._task = asyncio.create_task(self._collect())
        self.pub = await self._stack.enter_async_context(
            aiomqtt.Client("127.0.0.1", port, identifier="healthy-pub")
        )
        await self.send(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._stack.aclose()

    async def _collect(self) -> None:
        async for message in self.sub.messages:
            assert isinstance(message.payload, bytes)
            self.received.append(message.payload)

    async def send(self, count: int) -> None:
        for _ in range(count):
            await self.pub.publish(HEALTHY_TOPIC, str(self.sent).encode(), qos=1)
            self.sent += 1

    async def verify(self) -> None:
        """Send some more, then check every message arrived, once, in order."""
        await self.send(10)
        async with asyncio.timeout(TIMEOUT):
            while len(self.received) < self.sent:
                await asyncio.sleep(0.01)
        assert self.received == [str(i).encode() for i in range(self.sent)]


@pytest.fixture
async def healthy(node: Node) -> AsyncIterator[Healthy]:
    async with Healthy(node) as witness:
        yield witness


# --------------------------------------------------------------------------- helpers


async def open_raw(port: int, version: int = MQTT_3_1_1) -> RawClient:
    return await RawClient.open(port, version)


async def connected(node: Node, client_id: str, version: int, **kw: Any) -> RawClient:
    client, ack = await RawClient.connect(node.tcp_port, client_id, version=version, **kw)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
    return client


async def closed_with(client: RawClient) -> list[Packet]:
    """Wait (bounded) until the broker closes; return the packets it sent before closing."""
    assert await client.closed(TIMEOUT), "the broker kept the connection open"
    return list(client.pending)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    got = b""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionError:
                return got
            if not chunk:
                return got
            got += chunk


def connect_bytes(name: bytes, level: int, flags: int = 0x02) -> bytes:
    props = b"\x00" if level == MQTT_5 else b""
    body = len(name).to_bytes(2, "big") + name + bytes((level, flags)) + b"\x00\x3c"
    body += props + b"\x00\x01c"
    return b"\x10" + encode_varint(len(body)) + body


def publish_bytes(
    topic: bytes, version: int, *, qos: int = 0, packet_id: bytes = b"", payload: bytes = b"x"
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + packet_id
    body += (b"\x00" if version == MQTT_5 else b"") + payload
    return bytes((0x30 | qos << 1,)) + encode_varint(len(body)) + body


def subscribe_with_flags(flags: int, version: int) -> bytes:
    data = encode(Subscribe(1, [SubscriptionRequest("a/b", 0)]), version)
    return bytes((0x80 | flags,)) + data[1:]


def empty_subscribe(version: int) -> bytes:
    return b"\x82\x03\x00\x01\x00" if version == MQTT_5 else b"\x82\x02\x00\x01"


# --------------------------------------------------------------------------- before CONNECT


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_random_garbage_is_closed_MQTT_4_8_0_1(
    node: Node, healthy: Healthy, seed: int
) -> None:
    rng = random.Random(seed)
    garbage = bytes((rng.choice((0x00, 0xF0, 0x47, 0x4A)),)) + rng.randbytes(4095)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(garbage)
    assert await read_until_closed(reader) == b""  # closed, no CONNACK to garbage
    writer.close()
    await healthy.verify()


async def test_http_request_on_mqtt_port_is_closed(node: Node, healthy: Healthy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert await read_until_closed(reader) == b""
    writer.close()
    await healthy.verify()


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"\xc0\x00", id="pingreq"),
        pytest.param(encode(Subscribe(1, [SubscriptionRequest("a", 0)])), id="subscribe"),
        pytest.param(publish_bytes(b"a/b", MQTT_3_1_1), id="publish"),
        pytest.param(b"\xe0\x00", id="disconnect"),
    ],
)
async def test_first_packet_not_connect_is_closed_MQTT_3_1_0_1(
    node: Node, healthy: Healthy, first: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(first)
    assert await read_until_closed(reader) == b""  # no PINGRESP/SUBACK, just closed
    writer.close()
    await healthy.verify()


async def test_bad_protocol_name_is_refused_MQTT_3_1_2_1(node: Node, healthy: Healthy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(connect_bytes(b"MQTX", 4))
    got = await read_until_closed(reader)
    # The server MAY disconnect; if it answers at all, it is a refusal.
    assert got in (b"", b"\x20\x02\x00\x01"), got.hex()
    writer.close()
    await healthy.verify()


async def test_protocol_level_6_gets_connack_0x01_MQTT_3_1_2_2(
    node: Node, healthy: Healthy
) -> None:
    """An unknown level: the 3.1.1-format CONNACK 0x01 every MQTT client understands."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(connect_bytes(b"MQTT", 6))
    assert await read_until_closed(reader) == b"\x20\x02\x00\x01"
    writer.close()
    await healthy.verify()


async def test_level_5_with_wrong_protocol_name_gets_5_0_connack_0x84(
    node: Node, healthy: Healthy
) -> None:
    """Level 5 says which dialect to answer in: a 5.0 CONNACK 0x84 (MQTT-3.1.2-1 allows it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(connect_bytes(b"MQIsdp", MQTT_5))
    got = await read_until_closed(reader)
    packets = Decoder(version=MQTT_5).feed(got)
    assert packets == [ConnAck(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, {})]
    writer.close()
    await healthy.verify()


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5])
async def test_connect_reserved_flag_is_refused_MQTT_3_1_2_3(
    node: Node, healthy: Healthy, version: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    writer.write(connect_bytes(b"MQTT", version, flags=0x03))
    got = await read_until_closed(reader)
    if version == MQTT_5:
        # A 5.0 CONNACK with Malformed Packet (not a 3.1.1-format return code).
        assert Decoder(version=MQTT_5).feed(got) == [
            ConnAck(False, ReasonCode.MALFORMED_PACKET, {})
        ]
    else:
        assert got == b""  # 3.1.1: disconnect, no CONNACK
    writer.close()
    await healthy.verify()


async def test_huge_connect_header_is_closed_without_body(
    node_factory: Any,
) -> None:
    node = await node_factory(max_packet_size=1024)
    async with Healthy(node) as witness:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
        writer.write(b"\x10" + encode_varint(100_000_000))  # the fixed header only
        assert await read_until_closed(reader) == b""
        writer.close()
        await witness.verify()


# --------------------------------------------------------------------------- after CONNECT

# (id, bytes for version, 5.0 DISCONNECT reason codes accepted)
AFTER_CONNECT = [
    pytest.param(
        lambda v: subscribe_with_flags(0, v), {0x81}, id="reserved_flags_subscribe_MQTT_2_2_2_2"
    ),
    pytest.param(lambda v: b"\xc1\x00", {0x81}, id="reserved_flags_pingreq_MQTT_2_2_2_2"),
    pytest.param(lambda v: b"\x60\x02\x00\x01", {0x81}, id="reserved_flags_pubrel_MQTT_3_6_1_1"),
    pytest.param(lambda v: b"\x30\xff\xff\xff\xff\x01", {0x81}, id="five_byte_remaining_length"),
    pytest.param(
        lambda v: publish_bytes(b"a/\xff\xfe", v), {0x81}, id="invalid_utf8_topic_MQTT_1_5_3_1"
    ),
    pytest.param(
        lambda v: publish_bytes(b"a/\xed\xa0\x80", v),  # a UTF-16 surrogate, U+D800
        {0x81},
        id="surrogate_in_topic_MQTT_1_5_3_1",
    ),
    pytest.param(lambda v: publish_bytes(b"a/\x00b", v), {0x81}, id="nul_in_topic_MQTT_1_5_3_2"),
    pytest.param(
        lambda v: publish_bytes(b"a/+", v), {0x90}, id="plus_in_publish_topic_MQTT_3_3_2_2"
    ),
    pytest.param(
        lambda v: publish_bytes(b"a/#", v), {0x90}, id="hash_in_publish_topic_MQTT_3_3_2_2"
    ),
    pytest.param(lambda v: publish_bytes(b"", v), {0x82, 0x90}, id="empty_topic_MQTT_4_7_3_1"),
    pytest.param(empty_subscribe, {0x82}, id="empty_subscribe_MQTT_3_8_3_3"),
    pytest.param(
        lambda v: publish_bytes(b"a/b", v, qos=1, packet_id=b"\x00\x00"),
        {0x81, 0x82},
        id="packet_id_0_qos1_MQTT_2_3_1_1",
    ),
    pytest.param(
        lambda v: publish_bytes(b"a/b", v, qos=3, packet_id=b"\x00\x01"),
        {0x81},
        id="publish_qos3_MQTT_3_3_1_4",
    ),
    pytest.param(
        lambda v: encode(Connect("again", protocol_level=v), v),
        {0x82},
        id="second_connect_MQTT_3_1_0_2",
    ),
    pytest.param(lambda v: b"\x20\x02\x00\x00", {0x82}, id="connack_from_client"),
    pytest.param(lambda v: b"\x00\x00", {0x81}, id="reserved_packet_type_0"),
    pytest.param(  # a fuzz finding: it was answered with a CONNACK on the open connection
        lambda v: connect_bytes(b"MQTT", 6), {0x82}, id="second_connect_unknown_level_MQTT_3_1_0_2"
    ),
]


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5], ids=["v311", "v5"])
@pytest.mark.parametrize(("make", "codes5"), AFTER_CONNECT)
async def test_bad_packet_after_connect_closes_connection(
    node: Node, healthy: Healthy, version: int, make: Any, codes5: set[int]
) -> None:
    client = await connected(node, f"hostile-{version}", version)
    client.send_raw(make(version))
    sent = await closed_with(client)
    if version == MQTT_5:
        # 5.0 (4.13): DISCONNECT with the reason code, then close.
        assert len(sent) == 1 and isinstance(sent[0], Disconnect), sent
        assert sent[0].reason_code in codes5, f"{sent[0].reason_code:#04x} not in {codes5}"
    else:
        assert sent == []  # 3.1.1 has no server DISCONNECT: just close (MQTT-4.8.0-1)
    assert f"hostile-{version}" not in node.broker.connected
    await healthy.verify()


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5], ids=["v311", "v5"])
async def test_packet_larger_than_max_packet_size_closed_after_header(
    node_factory: Any, version: int
) -> None:
    """Only the fixed header is sent: the broker must not wait for (or buffer) the body."""
    node = await node_factory(max_packet_size=1024)
    async with Healthy(node) as witness:
        client = await connected(node, "too-big", version)
        client.send_raw(b"\x30" + encode_varint(50_000_000))
        sent = await closed_with(client)
        if version == MQTT_5:
            assert sent == [Disconnect(ReasonCode.PACKET_TOO_LARGE)]  # 3.2.2.3.6, 4.13
        else:
            assert sent == []
        # Just over the limit, fully sent: refused too.
        client = await connected(node, "too-big-2", version)
        client.send_raw(publish_bytes(b"a/b", version, payload=b"x" * 1100))
        sent = await closed_with(client)
        if version == MQTT_5:
            assert sent == [Disconnect(ReasonCode.PACKET_TOO_LARGE)]
        await witness.verify()


async def test_packet_at_max_packet_size_is_accepted(node_factory: Any) -> None:
    node = await node_factory(max_packet_size=1024)
    client = await connected(node, "just-fits", MQTT_5)
    header = 3  # type byte + 2-byte remaining length
    body_fixed = 2 + 3 + 1  # topic length + "a/b" + property length
    packet = publish_bytes(b"a/b", MQTT_5, payload=b"x" * (1024 - header - body_fixed))
    assert len(packet) == 1024
    client.send_raw(packet + b"\xc0\x00")
    assert isinstance(await client.recv(TIMEOUT), PingResp)
    await client.close()


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5], ids=["v311", "v5"])
async def test_truncated_packet_then_close_publishes_will_MQTT_3_1_2_8(
    node: Node, healthy: Healthy, version: int
) -> None:
    baseline = len(node.broker.channels)
    async with aiomqtt.Client("127.0.0.1", node.tcp_port, identifier="will-watch") as watcher:
        await watcher.subscribe("hostile/will", qos=1)
        will = Will("hostile/will", b"gone", 1)
        client = await connected(node, "truncator", version, will=will)
        whole = publish_bytes(b"a/b", version, payload=b"y" * 100)
        client.send_raw(whole[: len(whole) // 2])
        await client.close()  # the broker only ever saw half a packet
        message = await asyncio.wait_for(watcher.messages.__anext__(), TIMEOUT)
        assert message.payload == b"gone"
    async with asyncio.timeout(TIMEOUT):
        while len(node.broker.channels) > baseline:
            await asyncio.sleep(0.01)
    assert "truncator" not in node.broker.connected
    await healthy.verify()


async def test_truncated_connect_then_close_leaves_nothing(node: Node, healthy: Healthy) -> None:
    baseline = len(node.broker.channels)
    _, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    data = encode(Connect("half"))
    writer.write(data[:5])
    await writer.drain()
    writer.close()
    async with asyncio.timeout(TIMEOUT):
        while len(node.broker.channels) > baseline:
            await asyncio.sleep(0.01)
    assert "half" not in node.broker.sessions
    await healthy.verify()


async def test_connect_pipelined_with_bad_packet_still_publishes_will_MQTT_3_1_2_8(
    node: Node, healthy: Healthy
) -> None:
    async with aiomqtt.Client("127.0.0.1", node.tcp_port, identifier="pipe-watch") as watcher:
        await watcher.subscribe("hostile/pipe-will", qos=1)
        client = await open_raw(node.tcp_port, MQTT_5)
        connect = Connect("pipeliner", protocol_level=MQTT_5,
                          will=Will("hostile/pipe-will", b"bye", 1))  # fmt: skip
        # One write: a valid CONNECT, then a PUBLISH the decoder rejects (NUL in the topic).
        client.send_raw(encode(connect, MQTT_5) + publish_bytes(b"a/\x00", MQTT_5))
        sent = await closed_with(client)
        assert [type(p) for p in sent] == [ConnAck, Disconnect], sent
        assert sent[0].reason_code == 0  # type: ignore[union-attr]
        assert sent[1].reason_code == ReasonCode.MALFORMED_PACKET  # type: ignore[union-attr]
        message = await asyncio.wait_for(watcher.messages.__anext__(), TIMEOUT)
        assert message.payload == b"bye"
    await healthy.verify()


@pytest.mark.parametrize("count", [500, 3000])
async def test_thousands_of_connections_opened_and_dropped_leave_no_channels(
    node: Node, healthy: Healthy, count: int
) -> None:
    baseline_channels = len(node.broker.channels)
    baseline_connected = len(node.broker.connected)
    baseline_sessions = len(node.broker.sessions)

    async def churn(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
        kind = i % 4
        if kind == 0:
            writer.write(encode(Connect(f"churn-{i}")))  # a full 3.1.1 CONNECT
        elif kind == 1:
            writer.write(encode(Connect(f"churn-{i}", protocol_level=MQTT_5), MQTT_5)[:7])
        elif kind == 2:
            writer.write(encode(Connect(f"churn-{i}", protocol_level=MQTT_5), MQTT_5))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.read(1), TIMEOUT)  # wait for the CONNACK
        # kind 3: connect and say nothing
        if i % 2:
            writer.transport.abort()  # RST
        else:
            writer.close()  # FIN
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    for start in range(0, count, 100):
        await asyncio.gather(*(churn(i) for i in range(start, start + 100)))
        await healthy.send(2)  # the stream keeps flowing during the churn

    async with asyncio.timeout(TIMEOUT * 2):
        while len(node.broker.channels) != baseline_channels:
            await asyncio.sleep(0.02)
    assert len(node.broker.connected) == baseline_connected
    assert len(node.broker.sessions) == baseline_sessions  # clean sessions all discarded
    await healthy.verify()


# --------------------------------------------------------------------------- sent slowly

# A PUBLISH/CONNECT header claiming the largest MQTT packet (256 MiB; 300 MB does not fit in the
# 4-byte Remaining Length), or 300 MB in an illegal fifth length byte.
CLAIM_256MIB = encode_varint(268_435_455)
CLAIM_300MB = bytes((0x80, 0xC6, 0x86, 0x8F, 0x01))  # 300,000,000 as a 5-byte varint


@pytest.mark.parametrize(
    ("first", "claim", "code"),
    [
        pytest.param(0x30, CLAIM_256MIB, ReasonCode.PACKET_TOO_LARGE, id="publish_256MiB"),
        pytest.param(0x30, CLAIM_300MB, ReasonCode.MALFORMED_PACKET, id="publish_300MB_5_bytes"),
        pytest.param(0x10, CLAIM_256MIB, None, id="connect_256MiB_before_connect"),
    ],
)
async def test_claimed_huge_packet_sent_slowly_is_closed_at_the_header(
    node: Node, healthy: Healthy, first: int, claim: bytes, code: int | None
) -> None:
    """The header trickles in a byte at a time: the broker closes as soon as the length is known
    to be too large (default max_packet_size, 1 MiB) without waiting for any body byte, and the
    healthy stream goes on meanwhile."""
    if first == 0x10:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    else:
        client = await connected(node, "slow-huge", MQTT_5)
        reader, writer = client.reader, client.writer
    for byte in bytes((first,)) + claim:
        writer.write(bytes((byte,)))
        await writer.drain()
        await asyncio.sleep(0.05)
        await healthy.send(1)
    got = await read_until_closed(reader)  # closed at the header: no body byte was needed
    with contextlib.suppress(ConnectionError):  # body bytes now go nowhere
        for _ in range(3):
            writer.write(b"x" * 1024)
            await writer.drain()
            await asyncio.sleep(0.02)
    if code is None:
        assert got == b""  # no CONNACK for a CONNECT that is not even read
    else:
        sent = Decoder(version=MQTT_5).feed(got)
        assert [(type(p), p.reason_code) for p in sent] == [(Disconnect, code)]  # type: ignore[union-attr]
    writer.close()
    assert "slow-huge" not in node.broker.connected
    await healthy.verify()
