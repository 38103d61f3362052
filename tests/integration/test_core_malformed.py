"""Malformed input closes only the offending connection (MQTT 3.1.1 sections 2.2, 4.8)."""

from __future__ import annotations

import asyncio

import pytest
from rawclient import RawClient
from test_core_support import aio, eventually, next_message, raw_connect

from broker.server.node import Node

#: Bytes sent on a fresh connection, before any CONNECT.
BEFORE_CONNECT = {
    "type-0": b"\x00\x00",
    "http-request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "random-bytes": bytes(range(256)),
    "connect-5-byte-length": b"\x10\xff\xff\xff\xff\x7f",
}

#: Bytes sent after a successful CONNECT, each with the rule it breaks.
AFTER_CONNECT = {
    "subscribe-reserved-flags-MQTT-3.8.1-1": b"\x80\x06\x00\x01\x00\x01a\x00",
    "unsubscribe-reserved-flags-MQTT-3.10.1-1": b"\xa0\x05\x00\x01\x00\x01a",
    "pubrel-reserved-flags-MQTT-3.6.1-1": b"\x60\x02\x00\x01",
    "pingreq-reserved-flags-MQTT-2.2.2-2": b"\xc1\x00",
    "publish-qos-3-MQTT-3.3.1-4": b"\x36\x05\x00\x01a\x00\x01",
    "remaining-length-5-bytes-MQTT-2.2.3": b"\x30\xff\xff\xff\xff\x7f",
    "packet-over-max-size": b"\x30\x80\x80\x80\x01",  # announces 2 MiB (limit 1 MiB)
    "type-0-reserved": b"\x00\x00",
    "type-15-reserved-in-3.1.1": b"\xf0\x00",
    "connack-from-client": b"\x20\x02\x00\x00",
    "suback-from-client": b"\x90\x03\x00\x01\x00",
    "pingresp-from-client": b"\xd0\x00",
    "publish-topic-longer-than-packet": b"\x30\x03\x00\x10a",
    "publish-qos0-with-dup-MQTT-3.3.1-2": b"\x38\x03\x00\x01a",
    "publish-qos1-without-packet-id": b"\x32\x03\x00\x01a",
    "publish-packet-id-0-MQTT-2.3.1-1": b"\x32\x05\x00\x01a\x00\x00",
    "puback-too-short": b"\x40\x01\x00",
    "disconnect-with-body": b"\xe0\x01\x00",
    "subscribe-packet-id-0-MQTT-2.3.1-1": b"\x82\x06\x00\x00\x00\x01a\x00",
}


async def _healthy_still_served(node: Node, healthy: object, topic: str) -> None:
    async with aio(node, "mal-pub") as pub:
        await pub.publish(topic, b"still here", qos=1)
    message = await next_message(healthy)  # type: ignore[arg-type]
    assert (message.topic.value, message.payload) == (topic, b"still here")


@pytest.mark.parametrize("data", list(BEFORE_CONNECT.values()), ids=list(BEFORE_CONNECT))
async def test_garbage_before_connect_closes_only_offender(node: Node, data: bytes) -> None:
    async with aio(node, "mal-healthy") as healthy:
        await healthy.subscribe("mal/#", qos=1)
        bad = await RawClient.open(node.tcp_port)
        try:
            bad.send_raw(data)
            assert await bad.closed()
        finally:
            await bad.close()
        await eventually(lambda: len(node.broker.channels) == 1)
        assert node.broker.connected.keys() == {"mal-healthy"}
        await _healthy_still_served(node, healthy, "mal/before")


@pytest.mark.parametrize("data", list(AFTER_CONNECT.values()), ids=list(AFTER_CONNECT))
async def test_malformed_packet_closes_only_offender_MQTT_4_8(node: Node, data: bytes) -> None:
    """A protocol violation closes that network connection (3.1.1 section 4.8) and nothing else:
    the healthy subscriber keeps getting its messages."""
    async with aio(node, "mal-healthy") as healthy:
        await healthy.subscribe("mal/#", qos=1)
        bad, _ = await raw_connect(node, "mal-offender")
        try:
            bad.send_raw(data)
            assert await bad.closed()
            assert bad.pending == []  # nothing answered to the bad packet
        finally:
            await bad.close()
        await eventually(lambda: "mal-offender" not in node.broker.connected)
        assert node.broker.connected.keys() == {"mal-healthy"}
        await _healthy_still_served(node, healthy, "mal/after")


async def test_many_offenders_at_once_do_not_disturb_healthy_clients(node: Node) -> None:
    async with aio(node, "mal-healthy") as healthy:
        await healthy.subscribe("mal/#", qos=1)
        offenders = [await raw_connect(node, f"off-{i}") for i in range(10)]
        for (client, _), data in zip(offenders, AFTER_CONNECT.values(), strict=False):
            client.send_raw(data)
        results = await asyncio.gather(*(client.closed() for client, _ in offenders))
        for client, _ in offenders:
            await client.close()
        assert all(results)
        await eventually(lambda: node.broker.connected.keys() == {"mal-healthy"})
        await _healthy_still_served(node, healthy, "mal/many")
