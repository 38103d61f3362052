"""One client connection's MQTT state machine, shared by the TCP and WebSocket transports.

Theory of operation
-------------------
A transport creates a `Channel` per accepted connection with a `Link` (write/close/buffered) and
feeds it every chunk of bytes it reads. The channel decodes packets with the sans-IO `Decoder`
and dispatches each one to a handler (`_on_<packet>`), mosquitto's `handle_*.c` in one class.
Handlers change broker state through `Broker` methods and write replies through the link; they
never await. A protocol violation closes only this connection: with a CONNACK (before the
session exists) or a DISCONNECT (after) carrying the 5.0 reason code, or a bare close in 3.x.

States: CONNECTING (only CONNECT allowed, MQTT-3.1.0-1) -> CONNECTED (a second CONNECT is a
protocol error, MQTT-3.1.0-2) -> CLOSED. Whatever way the connection ends, `_finish` runs once:
the will is published unless a DISCONNECT (without 0x04) arrived, and the session is detached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from broker.core.hooks import ClientInfo
from broker.core.message import Message
from broker.core.metrics import RECEIVED_COUNTER, SENT_COUNTER
from broker.core.session import Session, Subscription
from broker.core.topics import parse_shared, validate_topic_filter, validate_topic_name
from broker.protocol.codec import Decoder, encode, encode_publish
from broker.protocol.constants import (
    MQTT_3_1,
    MQTT_5,
    SUBACK_FAILURE_311,
    ConnackCode311,
    PacketType,
    PropertyId,
    ReasonCode,
    connack_code_for_version,
)
from broker.protocol.errors import ProtocolError, UnsupportedProtocolVersion
from broker.protocol.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)

if TYPE_CHECKING:
    from broker.core.broker import Broker

log = logging.getLogger(__name__)

CONNECTING, CONNECTED, CLOSED = 0, 1, 2

#: Seconds a new connection may take to send CONNECT before it is dropped.
CONNECT_TIMEOUT = 30.0

#: Properties of an incoming PUBLISH that describe the hop, not the message; never forwarded.
_HOP_PROPERTIES = (PropertyId.TOPIC_ALIAS, PropertyId.SUBSCRIPTION_IDENTIFIER)


class Link(Protocol):
    """What a transport gives a channel."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def buffered(self) -> int: ...


