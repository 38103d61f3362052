"""MQTT 5.0 flow control: Receive Maximum, Maximum Packet Size and Topic Alias, both ways.

"Nothing else arrived" is checked with `ping_barrier` (see test_v5_support), never by waiting.
Each test names the normative statement (MQTT-x.y.z-n) or section it checks.
"""

from __future__ import annotations

from typing import Any

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

from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Connect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubscriptionRequest,
)
from broker.server.node import Node

P = PropertyId


# --------------------------------------------------------------------------- Receive Maximum


async def test_client_receive_maximum_limits_unacknowledged_publishes_MQTT_3_3_4_9(
    node: Node,
) -> None:
    """The server never has more unacknowledged QoS 1/2 PUBLISHes out than the client allows."""
    sub, _ = await raw5(node, "rm-sub", properties={P.RECEIVE_MAXIMUM: 2})
    await subscribe(sub, SubscriptionRequest("rm/t", 2))
    pub, _ = await raw5(node, "rm-pub")
    for i in range(5):
        await publish1(pub, "rm/t", b"%d" % i)
    window = [await expect(sub, Publish) for _ in range(2)]
    assert await ping_barrier(sub) == []  # the third waits for an ack
    sub.send(PubAck(window[0].packet_id))
    third = await expect(sub, Publish)
    assert await ping_barrier(sub) == []
    assert [m.payload for m in [*window, third]] == [b"0", b"1", b"2"]
    for message in (window[1], third):
        sub.send(PubAck(message.packet_id))
    rest = [await expect(sub, Publish) for _ in range(2)]
    assert [m.payload for m in rest] == [b"3", b"4"]
    await sub.close()
    await pub.close()


async def test_receive_maximum_one_with_aiomqtt_delivers_all_in_order_MQTT_3_3_4_9(
    node: Node,
) -> None:
    props = paho_props(PacketTypes.CONNECT, ReceiveMaximum=1)
    async with aio(node, "rm-aio", properties=props) as sub:
        await sub.subscribe("rm/aio", qos=1)
        async with aio(node, "rm-aio-pub") as pub:
            for i in range(10):
                await pub.publish("rm/aio", b"%d" % i, qos=1)
        got = [(await next_message(sub)).payload for _ in range(10)]
    assert got == [b"%d" % i for i in range(10)]


async def test_connack_receive_maximum_from_max_awaiting_rel_3_2_2_3_3(node_factory: Any) -> None:
    node = await node_factory(max_awaiting_rel=3)
    client = Paho(node.tcp_port, "rm-paho")
    _flags, rc, props = await client.connect()
    try:
        assert rc == 0 and props.ReceiveMaximum == 3
    finally:
        await client.close()


async def test_receive_maximum_exceeded_disconnect_0x93_3_3_4(node_factory: Any) -> None:
    """More unacknowledged QoS 2 PUBLISHes than the server's Receive Maximum: DISCONNECT 0x93."""
    node = await node_factory(max_awaiting_rel=2)
    client, ack = await raw5(node, "rm-over")
    assert ack.properties[P.RECEIVE_MAXIMUM] == 2
    for pid in (1, 2):
        client.send(Publish("rm/over", b"x", 2, packet_id=pid))
        assert (await expect(client, PubRec)).packet_id == pid
    client.send(PubRel(1))  # completes one: room for one more
    assert (await expect(client, PubComp)).packet_id == 1
    client.send(Publish("rm/over", b"x", 2, packet_id=3))
    assert (await expect(client, PubRec)).packet_id == 3
    client.send(Publish("rm/over", b"x", 2, packet_id=4))  # the third outstanding
    assert (await server_disconnect(client)).reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


# --------------------------------------------------------------------------- Maximum Packet Size


