"""MQTT 5.0 basics over real sockets: aiomqtt (V5), paho-mqtt (MQTTv5) and our RawClient.

Every test names the normative statement of the MQTT 5.0 specification it checks, where there
is one. Every wait is bounded; nothing asserts on timing. The server DISCONNECT rules that need
no socket run on the in-memory harness: tests/unit/test_rules_v5_disconnect.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions
from rawclient import RawClient
from test_v5_support import (
    TIMEOUT,
    Paho,
    aio,
    expect,
    next_message,
    paho_props,
    publish1,
    raw5,
    server_disconnect,
    subscribe,
)

from broker.protocol.constants import PropertyId, ReasonCode
from broker.protocol.packets import (
    Disconnect,
    PubAck,
    Publish,
    PubRec,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    Will,
)
from broker.server.node import Node

# --------------------------------------------------------------------------- helpers


async def expect_server_disconnect(client: RawClient, code: int) -> None:
    """The next packet is DISCONNECT with `code`, then the broker closes the connection."""
    packet = await server_disconnect(client)  # also checks MQTT-3.14.2-2 and the close
    assert packet.reason_code == code, f"DISCONNECT {packet.reason_code:#04x}, want {code:#04x}"


# --------------------------------------------------------------------------- CONNECT / CONNACK


async def test_session_expiry_nonzero_resumes_with_session_present_MQTT_3_2_2_3(node: Node) -> None:
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: 60}
    sub, ack = await raw5(node, "persist-raw", clean_start=False, properties=props)
    assert ack.reason_code == 0 and not ack.session_present
    assert (await subscribe(sub, SubscriptionRequest("persist/t", 1))).reason_codes == [1]
    sub.send(Disconnect())
    assert await sub.closed(TIMEOUT)

    pub, _ = await raw5(node, "persist-pub")
    # The offline session still has the subscription: a subscriber matched (no 0x10).
    assert (await publish1(pub, "persist/t", b"while-offline")).reason_code == ReasonCode.SUCCESS

    again, ack = await raw5(node, "persist-raw", clean_start=False, properties=props)
    assert ack.reason_code == 0 and ack.session_present  # MQTT-3.2.2-3
    message = await expect(again, Publish)
    assert (message.topic, message.payload, message.qos) == ("persist/t", b"while-offline", 1)
    await again.close()
    await pub.close()


async def test_session_expiry_resume_with_aiomqtt_MQTT_3_1_2_23(node: Node) -> None:
    """A persistent aiomqtt V5 session keeps subscriptions and QoS 1 messages while offline."""
    connect_props = paho_props(PacketTypes.CONNECT, SessionExpiryInterval=300)
    kw = {"clean_start": False, "properties": connect_props}
    async with aio(node, "persist-aio", **kw) as client:
        await client.subscribe("aio/persist/#", qos=1)
    async with aio(node, "persist-aio-pub") as publisher:
        for i in range(5):
            await publisher.publish("aio/persist/x", f"m{i}".encode(), qos=1)
    async with aio(node, "persist-aio", **kw) as client:
        got = [(await next_message(client)).payload for _ in range(5)]
    assert got == [f"m{i}".encode() for i in range(5)]


async def test_session_expiry_zero_ends_at_disconnect_MQTT_3_1_2_23(node: Node) -> None:
    # No Session Expiry Interval property: 0, the session ends with the connection.
    sub, ack = await raw5(node, "volatile", clean_start=False)
    assert not ack.session_present
    assert (await subscribe(sub, SubscriptionRequest("volatile/t", 1))).reason_codes == [1]
    sub.send(Disconnect())
    assert await sub.closed(TIMEOUT)
    assert "volatile" not in node.broker.sessions

    pub, _ = await raw5(node, "volatile-pub")
    puback = await publish1(pub, "volatile/t", b"x")
    assert puback.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    again, ack = await raw5(node, "volatile", clean_start=False)
    assert not ack.session_present  # MQTT-3.2.2-3: no session state
    await again.close()
    await pub.close()


async def test_session_expires_after_interval_MQTT_3_1_2_23(node: Node) -> None:
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: 1}
    sub, _ = await raw5(node, "short-lived", clean_start=False, properties=props)
    await subscribe(sub, SubscriptionRequest("short/t", 0))
    await sub.close()  # network close: the session outlives the connection for 1 s
    assert await sub.closed(TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        while "short-lived" in node.broker.sessions:
            await asyncio.sleep(0.1)
    again, ack = await raw5(node, "short-lived", clean_start=False, properties=props)
    assert not ack.session_present
    await again.close()


async def test_disconnect_session_expiry_zero_discards_session_MQTT_3_14_2(node: Node) -> None:
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: 60}
    client, _ = await raw5(node, "shorten", clean_start=False, properties=props)
    client.send(Disconnect(0, {PropertyId.SESSION_EXPIRY_INTERVAL: 0}))
    assert await client.closed(TIMEOUT)
    assert "shorten" not in node.broker.sessions


async def test_assigned_client_identifier_raw_MQTT_3_2_2_16(node: Node) -> None:
    client, ack = await raw5(node, "")
    assert ack.reason_code == 0
    assigned = ack.properties.get(PropertyId.ASSIGNED_CLIENT_IDENTIFIER)
    assert isinstance(assigned, str) and assigned
    assert assigned in node.broker.connected  # the session really lives under that id
    await client.close()


async def test_assigned_client_identifier_paho_MQTT_3_2_2_16(node: Node) -> None:
    client = Paho(node.tcp_port, client_id="")
    _flags, rc, props = await client.connect()
    try:
        assert rc == 0
        assigned = props.AssignedClientIdentifier
        assert assigned and assigned in node.broker.connected
    finally:
        await client.close()


async def test_connack_topic_alias_maximum_and_maximum_packet_size(node_factory: Any) -> None:
    node = await node_factory(max_packet_size=4096)
    client, ack = await raw5(node, "props")
    assert ack.properties[PropertyId.MAXIMUM_PACKET_SIZE] == 4096  # 3.2.2.3.6
    assert ack.properties[PropertyId.TOPIC_ALIAS_MAXIMUM] >= 1  # 3.2.2.3.8
    await client.close()

    paho_client = Paho(node.tcp_port, client_id="props-paho")
    _flags, rc, props = await paho_client.connect()
    try:
        assert rc == 0
        assert props.MaximumPacketSize == 4096
        assert props.TopicAliasMaximum >= 1
    finally:
        await paho_client.close()


# ------------------------------------------------------------------ SUBACK / UNSUBACK / PUBACK


async def test_suback_granted_qos_and_invalid_filter_0x8F_MQTT_3_9_3(node: Node) -> None:
    client, _ = await raw5(node, "suback")
    suback = await subscribe(
        client,
        SubscriptionRequest("s/0", 0),
        SubscriptionRequest("s/1", 1),
        SubscriptionRequest("s/2", 2),
        SubscriptionRequest("s/#/bad", 1),  # '#' not last: invalid (MQTT-4.7.1-1)
        SubscriptionRequest("s/a+", 1),  # '+' not a whole level (MQTT-4.7.1-2)
    )
    invalid = ReasonCode.TOPIC_FILTER_INVALID
    assert suback.reason_codes == [0, 1, 2, invalid, invalid]
    await client.close()


async def test_suback_reason_codes_aiomqtt_MQTT_3_9_3(node: Node) -> None:
    async with aio(node, "suback-aio") as client:
        # paho checks wildcards itself; a share name with a wildcard (MQTT-4.8.2-2) gets through.
        codes = await client.subscribe([("a/#", 2), ("b/+", 1), ("$share//x", 0)])
        assert [c.value for c in codes] == [2, 1, 0x8F]  # type: ignore[union-attr]


async def test_unsuback_success_and_no_subscription_existed_0x11_MQTT_3_11_3(node: Node) -> None:
    client, _ = await raw5(node, "unsuback")
    await subscribe(client, SubscriptionRequest("u/x", 1))
    client.send(Unsubscribe(7, ["u/x", "u/never"]))
    ack = await expect(client, UnsubAck)
    assert ack.packet_id == 7  # MQTT-3.11.2-1 (same packet id)
    assert ack.reason_codes == [ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED]
    await client.close()


async def test_puback_0x10_no_matching_subscribers_3_4_2_1(node: Node) -> None:
    client, _ = await raw5(node, "puback")
    puback = await publish1(client, "nobody/here", b"x")
    assert puback.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    client.send(Publish("nobody/here", b"x", 2, packet_id=33))
    rec = await expect(client, PubRec)
    assert (rec.packet_id, rec.reason_code) == (33, ReasonCode.NO_MATCHING_SUBSCRIBERS)

    listener, _ = await raw5(node, "puback-listener")
    await subscribe(listener, SubscriptionRequest("nobody/#", 0))
    assert (await publish1(client, "nobody/here", b"y")).reason_code == ReasonCode.SUCCESS
    await listener.close()
    await client.close()


# --------------------------------------------------------------------------- client DISCONNECT


async def test_disconnect_with_will_0x04_publishes_will_MQTT_3_14_2_1(node: Node) -> None:
    async with aio(node, "watcher-04") as watcher:
        await watcher.subscribe("will/topic", qos=1)
        client, _ = await raw5(node, "with-will-04", will=Will("will/topic", b"the-will", 1))
        client.send(Disconnect(ReasonCode.DISCONNECT_WITH_WILL))
        assert await client.closed(TIMEOUT)
        message = await next_message(watcher)
        assert (message.topic.value, message.payload) == ("will/topic", b"the-will")


async def test_normal_disconnect_0x00_discards_will_MQTT_3_14_4_3(node: Node) -> None:
    async with aio(node, "watcher-00") as watcher:
        await watcher.subscribe("will/topic", qos=1)
        client, _ = await raw5(node, "with-will-00", will=Will("will/topic", b"the-will", 1))
        client.send(Disconnect(ReasonCode.SUCCESS))
        assert await client.closed(TIMEOUT)
        async with aio(node, "sentinel-00") as other:
            await other.publish("will/topic", b"sentinel", qos=1)
        message = await next_message(watcher)
        assert message.payload == b"sentinel"  # no will before it


async def test_network_close_publishes_will_MQTT_3_1_2_8(node: Node) -> None:
    async with aio(node, "watcher-net") as watcher:
        await watcher.subscribe("will/topic", qos=1)
        client, _ = await raw5(node, "with-will-net", will=Will("will/topic", b"net-will", 1))
        await client.close()  # no DISCONNECT
        message = await next_message(watcher)
        assert message.payload == b"net-will"


# --------------------------------------------------------------------------- server DISCONNECT


async def test_server_disconnect_0x8B_on_node_shutdown(node: Node) -> None:
    client, _ = await raw5(node, "until-shutdown")
    await node.stop()
    await expect_server_disconnect(client, ReasonCode.SERVER_SHUTTING_DOWN)


async def test_server_disconnect_0x8B_on_node_shutdown_paho(node: Node) -> None:
    client = Paho(node.tcp_port, client_id="paho-shutdown")
    await client.connect()
    try:
        await node.stop()
        rc, _props = await asyncio.wait_for(client.disconnected, TIMEOUT)
        assert rc.value == ReasonCode.SERVER_SHUTTING_DOWN
    finally:
        await client.close()


# --------------------------------------------------------------------------- PUBLISH features


async def test_topic_alias_from_client_3_3_2_3_4(node: Node) -> None:
    sub, _ = await raw5(node, "alias-sub")
    await subscribe(sub, SubscriptionRequest("alias/#", 1))
    pub, _ = await raw5(node, "alias-pub")
    alias = {PropertyId.TOPIC_ALIAS: 3}
    puback = await publish1(pub, "alias/one", b"1", properties=alias)  # sets the mapping
    assert puback.reason_code == 0
    assert (await publish1(pub, "", b"2", properties=alias)).reason_code == 0  # uses it
    assert (await publish1(pub, "alias/two", b"3", properties=alias)).reason_code == 0  # remaps it
    assert (await publish1(pub, "", b"4", properties=alias)).reason_code == 0
    got = []
    for _ in range(4):
        message = await expect(sub, Publish)
        # The alias belongs to the publisher's connection; it is never forwarded.
        assert PropertyId.TOPIC_ALIAS not in message.properties
        got.append((message.topic, message.payload))
    assert got == [("alias/one", b"1"), ("alias/one", b"2"), ("alias/two", b"3"),
                   ("alias/two", b"4")]  # fmt: skip
    await sub.close()
    await pub.close()


async def test_subscription_identifier_delivered_MQTT_3_3_4_3(node: Node) -> None:
    sub, _ = await raw5(node, "sid")
    await subscribe(sub, SubscriptionRequest("sid/+", 1), subscription_identifier=[7])
    await subscribe(sub, SubscriptionRequest("sid/#", 0), subscription_identifier=[9])
    await subscribe(sub, SubscriptionRequest("sid/a", 0))  # no identifier
    pub, _ = await raw5(node, "sid-pub")
    await publish1(pub, "sid/a", b"x")
    message = await expect(sub, Publish)
    # One copy at the highest QoS with every identifier, order not significant (MQTT-3.3.4-4).
    assert message.qos == 1
    assert sorted(message.properties[PropertyId.SUBSCRIPTION_IDENTIFIER]) == [7, 9]
    await publish1(pub, "sid/b/c", b"y")  # only sid/# matches
    message = await expect(sub, Publish)
    assert message.properties[PropertyId.SUBSCRIPTION_IDENTIFIER] == [9]
    await sub.close()
    await pub.close()


async def test_subscription_identifier_aiomqtt_and_retained_MQTT_3_3_4_3(node: Node) -> None:
    async with aio(node, "sid-aio-pub") as pub:
        await pub.publish("sidr/t", b"kept", qos=1, retain=True)
        async with aio(node, "sid-aio") as sub:
            props = paho_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42)
            await sub.subscribe("sidr/#", qos=1, properties=props)
            retained = await next_message(sub)  # retained message sent on subscribe
            assert retained.retain and retained.payload == b"kept"
            assert retained.properties.SubscriptionIdentifier == [42]  # type: ignore[union-attr]
            await pub.publish("sidr/t", b"live", qos=1)
            live = await next_message(sub)
            assert live.payload == b"live"
            assert live.properties.SubscriptionIdentifier == [42]  # type: ignore[union-attr]


async def test_no_local_MQTT_3_8_3_3(node: Node) -> None:
    me, _ = await raw5(node, "nl-me")
    await subscribe(me, SubscriptionRequest("nl/t", 1, no_local=True))
    other, _ = await raw5(node, "nl-other")
    await subscribe(other, SubscriptionRequest("nl/t", 1))
    assert (await publish1(me, "nl/t", b"mine")).reason_code == 0
    # `other` has no No Local: it receives `me`'s message, and later its own.
    assert (await expect(other, Publish)).payload == b"mine"
    other.send(Publish("nl/t", b"theirs", 1, packet_id=77))
    assert (await expect(other, PubAck)).packet_id == 77  # the ack comes before its own copy
    assert (await expect(other, Publish)).payload == b"theirs"
    message = await expect(me, Publish)
    assert message.payload == b"theirs"  # `mine` was never sent back to `me`
    await me.close()
    await other.close()


async def test_retain_as_published_MQTT_3_3_1_12_and_13(node: Node) -> None:
    keep, _ = await raw5(node, "rap-1")
    await subscribe(keep, SubscriptionRequest("rap/t", 1, retain_as_published=True))
    clear, _ = await raw5(node, "rap-0")
    await subscribe(clear, SubscriptionRequest("rap/t", 1, retain_as_published=False))
    pub, _ = await raw5(node, "rap-pub")
    await publish1(pub, "rap/t", b"r", retain=True)
    await publish1(pub, "rap/t", b"n", retain=False)
    assert [(m.payload, m.retain) for m in [await expect(keep, Publish) for _ in range(2)]] == [
        (b"r", True),  # MQTT-3.3.1-13: RETAIN as received
        (b"n", False),
    ]
    assert [(m.payload, m.retain) for m in [await expect(clear, Publish) for _ in range(2)]] == [
        (b"r", False),  # MQTT-3.3.1-12: RETAIN forced to 0 on a live forward
        (b"n", False),
    ]
    for c in (keep, clear, pub):
        await c.close()


@pytest.mark.parametrize(
    ("handling", "on_new", "on_existing"),
    [
        (0, True, True),  # MQTT-3.3.1-9: sent on every subscribe
        (1, True, False),  # MQTT-3.3.1-10: only if the subscription did not exist
        (2, False, False),  # MQTT-3.3.1-11: never
    ],
)
async def test_retain_handling(node: Node, handling: int, on_new: bool, on_existing: bool) -> None:
    pub, _ = await raw5(node, f"rh-pub-{handling}")
    await publish1(pub, "rh/t", b"retained", retain=True)
    sub, _ = await raw5(node, f"rh-sub-{handling}")
    request = SubscriptionRequest("rh/#", 1, retain_handling=handling)
    for expected in (on_new, on_existing):
        assert (await subscribe(sub, request)).reason_codes == [1]
        # A live sentinel: if the retained message was not sent, the sentinel comes first.
        await publish1(pub, "rh/t", b"sentinel")
        first = await expect(sub, Publish)
        if expected:
            assert (first.payload, first.retain) == (b"retained", True)  # MQTT-3.3.1-8
            first = await expect(sub, Publish)
        assert (first.payload, first.retain) == (b"sentinel", False)
    await sub.close()
    await pub.close()


async def test_user_properties_passed_through_MQTT_3_3_2_17_and_18(node: Node) -> None:
    user = [("a", "1"), ("b", "2"), ("a", "3")]  # repeated name, order must be kept
    async with aio(node, "up-sub") as sub:
        await sub.subscribe("up/#", qos=1)
        raw_sub, _ = await raw5(node, "up-raw-sub")
        await subscribe(raw_sub, SubscriptionRequest("up/#", 1))
        publisher = Paho(node.tcp_port, client_id="up-paho-pub")
        await publisher.connect()
        try:
            props = paho_props(
                PacketTypes.PUBLISH,
                UserProperty=user,
                ContentType="text/plain",  # MQTT-3.3.2-20
                ResponseTopic="up/reply",  # MQTT-3.3.2-15
                CorrelationData=b"\x01\x02",  # MQTT-3.3.2-16
                PayloadFormatIndicator=1,  # MQTT-3.3.2-4
            )
            await publisher.publish("up/t", b"payload", 1, properties=props)
        finally:
            await publisher.close()
        message = await next_message(sub)
        assert message.properties is not None
        assert message.properties.UserProperty == user  # type: ignore[attr-defined]
        assert message.properties.ContentType == "text/plain"  # type: ignore[attr-defined]
        assert message.properties.ResponseTopic == "up/reply"  # type: ignore[attr-defined]
        assert message.properties.CorrelationData == b"\x01\x02"  # type: ignore[attr-defined]
        assert message.properties.PayloadFormatIndicator == 1  # type: ignore[attr-defined]
        raw = await expect(raw_sub, Publish)
        assert raw.properties[PropertyId.USER_PROPERTY] == user
        await raw_sub.close()


async def test_paho_v5_subscribe_publish_roundtrip(node: Node) -> None:
    sub = Paho(node.tcp_port, client_id="paho-sub")
    await sub.connect()
    pub = Paho(node.tcp_port, client_id="paho-pub")
    await pub.connect()
    try:
        props = paho_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=5)
        codes = await sub.subscribe("paho/#", SubscribeOptions(qos=2), properties=props)
        assert [c.value for c in codes] == [2]
        for qos in (0, 1, 2):
            await pub.publish(f"paho/q{qos}", f"qos{qos}".encode(), qos)
        got = [await sub.message() for _ in range(3)]
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            ("paho/q0", b"qos0", 0),
            ("paho/q1", b"qos1", 1),
            ("paho/q2", b"qos2", 2),
        ]
        assert all(m.properties.SubscriptionIdentifier == [5] for m in got)
    finally:
        await sub.close()
        await pub.close()
