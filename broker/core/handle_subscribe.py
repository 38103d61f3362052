"""SUBSCRIBE and UNSUBSCRIBE (mosquitto's handle_subscribe.c / handle_unsubscribe.c).

Each requested filter gets its own reason code; a refused one never fails the others. Retained
messages go out after the SUBACK, for non-shared filters only, as Retain Handling allows.

The capabilities CONNACK announced are enforced per filter with the SUBACK codes the spec has
for them: Wildcard Subscription Available 0 -> 0xA2, Shared Subscription Available 0 -> 0x9E,
Subscription Identifiers Available 0 -> 0xA1 (for every filter of a SUBSCRIBE carrying one).
The granted QoS is at most `max_qos_allowed` (MQTT-3.2.2-9, 3.9.3). A 5.0 SUBACK/UNSUBACK with
a failure carries a Reason String naming the filters, unless the client asked for no problem
information (MQTT-3.1.2-29).

Limits (counted in `broker.limits`): a filter over `max_topic_levels` / `max_topic_length` is
refused as invalid (0x8F; 3.1.1 0x80), and a new filter beyond `max_subscriptions` per client
as Quota exceeded (0x97; 3.1.1 0x80); replacing an existing subscription is always allowed.
"""

from __future__ import annotations

from broker.core.connection import Connection, Violation
from broker.core.handle_publish import topic_limit
from broker.core.session import Subscription
from broker.core.topics import has_wildcard, parse_shared, validate_topic_filter
from broker.protocol.constants import MQTT_5, SUBACK_FAILURE_311, PropertyId, ReasonCode
from broker.protocol.packets import SubAck, Subscribe, UnsubAck, Unsubscribe


def handle_subscribe(channel: Connection, packet: Subscribe) -> None:
    session = channel.session
    assert session is not None and channel.info is not None
    broker = channel.broker
    is_v5 = channel.version == MQTT_5
    settings = broker.settings
    ids = packet.properties.get(PropertyId.SUBSCRIPTION_IDENTIFIER) if is_v5 else None
    identifier = ids[0] if ids else None
    if identifier is not None and not settings.subscription_identifier_available:
        refused = [int(ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)] * len(
            packet.subscriptions
        )
        reason = channel.reason("subscription identifiers are not supported")
        channel.send(SubAck(packet.packet_id, refused, reason))
        return
    codes: list[int] = []
    problems: list[str] = []
    retained_to_send: list[tuple[Subscription, bool]] = []
    for request in packet.subscriptions:
        filt = request.topic_filter
        if not validate_topic_filter(filt):
            codes.append(ReasonCode.TOPIC_FILTER_INVALID if is_v5 else SUBACK_FAILURE_311)
            problems.append(f"{filt!r}: invalid topic filter")
            continue
        group, topic_filter = parse_shared(filt)
        limit = topic_limit(settings, topic_filter)
        if limit:
            broker.limits[limit] += 1
            codes.append(ReasonCode.TOPIC_FILTER_INVALID if is_v5 else SUBACK_FAILURE_311)
            problems.append(f"{filt!r}: over {limit} ({getattr(settings, limit)})")
            continue
        if group is not None and not settings.shared_subscription_available:
            codes.append(ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                         if is_v5 else SUBACK_FAILURE_311)  # fmt: skip
            problems.append(f"{filt!r}: shared subscriptions are not supported")
            continue
        if not settings.wildcard_subscription_available and has_wildcard(topic_filter):
            codes.append(ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                         if is_v5 else SUBACK_FAILURE_311)  # fmt: skip
            problems.append(f"{filt!r}: wildcard subscriptions are not supported")
            continue
        if group is not None and request.no_local and is_v5:
            # MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
            raise Violation(ReasonCode.PROTOCOL_ERROR, "no local on shared filter")
        if not broker.hooks.run_authorize(channel.info, "subscribe", topic_filter):
            codes.append(ReasonCode.NOT_AUTHORIZED if is_v5 else SUBACK_FAILURE_311)
            problems.append(f"{filt!r}: not authorized")
            continue
        quota = settings.max_subscriptions
        if quota and filt not in session.subscriptions and len(session.subscriptions) >= quota:
            broker.limits["max_subscriptions"] += 1
            codes.append(ReasonCode.QUOTA_EXCEEDED if is_v5 else SUBACK_FAILURE_311)
            problems.append(f"{filt!r}: more than {quota} subscriptions")
            continue
        qos = min(request.qos, settings.max_qos_allowed)
        # A bridge (CONNECT level 0x80 | n) subscribes No Local and Retain As Published
        # whatever it asked: what it forwarded to us never goes back to it (no loop), and the
        # RETAIN flag crosses the bridge as published (RSMB's bridge protocol, mosquitto, EMQX).
        bridge = channel.is_bridge and group is None
        subscription = Subscription(
            session.client_id,
            filt,
            topic_filter,
            group,
            qos,
            bridge or (request.no_local and is_v5),
            bridge or (request.retain_as_published and is_v5),
            request.retain_handling if is_v5 else 0,
            identifier,
        )
        existed = broker.subscribe(session, subscription, channel.info)
        codes.append(qos)
        retained_to_send.append((subscription, existed))
    reason = channel.reason("; ".join(problems)) if problems else {}
    channel.send(SubAck(packet.packet_id, codes, reason))
    for subscription, existed in retained_to_send:  # after the SUBACK
        broker.send_retained(session, subscription, existed)


def handle_unsubscribe(channel: Connection, packet: Unsubscribe) -> None:
    session = channel.session
    assert session is not None
    codes: list[int] = []
    problems: list[str] = []
    for filt in packet.topic_filters:
        if not validate_topic_filter(filt):
            codes.append(ReasonCode.TOPIC_FILTER_INVALID)
            problems.append(f"{filt!r}: invalid topic filter")
        elif channel.broker.unsubscribe(session, filt):
            codes.append(ReasonCode.SUCCESS)
        else:
            codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)  # success: no Reason String
    # MQTT-3.10.4-4/5: UNSUBACK even when nothing was removed; codes in 5.0 only.
    if channel.version != MQTT_5:
        channel.send(UnsubAck(packet.packet_id, []))
        return
    reason = channel.reason("; ".join(problems)) if problems else {}
    channel.send(UnsubAck(packet.packet_id, codes, reason))
