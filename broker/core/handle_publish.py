"""PUBLISH from a client and the acknowledgements of both QoS flows (mosquitto's handle_publish.c).

Incoming QoS 2 is routed once, when the PUBLISH first arrives; its packet id then waits in the
session's `awaiting_rel` until PUBREL, so a resent PUBLISH is acknowledged without being routed
again (exactly once). The PUBACK/PUBREC is written before a copy of the message for the same
connection (`Connection.hold_output`). Outgoing acks advance the session's inflight window; one for
an unknown packet id, or of the wrong kind for the message's QoS, changes nothing and is counted
(`packets/<ack>/missed`), never a reason to close the connection (as mosquitto); 5.0 answers a
PUBREC/PUBREL for an unknown id with PUBREL/PUBCOMP 0x92.

The QoS 2 messages in `awaiting_rel` are the ones this server has not finished acknowledging, so
`max_awaiting_rel` is the Receive Maximum announced in CONNACK: one more from a 5.0 client is
DISCONNECT 0x93 (3.3.4). A 5.0 PUBLISH is also checked against what CONNACK promised or the
spec requires of its properties: Maximum QoS (0x9B, MQTT-3.2.2-11), Retain Available (0x9A),
a Response Topic that is a topic name (MQTT-3.3.2-14, 0x82), and a payload that is UTF-8 when
its Payload Format Indicator says so (3.3.2.3.2: PUBACK/PUBREC 0x99, or DISCONNECT 0x99 for
QoS 0, which has no ack). Message properties then travel unchanged; only the hop properties
(Topic Alias, Subscription Identifier) are taken off.

Limits (each hit counted in `broker.limits`): a topic with more than `max_topic_levels` levels or
longer than `max_topic_length` UTF-8 bytes is refused like an invalid topic name (5.0 QoS 1/2:
PUBACK/PUBREC 0x90; 5.0 QoS 0: DISCONNECT 0x90; 3.x: the connection is closed). A client over
`publish_limit` (a token bucket per connection) is disconnected: 5.0 DISCONNECT 0x96 (Message
rate too high), 3.x a plain close. We disconnect rather than pause reading, so that a runaway
publisher is visible and cannot hold its socket buffers and session open indefinitely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.connection import Connection, Violation
from broker.core.message import Message
from broker.core.runs_delivery import plan_run, publish_run
from broker.core.topic_alias import NO_ALIASES
from broker.core.topics import is_utf8, validate_topic_name
from broker.protocol.constants import MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import Properties, PubAck, PubComp, Publish, PubRec, PubRel
from broker.protocol.runs import PublishRun

if TYPE_CHECKING:
    from broker.core.settings import Settings

#: Properties of an incoming PUBLISH that describe the hop, not the message; never forwarded.
_HOP_PROPERTIES = (PropertyId.TOPIC_ALIAS, PropertyId.SUBSCRIPTION_IDENTIFIER)

_QOS_RECEIVED = ("messages/qos0/received", "messages/qos1/received", "messages/qos2/received")


def topic_limit(settings: Settings, topic: str) -> str:
    """The limit (`max_topic_levels` / `max_topic_length`) that `topic` breaks, or ""."""
    levels = settings.max_topic_levels
    if levels and topic.count("/") >= levels:
        return "max_topic_levels"
    length = settings.max_topic_length
    if length and len(topic) * 4 > length and len(topic.encode("utf-8")) > length:
        return "max_topic_length"
    return ""


def run_declines_topic(settings: Settings, topic: str) -> bool:
    """True when a run (QoS 0 or QoS 1) to `topic` must take the packet path: a per-message
    `publish_limit`, an empty topic, a wildcard (refused per message), a `$` topic or a topic
    over a limit."""
    return (
        settings.publish_rate is not None
        or not topic
        or "+" in topic
        or "#" in topic
        or topic[0] == "$"
        or bool(topic_limit(settings, topic))
    )


def _publish_allowed(channel: Connection, rate: float, burst: float) -> bool:
    """Take one token from the channel's publish bucket (`publish_limit`)."""
    now = channel.broker.clock()
    tokens = channel.pub_tokens
    # The first PUBLISH finds a full bucket.
    tokens = burst if tokens < 0 else min(burst, tokens + (now - channel.pub_stamp) * rate)
    channel.pub_stamp = now
    if tokens < 1.0:
        channel.pub_tokens = tokens
        return False
    channel.pub_tokens = tokens - 1.0
    return True