async def test_message_too_large_for_client_is_dropped_and_counted_MQTT_3_1_2_25(
    node: Node,
) -> None:
    """A PUBLISH larger than the client's Maximum Packet Size is discarded without being sent
    and, for QoS 1, as if its delivery had completed: no window slot stays taken."""
    props = {P.MAXIMUM_PACKET_SIZE: 64, P.RECEIVE_MAXIMUM: 1}
    sub, _ = await raw5(node, "mps-sub", properties=props)
    await subscribe(sub, SubscriptionRequest("mps/t", 1))
    pub, _ = await raw5(node, "mps-pub")
    dropped = node.broker.metrics.counters["messages/dropped"]
    await publish1(pub, "mps/t", b"x" * 100)  # too large for the subscriber
    await publish1(pub, "mps/t", b"small")
    message = await expect(sub, Publish)
    assert message.payload == b"small"  # the window of 1 was not held by the big one
    assert await ping_barrier(sub) == []
    channel = node.broker.connected["mps-sub"]
    assert channel.dropped_too_large == 1
    assert node.broker.metrics.counters["messages/dropped"] == dropped + 1
    sub.send(PubAck(message.packet_id))
    await sub.close()
    await pub.close()


async def test_qos0_too_large_dropped_others_still_get_it_MQTT_3_1_2_24(node: Node) -> None:
    small, _ = await raw5(node, "mps-small", properties={P.MAXIMUM_PACKET_SIZE: 32})
    await subscribe(small, SubscriptionRequest("mps/q0", 0))
    big = Paho(node.tcp_port, "mps-paho")
    await big.connect()
    await big.subscribe("mps/q0", SubscribeOptions(qos=0))
    pub, _ = await raw5(node, "mps-q0-pub")
    pub.send(Publish("mps/q0", b"y" * 40))
    pub.send(Publish("mps/q0", b"ok"))
    try:
        assert (await big.message()).payload == b"y" * 40
        assert (await big.message()).payload == b"ok"
        assert (await expect(small, Publish)).payload == b"ok"
        assert await ping_barrier(small) == []
    finally:
        await big.close()
        await small.close()
        await pub.close()


async def test_reason_string_left_out_to_fit_maximum_packet_size_MQTT_3_4_2_2(node: Node) -> None:
    """An error ack (0x99) leaves its Reason String out when it would not fit the client's
    Maximum Packet Size (MQTT-3.1.2-25); success acks never carry one (0x10: see
    test_interop_acks)."""
    bad_utf8 = {P.PAYLOAD_FORMAT_INDICATOR: 1}
    client, _ = await raw5(node, "mps-ack", properties={P.MAXIMUM_PACKET_SIZE: 30})
    ack = await publish1(client, "mps/t", b"\xff", properties=bad_utf8)
    assert (ack.reason_code, ack.properties) == (ReasonCode.PAYLOAD_FORMAT_INVALID, {})
    roomy, _ = await raw5(node, "mps-ack-roomy")
    ack = await publish1(roomy, "mps/t", b"\xff", properties=bad_utf8)
    assert ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert len(encode(ack, MQTT_5)) > 30 and ack.properties[P.REASON_STRING]  # sent when it fits
    await client.close()
    await roomy.close()


async def test_packet_above_server_maximum_disconnect_0x95_3_2_2_3_6(node_factory: Any) -> None:
    node = await node_factory(max_packet_size=256)
    client, ack = await raw5(node, "mps-server")
    assert ack.properties[P.MAXIMUM_PACKET_SIZE] == 256
    client.send(Publish("mps/server", b"z" * 300, 0))
    assert (await server_disconnect(client)).reason_code == ReasonCode.PACKET_TOO_LARGE


# --------------------------------------------------------------------------- Topic Alias


