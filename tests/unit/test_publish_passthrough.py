"""A QoS 0 PUBLISH without flags or properties is sent on as the bytes it arrived in
(`Publish.frames`, `broker.protocol.wire`), to subscribers of the publisher's protocol version
only, and only when nothing changed it on the way; everything else is encoded as before."""

from __future__ import annotations

import pytest
from cluster_fakes import FakeLink

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.core.message import Message
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId
from broker.protocol.packets import (
    Connect,
    Packet,
    Publish,
    Subscribe,
    SubscriptionRequest,
)


def decode_one(data: bytes, version: int = MQTT_3_1_1) -> Publish:
    packets = Decoder(version=version).feed(data)
    assert len(packets) == 1 and isinstance(packets[0], Publish)
    return packets[0]


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5])
@pytest.mark.parametrize("size", [0, 10, 120, 5000, 16000])
def test_a_plain_qos0_publish_keeps_its_bytes(version: int, size: int) -> None:
    data = encode(Publish("a/b", b"x" * size), version)
    packet = decode_one(data, version)
    assert packet.frames is not None
    assert packet.frames.qos0(False, version) == data
    assert packet.frames.fits(packet.topic, packet.payload, packet.properties)
    assert packet == Publish("a/b", b"x" * size), "frames take no part in equality"


@pytest.mark.parametrize(
    "packet",
    [
        Publish("a/b", b"x", qos=1, packet_id=7),
        Publish("a/b", b"x", retain=True),
        Publish("a/b", b"x" * 20_000),  # a 4-byte fixed header: re-encoded
    ],
)
def test_other_publishes_keep_no_bytes(packet: Publish) -> None:
    assert decode_one(encode(packet)).frames is None


def test_a_v5_publish_with_properties_keeps_no_bytes() -> None:
    packet = Publish("a/b", b"x", properties={PropertyId.CONTENT_TYPE: "text/plain"})
    assert decode_one(encode(packet, MQTT_5), MQTT_5).frames is None


def test_a_non_minimal_remaining_length_is_not_passed_on() -> None:
    body = encode(Publish("a/b", b"xy"))[2:]
    padded = bytes([0x30, 0x80 | len(body), 0x00]) + body  # the length in 2 bytes, not 1
    packet = decode_one(padded)
    assert packet == Publish("a/b", b"xy")
    assert packet.frames is None


def client(broker: Broker, client_id: str, version: int) -> tuple[Channel, FakeLink]:
    link = FakeLink()
    channel = Channel(broker, link)
    channel.data_received(encode(Connect(client_id, protocol_level=version), version))
    link.out.clear()  # CONNACK
    return channel, link


def subscribe(channel: Channel, link: FakeLink, topic_filter: str) -> None:
    channel.data_received(
        encode(Subscribe(1, [SubscriptionRequest(topic_filter)]), channel.version)
    )
    link.out.clear()  # SUBACK


def received(link: FakeLink, version: int) -> list[Packet]:
    data, link.out = bytes(link.out), bytearray()
    return Decoder(version=version).feed(data)


@pytest.mark.parametrize("pub_version", [MQTT_3_1_1, MQTT_5])
def test_subscribers_of_both_versions_get_a_valid_publish(pub_version: int) -> None:
    broker = Broker(clock=lambda: 100.0)
    pub, _ = client(broker, "pub", pub_version)
    sub3, link3 = client(broker, "sub3", MQTT_3_1_1)
    sub5, link5 = client(broker, "sub5", MQTT_5)
    subscribe(sub3, link3, "t/#")
    subscribe(sub5, link5, "t/#")
    data = encode(Publish("t/1", b"hello"), pub_version)
    pub.data_received(data)
    same_version = link3 if pub_version == MQTT_3_1_1 else link5
    assert bytes(same_version.out) == data, "the received bytes, sent on"
    assert received(link3, MQTT_3_1_1) == [Publish("t/1", b"hello")]
    assert received(link5, MQTT_5) == [Publish("t/1", b"hello")]


def test_a_hook_that_replaces_the_message_is_not_undone_by_the_received_bytes() -> None:
    broker = Broker(clock=lambda: 100.0)
    pub, _ = client(broker, "pub", MQTT_3_1_1)
    sub, link = client(broker, "sub", MQTT_3_1_1)
    subscribe(sub, link, "t/#")

    def rewrite(message: Message) -> Message:
        return Message(
            message.topic, b"rewritten", message.qos, message.retain, message.properties,
            message.publisher, message.timestamp, message.node,
        )  # fmt: skip

    broker.hooks.message_publish.append(rewrite)
    pub.data_received(encode(Publish("t/1", b"original")))
    assert received(link, MQTT_3_1_1) == [Publish("t/1", b"rewritten")]


def test_a_qos1_subscription_of_a_qos0_message_gets_it_at_qos0_from_the_same_bytes() -> None:
    broker = Broker(clock=lambda: 100.0)
    pub, _ = client(broker, "pub", MQTT_3_1_1)
    sub, link = client(broker, "sub", MQTT_3_1_1)
    sub.data_received(encode(Subscribe(1, [SubscriptionRequest("t/#", qos=1)])))
    link.out.clear()
    data = encode(Publish("t/1", b"q"))
    pub.data_received(data)
    assert bytes(link.out) == data  # min(0, 1) = QoS 0 (MQTT-3.8.4-8)


def test_frames_are_used_only_for_the_very_objects_they_encode() -> None:
    """The invariant is checked, not just promised: a rewritten payload, another topic string
    (a topic alias) or other properties never go out as the received bytes."""
    data = encode(Publish("t/1", b"xyz"))
    packet = decode_one(data)
    frames = packet.frames
    assert frames is not None
    assert frames.fits(packet.topic, packet.payload, packet.properties)
    assert not frames.fits("".join(["t/", "1"]), packet.payload, packet.properties)
    assert not frames.fits(packet.topic, bytes(bytearray(packet.payload)), packet.properties)
    assert not frames.fits(packet.topic, packet.payload, {})
    assert frames.qos0(True, MQTT_3_1_1) == encode(Publish("t/1", b"xyz", retain=True))
    assert frames.qos0(False, MQTT_5) == encode(Publish("t/1", b"xyz"), MQTT_5)


def test_a_hook_that_edits_the_message_in_place_is_not_undone_by_the_received_bytes() -> None:
    """Against the convention (hooks return a new Message), but still safe: the received bytes
    are dropped once the message no longer holds what they encode."""
    broker = Broker(clock=lambda: 100.0)
    pub, _ = client(broker, "pub", MQTT_3_1_1)
    sub, link = client(broker, "sub", MQTT_3_1_1)
    subscribe(sub, link, "t/#")

    def edit(message: Message) -> Message:
        message.payload = b"edited"
        return message

    broker.hooks.message_publish.append(edit)
    pub.data_received(encode(Publish("t/1", b"original")))
    assert received(link, MQTT_3_1_1) == [Publish("t/1", b"edited")]
