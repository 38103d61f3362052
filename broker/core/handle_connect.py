"""CONNECT, DISCONNECT, AUTH and PINGREQ: arrival and departure (mosquitto's handle_connect.c).

A CONNECT is refused with the matching CONNACK code (translated to 3.1.1's return codes for old
clients) for a bad client id, a keepalive above `max_keepalive` (3.x), an unknown authentication
method, a ban, or failed authentication; otherwise the session is opened (or taken over) and the
CONNACK tells a 5.0 client the limits it must respect.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from broker.core.connection import Connection, PendingConnect, Violation
from broker.core.enhanced_auth import CONTINUE, SUCCESS, AuthResult, find_method
from broker.core.hooks import ClientInfo
from broker.core.states import ACCEPT, AWAIT_TAKEOVER, CONNECTING, TAKEOVER
from broker.core.topic_alias import OutgoingAliases
from broker.core.topics import is_utf8, validate_topic_name
from broker.protocol.constants import (
    MQTT_3_1,
    MQTT_5,
    ConnackCode311,
    PacketType,
    PropertyId,
    ReasonCode,
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
    Will,
)
from broker.protocol.properties import REASON_CODES_5

if TYPE_CHECKING:
    from broker.core.cluster_port import SessionState

log = logging.getLogger(__name__)


def refuse_version(channel: Connection, exc: UnsupportedProtocolVersion) -> None:
    level = getattr(exc, "protocol_level", None)
    if level == MQTT_5:
        channel.version = MQTT_5  # else the CONNACK would map 0x84 to a 3.1.1 CONNACK 0x01
        channel.refuse(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, "unsupported_protocol_version")
    else:
        # MQTT-3.1.2-2: answer 0x01 and close.
        channel.version = 4
        channel.send(ConnAck(False, ConnackCode311.UNACCEPTABLE_PROTOCOL_VERSION))
        channel.shut("unsupported_protocol_version")


def _will_problem(channel: Connection, will: Will) -> tuple[int, str] | None:
    """Why the will of a CONNECT cannot be accepted: (CONNACK reason code, text), or None."""
    settings = channel.broker.settings
    if will.qos > settings.max_qos_allowed:
        return ReasonCode.QOS_NOT_SUPPORTED, (
            f"will QoS {will.qos} is above the Maximum QoS {settings.max_qos_allowed}"
        )  # MQTT-3.2.2-12
    if will.retain and not settings.retain_available:
        return ReasonCode.RETAIN_NOT_SUPPORTED, "retained wills are not supported"  # MQTT-3.2.2-13
    props = will.properties
    if props and channel.version == MQTT_5:
        if props.get(PropertyId.PAYLOAD_FORMAT_INDICATOR) == 1 and not is_utf8(will.payload):
            return ReasonCode.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8"  # 3.1.3.2.3
        response_topic = props.get(PropertyId.RESPONSE_TOPIC)
        if response_topic is not None and not validate_topic_name(response_topic):
            return ReasonCode.PROTOCOL_ERROR, "will response topic is not a topic name"  # 3.1.3.2.5
    return None


def handle_connect(channel: Connection, packet: Connect) -> None:
    if channel.state != CONNECTING or channel.pending_connect is not None:
        raise Violation(ReasonCode.PROTOCOL_ERROR, "second CONNECT (MQTT-3.1.0-2)")
    broker = channel.broker
    settings = broker.settings
    if channel.cert_username is not None:
        # TLS use_identity_as_username: the certificate is the authentication (mosquitto).
        packet = dataclasses.replace(packet, username=channel.cert_username, password=None)
    channel.version = version = packet.protocol_level
    # Set only where they differ from the class defaults: a field a connection sets lives in
    # its own __dict__ (`Connection.__slots__`).
    if packet.protocol_name != channel.proto_name:
        channel.proto_name = packet.protocol_name
    if packet.bridge:
        channel.is_bridge = True
    is_v5 = version == MQTT_5
    props = packet.properties
    ack_props: Properties = {}

    client_id = packet.client_id
    if not client_id:
        # MQTT-3.1.3-6/7/8: assign one for a clean session; 3.1.1 refuses a persistent one.
        if is_v5 or (packet.clean_start and version != MQTT_3_1):
            client_id = broker.assign_client_id()
            if is_v5:
                ack_props[PropertyId.ASSIGNED_CLIENT_IDENTIFIER] = client_id  # MQTT-3.2.2-16
        else:
            channel.refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "invalid_clientid")
            return

    will = packet.will
    if will is not None:
        if not validate_topic_name(will.topic):
            # The will is a PUBLISH to come: no wildcards (MQTT-3.3.2-2), not empty (MQTT-4.7.3-1).
            raise Violation(ReasonCode.TOPIC_NAME_INVALID, "invalid will topic")
        problem = _will_problem(channel, will)
        if problem is not None:
            channel.refuse(problem[0], "will_refused", problem[1])
            return

    keepalive = packet.keepalive
    if is_v5 and settings.server_keepalive:
        keepalive = settings.server_keepalive  # MQTT-3.2.2-21: the client must use it
        ack_props[PropertyId.SERVER_KEEP_ALIVE] = keepalive
    elif settings.max_keepalive and (keepalive > settings.max_keepalive or keepalive == 0):
        if not is_v5:  # 3.x cannot be told: refuse, as mosquitto does
            if keepalive:
                code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
                channel.refuse(code, "keepalive_too_long")
                return
        else:
            keepalive = settings.max_keepalive
            ack_props[PropertyId.SERVER_KEEP_ALIVE] = keepalive

    now = broker.clock()
    if broker.banned.check(client_id, packet.username, channel.peer_host, now):
        channel.refuse(ReasonCode.NOT_AUTHORIZED, "banned", who=(client_id, packet.username))
        return

    if is_v5:
        # What the client can take: Receive Maximum (MQTT-3.3.4-9), Maximum Packet Size
        # (MQTT-3.1.2-24), Topic Alias Maximum (MQTT-3.1.2-26), problem information (3.1.2-29).
        channel.receive_maximum = int(props.get(PropertyId.RECEIVE_MAXIMUM, 65535))
        channel.max_packet_out = int(props.get(PropertyId.MAXIMUM_PACKET_SIZE,
                                               channel.max_packet_out))  # fmt: skip
        aliases = min(int(props.get(PropertyId.TOPIC_ALIAS_MAXIMUM, 0)),
                      settings.outgoing_topic_alias_maximum)  # fmt: skip
        channel.out_aliases = OutgoingAliases(aliases) if aliases > 0 else None
        if props.get(PropertyId.REQUEST_PROBLEM_INFORMATION, 1) != 1:
            channel.problem_info = False
        method = props.get(PropertyId.AUTHENTICATION_METHOD)
        if method is not None:
            factory = find_method(broker.hooks.auth_methods, settings, method)
            if factory is None:  # MQTT-4.12.0-1
                channel.refuse(ReasonCode.BAD_AUTHENTICATION_METHOD, "bad_auth_method",
                               f"authentication method {method!r} is not supported")  # fmt: skip
                return
            channel.auth_method = method
            channel.auth = factory(client_id, packet.username)
            channel.pending_connect = PendingConnect(packet, client_id, keepalive, ack_props)
            data = props.get(PropertyId.AUTHENTICATION_DATA)
            connect_auth_result(channel, channel.auth.start(data))
            return

    info = ClientInfo(
        client_id, packet.username, channel.peer_host, channel.peer_port, version, channel.listener
    )
    if channel.cert_username is not None:
        decision: bool | None = True
    else:
        decision = broker.hooks.run_authenticate(info, packet.password)
    if decision is False:
        channel.refuse(
            ReasonCode.BAD_USER_NAME_OR_PASSWORD,
            "bad_username_or_password",
            who=(client_id, packet.username),
        )
        return
    allow_anonymous = settings.listener_allow_anonymous.get(
        channel.listener, settings.allow_anonymous
    )
    if decision is None and not allow_anonymous:
        channel.refuse(
            ReasonCode.NOT_AUTHORIZED, "not_authorized", who=(client_id, packet.username)
        )
        return
    accept_connect(channel, packet, client_id, keepalive, ack_props, packet.username)


def accept_connect(
    channel: Connection,
    packet: Connect,
    client_id: str,
    keepalive: int,
    ack_props: Properties,
    username: str | None,
) -> None:
    """The client is authenticated: open (or take over) its session and send CONNACK.

    In a cluster (`broker.session_locator` set), other nodes must first give the client id up
    (closing a connection there, handing over the session): the channel waits in TAKEOVER until
    the locator calls back, then `_open` goes on as for a single node.
    """
    broker = channel.broker
    settings = broker.settings
    version = channel.version
    props = packet.properties
    channel.client_id = client_id
    channel.username = username
    if version == MQTT_5:
        expiry = int(props.get(PropertyId.SESSION_EXPIRY_INTERVAL, 0))
        cap = settings.session_expiry_interval
        if cap and expiry > cap:
            expiry = cap
            ack_props[PropertyId.SESSION_EXPIRY_INTERVAL] = expiry  # 3.2.2.3.2
        # The truth about this server (3.2.2.3): limits, then what it supports.
        ack_props[PropertyId.RECEIVE_MAXIMUM] = min(settings.max_awaiting_rel, 0xFFFF)
        ack_props[PropertyId.MAXIMUM_PACKET_SIZE] = settings.max_packet_size
        if settings.max_topic_alias:
            ack_props[PropertyId.TOPIC_ALIAS_MAXIMUM] = settings.max_topic_alias
        if settings.max_qos_allowed < 2:
            ack_props[PropertyId.MAXIMUM_QOS] = settings.max_qos_allowed  # MQTT-3.2.2-9
        ack_props[PropertyId.RETAIN_AVAILABLE] = int(settings.retain_available)
        ack_props[PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE] = int(
            settings.wildcard_subscription_available
        )
        ack_props[PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE] = int(
            settings.subscription_identifier_available
        )
        ack_props[PropertyId.SHARED_SUBSCRIPTION_AVAILABLE] = int(
            settings.shared_subscription_available
        )
        if props.get(PropertyId.REQUEST_RESPONSE_INFORMATION) and settings.response_information:
            ack_props[PropertyId.RESPONSE_INFORMATION] = settings.response_information  # 3.2.2.3.15
    else:
        # 3.x persistent sessions never end by the spec (MQTT-3.1.2-5); the configured
        # interval bounds how long an abandoned one is kept (0 = for ever, as mosquitto).
        expiry = 0 if packet.clean_start else (settings.session_expiry_interval or 0xFFFFFFFF)

    locator = broker.session_locator
    if locator is not None:
        channel.enter(AWAIT_TAKEOVER)
        answered = False

        def done(state: SessionState | None) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            gate = broker.commit_gate
            if state is not None and not packet.clean_start:
                try:
                    # Even when this connection is gone meanwhile: the session stays, offline.
                    session = broker.import_session(state, moved=True)
                except ValueError as exc:
                    log.warning("session of %s from another node refused: %s", client_id, exc)
                else:
                    # The old node has let it go: this node's copy is now the only one. With
                    # durable_acks the CONNACK waits for the commit that holds it (group
                    # commit, started now), so a crash right after CONNACK cannot lose it.
                    session.touch()
                    if gate is not None and gate.client_acks and session.expiry_interval:
                        gate.hold(go_on)
                        return
            go_on()

        def go_on() -> None:
            if channel.state != TAKEOVER:
                return  # closed while waiting
            _open(channel, packet, client_id, keepalive, ack_props, username, expiry)
            channel.resume_input()

        if locator.takeover(client_id, packet.clean_start, done) or answered:
            return
        answered = True  # not needed (no other node): go on now
        if channel.state != TAKEOVER:
            return
    _open(channel, packet, client_id, keepalive, ack_props, username, expiry)


def _open(
    channel: Connection,
    packet: Connect,
    client_id: str,
    keepalive: int,
    ack_props: Properties,
    username: str | None,
    expiry: int,
) -> None:
    broker = channel.broker
    version = channel.version
    channel.info = info = ClientInfo(
        client_id, username, channel.peer_host, channel.peer_port, version, channel.listener
    )
    channel.clean_start = packet.clean_start
    channel.keepalive = keepalive
    if packet.will is not None:
        channel.will = packet.will
    channel.enter(ACCEPT)
    channel.connected_at = channel.last_received = broker.clock()
    session, present = broker.open_session(channel, client_id, packet.clean_start, expiry)
    session.username = username
    channel.session = session
    pending = broker.wills.take(client_id)
    if pending is not None and packet.clean_start:
        # A delayed will of the previous connection: the session it waited for has ended now
        # (MQTT-3.1.2-8); a continued session cancels it instead (MQTT-3.1.3-9).
        broker.publish_will(pending.info, pending.will)
    # MQTT 3.1 has no Session Present flag: that CONNACK byte is reserved (0).
    channel.send_connack(present and version != MQTT_3_1, ReasonCode.SUCCESS, ack_props)
    for hook in broker.hooks.client_connected:
        hook(info)
    session.resume(broker.clock())


def connect_auth_result(channel: Connection, result: AuthResult) -> None:
    """Act on one step of the CONNECT's enhanced authentication (MQTT 5 section 4.12)."""
    pending = channel.pending_connect
    assert pending is not None and channel.auth_method is not None
    method = channel.auth_method
    if result.status == CONTINUE:  # MQTT-4.12.0-2
        channel.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, _auth_props(method, result.data)))
        return
    channel.pending_connect = None
    channel.auth = None
    if result.status == SUCCESS:
        ack_props = pending.ack_props
        ack_props.update(_auth_props(method, result.data))  # MQTT-4.12.0-5
        username = result.username if result.username is not None else pending.packet.username
        accept_connect(
            channel, pending.packet, pending.client_id, pending.keepalive, ack_props, username
        )
        return
    code = result.reason_code
    if code not in _CONNACK_AUTH_FAILURES:
        code = ReasonCode.NOT_AUTHORIZED
    channel.refuse(code, "not_authorized", result.reason)  # MQTT-4.12.0-4


