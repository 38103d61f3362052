"""Transports: MQTT over WebSocket (aiomqtt, paho, raw aiohttp frames), cross-transport delivery,
and backpressure from a subscriber that does not read.

Normative statements are from chapter 6 of MQTT 5.0 (the same in 3.1.1). Every wait is bounded;
nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import aiomqtt
import paho.mqtt.client as paho
import pytest
from rawclient import RawClient

from broker.core.broker import Forwarded
from broker.core.message import Message
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1, MQTT_3_1_1, MQTT_5, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.node import Node

TIMEOUT = 5.0
V311 = aiomqtt.ProtocolVersion.V311
V5 = aiomqtt.ProtocolVersion.V5


# --------------------------------------------------------------------------- helpers


def ws_client(node: Node, identifier: str, protocol: Any = V5) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        node.ws_port,
        identifier=identifier,
        protocol=protocol,
        transport="websockets",
        websocket_path="/mqtt",
    )


def tcp_client(node: Node, identifier: str, protocol: Any = V5) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", node.tcp_port, identifier=identifier, protocol=protocol)


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    return await asyncio.wait_for(client.messages.__anext__(), TIMEOUT)


class RawWs:
    """MQTT packets from our codec over an aiohttp client WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, version: int) -> None:
        self.ws = ws
        self.version = version
        self.decoder = Decoder(version=version)
        self.pending: list[Packet] = []

    async def send(self, *packets: Packet) -> None:
        await self.ws.send_bytes(b"".join(encode(p, self.version) for p in packets))

    async def recv(self) -> Packet:
        async with asyncio.timeout(TIMEOUT):
            while not self.pending:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.BINARY, msg  # MQTT-6.0.0-1, both ways
                self.pending.extend(self.decoder.feed(msg.data))
        return self.pending.pop(0)

    async def closed(self) -> list[Packet]:
        """Read until the server closes the WebSocket; return the MQTT packets before that."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                msg = await self.ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return self.pending
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                self.pending.extend(self.decoder.feed(msg.data))


class Paho:
    """paho-mqtt driven from asyncio: blocking calls in threads, callbacks to the loop."""

    def __init__(self, node: Node, client_id: str, protocol: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = node.ws_port
        self.protocol = protocol
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,  # type: ignore[arg-type]
            transport="websockets",
        )
        self.client.ws_set_options(path="/mqtt")
        self.connack: asyncio.Future[Any] = self.loop.create_future()
        self.subacks: dict[int, asyncio.Future[Any]] = {}
        self.messages: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self._soon(_set, self.connack, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._soon(self._suback, mid, rcs)
        self.client.on_message = lambda c, u, m: self._soon(self.messages.put_nowait, m)

    def _soon(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def _suback(self, mid: int, codes: Any) -> None:
        _set(self.subacks.setdefault(mid, self.loop.create_future()), codes)

    async def connect(self) -> Any:
        await asyncio.to_thread(self.client.connect, "127.0.0.1", self.port, 60)
        self.client.loop_start()
        return await asyncio.wait_for(self.connack, TIMEOUT)

    async def subscribe(self, topic: str, qos: int) -> Any:
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == paho.MQTT_ERR_SUCCESS and mid is not None
        return await asyncio.wait_for(
            self.subacks.setdefault(mid, self.loop.create_future()), TIMEOUT
        )

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        info = self.client.publish(topic, payload, qos)
        await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
        assert info.is_published()

    async def close(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


def _set(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def ws_url(node: Node, path: str = "/mqtt") -> str:
    return f"http://127.0.0.1:{node.ws_port}{path}"


# --------------------------------------------------------------------------- MQTT over WebSocket


@pytest.mark.parametrize("protocol", [V311, V5], ids=["v311", "v5"])
async def test_websocket_aiomqtt_roundtrip_all_qos(node: Node, protocol: Any) -> None:
    async with (
        ws_client(node, "ws-sub", protocol) as sub,
        ws_client(node, "ws-pub", protocol) as pub,
    ):
        await sub.subscribe("ws/#", qos=2)
        for qos in (0, 1, 2):
            await pub.publish(f"ws/q{qos}", f"over-ws-{qos}".encode(), qos=qos)
        got = [await next_message(sub) for _ in range(3)]
        assert [(m.topic.value, m.payload, m.qos) for m in got] == [
            ("ws/q0", b"over-ws-0", 0),
            ("ws/q1", b"over-ws-1", 1),
            ("ws/q2", b"over-ws-2", 2),
        ]


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["v311", "v5"])
async def test_websocket_paho_roundtrip(node: Node, protocol: int) -> None:
    sub = Paho(node, "paho-ws-sub", protocol)
    pub = Paho(node, "paho-ws-pub", protocol)
    try:
        assert await sub.connect() == 0
        assert await pub.connect() == 0
        codes = await sub.subscribe("pws/#", 1)
        assert [int(getattr(c, "value", c)) for c in codes] == [1]
        await pub.publish("pws/a", b"paho-over-ws", 1)
        message = await asyncio.wait_for(sub.messages.get(), TIMEOUT)
        assert (message.topic, message.payload, message.qos) == ("pws/a", b"paho-over-ws", 1)
        assert "paho-ws-sub" in node.broker.connected
        assert node.broker.connected["paho-ws-sub"].listener == "ws"
    finally:
        await sub.close()
        await pub.close()


@pytest.mark.parametrize(
    ("subprotocol", "version"),
    [("mqtt", MQTT_3_1_1), ("mqtt", MQTT_5), ("mqttv3.1", MQTT_3_1)],
)
async def test_websocket_subprotocol_selected_MQTT_6_0_0_4(
    node: Node, subprotocol: str, version: int
) -> None:
    """The server selects "mqtt"; legacy MQTT 3.1 clients offering "mqttv3.1" get that one."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(node), protocols=(subprotocol,)) as ws,
    ):
        assert ws.protocol == subprotocol  # the server selected what we offered
        client = RawWs(ws, version)
        name = "MQIsdp" if version == MQTT_3_1 else "MQTT"
        await client.send(Connect(f"sp-{version}", protocol_level=version, protocol_name=name))
        ack = await client.recv()
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        await client.send(PingReq())
        assert isinstance(await client.recv(), PingResp)
        await client.send(Disconnect())
        assert await client.closed() == []


