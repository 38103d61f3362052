"""Field-level wire format: MQTT data representations (section 1.5) and the 5.0 property block.

Readers take the buffer (`bytes`/`bytearray`, indexed for single bytes), a memoryview over the
same buffer (sliced to copy out strings and binary data exactly once), a position and an `end`
bound, and return `(value, new_position)`. They never read past `end`: a field that would cross it
is a MalformedPacket. Writers return `bytes` and raise ProtocolError for values that cannot be
put on the wire.

The property block (5.0 section 2.2.2) is a Variable Byte Integer length followed by
`identifier, value` pairs. Decoded into a dict keyed by `PropertyId`; USER_PROPERTY becomes a
`list[tuple[str, str]]` (wire order kept) and SUBSCRIPTION_IDENTIFIER a `list[int]`. Which packet
may carry which property is `PROPERTY_SPECS` (section 2.2.2.2); the will properties of CONNECT are
the pseudo packet type `WILL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypeAlias

from broker.protocol.constants import PacketType, PropertyId, ReasonCode
from broker.protocol.errors import MalformedPacket, ProtocolError
from broker.protocol.packets import Properties

Buffer: TypeAlias = bytes | bytearray

MAX_VARINT: Final = 268_435_455
#: Pseudo packet type for the Will Properties in the CONNECT payload (section 3.1.3.2).
WILL: Final = 0

# Data types of section 1.5 / 2.2.2.2.
BYTE: Final = 1
TWO_BYTE: Final = 2
FOUR_BYTE: Final = 4
VARINT: Final = 5
UTF8: Final = 6
BINARY: Final = 7
UTF8_PAIR: Final = 8


class PropertySpec(NamedTuple):
    key: PropertyId
    data_type: int
    allowed_in: frozenset[int]  # PacketType values, or WILL
    low: int  # valid range of numeric values (MQTT 5.0 "It is a Protocol Error to ...")
    high: int


_T = PacketType
# (id, data type, packets, low, high); low/high (inclusive) only matter for numeric types.
_TABLE: tuple[tuple[PropertyId, int, tuple[int, ...], int, int], ...] = (
    (PropertyId.PAYLOAD_FORMAT_INDICATOR, BYTE, (_T.PUBLISH, WILL), 0, 1),
    (PropertyId.MESSAGE_EXPIRY_INTERVAL, FOUR_BYTE, (_T.PUBLISH, WILL), 0, 0xFFFF_FFFF),
    (PropertyId.CONTENT_TYPE, UTF8, (_T.PUBLISH, WILL), 0, 0),
    (PropertyId.RESPONSE_TOPIC, UTF8, (_T.PUBLISH, WILL), 0, 0),
    (PropertyId.CORRELATION_DATA, BINARY, (_T.PUBLISH, WILL), 0, 0),
    (PropertyId.SUBSCRIPTION_IDENTIFIER, VARINT, (_T.PUBLISH, _T.SUBSCRIBE), 1, MAX_VARINT),
    (
        PropertyId.SESSION_EXPIRY_INTERVAL,
        FOUR_BYTE,
        (_T.CONNECT, _T.CONNACK, _T.DISCONNECT),
        0,
        0xFFFF_FFFF,
    ),
    (PropertyId.ASSIGNED_CLIENT_IDENTIFIER, UTF8, (_T.CONNACK,), 0, 0),
    (PropertyId.SERVER_KEEP_ALIVE, TWO_BYTE, (_T.CONNACK,), 0, 0xFFFF),
    (PropertyId.AUTHENTICATION_METHOD, UTF8, (_T.CONNECT, _T.CONNACK, _T.AUTH), 0, 0),
    (PropertyId.AUTHENTICATION_DATA, BINARY, (_T.CONNECT, _T.CONNACK, _T.AUTH), 0, 0),
    (PropertyId.REQUEST_PROBLEM_INFORMATION, BYTE, (_T.CONNECT,), 0, 1),
    (PropertyId.WILL_DELAY_INTERVAL, FOUR_BYTE, (WILL,), 0, 0xFFFF_FFFF),
    (PropertyId.REQUEST_RESPONSE_INFORMATION, BYTE, (_T.CONNECT,), 0, 1),
    (PropertyId.RESPONSE_INFORMATION, UTF8, (_T.CONNACK,), 0, 0),
    (PropertyId.SERVER_REFERENCE, UTF8, (_T.CONNACK, _T.DISCONNECT), 0, 0),
    (
        PropertyId.REASON_STRING,
        UTF8,
        (
            _T.CONNACK,
            _T.PUBACK,
            _T.PUBREC,
            _T.PUBREL,
            _T.PUBCOMP,
            _T.SUBACK,
            _T.UNSUBACK,
            _T.DISCONNECT,
            _T.AUTH,
        ),
        0,
        0,
    ),
    (PropertyId.RECEIVE_MAXIMUM, TWO_BYTE, (_T.CONNECT, _T.CONNACK), 1, 0xFFFF),
    (PropertyId.TOPIC_ALIAS_MAXIMUM, TWO_BYTE, (_T.CONNECT, _T.CONNACK), 0, 0xFFFF),
    (PropertyId.TOPIC_ALIAS, TWO_BYTE, (_T.PUBLISH,), 1, 0xFFFF),
    (PropertyId.MAXIMUM_QOS, BYTE, (_T.CONNACK,), 0, 1),
    (PropertyId.RETAIN_AVAILABLE, BYTE, (_T.CONNACK,), 0, 1),
    (
        PropertyId.USER_PROPERTY,
        UTF8_PAIR,
        (
            _T.CONNECT,
            _T.CONNACK,
            _T.PUBLISH,
            WILL,
            _T.PUBACK,
            _T.PUBREC,
            _T.PUBREL,
            _T.PUBCOMP,
            _T.SUBSCRIBE,
            _T.SUBACK,
            _T.UNSUBSCRIBE,
            _T.UNSUBACK,
            _T.DISCONNECT,
            _T.AUTH,
        ),
        0,
        0,
    ),
    (PropertyId.MAXIMUM_PACKET_SIZE, FOUR_BYTE, (_T.CONNECT, _T.CONNACK), 1, 0xFFFF_FFFF),
    (PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE, BYTE, (_T.CONNACK,), 0, 1),
    (PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE, BYTE, (_T.CONNACK,), 0, 1),
    (PropertyId.SHARED_SUBSCRIPTION_AVAILABLE, BYTE, (_T.CONNACK,), 0, 1),
)
#: Property identifier -> its spec (5.0 section 2.2.2.2).
PROPERTY_SPECS: Final[dict[int, PropertySpec]] = {
    int(key): PropertySpec(key, dtype, frozenset(int(p) for p in packets), low, high)
    for key, dtype, packets, low, high in _TABLE
}

_S = 0x00  # Success / Normal disconnection / Granted QoS 0
#: 5.0 reason codes each packet type may carry (sections 3.2.2.2, 3.4.2.1, ..., 3.15.2.1).
REASON_CODES_5: Final[dict[int, frozenset[int]]] = {
    _T.CONNACK: frozenset(
        {
            _S,
            0x80,
            0x81,
            0x82,
            0x83,
            0x84,
            0x85,
            0x86,
            0x87,
            0x88,
            0x89,
            0x8A,
            0x8C,
            0x90,
            0x95,
            0x97,
            0x99,
            0x9A,
            0x9B,
            0x9C,
            0x9D,
            0x9F,
        }
    ),
    _T.PUBACK: frozenset({_S, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    _T.PUBREC: frozenset({_S, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    _T.PUBREL: frozenset({_S, 0x92}),
    _T.PUBCOMP: frozenset({_S, 0x92}),
    _T.SUBACK: frozenset({_S, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}),
    _T.UNSUBACK: frozenset({_S, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    _T.DISCONNECT: frozenset(
        {
            _S,
            0x04,
            0x80,
            0x81,
            0x82,
            0x83,
            0x87,
            0x89,
            0x8B,
            0x8D,
            0x8E,
            0x8F,
            0x90,
            0x93,
            0x94,
            0x95,
            0x96,
            0x97,
            0x98,
            0x99,
            0x9A,
            0x9B,
            0x9C,
            0x9D,
            0x9E,
            0x9F,
            0xA0,
            0xA1,
            0xA2,
        }
    ),
    _T.AUTH: frozenset({_S, 0x18, 0x19}),
}
#: 3.1/3.1.1 CONNACK return codes 0-5 (3.1.1 section 3.2.2.3) and SUBACK codes (MQTT-3.9.3-2).
CONNACK_CODES_3: Final = frozenset(range(6))
SUBACK_CODES_3: Final = frozenset({0x00, 0x01, 0x02, 0x80})


# --- writers --------------------------------------------------------------------------------

_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def encode_varint(value: int) -> bytes:
    """Variable Byte Integer (section 1.5.5)."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if not 0 <= value <= MAX_VARINT:
        raise ProtocolError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_utf8(text: str) -> bytes:
    """UTF-8 Encoded String with its two-byte length prefix (section 1.5.4)."""
    if not isinstance(text, str):
        raise ProtocolError(f"expected str, got {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates (MQTT-1.5.4-1)
        raise ProtocolError("string is not valid UTF-8") from exc
    if len(data) > 0xFFFF:
        raise ProtocolError("string longer than 65535 bytes")
    if "\x00" in text:  # MQTT-1.5.4-2
        raise ProtocolError("string contains U+0000")
    return len(data).to_bytes(2, "big") + data


def encode_binary(data: bytes) -> bytes:
    """Binary Data with its two-byte length prefix (section 1.5.6)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    if len(data) > 0xFFFF:
        raise ProtocolError("binary data longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + bytes(data)


def check_packet_id(packet_id: object) -> bytes:
    """Two-byte packet identifier, 1..65535 (MQTT-2.2.1-3 in 3.1.1 / MQTT-2.2.1-3 in 5.0)."""
    if not isinstance(packet_id, int) or not 0 < packet_id <= 0xFFFF:
        raise ProtocolError(f"packet identifier must be 1..65535, got {packet_id!r}")
    return packet_id.to_bytes(2, "big")


def _encode_value(spec: PropertySpec, value: Any) -> bytes:
    dtype = spec.data_type
    if dtype == UTF8:
        return encode_utf8(value)
    if dtype == BINARY:
        return encode_binary(value)
    if not isinstance(value, int) or not spec.low <= value <= spec.high:
        raise ProtocolError(f"invalid value for property {spec.key.name}: {value!r}")
    if dtype == VARINT:
        return encode_varint(value)
    return value.to_bytes(dtype, "big")  # BYTE, TWO_BYTE, FOUR_BYTE are their own widths


def encode_properties(properties: Mapping[int, Any] | None, packet_type: int) -> bytes:
    """The property block (length + properties) for `packet_type` (a PacketType or WILL)."""
    if not properties:
        return b"\x00"
    parts: list[bytes] = []
    for pid, value in properties.items():
        spec = PROPERTY_SPECS.get(pid) if isinstance(pid, int) else None
        if spec is None:
            raise ProtocolError(f"unknown property identifier {pid!r}")
        if packet_type not in spec.allowed_in:
            raise ProtocolError(f"property {spec.key.name} not allowed in packet {packet_type}")
        head = _SMALL_VARINTS[pid]
        if pid == PropertyId.USER_PROPERTY:
            if not isinstance(value, list | tuple):
                raise ProtocolError("USER_PROPERTY must be a list of (name, value) pairs")
            for pair in value:
                if not isinstance(pair, tuple | list) or len(pair) != 2:
                    raise ProtocolError(f"USER_PROPERTY entry is not a pair: {pair!r}")
                parts.append(head + encode_utf8(pair[0]) + encode_utf8(pair[1]))
        elif pid == PropertyId.SUBSCRIPTION_IDENTIFIER:
            values = [value] if isinstance(value, int) else value
            if not isinstance(values, list | tuple):
                raise ProtocolError("SUBSCRIPTION_IDENTIFIER must be an int or a list of ints")
            if packet_type == PacketType.SUBSCRIBE and len(values) > 1:
                raise ProtocolError("SUBSCRIBE carries at most one subscription identifier")
            parts.extend(head + _encode_value(spec, v) for v in values)
        else:
            parts.append(head + _encode_value(spec, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


# --- readers --------------------------------------------------------------------------------


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for shift in (0, 7, 14, 21):
        if pos >= end:
            raise MalformedPacket("truncated variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise MalformedPacket("variable byte integer longer than 4 bytes (section 1.5.5)")


def read_packet_id(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated packet identifier")
    packet_id = (buf[pos] << 8) | buf[pos + 1]
    if packet_id == 0:  # MQTT-2.2.1-3 (3.1.1) / MQTT-2.2.1-3 (5.0): non-zero identifier
        raise ProtocolError("packet identifier 0")
    return packet_id, pos + 2


def read_utf8(buf: Buffer, mv: memoryview, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated string length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("string runs past the end of the packet")
    try:
        text = str(mv[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError as exc:  # MQTT-1.5.3-1 (3.1.1) / MQTT-1.5.4-1 (5.0)
        raise MalformedPacket("string is not valid UTF-8") from exc
    if "\x00" in text:  # MQTT-1.5.3-2 (3.1.1) / MQTT-1.5.4-2 (5.0)
        raise MalformedPacket("string contains U+0000")
    return text, stop


def read_binary(buf: Buffer, mv: memoryview, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated binary data length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("binary data runs past the end of the packet")
    return bytes(mv[pos + 2 : stop]), stop


def decode_properties(
    buf: Buffer, mv: memoryview, pos: int, end: int, packet_type: int
) -> tuple[Properties, int]:
    """Read a property block at `pos`; return the properties and the position after the block."""
    length, pos = read_varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property block runs past the end of the packet")
    props: Properties = {}
    while pos < stop:
        spec = PROPERTY_SPECS.get(buf[pos])
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{buf[pos]:02x}")
        pos += 1
        key = spec.key
        if packet_type not in spec.allowed_in:  # section 2.2.2.2
            raise ProtocolError(f"property {key.name} not allowed in packet {packet_type}")
        dtype = spec.data_type
        value: Any
        if dtype == UTF8:
            value, pos = read_utf8(buf, mv, pos, stop)
        elif dtype == BINARY:
            value, pos = read_binary(buf, mv, pos, stop)
        elif dtype == UTF8_PAIR:
            name, pos = read_utf8(buf, mv, pos, stop)
            text, pos = read_utf8(buf, mv, pos, stop)
            props.setdefault(key, []).append((name, text))
            continue
        elif dtype == VARINT:
            value, pos = read_varint(buf, pos, stop)
        else:
            if pos + dtype > stop:
                raise MalformedPacket(f"truncated property {key.name}")
            value = int.from_bytes(buf[pos : pos + dtype], "big")
            pos += dtype
        if dtype != UTF8 and dtype != BINARY and not spec.low <= value <= spec.high:
            # MQTT-3.3.2-8: a Topic Alias of 0 is answered with 0x94, not a generic 0x82.
            code = (
                ReasonCode.TOPIC_ALIAS_INVALID
                if key == PropertyId.TOPIC_ALIAS
                else ReasonCode.PROTOCOL_ERROR
            )
            raise ProtocolError(f"invalid value for property {key.name}: {value}", code)
        if key == PropertyId.SUBSCRIPTION_IDENTIFIER:
            ids = props.setdefault(key, [])
            if ids and packet_type != PacketType.PUBLISH:  # at most once in SUBSCRIBE
                raise ProtocolError("subscription identifier repeated in SUBSCRIBE")
            ids.append(value)
        elif key in props:  # "It is a Protocol Error to include <property> more than once"
            raise ProtocolError(f"property {key.name} included more than once")
        else:
            props[key] = value
    return props, stop
