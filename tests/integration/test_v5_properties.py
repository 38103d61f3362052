"""MQTT 5.0 properties: passed through unchanged, validated where the spec says so, and the ones
the server itself sends (CONNACK capabilities, keep alive, response information, reason strings,
server DISCONNECT codes).

Each test names the normative statement (MQTT-x.y.z-n) or section it checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions
from rawclient import RawClient
from test_v5_support import (
    Paho,
    aio,
    expect,
    fake_clock,
    next_message,
    paho_props,
    ping_barrier,
    publish1,
    raw5,
    server_disconnect,
    subscribe,
)

from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Connect,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    Will,
)
from broker.server.node import Node

P = PropertyId
USER = [("z", "last"), ("a", "first"), ("a", "again")]


# --------------------------------------------------------------------------- pass-through


async def test_properties_unaltered_aiomqtt_to_paho_MQTT_3_3_2_4_15_16_17_18_20(
    node: Node,
) -> None:
    sub = Paho(node.tcp_port, "pp-paho-sub")
    await sub.connect()
    await sub.subscribe("pp/t", SubscribeOptions(qos=2))
    try:
        async with aio(node, "pp-aio-pub") as pub:
            props = paho_props(
                PacketTypes.PUBLISH,
                PayloadFormatIndicator=1,
                ContentType="application/json; charset=utf-8",
                ResponseTopic="pp/reply/42",
                CorrelationData=b"\x00\xffcorr",
                UserProperty=USER,
            )
            await pub.publish("pp/t", b'{"k": "\xc3\xa9"}', qos=2, properties=props)
        message = await sub.message()
        got = message.properties
        assert got.PayloadFormatIndicator == 1  # MQTT-3.3.2-4
        assert got.ContentType == "application/json; charset=utf-8"  # MQTT-3.3.2-20
        assert got.ResponseTopic == "pp/reply/42"  # MQTT-3.3.2-15
        assert got.CorrelationData == b"\x00\xffcorr"  # MQTT-3.3.2-16
        assert got.UserProperty == USER  # MQTT-3.3.2-17/18: all, in order
    finally:
        await sub.close()


async def test_will_properties_passed_on_with_the_will_3_1_3_2(node: Node) -> None:
    watch, _ = await raw5(node, "pp-will-watch")
    await subscribe(watch, SubscriptionRequest("pp/will", 1))
    props = {
        P.CONTENT_TYPE: "text/plain",
        P.RESPONSE_TOPIC: "pp/will/reply",
        P.CORRELATION_DATA: b"c",
        P.USER_PROPERTY: USER,
        P.PAYLOAD_FORMAT_INDICATOR: 1,
    }
    client, _ = await raw5(node, "pp-will", will=Will("pp/will", b"bye", 1, False, props))
    await client.close()
    message = await expect(watch, Publish)
    assert message.payload == b"bye"
    assert {k: message.properties[k] for k in props} == props
    await watch.close()


async def test_request_response_end_to_end_4_10(node_factory: Any) -> None:
    """Requester (paho) -> responder (aiomqtt) -> requester, matched by Correlation Data; the
    response topic is built on the Response Information of CONNACK (3.2.2.3.15)."""
    node = await node_factory(response_information="replies/")
    requester = Paho(node.tcp_port, "rr-requester")
    _flags, _rc, props = await requester.connect(
        paho_props(PacketTypes.CONNECT, RequestResponseInformation=1)
    )
    reply_topic = props.ResponseInformation + "rr-requester"
    assert reply_topic == "replies/rr-requester"
    await requester.subscribe(reply_topic, SubscribeOptions(qos=1))
    try:
        async with aio(node, "rr-responder") as responder:
            await responder.subscribe("rr/service", qos=1)
            request_props = paho_props(
                PacketTypes.PUBLISH, ResponseTopic=reply_topic, CorrelationData=b"req-7"
            )
            await requester.publish("rr/service", b"2+2", 1, properties=request_props)
            request = await next_message(responder)
            assert request.properties is not None
            answer_props = paho_props(
                PacketTypes.PUBLISH,
                CorrelationData=request.properties.CorrelationData,  # type: ignore[attr-defined]
            )
            await responder.publish(
                request.properties.ResponseTopic,  # type: ignore[attr-defined]
                b"4",
                qos=1,
                properties=answer_props,
            )
        answer = await requester.message()
        assert (answer.topic, answer.payload) == (reply_topic, b"4")
        assert answer.properties.CorrelationData == b"req-7"
    finally:
        await requester.close()


async def test_no_response_information_unless_requested_MQTT_3_1_2_28(node_factory: Any) -> None:
    node = await node_factory(response_information="replies/")
    client, ack = await raw5(node, "ri-0", properties={P.REQUEST_RESPONSE_INFORMATION: 0})
    assert P.RESPONSE_INFORMATION not in ack.properties
    await client.close()
    plain = await node_factory()
    client, ack = await raw5(plain, "ri-1", properties={P.REQUEST_RESPONSE_INFORMATION: 1})
    assert P.RESPONSE_INFORMATION not in ack.properties  # none configured: none sent
    await client.close()


# --------------------------------------------------------------------------- validation


async def test_payload_format_utf8_checked_puback_0x99_3_3_2_3_2(node: Node) -> None:
    watch, _ = await raw5(node, "pf-watch")
    await subscribe(watch, SubscriptionRequest("pf/#", 1))
    client, _ = await raw5(node, "pf-pub")
    utf8 = {P.PAYLOAD_FORMAT_INDICATOR: 1}
    ack = await publish1(client, "pf/bad", b"\xff\xfe", properties=utf8)
    assert ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert ack.properties[P.REASON_STRING]
    client.send(Publish("pf/bad", b"\xc3", 2, packet_id=77, properties=utf8))
    rec = await expect(client, PubRec)
    assert (rec.packet_id, rec.reason_code) == (77, ReasonCode.PAYLOAD_FORMAT_INVALID)
    assert (await publish1(client, "pf/good", "é".encode(), properties=utf8)).reason_code == 0
    binary = {P.PAYLOAD_FORMAT_INDICATOR: 0}
    assert (await publish1(client, "pf/bin", b"\xff", properties=binary)).reason_code == 0
    got = [await expect(watch, Publish) for _ in range(2)]
    assert [(m.topic, m.properties[P.PAYLOAD_FORMAT_INDICATOR]) for m in got] == [
        ("pf/good", 1),
        ("pf/bin", 0),
    ]  # the invalid ones were never routed
    await watch.close()
    await client.close()


async def test_payload_format_invalid_qos0_disconnect_0x99_3_3_2_3_2(node: Node) -> None:
    client, _ = await raw5(node, "pf-q0")
    client.send(Publish("pf/q0", b"\x80", 0, properties={P.PAYLOAD_FORMAT_INDICATOR: 1}))
    assert (await server_disconnect(client)).reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID


async def test_will_payload_format_invalid_connack_0x99_3_1_3_2_3(node: Node) -> None:
    client = await RawClient.open(node.tcp_port, MQTT_5)
    will = Will("pf/will", b"\xff", 0, False, {P.PAYLOAD_FORMAT_INDICATOR: 1})
    client.send(Connect("pf-will", MQTT_5, will=will))
    ack = await expect(client, ConnAck)
    assert ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert await client.closed()


async def test_response_topic_with_wildcard_is_protocol_error_MQTT_3_3_2_14(node: Node) -> None:
    client, _ = await raw5(node, "rt-wild")
    client.send(Publish("rt/t", b"x", 0, properties={P.RESPONSE_TOPIC: "rt/+/reply"}))
    disconnect = await server_disconnect(client)
    assert disconnect.reason_code == ReasonCode.PROTOCOL_ERROR
    assert "response topic" in disconnect.properties[P.REASON_STRING]


# --------------------------------------------------------------------------- reason strings


async def test_reason_strings_on_acks_3_4_2_2_1(node: Node) -> None:
    node.broker.hooks.authorize.append(
        lambda client, action, topic: False if topic.startswith("rs/secret") else None
    )
    client, _ = await raw5(node, "rs")
    ack = await publish1(client, "rs/secret", b"x")
    assert (
        ack.reason_code == ReasonCode.NOT_AUTHORIZED
        and "not authorized" in (ack.properties[P.REASON_STRING])
    )
    suback = await subscribe(client, SubscriptionRequest("rs/#/x", 1))
    assert suback.reason_codes == [ReasonCode.TOPIC_FILTER_INVALID]
    assert "rs/#/x" in suback.properties[P.REASON_STRING]
    client.send(Unsubscribe(5, ["rs/none"]))
    unsuback = await expect(client, UnsubAck)
    assert unsuback.reason_codes == [ReasonCode.NO_SUBSCRIPTION_EXISTED]
    assert not unsuback.properties  # 0x11 is a success code: no Reason String
    client.send(PubRel(999))
    comp = await expect(client, PubComp)
    assert comp.reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
    assert comp.properties[P.REASON_STRING]
    await client.close()


async def test_request_problem_information_0_no_reason_strings_MQTT_3_1_2_29(node: Node) -> None:
    props = {P.REQUEST_PROBLEM_INFORMATION: 0}
    client, _ = await raw5(node, "rpi-0", properties=props)
    ack = await publish1(client, "rpi/nobody", b"x")
    assert ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS and not ack.properties
    suback = await subscribe(client, SubscriptionRequest("rpi/#/x", 1))
    assert suback.reason_codes == [ReasonCode.TOPIC_FILTER_INVALID] and not suback.properties
    client.send(PubRel(999))
    assert not (await expect(client, PubComp)).properties
    # DISCONNECT may still carry one.
    client.send(Publish("rpi/t", b"x", 0, properties={P.RESPONSE_TOPIC: "rpi/#"}))
    disconnect = await server_disconnect(client)
    assert disconnect.properties[P.REASON_STRING]


# --------------------------------------------------------------------------- keep alive


async def test_server_keep_alive_configured_MQTT_3_2_2_21(node_factory: Any) -> None:
    node = await node_factory(server_keepalive=20)
    clock = fake_clock(node)
    client, ack = await raw5(node, "ska", keepalive=600)
    assert ack.properties[P.SERVER_KEEP_ALIVE] == 20
    clock.advance(29)
    node.broker.tick()
    assert await ping_barrier(client) == []  # still within 1.5 x 20 s
    clock.advance(31)  # nothing received for 31 s since that PINGREQ
    node.broker.tick()
    assert (await server_disconnect(client)).reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT


async def test_max_keepalive_caps_and_is_announced_3_2_2_3_14(node_factory: Any) -> None:
    node = await node_factory(max_keepalive=30)
    for asked, given in ((100, 30), (0, 30), (10, None)):
        client, ack = await raw5(node, f"mk-{asked}", keepalive=asked)
        assert ack.properties.get(P.SERVER_KEEP_ALIVE) == given
        await client.close()
    paho = Paho(node.tcp_port, "mk-paho")
    _flags, _rc, props = await paho.connect(keepalive=120)
    try:
        assert props.ServerKeepAlive == 30
    finally:
        await paho.close()
    old, ack = await RawClient.connect(node.tcp_port, "mk-311", MQTT_3_1_1, keepalive=100)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0x02  # 3.1.1 cannot be told
    await old.close()


# --------------------------------------------------------------------------- server DISCONNECT


async def test_takeover_0x8E_paho_MQTT_3_1_4_3(node: Node) -> None:
    first = Paho(node.tcp_port, "to-paho")
    await first.connect()
    first.client.reconnect_delay_set(60, 120)  # do not come back during the test
    second, ack = await raw5(node, "to-paho")
    try:
        assert ack.reason_code == 0
        rc, _props = await asyncio.wait_for(first.disconnected, 5)
        assert rc.value == ReasonCode.SESSION_TAKEN_OVER
    finally:
        await first.close()
        await second.close()


async def test_administrative_kick_0x98_4_13(node: Node) -> None:
    client, _ = await raw5(node, "kicked")
    node.broker.connected["kicked"].kick()
    assert (await server_disconnect(client)).reason_code == ReasonCode.ADMINISTRATIVE_ACTION


async def test_protocol_error_disconnect_has_reason_string_3_14_2_2_3(node: Node) -> None:
    client, _ = await raw5(node, "pe-reason")
    client.send(Publish("", b"x", 0, properties={P.TOPIC_ALIAS: 3}))  # unknown alias
    disconnect = await server_disconnect(client)
    assert disconnect.reason_code == ReasonCode.PROTOCOL_ERROR
    assert "alias" in disconnect.properties[P.REASON_STRING]
