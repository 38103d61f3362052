"""Helpers shared by the `test_core_*` integration tests (this module holds no tests).

Waiting without sleeping: the broker runs on the test's event loop and writes to each socket in
the order it handles packets, so two barriers make "nothing else arrives" checks deterministic:
  * RawClient: `ping_barrier` sends PINGREQ and reads up to the PINGRESP, returning every packet
    the broker wrote before it handled the PINGREQ;
  * aiomqtt: `until_sentinel` collects messages until a sentinel message published afterwards
    at the same QoS arrives (MQTT-4.6.0-6: messages of one publisher on a topic at one QoS are
    delivered in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho
import pytest
from rawclient import RawClient

from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import (
    ConnAck,
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

TIMEOUT = 5.0
P = TypeVar("P")

needs_mosquitto_clients = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients not installed",
)


# -- aiomqtt ---------------------------------------------------------------------------------


def aio(node: Node, identifier: str | None = None, **kwargs: Any) -> aiomqtt.Client:
    """An MQTT 3.1.1 aiomqtt client for `node` (use as `async with`)."""
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V311)
    kwargs.setdefault("timeout", TIMEOUT)
    return aiomqtt.Client("127.0.0.1", node.tcp_port, identifier=identifier, **kwargs)


async def next_message(client: aiomqtt.Client, timeout: float = TIMEOUT) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(aiter(client.messages))


async def collect(
    client: aiomqtt.Client, n: int, timeout: float = TIMEOUT
) -> list[aiomqtt.Message]:
    """Exactly the next `n` messages (TimeoutError if fewer arrive in time)."""
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await anext(aiter(client.messages)))
    return out


async def until_sentinel(
    client: aiomqtt.Client,
    publisher: aiomqtt.Client,
    topic: str,
    qos: int = 0,
    timeout: float = TIMEOUT,
) -> list[aiomqtt.Message]:
    """Publish a sentinel on `topic` (which `client` must match) and return every message that
    arrived before it. Use the QoS of the messages checked: paho hands an incoming QoS 2 message
    over only after PUBREL, so only messages of one QoS are seen in publication order."""
    sentinel = b"--sentinel--"
    await publisher.publish(topic, sentinel, qos=qos)
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            if message.topic.value == topic and message.payload == sentinel:
                return out
            out.append(message)
    raise AssertionError("unreachable")  # pragma: no cover


# -- RawClient -------------------------------------------------------------------------------


async def raw_connect(
    node: Node, client_id: str, *, clean: bool = True, version: int = MQTT_3_1_1, **fields: Any
) -> tuple[RawClient, ConnAck]:
    client, connack = await RawClient.connect(
        node.tcp_port, client_id, version, clean_start=clean, **fields
    )
    assert isinstance(connack, ConnAck), connack
    return client, connack


async def expect(client: RawClient, kind: type[P], timeout: float = TIMEOUT) -> P:
    """The next packet, which must be a `kind`."""
    packet = await client.recv(timeout)
    assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
    return packet


async def raw_subscribe(
    client: RawClient, *filters: tuple[str, int], packet_id: int = 1
) -> list[int]:
    """SUBSCRIBE and return the SUBACK codes (the SUBACK must carry our packet id)."""
    client.send(Subscribe(packet_id, [SubscriptionRequest(f, qos) for f, qos in filters]))
    suback = await expect(client, SubAck)
    assert suback.packet_id == packet_id  # MQTT-3.8.4-2
    return list(suback.reason_codes)


async def raw_publish_qos1(client: RawClient, topic: str, payload: bytes, packet_id: int) -> None:
    """QoS 1 PUBLISH and wait for its PUBACK: once it is back the broker has routed it."""
    client.send(Publish(topic, payload, qos=1, packet_id=packet_id))
    ack = await expect(client, PubAck)
    assert ack.packet_id == packet_id


async def ping_barrier(client: RawClient, timeout: float = TIMEOUT) -> list[Packet]:
    """PINGREQ, then every packet the broker sent before the PINGRESP (in order)."""
    client.send(PingReq())
    before: list[Packet] = []
    async with asyncio.timeout(timeout):
        while True:
            packet = await client.recv(timeout)
            if isinstance(packet, PingResp):
                return before
            before.append(packet)


# -- misc --------------------------------------------------------------------------------------


async def eventually(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, step: float = 0.02
) -> None:
    """Poll broker state until `predicate()` holds (AssertionError after `timeout`)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(step)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout}s") from None


def paho_client(client_id: str, clean_session: bool = True) -> paho.Client:
    """A paho 2.x MQTT 3.1.1 client (drive it only with `loop_start` / `asyncio.to_thread`)."""
    return paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )


async def mosquitto(*args: str, timeout: float = TIMEOUT) -> tuple[int, bytes, bytes]:
    """Run one mosquitto_pub/mosquitto_sub command to completion; kill it on timeout."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # timed out or cancelled: do not leave it running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


def payloads(messages: Sequence[aiomqtt.Message]) -> list[bytes]:
    return [bytes(m.payload) for m in messages]  # type: ignore[arg-type]