def _auth_props(method: str, data: bytes | None) -> Properties:
    props: Properties = {PropertyId.AUTHENTICATION_METHOD: method}
    if data is not None:
        props[PropertyId.AUTHENTICATION_DATA] = data
    return props


_CONNACK_AUTH_FAILURES = frozenset(
    {
        ReasonCode.UNSPECIFIED_ERROR,
        ReasonCode.PROTOCOL_ERROR,
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
        ReasonCode.BAD_AUTHENTICATION_METHOD,
        ReasonCode.BANNED,
        ReasonCode.SERVER_BUSY,
    }
)


def handle_disconnect(channel: Connection, packet: Disconnect) -> None:
    session = channel.session
    assert session is not None
    if channel.version == MQTT_5:
        expiry = packet.properties.get(PropertyId.SESSION_EXPIRY_INTERVAL)
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                # MQTT-3.14.2-2
                raise Violation(ReasonCode.PROTOCOL_ERROR, "session expiry raised")
            cap = channel.broker.settings.session_expiry_interval
            session.expiry_interval = min(int(expiry), cap) if cap else int(expiry)
        # 0x04 "Disconnect with Will Message" keeps the will; anything else discards it.
        channel.publish_will = packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL
    else:
        channel.publish_will = False  # MQTT-3.14.4-3
    channel.shut("normal")


