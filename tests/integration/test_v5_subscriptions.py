"""MQTT 5.0 subscriptions: options, identifiers, overlapping and shared subscriptions, and the
capabilities a server may switch off (wildcards, shared, identifiers, QoS, retain).

Each test names the normative statement (MQTT-x.y.z-n) or section it checks.
"""

from __future__ import annotations

from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions
from rawclient import RawClient
from test_v5_support import (
    Paho,
    aio,
    expect,
    next_message,
    paho_props,
    ping_barrier,
    publish1,
    raw5,
    server_disconnect,
    subscribe,
)

from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import ConnAck, Connect, Publish, PubRec, SubscriptionRequest, Will
from broker.protocol.properties import encode_varint
from broker.server.node import Node

P = PropertyId


# --------------------------------------------------------------------------- options with paho


async def test_no_local_paho_MQTT_3_8_3_3(node: Node) -> None:
    client = Paho(node.tcp_port, "so-nl")
    await client.connect()
    try:
        await client.subscribe("so/nl", SubscribeOptions(qos=1, noLocal=True))
        await client.subscribe("so/nl-sentinel", SubscribeOptions(qos=1))
        await client.publish("so/nl", b"own", 1)
        await client.publish("so/nl-sentinel", b"sentinel", 1)
        # Messages of one publisher arrive in order (MQTT-4.6.0-6): the own one would be first.
        assert (await client.message()).payload == b"sentinel"
    finally:
        await client.close()


async def test_retain_as_published_paho_MQTT_3_3_1_12_and_13(node: Node) -> None:
    keep = Paho(node.tcp_port, "so-rap-1")
    clear = Paho(node.tcp_port, "so-rap-0")
    await keep.connect()
    await clear.connect()
    try:
        await keep.subscribe("so/rap", SubscribeOptions(qos=1, retainAsPublished=True))
        await clear.subscribe("so/rap", SubscribeOptions(qos=1, retainAsPublished=False))
        pub, _ = await raw5(node, "so-rap-pub")
        await publish1(pub, "so/rap", b"r", retain=True)
        assert (await keep.message()).retain  # MQTT-3.3.1-13
        assert not (await clear.message()).retain  # MQTT-3.3.1-12
        await pub.close()
    finally:
        await keep.close()
        await clear.close()


@pytest.mark.parametrize(
    ("handling", "expected"),
    [(0, [True, True]), (1, [True, False]), (2, [False, False])],
    ids=["MQTT_3_3_1_9", "MQTT_3_3_1_10", "MQTT_3_3_1_11"],
)
async def test_retain_handling_paho(node: Node, handling: int, expected: list[bool]) -> None:
    pub, _ = await raw5(node, f"so-rh-pub-{handling}")
    await publish1(pub, f"so/rh{handling}", b"retained", retain=True)
    client = Paho(node.tcp_port, f"so-rh-{handling}")
    await client.connect()
    try:
        for sends_retained in expected:
            options = SubscribeOptions(qos=1, retainHandling=handling)
            await client.subscribe(f"so/rh{handling}", options)
            await publish1(pub, f"so/rh{handling}", b"live")
            first = await client.message()
            if sends_retained:
                assert (first.payload, first.retain) == (b"retained", True)
                first = await client.message()
            assert first.payload == b"live"
    finally:
        await client.close()
        await pub.close()


@pytest.mark.parametrize(("sub_qos", "pub_qos"), [(0, 2), (1, 2), (2, 1), (1, 0)])
async def test_delivered_at_minimum_of_publish_and_granted_qos_MQTT_3_8_4_8(
    node: Node, sub_qos: int, pub_qos: int
) -> None:
    async with aio(node, f"so-q-{sub_qos}{pub_qos}") as sub:
        await sub.subscribe("so/qos", qos=sub_qos)
        async with aio(node, f"so-q-pub-{sub_qos}{pub_qos}") as pub:
            await pub.publish("so/qos", b"x", qos=pub_qos)
        message = await next_message(sub)
        assert message.qos == min(sub_qos, pub_qos)


# --------------------------------------------------------------------------- identifiers