class Channel:
    """The MQTT side of one network connection. See the module docstring."""

    def __init__(
        self,
        broker: Broker,
        link: Link,
        peer_host: str = "",
        peer_port: int = 0,
        listener: str = "tcp",
    ) -> None:
        self.broker = broker
        self.link = link
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.listener = listener
        self.decoder = Decoder(max_packet_size=broker.settings.max_packet_size)
        self.state = CONNECTING
        self.version = 4
        self.client_id: str | None = None
        self.username: str | None = None
        self.proto_name = "MQTT"
        self.clean_start = True
        self.keepalive = 0
        self.session: Session | None = None
        self.will: Will | None = None
        self.info: ClientInfo | None = None
        self.receive_maximum = 65535
        self.topic_aliases: dict[int, str] = {}
        self.opened_at = self.last_received = broker.clock()
        self.connected_at = 0.0
        self.disconnect_reason = ""
        self._publish_will = True
        self._finished = False
        # Per-connection counters, named as EMQX's connection object fields.
        self.recv_oct = self.recv_cnt = self.recv_pkt = self.recv_msg = 0
        self.send_oct = self.send_cnt = self.send_pkt = self.send_msg = 0
        broker.channel_opened(self)

    # -- input ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        counters = self.broker.metrics.counters
        self.recv_oct += len(data)
        self.recv_cnt += 1
        counters["bytes/received"] += len(data)
        try:
            packets = self.decoder.feed(data)
        except UnsupportedProtocolVersion as exc:
            self._refuse_version(exc)
            return
        except ProtocolError as exc:
            # Packets that were complete before the bad bytes are handled first: a client's
            # valid PUBLISH is not lost because garbage followed it in the same read.
            self._handle(exc.packets)
            if self.state != CLOSED:
                self.protocol_violation(exc.reason_code, str(exc))
            return
        if packets:
            self._handle(packets)

    def _handle(self, packets: list[Packet]) -> None:
        if not packets:
            return
        counters = self.broker.metrics.counters
        self.last_received = self.broker.clock()
        handlers = self._handlers
        for packet in packets:
            if self.state == CLOSED:
                return
            self.recv_pkt += 1
            counters["packets/received"] += 1
            name = RECEIVED_COUNTER.get(packet.packet_type)
            if name is not None:
                counters[name] += 1
            handler = handlers.get(type(packet))
            if handler is None:
                self.protocol_violation(
                    ReasonCode.PROTOCOL_ERROR, f"a client may not send {type(packet).__name__}"
                )
                return
            handler(self, packet)

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, error, or after our own close)."""
        if not self.disconnect_reason:
            self.disconnect_reason = "closed"
        self.state = CLOSED
        self._finish()

    # -- output ---------------------------------------------------------------------------

    def send(self, packet: Packet) -> None:
        data = encode(packet, self.version)
        self._count_sent(packet.packet_type, len(data))
        self.link.write(data)

    def _count_sent(self, packet_type: int, size: int) -> None:
        counters = self.broker.metrics.counters
        self.send_oct += size
        self.send_cnt += 1
        self.send_pkt += 1
        counters["bytes/sent"] += size
        counters["packets/sent"] += 1
        counters[SENT_COUNTER[packet_type]] += 1

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        dup: bool,
        subscription_ids: list[int] | None,
    ) -> bool:
        """Write one PUBLISH; a QoS 0 one is dropped (False) when the client is not reading."""
        if self.state != CONNECTED:
            return False
        link = self.link
        if qos == 0 and link.buffered() > self.broker.settings.max_outgoing_buffer:
            return False
        is_v5 = self.version == MQTT_5
        if qos == 0 and subscription_ids is None:
            cache = message.encoded
            if cache is None:
                cache = message.encoded = {}
            key = (is_v5, retain)
            data = cache.get(key)
            if data is None:
                data = cache[key] = encode_publish(
                    message.topic, message.payload, 0, retain, False, None,
                    message.properties if is_v5 else None, self.version,
                )  # fmt: skip
        else:
            properties: Properties | None = None
            if is_v5:
                properties = message.properties
                if subscription_ids:
                    properties = dict(properties)
                    properties[PropertyId.SUBSCRIPTION_IDENTIFIER] = subscription_ids
            data = encode_publish(
                message.topic, message.payload, qos, retain, dup, packet_id, properties,
                self.version,
            )  # fmt: skip
        self._count_sent(PacketType.PUBLISH, len(data))
        self.send_msg += 1
        counters = self.broker.metrics.counters
        counters["messages/sent"] += 1
        counters[_QOS_SENT[qos]] += 1
        link.write(data)
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self.send(PubRel(packet_id))

    # -- closing --------------------------------------------------------------------------

    def close(self, reason_code: int | None = None, reason: str = "") -> None:
        """Close from the broker side, telling a 5.0 client why with DISCONNECT."""
        if self.state == CLOSED:
            return
        if reason_code is not None and self.state == CONNECTED and self.version == MQTT_5:
            self.send(Disconnect(reason_code))
        self.disconnect_reason = reason or (
            f"reason_{reason_code:#04x}" if reason_code is not None else "closed"
        )
        self.state = CLOSED
        self.link.close()
        self._finish()

    def protocol_violation(self, reason_code: int, message: str) -> None:
        """Bad input: answer with the reason code where the spec asks for one, then close."""
        log.info("closing %s (%s:%s): %s", self.client_id, self.peer_host, self.peer_port, message)
        if self.state == CONNECTING:
            if self.decoder.version == MQTT_5:
                self.version = MQTT_5  # a 5.0 CONNACK, not the 3.1.1 default's mapped code
                self._send_connack(False, reason_code, {})
            self.disconnect_reason = "protocol_error"
            self.state = CLOSED
            self.link.close()
            self._finish()
        else:
            self.close(reason_code, "protocol_error")

    def taken_over(self) -> None:
        """Another connection CONNECTed with our client id (MQTT-3.1.4-3)."""
        self.close(ReasonCode.SESSION_TAKEN_OVER, "takeover")

    def kick(self) -> None:
        """An operator disconnected this client (management API)."""
        self.close(ReasonCode.ADMINISTRATIVE_ACTION, "kicked")

    def check_timeouts(self, now: float) -> None:
        if self.state == CONNECTING:
            if now - self.opened_at > CONNECT_TIMEOUT:
                self.close(None, "connect_timeout")
        elif (
            self.state == CONNECTED
            and self.keepalive
            and now - self.last_received > self.keepalive * 1.5  # MQTT-3.1.2-24
        ):
            self.close(ReasonCode.KEEP_ALIVE_TIMEOUT, "keepalive_timeout")

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        broker = self.broker
        if self.info is not None:
            if self.will is not None and self._publish_will:
                self._send_will(self.will)
            broker.channel_closed(self)
            for hook in broker.hooks.client_disconnected:
                hook(self.info, self.disconnect_reason)
        else:
            broker.channel_closed(self)

    def _send_will(self, will: Will) -> None:
        assert self.info is not None
        if not self.broker.hooks.run_authorize(self.info, "publish", will.topic):
            return
        message = Message(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            dict(will.properties),
            self.client_id or "",
            self.broker.clock(),
            self.broker.node_name,
        )
        self._route(message)

    # -- CONNECT --------------------------------------------------------------------------

    def _refuse_version(self, exc: UnsupportedProtocolVersion) -> None:
        level = getattr(exc, "protocol_level", None)
        if level == MQTT_5:
            self.version = MQTT_5  # else _send_connack would map 0x84 to a 3.1.1 CONNACK 0x01
            self._send_connack(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, {})
        else:
            # MQTT-3.1.2-2: answer 0x01 and close.
            self.version = 4
            self.send(ConnAck(False, ConnackCode311.UNACCEPTABLE_PROTOCOL_VERSION))
        self.disconnect_reason = "unsupported_protocol_version"
        self.state = CLOSED
        self.link.close()
        self._finish()

    def _send_connack(self, present: bool, reason_code: int, properties: Properties) -> None:
        code = connack_code_for_version(reason_code, self.version)
        self.send(ConnAck(present, code, properties if self.version == MQTT_5 else {}))

    def _refuse_connect(self, reason_code: int, reason: str) -> None:
        self._send_connack(False, reason_code, {})
        self.disconnect_reason = reason
        self.state = CLOSED
        self.link.close()
        self._finish()

    def _on_connect(self, packet: Connect) -> None:
        if self.state != CONNECTING:
            self.protocol_violation(ReasonCode.PROTOCOL_ERROR, "second CONNECT (MQTT-3.1.0-2)")
            return
        settings = self.broker.settings
        self.version = version = packet.protocol_level
        self.proto_name = packet.protocol_name
        is_v5 = version == MQTT_5
        props = packet.properties
        ack_props: Properties = {}

        client_id = packet.client_id
        if not client_id:
            # MQTT-3.1.3-6/7/8: assign one for a clean session; 3.1.1 refuses a persistent one.
            if is_v5 or (packet.clean_start and version != MQTT_3_1):
                client_id = self.broker.assign_client_id()
                if is_v5:
                    ack_props[PropertyId.ASSIGNED_CLIENT_IDENTIFIER] = client_id
            else:
                self._refuse_connect(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "invalid_clientid")
                return

        if packet.will is not None and not validate_topic_name(packet.will.topic):
            # The will is a PUBLISH to come: no wildcards (MQTT-3.3.2-2), not empty (MQTT-4.7.3-1).
            self.protocol_violation(ReasonCode.TOPIC_NAME_INVALID, "invalid will topic")
            return

        keepalive = packet.keepalive
        if settings.max_keepalive and keepalive > settings.max_keepalive:
            if not is_v5:  # 3.x cannot be told: refuse, as mosquitto does
                self._refuse_connect(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "keepalive_too_long")
                return
            keepalive = settings.max_keepalive
            ack_props[PropertyId.SERVER_KEEP_ALIVE] = keepalive

        if is_v5 and PropertyId.AUTHENTICATION_METHOD in props:
            self._refuse_connect(ReasonCode.BAD_AUTHENTICATION_METHOD, "bad_auth_method")
            return

        now = self.broker.clock()
        if self.broker.banned.check(client_id, packet.username, self.peer_host, now):
            self._refuse_connect(ReasonCode.NOT_AUTHORIZED, "banned")
            return

        self.client_id = client_id
        self.username = packet.username
        self.info = info = ClientInfo(
            client_id, packet.username, self.peer_host, self.peer_port, version, self.listener
        )
        decision = self.broker.hooks.run_authenticate(info, packet.password)
        if decision is False:
            self.info = None
            self._refuse_connect(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad_username_or_password")
            return
        if decision is None and not settings.allow_anonymous:
            self.info = None
            self._refuse_connect(ReasonCode.NOT_AUTHORIZED, "not_authorized")
            return

        if is_v5:
            expiry = int(props.get(PropertyId.SESSION_EXPIRY_INTERVAL, 0))
            cap = settings.session_expiry_interval
            if cap and expiry > cap:
                expiry = cap
                ack_props[PropertyId.SESSION_EXPIRY_INTERVAL] = expiry
            self.receive_maximum = int(props.get(PropertyId.RECEIVE_MAXIMUM, 65535))
            ack_props[PropertyId.TOPIC_ALIAS_MAXIMUM] = settings.topic_alias_maximum
            ack_props[PropertyId.MAXIMUM_PACKET_SIZE] = settings.max_packet_size
            if not settings.retain_available:
                ack_props[PropertyId.RETAIN_AVAILABLE] = 0
        else:
            # 3.x persistent sessions never end by the spec (MQTT-3.1.2-5); the configured
            # interval bounds how long an abandoned one is kept (0 = for ever, as mosquitto).
            expiry = 0 if packet.clean_start else (settings.session_expiry_interval or 0xFFFFFFFF)

        self.clean_start = packet.clean_start
        self.keepalive = keepalive
        self.will = packet.will
        self.state = CONNECTED
        self.connected_at = self.broker.clock()
        session, present = self.broker.open_session(self, client_id, packet.clean_start, expiry)
        session.username = packet.username
        self.session = session
        # MQTT 3.1 has no Session Present flag: that CONNACK byte is reserved (0).
        self._send_connack(present and version != MQTT_3_1, ReasonCode.SUCCESS, ack_props)
        for hook in self.broker.hooks.client_connected:
            hook(info)
        session.resume(self.broker.clock())

    # -- PUBLISH and its acknowledgements -------------------------------------------------

    def _on_publish(self, packet: Publish) -> None:
        session = self.session
        assert session is not None and self.info is not None
        is_v5 = self.version == MQTT_5
        topic = packet.topic
        properties = packet.properties
        if is_v5 and properties:
            alias = properties.get(PropertyId.TOPIC_ALIAS)
            if alias is not None:
                if alias == 0 or alias > self.broker.settings.topic_alias_maximum:
                    self.protocol_violation(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias invalid")
                    return
                if topic:
                    self.topic_aliases[alias] = topic
                else:
                    known = self.topic_aliases.get(alias)
                    if known is None:
                        self.protocol_violation(ReasonCode.PROTOCOL_ERROR, "unknown topic alias")
                        return
                    topic = known
            properties = {k: v for k, v in properties.items() if k not in _HOP_PROPERTIES}
        if not validate_topic_name(topic):
            # MQTT-3.3.2-2 (wildcards) / MQTT-4.7.3-1 (empty).
            self.protocol_violation(ReasonCode.TOPIC_NAME_INVALID, f"invalid topic {topic!r}")
            return
        if packet.retain and not self.broker.settings.retain_available:
            self.protocol_violation(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not supported")
            return
        qos = packet.qos
        counters = self.broker.metrics.counters
        counters["messages/received"] += 1
        counters[_QOS_RECEIVED[qos]] += 1
        self.recv_msg += 1

        packet_id = packet.packet_id
        if qos == 2:
            assert packet_id is not None
            if packet_id in session.awaiting_rel:
                # A resent QoS 2 PUBLISH: acknowledge, never route twice (MQTT-4.3.3-9).
                self.send(PubRec(packet_id))
                return
            if len(session.awaiting_rel) >= self.broker.settings.max_awaiting_rel:
                counters["messages/qos2/dropped"] += 1
                if is_v5:
                    self.send(PubRec(packet_id, ReasonCode.QUOTA_EXCEEDED))
                else:
                    self.close(None, "awaiting_rel_full")
                return

        allowed = not topic.startswith("$SYS") and self.broker.hooks.run_authorize(
            self.info, "publish", topic
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
                self.broker.clock(),
                self.broker.node_name,
            )
            matched = self._route(message)
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
            self.send(PubAck(packet_id, code))
        elif qos == 2:
            assert packet_id is not None
            if allowed:
                session.awaiting_rel[packet_id] = self.broker.clock()
            code = 0
            if is_v5:
                if not allowed:
                    code = ReasonCode.NOT_AUTHORIZED
                elif matched == 0:
                    code = ReasonCode.NO_MATCHING_SUBSCRIBERS
            self.send(PubRec(packet_id, code))

    def _route(self, message: Message) -> int:
        hooked = self.broker.hooks.run_message_publish(message)
        if hooked is None:
            return 0
        return self.broker.publish(hooked)

    def _on_puback(self, packet: PubAck) -> None:
        assert self.session is not None
        if not self.session.on_puback(packet.packet_id, self.broker.clock()):
            self.broker.metrics.counters["packets/puback/missed"] += 1

    def _on_pubrec(self, packet: PubRec) -> None:
        session = self.session
        assert session is not None
        now = self.broker.clock()
        if packet.reason_code >= 0x80:
            session.on_pubrec_error(packet.packet_id, now)
            return
        if session.on_pubrec(packet.packet_id, now):
            self.send(PubRel(packet.packet_id))
        else:
            self.broker.metrics.counters["packets/pubrec/missed"] += 1
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.version == MQTT_5 else 0
            self.send(PubRel(packet.packet_id, code))

    def _on_pubrel(self, packet: PubRel) -> None:
        session = self.session
        assert session is not None
        if session.awaiting_rel.pop(packet.packet_id, None) is not None:
            self.send(PubComp(packet.packet_id))
        else:
            self.broker.metrics.counters["packets/pubrel/missed"] += 1
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.version == MQTT_5 else 0
            self.send(PubComp(packet.packet_id, code))

    def _on_pubcomp(self, packet: PubComp) -> None:
        assert self.session is not None
        if not self.session.on_pubcomp(packet.packet_id, self.broker.clock()):
            self.broker.metrics.counters["packets/pubcomp/missed"] += 1

    # -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None and self.info is not None
        broker = self.broker
        is_v5 = self.version == MQTT_5
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
                self.protocol_violation(ReasonCode.PROTOCOL_ERROR, "no local on shared filter")
                return
            if not broker.hooks.run_authorize(self.info, "subscribe", topic_filter):
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
                hook(self.info, filt, qos)
            if group is None:
                retained_to_send.append((subscription, existed))
        self.send(SubAck(packet.packet_id, codes))
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

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes: list[int] = []
        for filt in packet.topic_filters:
            if not validate_topic_filter(filt):
                codes.append(ReasonCode.TOPIC_FILTER_INVALID)
            elif self.broker.unsubscribe(session, filt):
                codes.append(ReasonCode.SUCCESS)
            else:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
        # MQTT-3.10.4-4/5: UNSUBACK even when nothing was removed; codes in 5.0 only.
        self.send(UnsubAck(packet.packet_id, codes if self.version == MQTT_5 else []))

    # -- the rest -------------------------------------------------------------------------

    def _on_pingreq(self, packet: PingReq) -> None:
        self.send(PingResp())  # MQTT-3.12.4-1

    def _on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        assert session is not None
        if self.version == MQTT_5:
            expiry = packet.properties.get(PropertyId.SESSION_EXPIRY_INTERVAL)
            if expiry is not None:
                if session.expiry_interval == 0 and expiry != 0:
                    # MQTT-3.14.2-2
                    self.protocol_violation(ReasonCode.PROTOCOL_ERROR, "session expiry raised")
                    return
                cap = self.broker.settings.session_expiry_interval
                session.expiry_interval = min(int(expiry), cap) if cap else int(expiry)
            # 0x04 "Disconnect with Will Message" keeps the will; anything else discards it.
            self._publish_will = packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL
        else:
            self._publish_will = False  # MQTT-3.14.4-3
        self.disconnect_reason = "normal"
        self.state = CLOSED
        self.link.close()
        self._finish()

    def _on_auth(self, packet: Auth) -> None:
        # No enhanced authentication method was negotiated in CONNECT (MQTT-4.12.0-1).
        self.protocol_violation(ReasonCode.PROTOCOL_ERROR, "AUTH without authentication method")

    def _before_connect(self, packet: Packet) -> None:
        self.protocol_violation(ReasonCode.PROTOCOL_ERROR, "first packet must be CONNECT")

    _handlers: dict[type, Handler]


Handler = Callable[[Channel, Any], None]


def _connected_only(handler: Handler) -> Handler:
    """Wrap a handler so that it runs only after CONNECT (MQTT-3.1.0-1)."""

    def guarded(channel: Channel, packet: Packet) -> None:
        if channel.state != CONNECTED:
            channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "first packet must be CONNECT")
            return
        handler(channel, packet)

    return guarded


Channel._handlers = {
    Connect: Channel._on_connect,
    Publish: _connected_only(Channel._on_publish),
    PubAck: _connected_only(Channel._on_puback),
    PubRec: _connected_only(Channel._on_pubrec),
    PubRel: _connected_only(Channel._on_pubrel),
    PubComp: _connected_only(Channel._on_pubcomp),
    Subscribe: _connected_only(Channel._on_subscribe),
    Unsubscribe: _connected_only(Channel._on_unsubscribe),
    PingReq: _connected_only(Channel._on_pingreq),
    Disconnect: _connected_only(Channel._on_disconnect),
    Auth: _connected_only(Channel._on_auth),
}

_QOS_RECEIVED = ("messages/qos0/received", "messages/qos1/received", "messages/qos2/received")
_QOS_SENT = ("messages/qos0/sent", "messages/qos1/sent", "messages/qos2/sent")
