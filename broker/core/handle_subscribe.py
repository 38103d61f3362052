"""SUBSCRIBE and UNSUBSCRIBE (mosquitto's handle_subscribe.c / handle_unsubscribe.c).

Each requested filter gets its own reason code; a refused one never fails the others. Retained
messages go out after the SUBACK, for non-shared filters only, as Retain Handling allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.session import Subscription
from broker.core.topics import parse_shared, validate_topic_filter
from broker.protocol.constants import MQTT_5, SUBACK_FAILURE_311, PropertyId, ReasonCode
from broker.protocol.packets import SubAck, Subscribe, UnsubAck, Unsubscribe

if TYPE_CHECKING:
    from broker.core.channel import Channel


def handle_subscribe(channel: Channel, packet: Subscribe) -> None:
    session = channel.session
    assert session is not None and channel.info is not None
    broker = channel.broker
    is_v5 = channel.version == MQTT_5
    ids = packet.properties.get(PropertyId.SUBSCRIPTION_IDENTIFIER) if is_v5 else None
    identifier = ids[0] if ids else None
    codes: list[int] = []
    retained_to_send: list[tuple[Subscription, bool]] = []
    for request in packet.subscriptions:
        filt = request.topic_filter
        if not validate_topic_filter(filt):
            codes.append(ReasonCode.TOPIC_FILTER_INVALID if is_v5 else SUBACK_FAILURE_311)
            continue
        group, topic_filter = parse_shared(filt)
        if group is not None and request.no_local and is_v5:
            # MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
            channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "no local on shared filter")
            return
        if not broker.hooks.run_authorize(channel.info, "subscribe", topic_filter):
            codes.append(ReasonCode.NOT_AUTHORIZED if is_v5 else SUBACK_FAILURE_311)
            continue
        qos = min(request.qos, 2)
        subscription = Subscription(
            session.client_id,
            filt,
            topic_filter,
            group,
            qos,
            request.no_local if is_v5 else False,
            request.retain_as_published if is_v5 else False,
            request.retain_handling if is_v5 else 0,
            identifier,
        )
        existed = broker.subscribe(session, subscription)
        codes.append(qos)
        for hook in broker.hooks.session_subscribed:
            hook(channel.info, filt, qos)
        if group is None:
            retained_to_send.append((subscription, existed))
    channel.send(SubAck(packet.packet_id, codes))
    now = broker.clock()
    for subscription, existed in retained_to_send:
        # Retain Handling: 0 always, 1 only for a new subscription, 2 never (MQTT-3.3.1-9..11).
        handling = subscription.retain_handling
        if handling == 2 or (handling == 1 and existed):
            continue
        sub_ids = [subscription.identifier] if subscription.identifier is not None else None
        for message in broker.retained_for(subscription.topic_filter):
            qos = min(message.qos, subscription.qos)
            # MQTT-3.3.1-8: retained messages sent on subscribe carry RETAIN=1.
            session.deliver(message, qos, True, sub_ids, now)


def handle_unsubscribe(channel: Channel, packet: Unsubscribe) -> None:
    session = channel.session
    assert session is not None
    codes: list[int] = []
    for filt in packet.topic_filters:
        if not validate_topic_filter(filt):
            codes.append(ReasonCode.TOPIC_FILTER_INVALID)
        elif channel.broker.unsubscribe(session, filt):
            codes.append(ReasonCode.SUCCESS)
        else:
            codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
    # MQTT-3.10.4-4/5: UNSUBACK even when nothing was removed; codes in 5.0 only.
    channel.send(UnsubAck(packet.packet_id, codes if channel.version == MQTT_5 else []))
