"""PUBLISH from a client and the acknowledgements of both QoS flows (mosquitto's handle_publish.c).

Incoming QoS 2 is routed once, when the PUBLISH first arrives; its packet id then waits in the
session's `awaiting_rel` until PUBREL, so a resent PUBLISH is acknowledged without being routed
again (exactly once). Outgoing acks advance the session's inflight window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.message import Message
from broker.core.topics import validate_topic_name
from broker.protocol.constants import MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import PubAck, PubComp, Publish, PubRec, PubRel

if TYPE_CHECKING:
    from broker.core.channel import Channel

#: Properties of an incoming PUBLISH that describe the hop, not the message; never forwarded.
_HOP_PROPERTIES = (PropertyId.TOPIC_ALIAS, PropertyId.SUBSCRIPTION_IDENTIFIER)

_QOS_RECEIVED = ("messages/qos0/received", "messages/qos1/received", "messages/qos2/received")


def handle_publish(channel: Channel, packet: Publish) -> None:
    session = channel.session
    assert session is not None and channel.info is not None
    is_v5 = channel.version == MQTT_5
    topic = packet.topic
    properties = packet.properties
    if is_v5 and properties:
        alias = properties.get(PropertyId.TOPIC_ALIAS)
        if alias is not None:
            if alias == 0 or alias > channel.broker.settings.topic_alias_maximum:
                channel.protocol_violation(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias invalid")
                return
            if topic:
                channel.topic_aliases[alias] = topic
            else:
                known = channel.topic_aliases.get(alias)
                if known is None:
                    channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "unknown topic alias")
                    return
                topic = known
        properties = {k: v for k, v in properties.items() if k not in _HOP_PROPERTIES}
    if not validate_topic_name(topic):
        # MQTT-3.3.2-2 (wildcards) / MQTT-4.7.3-1 (empty).
        channel.protocol_violation(ReasonCode.TOPIC_NAME_INVALID, f"invalid topic {topic!r}")
        return
    if packet.retain and not channel.broker.settings.retain_available:
        channel.protocol_violation(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not supported")
        return
    qos = packet.qos
    counters = channel.broker.metrics.counters
    counters["messages/received"] += 1
    counters[_QOS_RECEIVED[qos]] += 1
    channel.recv_msg += 1

    packet_id = packet.packet_id
    if qos == 2:
        assert packet_id is not None
        if packet_id in session.awaiting_rel:
            # A resent QoS 2 PUBLISH: acknowledge, never route twice (MQTT-4.3.3-9).
            channel.send(PubRec(packet_id))
            return
        if len(session.awaiting_rel) >= channel.broker.settings.max_awaiting_rel:
            counters["messages/qos2/dropped"] += 1
            if is_v5:
                channel.send(PubRec(packet_id, ReasonCode.QUOTA_EXCEEDED))
            else:
                channel.close(None, "awaiting_rel_full")
            return

    allowed = not topic.startswith("$SYS") and channel.broker.hooks.run_authorize(
        channel.info, "publish", topic
    )
    matched = 0
    if allowed:
        message = Message(
            topic,
            packet.payload,
            qos,
            packet.retain,
            properties,
            session.client_id,
            channel.broker.clock(),
            channel.broker.node_name,
        )
        matched = channel.route(message)
    else:
        counters["messages/dropped"] += 1
    if qos == 1:
        assert packet_id is not None
        code = 0
        if is_v5:
            if not allowed:
                code = ReasonCode.NOT_AUTHORIZED
            elif matched == 0:
                code = ReasonCode.NO_MATCHING_SUBSCRIBERS
        channel.send(PubAck(packet_id, code))
    elif qos == 2:
        assert packet_id is not None
        if allowed:
            session.awaiting_rel[packet_id] = channel.broker.clock()
        code = 0
        if is_v5:
            if not allowed:
                code = ReasonCode.NOT_AUTHORIZED
            elif matched == 0:
                code = ReasonCode.NO_MATCHING_SUBSCRIBERS
        channel.send(PubRec(packet_id, code))


def handle_puback(channel: Channel, packet: PubAck) -> None:
    assert channel.session is not None
    if not channel.session.on_puback(packet.packet_id, channel.broker.clock()):
        channel.broker.metrics.counters["packets/puback/missed"] += 1


def handle_pubrec(channel: Channel, packet: PubRec) -> None:
    session = channel.session
    assert session is not None
    now = channel.broker.clock()
    if packet.reason_code >= 0x80:
        session.on_pubrec_error(packet.packet_id, now)
        return
    if session.on_pubrec(packet.packet_id, now):
        channel.send(PubRel(packet.packet_id))
    else:
        channel.broker.metrics.counters["packets/pubrec/missed"] += 1
        code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if channel.version == MQTT_5 else 0
        channel.send(PubRel(packet.packet_id, code))


def handle_pubrel(channel: Channel, packet: PubRel) -> None:
    session = channel.session
    assert session is not None
    if session.awaiting_rel.pop(packet.packet_id, None) is not None:
        channel.send(PubComp(packet.packet_id))
    else:
        channel.broker.metrics.counters["packets/pubrel/missed"] += 1
        code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if channel.version == MQTT_5 else 0
        channel.send(PubComp(packet.packet_id, code))


def handle_pubcomp(channel: Channel, packet: PubComp) -> None:
    assert channel.session is not None
    if not channel.session.on_pubcomp(packet.packet_id, channel.broker.clock()):
        channel.broker.metrics.counters["packets/pubcomp/missed"] += 1