class AliasResolver:
    """The client side of 3.3.2.3.4: resolve what the server sent, checking its rules."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.known: dict[int, str] = {}

    def resolve(self, message: Publish) -> str:
        alias = message.properties.get(P.TOPIC_ALIAS)
        if alias is None:
            assert message.topic
            return message.topic
        assert 1 <= alias <= self.maximum  # MQTT-3.1.2-26, MQTT-3.3.2-11
        if message.topic:
            self.known[alias] = message.topic
            return message.topic
        assert alias in self.known, "an alias the client was never told"
        return self.known[alias]


async def test_outgoing_topic_aliases_most_used_topics_first_MQTT_3_1_2_26(node: Node) -> None:
    sub, _ = await raw5(node, "ta-sub", properties={P.TOPIC_ALIAS_MAXIMUM: 2})
    await subscribe(sub, SubscriptionRequest("ta/#", 0))
    pub, _ = await raw5(node, "ta-pub")
    topics = ["ta/first"] * 3 + ["ta/second", "ta/third", "ta/third", "ta/first", "ta/second"]
    for topic in topics:
        pub.send(Publish(topic, b"p"))
    resolver = AliasResolver(2)
    got = [await expect(sub, Publish) for _ in topics]
    assert [resolver.resolve(m) for m in got] == topics
    wire = [(m.topic, m.properties.get(P.TOPIC_ALIAS)) for m in got]
    assert wire == [
        ("ta/first", 1),  # a free alias: mapped at first use
        ("", 1),
        ("", 1),
        ("ta/second", 2),
        ("ta/third", None),  # the table is full: a topic seen once gets no alias
        ("ta/third", 2),  # seen again: it takes the alias of the least used topic
        ("", 1),  # the most used topic kept its alias
        ("ta/second", None),
    ]
    await sub.close()
    await pub.close()


async def test_no_topic_alias_when_client_allows_none_MQTT_3_1_2_27(node: Node) -> None:
    sub, _ = await raw5(node, "ta-none")  # no Topic Alias Maximum: 0
    await subscribe(sub, SubscriptionRequest("ta/none", 1))
    pub, _ = await raw5(node, "ta-none-pub")
    for _ in range(3):
        await publish1(pub, "ta/none", b"x")
        message = await expect(sub, Publish)
        assert message.topic == "ta/none" and P.TOPIC_ALIAS not in message.properties
        sub.send(PubAck(message.packet_id))
    await sub.close()
    await pub.close()


async def test_topic_aliases_are_per_connection_MQTT_3_3_2_7(node: Node) -> None:
    props = {P.TOPIC_ALIAS_MAXIMUM: 4, P.SESSION_EXPIRY_INTERVAL: 60}
    sub, _ = await raw5(node, "ta-conn", clean_start=False, properties=props)
    await subscribe(sub, SubscriptionRequest("ta/conn", 0))
    pub, _ = await raw5(node, "ta-conn-pub")
    pub.send(Publish("ta/conn", b"1"))
    pub.send(Publish("ta/conn", b"2"))
    got = [await expect(sub, Publish) for _ in range(2)]
    assert [(m.topic, m.properties[P.TOPIC_ALIAS]) for m in got] == [("ta/conn", 1), ("", 1)]
    await sub.close()
    sub, _ = await raw5(node, "ta-conn", clean_start=False, properties=props)
    pub.send(Publish("ta/conn", b"3"))
    again = await expect(sub, Publish)
    assert (again.topic, again.properties[P.TOPIC_ALIAS]) == ("ta/conn", 1)  # told again
    await sub.close()
    await pub.close()


async def test_shared_encoding_stays_correct_with_aliasing_subscribers(node: Node) -> None:
    """QoS 0 bytes are encoded once per protocol version, but an aliasing connection gets its
    own PUBLISH: the other subscribers still see the full topic."""
    aliasing, _ = await raw5(node, "ta-mix-1", properties={P.TOPIC_ALIAS_MAXIMUM: 8})
    plain5, _ = await raw5(node, "ta-mix-2")
    plain3, _ = await RawClient.connect(node.tcp_port, "ta-mix-3", MQTT_3_1_1)
    for client in (aliasing, plain5):
        await subscribe(client, SubscriptionRequest("ta/mix", 0))
    await subscribe(plain3, SubscriptionRequest("ta/mix", 0))
    async with aio(node, "ta-mix-aio") as aiomqtt_sub:
        await aiomqtt_sub.subscribe("ta/mix", qos=0)
        pub, _ = await raw5(node, "ta-mix-pub")
        for i in range(3):
            pub.send(Publish("ta/mix", b"%d" % i))
        resolver = AliasResolver(8)
        assert [resolver.resolve(await expect(aliasing, Publish)) for _ in range(3)] == [
            "ta/mix"
        ] * 3
        for client in (plain5, plain3):
            got = [await expect(client, Publish) for _ in range(3)]
            assert [(m.topic, m.payload) for m in got] == [("ta/mix", b"%d" % i) for i in range(3)]
            assert all(P.TOPIC_ALIAS not in m.properties for m in got)
        for i in range(3):
            message = await next_message(aiomqtt_sub)
            assert (message.topic.value, message.payload) == ("ta/mix", b"%d" % i)
    for client in (aliasing, plain5, plain3, pub):
        await client.close()


async def test_dropped_publish_never_leaves_an_unknown_alias_3_3_2_3_4(node: Node) -> None:
    props = {P.TOPIC_ALIAS_MAXIMUM: 4, P.MAXIMUM_PACKET_SIZE: 48}
    sub, _ = await raw5(node, "ta-drop", properties=props)
    await subscribe(sub, SubscriptionRequest("ta/drop/#", 0))
    pub, _ = await raw5(node, "ta-drop-pub")
    pub.send(Publish("ta/drop/long-topic", b"w" * 40))  # too large: dropped
    pub.send(Publish("ta/drop/long-topic", b"w"))
    message = await expect(sub, Publish)
    assert message.topic == "ta/drop/long-topic"  # the mapping is (re)made with the topic
    assert AliasResolver(4).resolve(message) == "ta/drop/long-topic"
    await sub.close()
    await pub.close()


async def test_client_alias_above_server_maximum_disconnect_0x94_MQTT_3_2_2_17(
    node_factory: Any,
) -> None:
    node = await node_factory(max_topic_alias=5)
    client, ack = await raw5(node, "ta-in")
    assert ack.properties[P.TOPIC_ALIAS_MAXIMUM] == 5
    assert (await publish1(client, "ta/in", b"x", properties={P.TOPIC_ALIAS: 5})).reason_code in (
        0,
        ReasonCode.NO_MATCHING_SUBSCRIBERS,
    )
    client.send(Publish("ta/in", b"x", 0, properties={P.TOPIC_ALIAS: 6}))
    assert (await server_disconnect(client)).reason_code == ReasonCode.TOPIC_ALIAS_INVALID


async def test_max_topic_alias_zero_announces_none_MQTT_3_2_2_18(node_factory: Any) -> None:
    node = await node_factory(max_topic_alias=0)
    client, ack = await raw5(node, "ta-zero")
    assert isinstance(ack, ConnAck)
    assert P.TOPIC_ALIAS_MAXIMUM not in ack.properties  # absent: 0, no aliases accepted
    client.send(Publish("ta/zero", b"x", 0, properties={P.TOPIC_ALIAS: 1}))
    assert (await server_disconnect(client)).reason_code == ReasonCode.TOPIC_ALIAS_INVALID


async def test_connack_that_cannot_fit_closes_the_connection_MQTT_3_1_2_24(node: Node) -> None:
    """Even stripped of Reason String and User Properties the CONNACK is larger than the
    client allows: it is not sent (MQTT-3.1.2-24) and the connection is closed."""
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect("mps-tiny", MQTT_5, properties={P.MAXIMUM_PACKET_SIZE: 8}))
    assert await client.closed()
    assert client.pending == []
    assert "mps-tiny" not in node.broker.connected
