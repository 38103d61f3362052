"""Acknowledgements as clients we did not write expect them (issue 12 part 4), over raw sockets.

* Success acks (reason code below 0x80) carry no Reason String; error acks carry one only when the
  client allowed problem information (MQTT-3.1.2-29) and it fits the client's Maximum Packet Size
  (MQTT-3.1.2-25, 3.4.2.2.2).
* An ack for an unknown packet id, or of the wrong kind for the message's QoS, is ignored and
  counted (`packets/<ack>/missed`), never a reason to drop the client (mosquitto); 5.0 answers a
  PUBREC/PUBREL for an unknown id with PUBREL/PUBCOMP 0x92 (3.6.2.1 / 3.7.2.1).
"""

from __future__ import annotations

from rawclient import RawClient
from test_core_support import raw_connect
from test_v5_support import (
    expect,
    packet_id,
    ping_barrier,
    publish1,
    raw5,
)

from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import (
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
)
from broker.server.node import Node

P = PropertyId
#: A PUBLISH the broker refuses with an error ack: its Payload Format Indicator says UTF-8.
BAD_UTF8 = {P.PAYLOAD_FORMAT_INDICATOR: 1}


# --------------------------------------------------------------------------- reason strings


async def test_success_acks_carry_no_reason_string_3_4_2_2_2(node: Node) -> None:
    """PUBACK/PUBREC 0x10 (no matching subscribers) and UNSUBACK 0x11 are successes: bare."""
    client, _ = await raw5(node, "ok-bare")
    ack = await publish1(client, "bare/nobody", b"x")
    assert ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    assert ack.properties == {}  # no Reason String, no User Property
    pid = packet_id()
    client.send(Publish("bare/nobody", b"x", 2, packet_id=pid))
    rec = await expect(client, PubRec)
    assert (rec.packet_id, rec.reason_code, rec.properties) == (
        pid,
        ReasonCode.NO_MATCHING_SUBSCRIBERS,
        {},
    )
    client.send(PubRel(pid))
    comp = await expect(client, PubComp)
    assert (comp.reason_code, comp.properties) == (0, {})
    client.send(Unsubscribe(7, ["bare/none"]))
    unsuback = await expect(client, UnsubAck)
    assert unsuback.reason_codes == [ReasonCode.NO_SUBSCRIPTION_EXISTED]
    assert unsuback.properties == {}
    await client.close()


async def test_error_ack_reason_string_follows_problem_information_MQTT_3_1_2_29(
    node: Node,
) -> None:
    """An error ack (0x99) explains itself by default, and goes bare for RPI = 0."""
    talk, _ = await raw5(node, "err-talk")
    ack = await publish1(talk, "err/t", b"\xff", properties=BAD_UTF8)
    assert ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert "UTF-8" in ack.properties[P.REASON_STRING]
    quiet, _ = await raw5(node, "err-quiet", properties={P.REQUEST_PROBLEM_INFORMATION: 0})
    ack = await publish1(quiet, "err/t", b"\xff", properties=BAD_UTF8)
    assert (ack.reason_code, ack.properties) == (ReasonCode.PAYLOAD_FORMAT_INVALID, {})
    pid = packet_id()
    quiet.send(Publish("err/t", b"\xff", 2, packet_id=pid, properties=BAD_UTF8))
    rec = await expect(quiet, PubRec)
    assert (rec.reason_code, rec.properties) == (ReasonCode.PAYLOAD_FORMAT_INVALID, {})
    await talk.close()
    await quiet.close()


# --------------------------------------------------------------------------- stray acks


async def _receive(node: Node, client: RawClient, topic: str, qos: int) -> Publish:
    """Have another client publish to `topic` at `qos`; `client`'s copy of it."""
    pub, _ = await raw_connect(node, f"stray-pub-{qos}-{topic}")
    pub.send(Publish(topic, b"m", qos, packet_id=90 + qos))
    await expect(pub, PubAck if qos == 1 else PubRec)
    await pub.close()
    message = await expect(client, Publish)
    assert message.qos == qos and message.packet_id is not None
    return message