def handle_auth(channel: Connection, packet: Auth) -> None:
    """AUTH: the steps of the CONNECT's enhanced authentication, or a re-authentication."""
    method = channel.auth_method
    if method is None:  # MQTT-4.12.0-6: no Authentication Method in CONNECT, no AUTH
        raise Violation(ReasonCode.PROTOCOL_ERROR, "AUTH without authentication method")
    if packet.properties.get(PropertyId.AUTHENTICATION_METHOD) != method:  # MQTT-4.12.1-1
        raise Violation(ReasonCode.PROTOCOL_ERROR, "AUTH with another method")
    data = packet.properties.get(PropertyId.AUTHENTICATION_DATA)
    code = packet.reason_code
    if channel.state == CONNECTING:
        if channel.auth is None or code != ReasonCode.CONTINUE_AUTHENTICATION:  # MQTT-4.12.0-3
            raise Violation(ReasonCode.PROTOCOL_ERROR, "unexpected AUTH")
        connect_auth_result(channel, channel.auth.step(data))
        return
    if code == ReasonCode.REAUTHENTICATE and channel.auth is None:  # MQTT-4.12.1-1
        factory = find_method(channel.broker.hooks.auth_methods, channel.broker.settings, method)
        if factory is None:  # the method went away (a plugin unloaded)
            channel.close(ReasonCode.NOT_AUTHORIZED, "reauth_failed", "method no longer available")
            return
        channel.auth = factory(channel.client_id or "", channel.username)
        result = channel.auth.start(data)
    elif code == ReasonCode.CONTINUE_AUTHENTICATION and channel.auth is not None:
        result = channel.auth.step(data)
    else:
        raise Violation(ReasonCode.PROTOCOL_ERROR, "unexpected AUTH")
    if result.status == CONTINUE:
        channel.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, _auth_props(method, result.data)))
    elif result.status == SUCCESS:
        channel.auth = None
        channel.send(Auth(ReasonCode.SUCCESS, _auth_props(method, result.data)))
    else:  # MQTT-4.12.1-2
        channel.auth = None
        reason_code = result.reason_code
        if reason_code not in REASON_CODES_5[PacketType.DISCONNECT]:
            reason_code = ReasonCode.NOT_AUTHORIZED
        channel.close(reason_code, "reauth_failed", result.reason or "re-authentication failed")


def handle_pingreq(channel: Connection, packet: PingReq) -> None:
    channel.send(PingResp())  # MQTT-3.12.4-1
