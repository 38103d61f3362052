"""Encoding: packet in, bytes out.

`encode(packet, version)` writes a packet for protocol level `version` (3 = MQTT 3.1, 4 = 3.1.1,
5 = 5.0). CONNECT is the exception: it carries its own `protocol_name`/`protocol_level`, which
are written as given, and the `version` argument is ignored for it.

Version-specific parts are dropped for 3.x (properties; reason codes of PUBACK/PUBREC/PUBREL/
PUBCOMP/UNSUBACK/DISCONNECT; subscription options other than QoS). Where 3.x has a narrower code
space, 5.0 codes are mapped: a CONNACK code >= 0x80 goes through `connack_code_for_version`, a
SUBACK failure code >= 0x80 becomes 0x80. In 5.0 the short forms of section 3.4.2.1 etc. are used:
an ack with reason 0 and no properties is just the packet id, DISCONNECT/AUTH with reason 0 and no
properties have an empty body.

Anything that cannot be put on the wire legally (a string over 65535 bytes or containing U+0000,
a packet id outside 1..65535, QoS 3, a reason code the packet type does not have, a property not
allowed in the packet, AUTH in 3.x, ...) raises ProtocolError, never ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.protocol.constants import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    PacketType,
    connack_code_for_version,
)
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from broker.protocol.properties import (
    CONNACK_CODES_3,
    MAX_VARINT,
    REASON_CODES_5,
    SUBACK_CODES_3,
    WILL,
    check_packet_id,
    encode_binary,
    encode_properties,
    encode_utf8,
    encode_varint,
)

_VERSIONS = frozenset({MQTT_3_1, MQTT_3_1_1, MQTT_5})
_EMPTY_PROPS = b"\x00"


def _packet(first: int, *parts: bytes) -> bytes:
    length = sum(len(p) for p in parts)
    if length > MAX_VARINT:
        raise ProtocolError(f"packet body of {length} bytes exceeds the MQTT maximum")
    return b"".join((bytes((first,)), encode_varint(length), *parts))


def _reason(code: object, packet_type: PacketType) -> bytes:
    if not isinstance(code, int) or code not in REASON_CODES_5[packet_type]:
        raise ProtocolError(f"reason code {code!r} is not valid in {packet_type.name}")
    return bytes((code,))


def _u16(value: object, what: str) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ProtocolError(f"{what} must be 0..65535, got {value!r}")
    return value.to_bytes(2, "big")


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: Mapping[int, Any] | None,
    version: int,
) -> bytes:
    """PUBLISH without building a `Publish` object: the broker's fan-out path."""
    if qos == 0:
        if dup:  # MQTT-3.3.1-2
            raise ProtocolError("DUP must be 0 for QoS 0 messages")
        parts = [encode_utf8(topic)]
    elif qos == 1 or qos == 2:
        parts = [encode_utf8(topic), check_packet_id(packet_id)]
    else:  # MQTT-3.3.1-4
        raise ProtocolError(f"invalid QoS {qos!r}")
    if version == MQTT_5:
        parts.append(encode_properties(properties, PacketType.PUBLISH) if properties else b"\x00")
    elif version not in _VERSIONS:
        raise ProtocolError(f"unknown protocol version {version!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(f"payload must be bytes, got {type(payload).__name__}")
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    length = len(payload) + sum(map(len, parts))
    if length < 0x80:
        header = bytes((first, length))
    elif length <= MAX_VARINT:
        header = bytes((first,)) + encode_varint(length)
    else:
        raise ProtocolError(f"packet body of {length} bytes exceeds the MQTT maximum")
    return b"".join((header, *parts, payload))


def _publish(p: Publish, version: int) -> bytes:
    return encode_publish(
        p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.properties, version
    )


def _connect(p: Connect, version: int) -> bytes:
    level = p.protocol_level  # CONNECT states its own version
    if not isinstance(level, int) or not 0 <= level <= 0xFF:
        raise ProtocolError(f"protocol level must be 0..255, got {level!r}")
    v5 = level == MQTT_5
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        if will.qos not in (0, 1, 2):  # MQTT-3.1.2-14 (3.1.1) / MQTT-3.1.2-12 (5.0)
            raise ProtocolError(f"invalid will QoS {will.qos!r}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        if p.username is None and not v5:  # MQTT-3.1.2-22
            raise ProtocolError("a password requires a user name before MQTT 5.0")
        flags |= 0x40
    wire_level = level | 0x80 if p.bridge else level  # a bridge's private bit (Connect.bridge)
    parts = [
        encode_utf8(p.protocol_name),
        bytes((wire_level, flags)),
        _u16(p.keepalive, "keepalive"),
    ]
    if v5:
        parts.append(encode_properties(p.properties, PacketType.CONNECT))
    parts.append(encode_utf8(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties, WILL))
        parts += (encode_utf8(will.topic), encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_utf8(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _packet(0x10, *parts)


def _connack(p: ConnAck, version: int) -> bytes:
    flags = 0x01 if p.session_present else 0
    if version == MQTT_5:
        return _packet(
            0x20,
            bytes((flags,)),
            _reason(p.reason_code, PacketType.CONNACK),
            encode_properties(p.properties, PacketType.CONNACK),
        )
    code = p.reason_code
    if isinstance(code, int) and code >= 0x80:
        code = connack_code_for_version(code, version)
    if code not in CONNACK_CODES_3:
        raise ProtocolError(f"CONNACK return code {code!r} does not exist in MQTT 3.x")
    return bytes((0x20, 2, flags, code))


def _make_ack(first: int, packet_type: PacketType) -> Callable[[Any, int], bytes]:
    def encode_ack(p: PubAck | PubRec | PubRel | PubComp, version: int) -> bytes:
        packet_id = check_packet_id(p.packet_id)
        if version != MQTT_5:
            return bytes((first, 2)) + packet_id
        reason = _reason(p.reason_code, packet_type)
        if p.properties:
            return _packet(first, packet_id, reason, encode_properties(p.properties, packet_type))
        if p.reason_code:  # 5.0 3.4.2.1: property length may be omitted
            return bytes((first, 3)) + packet_id + reason
        return bytes((first, 2)) + packet_id  # reason code and properties omitted

    return encode_ack


def _subscribe(p: Subscribe, version: int) -> bytes:
    v5 = version == MQTT_5
    parts = [check_packet_id(p.packet_id)]
    if v5:
        parts.append(encode_properties(p.properties, PacketType.SUBSCRIBE))
    if not p.subscriptions:  # MQTT-3.8.3-3 (3.1.1) / MQTT-3.8.3-2 (5.0)
        raise ProtocolError("SUBSCRIBE needs at least one topic filter")
    for sub in p.subscriptions:
        if sub.qos not in (0, 1, 2):
            raise ProtocolError(f"invalid subscription QoS {sub.qos!r}")
        options = sub.qos
        if v5:
            if sub.retain_handling not in (0, 1, 2):
                raise ProtocolError(f"invalid retain handling {sub.retain_handling!r}")
            options |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | (sub.retain_handling << 4)
            )
        parts += (encode_utf8(sub.topic_filter), bytes((options,)))
    return _packet(0x82, *parts)


def _suback(p: SubAck, version: int) -> bytes:
    parts = [check_packet_id(p.packet_id)]
    if version == MQTT_5:
        parts.append(encode_properties(p.properties, PacketType.SUBACK))
        parts += (_reason(code, PacketType.SUBACK) for code in p.reason_codes)
        return _packet(0x90, *parts)
    codes = [0x80 if isinstance(c, int) and c >= 0x80 else c for c in p.reason_codes]
    for code in codes:
        if code not in SUBACK_CODES_3:  # MQTT-3.9.3-2
            raise ProtocolError(f"SUBACK return code {code!r} does not exist in MQTT 3.x")
    parts.append(bytes(codes))
    return _packet(0x90, *parts)


def _unsubscribe(p: Unsubscribe, version: int) -> bytes:
    parts = [check_packet_id(p.packet_id)]
    if version == MQTT_5:
        parts.append(encode_properties(p.properties, PacketType.UNSUBSCRIBE))
    if not p.topic_filters:  # MQTT-3.10.3-2
        raise ProtocolError("UNSUBSCRIBE needs at least one topic filter")
    parts += (encode_utf8(f) for f in p.topic_filters)
    return _packet(0xA2, *parts)


def _unsuback(p: UnsubAck, version: int) -> bytes:
    packet_id = check_packet_id(p.packet_id)
    if version != MQTT_5:
        return b"\xb0\x02" + packet_id
    props = encode_properties(p.properties, PacketType.UNSUBACK)
    codes = [_reason(code, PacketType.UNSUBACK) for code in p.reason_codes]
    return _packet(0xB0, packet_id, props, *codes)


def _pingreq(p: PingReq, version: int) -> bytes:
    return b"\xc0\x00"


def _pingresp(p: PingResp, version: int) -> bytes:
    return b"\xd0\x00"


def _disconnect(p: Disconnect, version: int) -> bytes:
    if version != MQTT_5:
        return b"\xe0\x00"
    reason = _reason(p.reason_code, PacketType.DISCONNECT)
    if p.properties:
        return _packet(0xE0, reason, encode_properties(p.properties, PacketType.DISCONNECT))
    if p.reason_code:  # 5.0 3.14.2.2.1: property length may be omitted
        return b"\xe0\x01" + reason
    return b"\xe0\x00"


def _auth(p: Auth, version: int) -> bytes:
    if version != MQTT_5:
        raise ProtocolError("AUTH exists only in MQTT 5.0")
    reason = _reason(p.reason_code, PacketType.AUTH)
    if not p.reason_code and not p.properties:
        return b"\xf0\x00"  # 5.0 3.15.2.1: reason and properties omitted
    return _packet(0xF0, reason, encode_properties(p.properties, PacketType.AUTH))


_ENCODERS: dict[type[Any], Callable[[Any, int], bytes]] = {
    Connect: _connect,
    ConnAck: _connack,
    Publish: _publish,
    PubAck: _make_ack(0x40, PacketType.PUBACK),
    PubRec: _make_ack(0x50, PacketType.PUBREC),
    PubRel: _make_ack(0x62, PacketType.PUBREL),  # MQTT-3.6.1-1: flags 0b0010
    PubComp: _make_ack(0x70, PacketType.PUBCOMP),
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    PingReq: _pingreq,
    PingResp: _pingresp,
    Disconnect: _disconnect,
    Auth: _auth,
}


def encode(packet: Packet, version: int = MQTT_3_1_1) -> bytes:
    """Serialize `packet` for protocol level `version` (ignored for CONNECT, see module doc)."""
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise ProtocolError(f"not an MQTT packet: {packet!r}")
    if version not in _VERSIONS:
        raise ProtocolError(f"unknown protocol version {version!r}")
    return encoder(packet, version)