async def test_stray_acks_are_counted_not_fatal_on_311(node: Node) -> None:
    """3.1.1 has no reason codes for a stray ack: mosquitto ignores it and counts it; so do we.
    Unknown ids, and PUBACK for a QoS 2 message / PUBCOMP for a QoS 1 one (MQTT-4.3.2, 4.3.3
    pair each QoS with its own acks), leave the client connected and the flow intact."""
    counters = node.broker.metrics.counters
    before = {k: counters[f"packets/{k}/missed"] for k in ("puback", "pubrec", "pubcomp")}
    client, _ = await raw_connect(node, "stray-311", version=MQTT_3_1_1)
    client.send(Subscribe(1, [SubscriptionRequest("stray/#", 2)]))
    await expect(client, SubAck)
    client.send(PubAck(4242))
    client.send(PubComp(4244))
    client.send(PubRec(4243))
    assert await ping_barrier(client) == [PubRel(4243)]  # mosquitto releases it all the same
    q2 = await _receive(node, client, "stray/two", 2)
    assert q2.packet_id is not None
    client.send(PubAck(q2.packet_id))  # the wrong ack for QoS 2
    assert await ping_barrier(client) == []
    q1 = await _receive(node, client, "stray/one", 1)
    assert q1.packet_id is not None
    client.send(PubComp(q1.packet_id))  # the wrong ack for QoS 1
    client.send(PubRec(q1.packet_id))  # ... and again
    got = await ping_barrier(client)
    assert got == [PubRel(q1.packet_id)]
    after = {k: counters[f"packets/{k}/missed"] for k in ("puback", "pubrec", "pubcomp")}
    assert {k: after[k] - before[k] for k in after} == {"puback": 2, "pubrec": 2, "pubcomp": 2}
    # Both real flows still complete: the stray acks changed nothing.
    client.send(PubAck(q1.packet_id))
    client.send(PubRec(q2.packet_id))
    assert await ping_barrier(client) == [PubRel(q2.packet_id)]
    client.send(PubComp(q2.packet_id))
    assert await ping_barrier(client) == []
    session = node.broker.sessions["stray-311"]
    assert not session.inflight
    assert counters["packets/puback/missed"] - before["puback"] == 2  # nothing more missed
    await client.close()


async def test_stray_acks_on_v5_3_6_2_1_and_3_7_2_1(node: Node) -> None:
    """5.0: PUBREC and PUBREL for an unknown id are answered with 0x92 (Packet Identifier not
    found); PUBACK/PUBCOMP, and a PUBREC with an error code, have no answer packet, so they
    are ignored and counted."""
    counters = node.broker.metrics.counters
    before = counters["packets/puback/missed"], counters["packets/pubcomp/missed"]
    rec_before = counters["packets/pubrec/missed"]
    client, _ = await raw5(node, "stray-v5")
    client.send(PubAck(501))
    client.send(PubComp(502))
    client.send(PubRec(503))
    client.send(PubRel(504))
    client.send(PubRec(505, ReasonCode.UNSPECIFIED_ERROR))  # a failing PUBREC: nothing to end
    got = await ping_barrier(client)
    assert [(type(p), p.packet_id, p.reason_code) for p in got] == [  # type: ignore[union-attr]
        (PubRel, 503, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
        (PubComp, 504, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
    ]
    after = counters["packets/puback/missed"], counters["packets/pubcomp/missed"]
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert counters["packets/pubrec/missed"] - rec_before == 2
    assert "stray-v5" in node.broker.connected
    await client.close()


# --------------------------------------------------------------------------- ack first


async def test_ack_before_onward_delivery_to_the_same_connection_4_3_2_and_4_3_3(
    node: Node,
) -> None:
    """A client subscribed to what it publishes gets its PUBACK (QoS 1) / PUBREC (QoS 2) before
    its own message comes back: the ack answers the PUBLISH (MQTT-4.3.2-4 / 4.3.3 receiver
    rules), and clients that wait for it (paho's publish().wait_for_publish, test harnesses)
    see it first, as from mosquitto and EMQX. Both protocol versions, both QoS."""
    for version in (MQTT_3_1_1, MQTT_5):
        client, _ = await raw_connect(node, f"self-{version}", version=version)
        client.send(Subscribe(1, [SubscriptionRequest("self/#", 2)]))
        await expect(client, SubAck)
        for qos, ack_type in ((1, PubAck), (2, PubRec)):
            client.send(Publish(f"self/{qos}", b"me", qos, packet_id=70 + qos))
            first = await client.recv()
            assert isinstance(first, ack_type) and first.packet_id == 70 + qos, first
            assert first.reason_code == 0  # a subscriber matched: itself
            back = await expect(client, Publish)
            assert (back.topic, back.payload, back.qos) == (f"self/{qos}", b"me", qos)
        await client.close()


async def test_failing_pubrec_ends_the_qos2_flow_MQTT_4_3_3(node: Node) -> None:
    """A 5.0 PUBREC with a reason code of 0x80 or more ends the QoS 2 delivery: no PUBREL, the
    window slot is freed, and it is not a stray ack."""
    counters = node.broker.metrics.counters
    client, _ = await raw5(node, "pubrec-err")
    client.send(Subscribe(1, [SubscriptionRequest("perr/#", 2)]))
    await expect(client, SubAck)
    message = await _receive(node, client, "perr/t", 2)
    assert message.packet_id is not None
    before = counters["packets/pubrec/missed"]
    client.send(PubRec(message.packet_id, ReasonCode.UNSPECIFIED_ERROR))
    assert await ping_barrier(client) == []
    assert not node.broker.sessions["pubrec-err"].inflight
    assert counters["packets/pubrec/missed"] == before
    await client.close()