async def test_websocket_unaligned_frames_MQTT_6_0_0_2(node: Node) -> None:
    """Packets split across frames, and several packets in one frame."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(node), protocols=("mqtt",)) as ws,
    ):
        connect = encode(Connect("frames", protocol_level=MQTT_5), MQTT_5)
        for i in range(len(connect)):  # one byte per frame
            await ws.send_bytes(connect[i : i + 1])
        client = RawWs(ws, MQTT_5)
        assert isinstance(await client.recv(), ConnAck)
        both = encode(Subscribe(1, [SubscriptionRequest("f/#", 1)]), MQTT_5)
        both += encode(PingReq(), MQTT_5)
        await ws.send_bytes(both)
        assert isinstance(await client.recv(), SubAck)
        assert isinstance(await client.recv(), PingResp)


async def test_websocket_text_frame_closes_connection_MQTT_6_0_0_1(node: Node) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(node), protocols=("mqtt",)) as ws,
    ):
        client = RawWs(ws, MQTT_5)
        await client.send(Connect("texter", protocol_level=MQTT_5))
        assert isinstance(await client.recv(), ConnAck)
        await ws.send_str("this is not MQTT")
        sent = await client.closed()
        assert sent in ([], [Disconnect(ReasonCode.MALFORMED_PACKET)]), sent
    async with asyncio.timeout(TIMEOUT):
        while "texter" in node.broker.connected:
            await asyncio.sleep(0.01)


async def test_websocket_text_frame_before_connect_closes(node: Node) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(node), protocols=("mqtt",)) as ws,
    ):
        await ws.send_str("hello")
        assert await RawWs(ws, MQTT_5).closed() == []


async def test_websocket_wrong_path_is_not_mqtt(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(ws_url(node, "/not-mqtt"), protocols=("mqtt",))
        assert info.value.status == 404


# --------------------------------------------------------------------------- cross-transport


async def test_cross_transport_ws_to_tcp_and_back(node: Node) -> None:
    async with ws_client(node, "x-ws") as ws, tcp_client(node, "x-tcp", V311) as tcp:
        await ws.subscribe("from/tcp", qos=1)
        await tcp.subscribe("from/ws", qos=1)
        await ws.publish("from/ws", b"ws->tcp", qos=1)
        message = await next_message(tcp)
        assert (message.topic.value, message.payload) == ("from/ws", b"ws->tcp")
        await tcp.publish("from/tcp", b"tcp->ws", qos=1, retain=True)
        message = await next_message(ws)
        assert (message.topic.value, message.payload) == ("from/tcp", b"tcp->ws")
    # The retained message is the same whatever transport reads it.
    async with ws_client(node, "x-ws-late", V311) as late:
        await late.subscribe("from/#", qos=1)
        message = await next_message(late)
        assert (message.payload, message.retain) == (b"tcp->ws", True)


async def test_cross_transport_takeover_ws_by_tcp_MQTT_3_1_4_3(node: Node) -> None:
    """A client id connected over WebSocket is taken over by the same id over TCP."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(node), protocols=("mqtt",)) as ws,
    ):
        client = RawWs(ws, MQTT_5)
        await client.send(Connect("roamer", protocol_level=MQTT_5))
        assert isinstance(await client.recv(), ConnAck)
        tcp, ack = await RawClient.connect(node.tcp_port, "roamer", version=MQTT_5)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        assert await client.closed() == [Disconnect(ReasonCode.SESSION_TAKEN_OVER)]
        assert node.broker.connected["roamer"].listener == "tcp"
        await tcp.close()