def handle_publish(channel: Connection, packet: Publish) -> None:
    session = channel.session
    assert session is not None and channel.info is not None
    publish_limit = channel.broker.settings.publish_rate
    if publish_limit is not None and not _publish_allowed(channel, *publish_limit):
        channel.broker.limits["publish_limit"] += 1
        channel.close(ReasonCode.MESSAGE_RATE_TOO_HIGH, "publish_limit", "publish rate too high")
        return
    is_v5 = channel.version == MQTT_5
    topic = packet.topic
    properties = packet.properties
    if is_v5 and properties:
        alias = properties.get(PropertyId.TOPIC_ALIAS)
        if alias is not None:
            if alias == 0 or alias > channel.broker.settings.max_topic_alias:
                raise Violation(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias invalid")
            if topic:
                aliases = channel.topic_aliases
                if aliases is NO_ALIASES:  # the connection's first alias: its own table
                    aliases = channel.topic_aliases = {}
                aliases[alias] = topic
            else:
                known = channel.topic_aliases.get(alias)
                if known is None:
                    raise Violation(ReasonCode.PROTOCOL_ERROR, "unknown topic alias")
                topic = known
        response_topic = properties.get(PropertyId.RESPONSE_TOPIC)
        if response_topic is not None and not validate_topic_name(response_topic):
            raise Violation(  # MQTT-3.3.2-14: no wildcards, not empty
                ReasonCode.PROTOCOL_ERROR, f"response topic {response_topic!r} is not a topic name"
            )
        if properties.get(PropertyId.PAYLOAD_FORMAT_INDICATOR) == 1 and not is_utf8(packet.payload):
            _refuse(channel, packet, ReasonCode.PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8 but its Payload Format Indicator says so")  # fmt: skip
            return
        if PropertyId.TOPIC_ALIAS in properties or PropertyId.SUBSCRIPTION_IDENTIFIER in properties:
            properties = {k: v for k, v in properties.items() if k not in _HOP_PROPERTIES}
    # The decoder already refused a topic that is not UTF-8 or holds U+0000 (MQTT-1.5.3-1/2),
    # and a 2-byte length cannot exceed 65535 bytes: what is left of `validate_topic_name`.
    if not topic or "+" in topic or "#" in topic:
        # MQTT-3.3.2-2 (wildcards) / MQTT-4.7.3-1 (empty).
        raise Violation(ReasonCode.TOPIC_NAME_INVALID, f"invalid topic {topic!r}")
    settings = channel.broker.settings
    limit = topic_limit(settings, topic)
    if limit:
        channel.broker.limits[limit] += 1
        text = f"topic over {limit} ({getattr(settings, limit)})"
        if is_v5 and packet.qos:
            _refuse(channel, packet, ReasonCode.TOPIC_NAME_INVALID, text)
            return
        raise Violation(ReasonCode.TOPIC_NAME_INVALID, text)
    if packet.retain and not settings.retain_available:
        raise Violation(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not supported")
    qos = packet.qos
    if qos > settings.max_qos_allowed:  # MQTT-3.2.2-11
        raise Violation(
            ReasonCode.QOS_NOT_SUPPORTED, f"QoS {qos} is above the Maximum QoS in CONNACK"
        )
    counters = channel.broker.metrics.counters
    counters["messages/received"] += 1
    counters[_QOS_RECEIVED[qos]] += 1
    channel.recv_msg += 1

    packet_id = packet.packet_id
    if qos == 2:
        assert packet_id is not None
        if packet_id in session.awaiting_rel:
            # A resent QoS 2 PUBLISH: acknowledge, never route twice (MQTT-4.3.3-9); with
            # durable_acks not before the commit of its awaiting_rel entry.
            gate = channel.ack_gate()
            if gate is not None and session.client_id in gate.dirty:
                channel.send_after_commit(PubRec(packet_id), gate)
            else:
                channel.send(PubRec(packet_id))
            return
        if len(session.awaiting_rel) >= settings.max_awaiting_rel:
            counters["messages/qos2/dropped"] += 1
            # More unacknowledged QoS 2 than the Receive Maximum of CONNACK (3.3.4).
            raise Violation(
                ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                f"more than {settings.max_awaiting_rel} QoS 2 PUBLISH awaiting PUBREL",
            )

    allowed = not topic.startswith("$SYS") and channel.broker.hooks.run_authorize(
        channel.info, "publish", topic
    )
    if not qos:
        if allowed:
            _route(channel, packet, topic, properties)
        else:
            counters["messages/dropped"] += 1
        return
    assert packet_id is not None
    # durable_acks: the ack waits for the commit when the message went into a persistent
    # session (or, QoS 2, the publisher's awaiting_rel is one): `broker.core.commit_gate`.
    gate = channel.broker.commit_gate
    if gate is not None and not gate.client_acks:
        gate = None
    marks = gate.marks if gate is not None else 0
    # Acknowledge before onward delivery: a copy of this message for this same connection is
    # held until the PUBACK/PUBREC is written (`Connection.hold_output`).
    channel.hold_output()
    try:
        matched = 0
        if allowed:
            matched = _route(channel, packet, topic, properties)
            if qos == 2:
                session.await_rel(packet_id, channel.broker.clock())
                session.touch()
        else:
            counters["messages/dropped"] += 1
        ack = PubAck if qos == 1 else PubRec
        if gate is not None and gate.marks != marks:
            channel.send_after_commit(ack(packet_id, _success(is_v5, matched)), gate)
        elif not is_v5 or (allowed and matched):
            channel.send(ack(packet_id))
        elif not allowed:
            reason = channel.reason(f"not authorized to publish to {topic!r}")
            channel.send(ack(packet_id, ReasonCode.NOT_AUTHORIZED, reason))
        else:
            # 0x10 is a success code: the ack goes bare (no Reason String), which strict
            # clients and embedded stacks expect of every reason code below 0x80.
            channel.send(ack(packet_id, ReasonCode.NO_MATCHING_SUBSCRIBERS))
    finally:
        channel.release_output()


def handle_publish_run(channel: Connection, run: PublishRun) -> bool:
    """A run of plain QoS 0 PUBLISHes to one topic (`broker.protocol.runs`), handled as a
    whole when that is what `handle_publish` would do with each of them; False (nothing done)
    when any of its checks could come out differently per message or needs the packet: the
    channel then hands the frames to `handle_publish` one by one.

    Checked once per run, as they depend only on the topic and the client: the topic name and
    limits, the ACL (`run_authorize`), the routing (`broker.core.runs_delivery.plan_run`, the other
    nodes included). A `publish_limit` (per message), `$` topics and everything `plan_run`
    declines take the packet path.
    """
    broker = channel.broker
    settings = broker.settings
    topic = run.topic
    if run_declines_topic(settings, topic):
        return False
    session = channel.session
    assert session is not None and channel.info is not None
    publisher = session.client_id
    plan = plan_run(broker, run, publisher)
    if plan is None:
        return False
    count = run.count
    counters = broker.metrics.counters
    counters["messages/received"] += count
    counters["messages/qos0/received"] += count
    channel.recv_msg += count
    if broker.hooks.run_authorize(channel.info, "publish", topic):
        wait_drained = publish_run(broker, run, plan, publisher)
        if wait_drained is not None:
            channel.wait_drained(wait_drained)
    else:
        counters["messages/dropped"] += count
    return True


def _route(channel: Connection, packet: Publish, topic: str, properties: Properties) -> int:
    """Route the client's accepted message; the number of deliveries (0: nobody matched)."""
    session = channel.session
    assert session is not None
    message = Message(
        topic,
        packet.payload,
        packet.qos,
        packet.retain,
        properties,
        session.client_id,
        channel.broker.clock(),
        channel.broker.node_name,
    )
    return channel.route(message, packet)


def _success(is_v5: bool, matched: int) -> int:
    """The reason code of a successful PUBACK/PUBREC: 0x10 when a 5.0 message matched
    nobody (a success code, sent bare)."""
    return ReasonCode.NO_MATCHING_SUBSCRIBERS if is_v5 and not matched else 0


def handle_puback(channel: Connection, packet: PubAck) -> None:
    assert channel.session is not None
    if not channel.session.on_puback(packet.packet_id, channel.broker.clock()):
        channel.broker.metrics.counters["packets/puback/missed"] += 1


def handle_pubrec(channel: Connection, packet: PubRec) -> None:
    session = channel.session
    assert session is not None
    now = channel.broker.clock()
    if packet.reason_code >= 0x80:
        if not session.on_pubrec_error(packet.packet_id, now):
            channel.broker.metrics.counters["packets/pubrec/missed"] += 1
        return
    if session.on_pubrec(packet.packet_id, now):
        channel.send_pubrel(packet.packet_id)  # (after the commit, with durable_acks)
    else:
        channel.broker.metrics.counters["packets/pubrec/missed"] += 1
        code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if channel.version == MQTT_5 else 0
        reason = channel.reason("packet identifier not found") if code else {}
        channel.send(PubRel(packet.packet_id, code, reason))


def handle_pubrel(channel: Connection, packet: PubRel) -> None:
    session = channel.session
    assert session is not None
    if session.release_rel(packet.packet_id):
        session.touch()
        # durable_acks: the id leaves awaiting_rel on disk before the client may reuse it
        gate = channel.ack_gate()
        if gate is not None:
            channel.send_after_commit(PubComp(packet.packet_id), gate)
        else:
            channel.send(PubComp(packet.packet_id))
    else:
        channel.broker.metrics.counters["packets/pubrel/missed"] += 1
        code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if channel.version == MQTT_5 else 0
        reason = channel.reason("packet identifier not found") if code else {}
        channel.send(PubComp(packet.packet_id, code, reason))


def handle_pubcomp(channel: Connection, packet: PubComp) -> None:
    assert channel.session is not None
    if not channel.session.on_pubcomp(packet.packet_id, channel.broker.clock()):
        channel.broker.metrics.counters["packets/pubcomp/missed"] += 1


def _refuse(channel: Connection, packet: Publish, code: int, text: str) -> None:
    """Refuse one PUBLISH without routing it: ack it with `code` (QoS 1/2), or DISCONNECT with
    `code` for QoS 0, which has no ack."""
    counters = channel.broker.metrics.counters
    counters["messages/received"] += 1
    counters["messages/dropped"] += 1
    if packet.qos == 0:
        raise Violation(code, text)
    assert packet.packet_id is not None
    ack = PubAck if packet.qos == 1 else PubRec
    channel.send(ack(packet.packet_id, code, channel.reason(text)))