async def test_overlapping_subscriptions_one_copy_highest_qos_all_ids_MQTT_3_3_4_2_and_4(
    node: Node,
) -> None:
    client = Paho(node.tcp_port, "so-overlap")
    await client.connect()
    try:
        for topic, qos, sid in (("so/ov/#", 0, 1), ("so/ov/+", 2, 2), ("so/ov/x", 1, 3)):
            props = paho_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sid)
            await client.subscribe(topic, SubscribeOptions(qos=qos), properties=props)
        await client.subscribe("so/ov/x", SubscribeOptions(qos=1))  # replaces id 3: no id now
        pub, _ = await raw5(node, "so-overlap-pub")
        pub.send(Publish("so/ov/x", b"one", 2, packet_id=9))
        assert (await expect(pub, PubRec)).packet_id == 9
        message = await client.message()
        assert message.qos == 2  # the highest of the matching subscriptions (MQTT-3.3.4-2)
        assert sorted(message.properties.SubscriptionIdentifier) == [1, 2]  # MQTT-3.3.4-4
        await publish1(pub, "so/ov/y", b"sentinel")
        assert (await client.message()).payload == b"sentinel"  # no second copy before it
        await pub.close()
    finally:
        await client.close()


async def test_subscription_identifier_zero_is_protocol_error_3_8_2_1_2(node: Node) -> None:
    client, _ = await raw5(node, "so-sid0")
    props = b"\x0b\x00"  # Subscription Identifier 0
    body = b"\x00\x05" + encode_varint(len(props)) + props + b"\x00\x04so/x\x01"
    client.send_raw(b"\x82" + encode_varint(len(body)) + body)
    assert (await server_disconnect(client)).reason_code == ReasonCode.PROTOCOL_ERROR


# --------------------------------------------------------------------------- shared


async def test_shared_subscription_one_member_per_message_4_8_2(node: Node) -> None:
    members = []
    for name in ("so-sh-a", "so-sh-b"):
        client, _ = await raw5(node, name)
        ack = await subscribe(client, SubscriptionRequest("$share/grp/so/sh", 1))
        assert ack.reason_codes == [1]
        members.append(client)
    pub, _ = await raw5(node, "so-sh-pub")
    for i in range(4):
        await publish1(pub, "so/sh", b"%d" % i)
    got = [await ping_barrier(client) for client in members]
    payloads = sorted(m.payload for batch in got for m in batch if isinstance(m, Publish))
    assert payloads == [b"0", b"1", b"2", b"3"]  # each message once, to one member
    assert all(batch for batch in got)  # round robin: both members got some
    for client in (*members, pub):
        await client.close()


async def test_shared_subscription_gets_no_retained_messages_4_8_2(node: Node) -> None:
    pub, _ = await raw5(node, "so-shr-pub")
    await publish1(pub, "so/shr", b"kept", retain=True)
    client, _ = await raw5(node, "so-shr")
    await subscribe(client, SubscriptionRequest("$share/g/so/shr", 1))
    assert await ping_barrier(client) == []
    await client.close()
    await pub.close()


async def test_no_local_on_shared_subscription_is_protocol_error_MQTT_3_8_3_4(node: Node) -> None:
    client = Paho(node.tcp_port, "so-shnl")
    await client.connect()
    try:
        client.client.subscribe("$share/g/so/shnl", options=SubscribeOptions(qos=1, noLocal=True))
        rc, _props = await client.disconnected
        assert rc.value == ReasonCode.PROTOCOL_ERROR
    finally:
        await client.close()


# --------------------------------------------------------------------------- capabilities


async def test_connack_advertises_defaults_3_2_2_3(node: Node) -> None:
    client = Paho(node.tcp_port, "cap-defaults")
    _flags, rc, props = await client.connect()
    try:
        assert rc == 0
        assert props.RetainAvailable == 1
        assert props.WildcardSubscriptionAvailable == 1
        assert props.SubscriptionIdentifierAvailable == 1
        assert props.SharedSubscriptionAvailable == 1
        assert not hasattr(props, "MaximumQoS")  # absent: QoS 2 supported (3.2.2.3.4)
    finally:
        await client.close()