# --------------------------------------------------------------------------- backpressure

PAYLOAD = 64 * 1024
TOTAL = 20 * 1024 * 1024
CAP = 256 * 1024


def small_receive_buffer_socket(addr_info: Any) -> socket.socket:
    """aiohttp socket factory: a tiny receive buffer, so a reader that stops is felt at once."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    return sock


async def slow_raw_subscriber(node: Node, client_id: str) -> RawClient:
    """A TCP subscriber with a tiny receive buffer that stops reading after SUBACK."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", node.tcp_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    client = RawClient(reader, writer, MQTT_3_1_1)
    client.send(Connect(client_id, keepalive=0))
    assert isinstance(await client.recv(), ConnAck)
    # QoS 0 for the flood (droppable), QoS 1 for the end marker (never dropped, only queued).
    client.send(
        Subscribe(1, [SubscriptionRequest("bp/flood", 0), SubscriptionRequest("bp/end", 1)])
    )
    assert isinstance(await client.recv(), SubAck)
    return client


async def test_backpressure_slow_tcp_reader_drops_qos0_and_stays_bounded(
    node_factory: Any,
) -> None:
    node = await node_factory(max_outgoing_buffer=CAP)
    slow = await slow_raw_subscriber(node, "slow")
    count = TOTAL // PAYLOAD
    dropped_before = node.broker.metrics.counters["messages/dropped"]
    async with (
        tcp_client(node, "bp-healthy", V311) as healthy,
        tcp_client(node, "bp-pub", V311) as pub,
    ):
        await healthy.subscribe("bp/flood", qos=0)
        received: list[bytes] = []
        # Lockstep in pairs: the healthy reader never has more than 128 KiB outstanding, so it
        # is never over the cap and must get every message; the slow one falls behind at once.
        for i in range(0, count, 2):
            for j in (i, i + 1):
                await pub.publish("bp/flood", j.to_bytes(4, "big") * (PAYLOAD // 4), qos=0)
            for _ in range(2):
                message = await next_message(healthy)
                assert isinstance(message.payload, bytes)
                received.append(message.payload[:4])
            # Bounded memory: the slow client's backlog never grows past the cap + one message.
            backlog = node.broker.connected["slow"].link.buffered()
            assert backlog <= CAP + PAYLOAD + 1024, backlog
        assert [int.from_bytes(r, "big") for r in received] == list(range(count))
        assert node.broker.metrics.counters["messages/dropped"] > dropped_before
        assert node.broker.connected["slow"].send_msg < count  # some went, some were dropped
        await pub.publish("bp/end", b"end", qos=1)

    # The broker is up and serving new clients.
    probe, ack = await RawClient.connect(node.tcp_port, "after-flood")
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    await probe.close()

    # The slow client now reads: a well-formed stream, a subset of the flood in order, then end.
    seen: list[int] = []
    async with asyncio.timeout(TIMEOUT * 2):
        while True:
            packet = await slow.recv(TIMEOUT)
            assert isinstance(packet, Publish), packet
            if packet.topic == "bp/end":
                break
            assert len(packet.payload) == PAYLOAD
            seen.append(int.from_bytes(packet.payload[:4], "big"))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert 0 < len(seen) < count
    await slow.close()


async def test_backpressure_slow_websocket_reader_drops_qos0(node_factory: Any) -> None:
    """The same over WebSocket: the link's pending list is what the cap applies to."""
    node = await node_factory(max_outgoing_buffer=CAP)
    count = TOTAL // PAYLOAD
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer_socket)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(ws_url(node), protocols=("mqtt",), max_msg_size=0) as ws,
    ):
        slow = RawWs(ws, MQTT_3_1_1)
        await slow.send(Connect("ws-slow", keepalive=0))
        assert isinstance(await slow.recv(), ConnAck)
        await slow.send(Subscribe(1, [SubscriptionRequest("bp/flood", 0)]))
        assert isinstance(await slow.recv(), SubAck)
        dropped_before = node.broker.metrics.counters["messages/dropped"]
        async with (
            tcp_client(node, "ws-bp-healthy", V311) as healthy,
            tcp_client(node, "ws-bp-pub", V311) as pub,
        ):
            await healthy.subscribe("bp/flood", qos=0)
            for i in range(0, count, 2):
                for j in (i, i + 1):
                    await pub.publish("bp/flood", j.to_bytes(4, "big") * (PAYLOAD // 4), qos=0)
                for _ in range(2):
                    await next_message(healthy)
                backlog = node.broker.connected["ws-slow"].link.buffered()
                assert backlog <= CAP + PAYLOAD + 1024, backlog
            assert node.broker.metrics.counters["messages/dropped"] > dropped_before
            assert node.broker.connected["ws-slow"].send_msg < count
        # Still connected (QoS 0 drops do not kick) and still answering once it reads.
        await slow.send(PingReq())
        async with asyncio.timeout(TIMEOUT * 2):
            while not isinstance(await slow.recv(), PingResp):
                pass


async def test_websocket_held_input_is_not_read_until_released(node: Node) -> None:
    """Flow control on a WebSocket: a forward hook reports a congested link (`Forwarded`, as
    the cluster does), the publisher is held; the handler receives nothing more until it is
    resumed, then handles what was sent meanwhile."""
    held: list[Callable[[], None]] = []

    def wait_drained(resume: Callable[[], None]) -> bool:
        held.append(resume)
        return True

    def hold_publisher(message: Message) -> int | Forwarded:
        if message.topic == "hold/me":
            return Forwarded(0, wait_drained)
        return 0

    node.broker.forward_hooks.append(hold_publisher)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(node), protocols=("mqtt",)) as ws,
    ):
        client = RawWs(ws, MQTT_5)
        await client.send(Connect("held-ws", protocol_level=MQTT_5))
        assert isinstance(await client.recv(), ConnAck)
        await client.send(Publish("hold/me", b"x"))
        async with asyncio.timeout(TIMEOUT):
            while not held:
                await asyncio.sleep(0.01)
        await client.send(PingReq())  # a WebSocket message of its own
        answer = asyncio.ensure_future(client.recv())
        await asyncio.sleep(0.3)
        assert not answer.done(), "held: the PINGREQ is not read"
        held[0]()
        assert isinstance(await asyncio.wait_for(answer, TIMEOUT), PingResp)
        await client.send(Disconnect())
        assert await client.closed() == []
