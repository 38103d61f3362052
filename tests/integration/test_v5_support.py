"""Helpers shared by the `test_v5_*` feature tests (this module holds no tests).

* `FakeClock`: the broker reads time only through `broker.clock`; a test that replaces it can
  let seconds "pass" (expiry intervals, will delays) and run `broker.tick()` itself, so nothing
  waits for real time and nothing asserts on timing.
* `ping_barrier`: PINGREQ, then every packet the broker wrote before the PINGRESP: since the
  broker runs on the test's event loop and writes in order, "nothing else arrived" is exact.
* `Paho`: paho-mqtt MQTTv5 driven from asyncio (blocking calls in threads, callbacks to the loop).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.subscribeoptions import SubscribeOptions
from rawclient import RawClient

from broker.protocol.constants import MQTT_5, PropertyId
from broker.protocol.packets import (
    ConnAck,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.node import Node

V5 = aiomqtt.ProtocolVersion.V5
TIMEOUT = 5.0
_ids = itertools.count(1)


class FakeClock:
    """A clock for `node.broker.clock` that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_clock(node: Node) -> FakeClock:
    clock = FakeClock()
    node.broker.clock = clock
    return clock


def packet_id() -> int:
    return next(_ids) % 65535 + 1


# --------------------------------------------------------------------------- RawClient


async def raw5(node: Node, client_id: str, **fields: Any) -> tuple[RawClient, ConnAck]:
    """A 5.0 RawClient; keepalive 0 unless given, so a FakeClock jump never times it out."""
    fields.setdefault("keepalive", 0)
    client, ack = await RawClient.connect(node.tcp_port, client_id, version=MQTT_5, **fields)
    assert isinstance(ack, ConnAck), ack
    return client, ack


async def expect(client: RawClient, kind: type[Packet]) -> Any:
    packet = await client.recv(TIMEOUT)
    assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
    return packet


async def subscribe(client: RawClient, *requests: SubscriptionRequest, **props: Any) -> SubAck:
    pid = packet_id()
    properties = {PropertyId[k.upper()]: v for k, v in props.items()}
    client.send(Subscribe(pid, list(requests), properties))
    ack: SubAck = await expect(client, SubAck)
    assert ack.packet_id == pid
    return ack


async def publish1(client: RawClient, topic: str, payload: bytes, **kw: Any) -> PubAck:
    """QoS 1 PUBLISH; returns the PUBACK."""
    pid = packet_id()
    client.send(Publish(topic, payload, 1, packet_id=pid, **kw))
    ack: PubAck = await expect(client, PubAck)
    assert ack.packet_id == pid
    return ack


async def ping_barrier(client: RawClient) -> list[Packet]:
    """Every packet the broker sent before answering a PINGREQ sent now."""
    client.send(PingReq())
    got: list[Packet] = []
    while True:
        packet = await client.recv(TIMEOUT)
        if isinstance(packet, PingResp):
            return got
        got.append(packet)


async def server_disconnect(client: RawClient) -> Disconnect:
    """The next packet is a server DISCONNECT, then the connection closes."""
    packet: Disconnect = await expect(client, Disconnect)
    # MQTT-3.14.2-2: a server DISCONNECT never carries a Session Expiry Interval.
    assert PropertyId.SESSION_EXPIRY_INTERVAL not in packet.properties
    assert await client.closed(TIMEOUT)
    return packet


async def ack_publish(client: RawClient) -> Publish:
    """Receive one PUBLISH and acknowledge it (QoS 1)."""
    message: Publish = await expect(client, Publish)
    if message.qos == 1:
        assert message.packet_id is not None
        client.send(PubAck(message.packet_id))
    return message


# --------------------------------------------------------------------------- aiomqtt


def aio(node: Node, identifier: str | None = None, **kw: Any) -> aiomqtt.Client:
    kw.setdefault("timeout", TIMEOUT)
    return aiomqtt.Client("127.0.0.1", node.tcp_port, identifier=identifier, protocol=V5, **kw)


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(client.messages)), TIMEOUT)


def paho_props(packet_type: int, **values: Any) -> PahoProperties:
    props = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


# --------------------------------------------------------------------------- paho-mqtt


class Paho:
    """paho-mqtt MQTTv5 from asyncio: blocking calls in threads, callbacks onto the loop."""

    def __init__(self, port: int, client_id: str = "") -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.connack: asyncio.Future[tuple[Any, Any, Any]] = self.loop.create_future()
        self.disconnected: asyncio.Future[tuple[Any, Any]] = self.loop.create_future()
        self.messages: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self.subacks: dict[int, asyncio.Future[list[Any]]] = {}
        self.pubacks: dict[int, asyncio.Future[tuple[Any, Any]]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(_set, self.connack, (flags, rc, props))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(_set, self.disconnected, (rc, props))

    def _on_message(self, c: Any, u: Any, message: paho.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, message)

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: list[Any], props: Any) -> None:
        self.loop.call_soon_threadsafe(self._resolve, self.subacks, mid, codes)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(self._resolve, self.pubacks, mid, (rc, props))

    def _resolve(self, table: dict[int, Any], mid: int, value: Any) -> None:
        _set(table.setdefault(mid, self.loop.create_future()), value)

    async def connect(
        self, properties: PahoProperties | None = None, keepalive: int = 60, **kw: Any
    ) -> tuple[Any, Any, Any]:
        await asyncio.to_thread(
            self.client.connect, "127.0.0.1", self.port, keepalive, properties=properties, **kw
        )
        self.client.loop_start()
        return await asyncio.wait_for(self.connack, TIMEOUT)

    async def subscribe(self, topic: str, options: SubscribeOptions, **kw: Any) -> list[Any]:
        rc, mid = self.client.subscribe(topic, options=options, **kw)
        assert rc == paho.MQTT_ERR_SUCCESS and mid is not None
        fut = self.subacks.setdefault(mid, self.loop.create_future())
        return await asyncio.wait_for(fut, TIMEOUT)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, **kw: Any) -> Any:
        """Publish and wait for the flow to complete; returns the PUBACK/PUBREC reason code
        (QoS 1/2) or None (QoS 0)."""
        info = self.client.publish(topic, payload, qos, **kw)
        if qos == 0:
            await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
            return None
        fut = self.pubacks.setdefault(info.mid, self.loop.create_future())
        rc, _props = await asyncio.wait_for(fut, TIMEOUT)
        return rc

    async def message(self) -> paho.MQTTMessage:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)

    async def close(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


def _set(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


async def gone(node: Node, client_id: str) -> None:
    """Wait (bounded) until the broker has handled the end of `client_id`'s connection."""
    async with asyncio.timeout(TIMEOUT):
        while client_id in node.broker.connected:
            await asyncio.sleep(0.01)
