"""MQTT 3.1 (MQIsdp) clients set DUP on a resent PUBREL, SUBSCRIBE and UNSUBSCRIBE: accepted for
protocol level 3, since the fixed-header flags rule (MQTT-3.6.1-1, 3.8.1-1, 3.10.1-1) is 3.1.1's."""

from __future__ import annotations

from rawclient import RawClient
from test_core_support import raw_connect
from test_v5_support import expect, ping_barrier

from broker.protocol.constants import MQTT_3_1, MQTT_3_1_1, MQTT_5
from broker.protocol.packets import ConnAck, PubComp, Publish, PubRec, SubAck
from broker.server.node import Node


def _pubrel_with_dup(packet_id: int) -> bytes:
    """A PUBREL with DUP=1 and QoS 1 in its fixed header (0x6A), as MQTT 3.1 resends it."""
    return bytes((0x6A, 2, packet_id >> 8, packet_id & 0xFF))


async def test_mqtt31_pubrel_with_dup_accepted(node: Node) -> None:
    """MQTT 3.1 (MQIsdp) resends PUBREL with DUP set; the fixed flags rule MQTT-3.6.1-1 is
    3.1.1's, so a level 3 client's resent PUBREL completes its QoS 2 flow."""
    client, connack = await RawClient.connect(node.tcp_port, "dup-31", MQTT_3_1,
                                              protocol_name="MQIsdp")  # fmt: skip
    assert isinstance(connack, ConnAck) and connack.reason_code == 0
    client.send(Publish("dup31/t", b"x", 2, packet_id=31))
    assert (await expect(client, PubRec)).packet_id == 31
    client.send_raw(_pubrel_with_dup(31))
    assert (await expect(client, PubComp)).packet_id == 31
    client.send_raw(_pubrel_with_dup(31))  # resent once more: still answered
    assert (await expect(client, PubComp)).packet_id == 31
    assert await ping_barrier(client) == []
    await client.close()


async def test_pubrel_with_dup_refused_from_311_MQTT_3_6_1_1(node: Node) -> None:
    """3.1.1 and 5.0 treat any other PUBREL flags than 0b0010 as malformed and close."""
    for version in (MQTT_3_1_1, MQTT_5):
        client, _ = await raw_connect(node, f"dup-{version}", version=version)
        client.send(Publish("dup/t", b"x", 2, packet_id=32))
        await expect(client, PubRec)
        client.send_raw(_pubrel_with_dup(32))
        assert await client.closed()


async def test_mqtt31_subscribe_with_dup_accepted(node: Node) -> None:
    """A 3.1 client's resent SUBSCRIBE (0x8A: DUP, QoS 1) is a SUBSCRIBE all the same."""
    client, _ = await RawClient.connect(node.tcp_port, "dup-31-sub", MQTT_3_1,
                                        protocol_name="MQIsdp")  # fmt: skip
    topic = b"dup31/s"
    body = b"\x00\x05" + len(topic).to_bytes(2, "big") + topic + b"\x01"
    client.send_raw(bytes((0x8A, len(body))) + body)
    ack = await expect(client, SubAck)
    assert (ack.packet_id, ack.reason_codes) == (5, [1])
    await client.close()
