"""CONNECT, DISCONNECT, AUTH and PINGREQ: arrival and departure (mosquitto's handle_connect.c).

A CONNECT is refused with the matching CONNACK code (translated to 3.1.1's return codes for old
clients) for a bad client id, a keepalive above `max_keepalive` (3.x), an unknown authentication
method, a ban, or failed authentication; otherwise the session is opened (or taken over) and the
CONNACK tells a 5.0 client the limits it must respect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.conn_state import CLOSED, CONNECTED, CONNECTING
from broker.core.hooks import ClientInfo
from broker.core.topics import validate_topic_name
from broker.protocol.constants import (
    MQTT_3_1,
    MQTT_5,
    ConnackCode311,
    PropertyId,
    ReasonCode,
    connack_code_for_version,
)
from broker.protocol.errors import UnsupportedProtocolVersion
from broker.protocol.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
)

if TYPE_CHECKING:
    from broker.core.channel import Channel


def refuse_version(channel: Channel, exc: UnsupportedProtocolVersion) -> None:
    level = getattr(exc, "protocol_level", None)
    if level == MQTT_5:
        channel.version = MQTT_5  # else send_connack would map 0x84 to a 3.1.1 CONNACK 0x01
        send_connack(channel, False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, {})
    else:
        # MQTT-3.1.2-2: answer 0x01 and close.
        channel.version = 4
        channel.send(ConnAck(False, ConnackCode311.UNACCEPTABLE_PROTOCOL_VERSION))
    channel.disconnect_reason = "unsupported_protocol_version"
    channel.state = CLOSED
    channel.link.close()
    channel.finish()


def send_connack(channel: Channel, present: bool, reason_code: int, properties: Properties) -> None:
    code = connack_code_for_version(reason_code, channel.version)
    channel.send(ConnAck(present, code, properties if channel.version == MQTT_5 else {}))


def refuse_connect(channel: Channel, reason_code: int, reason: str) -> None:
    send_connack(channel, False, reason_code, {})
    channel.disconnect_reason = reason
    channel.state = CLOSED
    channel.link.close()
    channel.finish()


def handle_connect(channel: Channel, packet: Connect) -> None:
    if channel.state != CONNECTING:
        channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "second CONNECT (MQTT-3.1.0-2)")
        return
    settings = channel.broker.settings
    channel.version = version = packet.protocol_level
    channel.proto_name = packet.protocol_name
    is_v5 = version == MQTT_5
    props = packet.properties
    ack_props: Properties = {}

    client_id = packet.client_id
    if not client_id:
        # MQTT-3.1.3-6/7/8: assign one for a clean session; 3.1.1 refuses a persistent one.
        if is_v5 or (packet.clean_start and version != MQTT_3_1):
            client_id = channel.broker.assign_client_id()
            if is_v5:
                ack_props[PropertyId.ASSIGNED_CLIENT_IDENTIFIER] = client_id
        else:
            refuse_connect(channel, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "invalid_clientid")
            return

    if packet.will is not None and not validate_topic_name(packet.will.topic):
        # The will is a PUBLISH to come: no wildcards (MQTT-3.3.2-2), not empty (MQTT-4.7.3-1).
        channel.protocol_violation(ReasonCode.TOPIC_NAME_INVALID, "invalid will topic")
        return

    keepalive = packet.keepalive
    if settings.max_keepalive and keepalive > settings.max_keepalive:
        if not is_v5:  # 3.x cannot be told: refuse, as mosquitto does
            refuse_connect(channel, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "keepalive_too_long")
            return
        keepalive = settings.max_keepalive
        ack_props[PropertyId.SERVER_KEEP_ALIVE] = keepalive

    if is_v5 and PropertyId.AUTHENTICATION_METHOD in props:
        refuse_connect(channel, ReasonCode.BAD_AUTHENTICATION_METHOD, "bad_auth_method")
        return

    now = channel.broker.clock()
    if channel.broker.banned.check(client_id, packet.username, channel.peer_host, now):
        refuse_connect(channel, ReasonCode.NOT_AUTHORIZED, "banned")
        return

    channel.client_id = client_id
    channel.username = packet.username
    channel.info = info = ClientInfo(
        client_id, packet.username, channel.peer_host, channel.peer_port, version, channel.listener
    )
    decision = channel.broker.hooks.run_authenticate(info, packet.password)
    if decision is False:
        channel.info = None
        refuse_connect(channel, ReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad_username_or_password")
        return
    if decision is None and not settings.allow_anonymous:
        channel.info = None
        refuse_connect(channel, ReasonCode.NOT_AUTHORIZED, "not_authorized")
        return

    if is_v5:
        expiry = int(props.get(PropertyId.SESSION_EXPIRY_INTERVAL, 0))
        cap = settings.session_expiry_interval
        if cap and expiry > cap:
            expiry = cap
            ack_props[PropertyId.SESSION_EXPIRY_INTERVAL] = expiry
        channel.receive_maximum = int(props.get(PropertyId.RECEIVE_MAXIMUM, 65535))
        ack_props[PropertyId.TOPIC_ALIAS_MAXIMUM] = settings.topic_alias_maximum
        ack_props[PropertyId.MAXIMUM_PACKET_SIZE] = settings.max_packet_size
        if not settings.retain_available:
            ack_props[PropertyId.RETAIN_AVAILABLE] = 0
    else:
        # 3.x persistent sessions never end by the spec (MQTT-3.1.2-5); the configured
        # interval bounds how long an abandoned one is kept (0 = for ever, as mosquitto).
        expiry = 0 if packet.clean_start else (settings.session_expiry_interval or 0xFFFFFFFF)

    channel.clean_start = packet.clean_start
    channel.keepalive = keepalive
    channel.will = packet.will
    channel.state = CONNECTED
    channel.connected_at = channel.broker.clock()
    session, present = channel.broker.open_session(channel, client_id, packet.clean_start, expiry)
    session.username = packet.username
    channel.session = session
    # MQTT 3.1 has no Session Present flag: that CONNACK byte is reserved (0).
    send_connack(channel, present and version != MQTT_3_1, ReasonCode.SUCCESS, ack_props)
    for hook in channel.broker.hooks.client_connected:
        hook(info)
    session.resume(channel.broker.clock())


def handle_disconnect(channel: Channel, packet: Disconnect) -> None:
    session = channel.session
    assert session is not None
    if channel.version == MQTT_5:
        expiry = packet.properties.get(PropertyId.SESSION_EXPIRY_INTERVAL)
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                # MQTT-3.14.2-2
                channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "session expiry raised")
                return
            cap = channel.broker.settings.session_expiry_interval
            session.expiry_interval = min(int(expiry), cap) if cap else int(expiry)
        # 0x04 "Disconnect with Will Message" keeps the will; anything else discards it.
        channel.publish_will = packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL
    else:
        channel.publish_will = False  # MQTT-3.14.4-3
    channel.disconnect_reason = "normal"
    channel.state = CLOSED
    channel.link.close()
    channel.finish()


def handle_auth(channel: Channel, packet: Auth) -> None:
    # No enhanced authentication method was negotiated in CONNECT (MQTT-4.12.0-1).
    channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "AUTH without authentication method")


def handle_pingreq(channel: Channel, packet: PingReq) -> None:
    channel.send(PingResp())  # MQTT-3.12.4-1