async def test_wildcard_subscriptions_disabled_suback_0xA2_3_2_2_3_11(node_factory: Any) -> None:
    node = await node_factory(wildcard_subscription_available=False)
    client = Paho(node.tcp_port, "cap-wild")
    _flags, _rc, props = await client.connect()
    try:
        assert props.WildcardSubscriptionAvailable == 0
        codes = await client.subscribe("cap/+/x", SubscribeOptions(qos=1))
        assert [c.value for c in codes] == [ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED]
        codes = await client.subscribe("cap/plain", SubscribeOptions(qos=1))
        assert [c.value for c in codes] == [1]
    finally:
        await client.close()
    old, _ = await RawClient.connect(node.tcp_port, "cap-wild-311", MQTT_3_1_1)
    ack = await subscribe(old, SubscriptionRequest("cap/#", 1))
    assert ack.reason_codes == [0x80]  # 3.1.1 has one failure code
    await old.close()


async def test_shared_subscriptions_disabled_suback_0x9E_3_2_2_3_13(node_factory: Any) -> None:
    node = await node_factory(shared_subscription_available=False)
    client, ack = await raw5(node, "cap-shared")
    assert ack.properties[P.SHARED_SUBSCRIPTION_AVAILABLE] == 0
    suback = await subscribe(
        client, SubscriptionRequest("$share/g/cap/s", 1), SubscriptionRequest("cap/s", 1)
    )
    assert suback.reason_codes == [ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, 1]
    assert "shared" in suback.properties[P.REASON_STRING]
    await client.close()


async def test_subscription_identifiers_disabled_suback_0xA1_3_2_2_3_12(
    node_factory: Any,
) -> None:
    node = await node_factory(subscription_identifier_available=False)
    async with aio(node, "cap-sid") as client:
        props = paho_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=4)
        codes = await client.subscribe("cap/sid", qos=1, properties=props)
        assert [c.value for c in codes] == [  # type: ignore[union-attr]
            ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
        ]
    raw, ack = await raw5(node, "cap-sid-raw")
    assert ack.properties[P.SUBSCRIPTION_IDENTIFIER_AVAILABLE] == 0
    await raw.close()


async def test_maximum_qos_announced_and_granted_MQTT_3_2_2_9_and_10(node_factory: Any) -> None:
    node = await node_factory(max_qos_allowed=1)
    client = Paho(node.tcp_port, "cap-qos")
    _flags, _rc, props = await client.connect()
    try:
        assert props.MaximumQoS == 1
        codes = await client.subscribe("cap/qos", SubscribeOptions(qos=2))
        assert [c.value for c in codes] == [1]  # accepted, granted at most 1 (MQTT-3.2.2-10)
    finally:
        await client.close()


async def test_publish_above_maximum_qos_disconnect_0x9B_3_2_2_3_4(node_factory: Any) -> None:
    node = await node_factory(max_qos_allowed=1)
    client, _ = await raw5(node, "cap-qos-pub")
    client.send(Publish("cap/qos", b"x", 2, packet_id=1))
    assert (await server_disconnect(client)).reason_code == ReasonCode.QOS_NOT_SUPPORTED


async def test_will_qos_above_maximum_refused_0x9B_MQTT_3_2_2_12(node_factory: Any) -> None:
    node = await node_factory(max_qos_allowed=0)
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect("cap-will-qos", MQTT_5, will=Will("cap/will", b"w", 1)))
    ack = await expect(client, ConnAck)
    assert ack.reason_code == ReasonCode.QOS_NOT_SUPPORTED
    assert await client.closed()


async def test_retain_unavailable_MQTT_3_2_2_13_and_3_2_2_3_5(node_factory: Any) -> None:
    node = await node_factory(retain_available=False)
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect("cap-will-ret", MQTT_5, will=Will("cap/will", b"w", 0, True)))
    ack = await expect(client, ConnAck)
    assert ack.reason_code == ReasonCode.RETAIN_NOT_SUPPORTED  # MQTT-3.2.2-13
    assert await client.closed()
    client, ack = await raw5(node, "cap-ret")
    assert ack.properties[P.RETAIN_AVAILABLE] == 0
    client.send(Publish("cap/ret", b"x", 0, retain=True))
    assert (await server_disconnect(client)).reason_code == ReasonCode.RETAIN_NOT_SUPPORTED
