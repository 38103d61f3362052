"""Hand-written codec cases: known byte strings, one test per validation rule (spec named)."""

from __future__ import annotations

import pytest

from broker.protocol import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketTooLarge,
    PingReq,
    PingResp,
    Properties,
    PropertyId,
    ProtocolError,
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
    UnsupportedProtocolVersion,
    Will,
    encode,
    encode_publish,
)
from broker.protocol.properties import encode_varint

P = PropertyId


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def s(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def decode_one(data: bytes, version: int | None = MQTT_3_1_1) -> Packet:
    packets = Decoder(version=version).feed(data)
    assert len(packets) == 1
    return packets[0]


def decode_raises(data: bytes, version: int | None = MQTT_3_1_1) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        Decoder(version=version).feed(data)
    return info.value


def assert_malformed(data: bytes, version: int | None = MQTT_3_1_1) -> None:
    assert isinstance(decode_raises(data, version), MalformedPacket)


def assert_protocol_error(data: bytes, version: int | None = MQTT_3_1_1) -> None:
    """A ProtocolError that is *not* MalformedPacket (5.0 reason 0x82, not 0x81)."""
    assert type(decode_raises(data, version)) is ProtocolError


# --- known byte strings -----------------------------------------------------------------------

CONNECT_311 = (
    b"\x10\x26"
    b"\x00\x04MQTT\x04"  # protocol name, level 4
    b"\xee"  # user, password, will retain, will QoS 1, will, clean session
    b"\x00\x3c"  # keepalive 60
    b"\x00\x03cid"
    b"\x00\x03w/t\x00\x04gone"
    b"\x00\x04user\x00\x04pass"
)
CONNECT_311_PACKET = Connect(
    "cid", MQTT_3_1_1, "MQTT", True, 60, Will("w/t", b"gone", 1, True), "user", b"pass"
)


def test_connect_311_with_will_username_password_known_bytes() -> None:
    assert encode(CONNECT_311_PACKET) == CONNECT_311
    decoder = Decoder()
    assert decoder.feed(CONNECT_311) == [CONNECT_311_PACKET]
    assert decoder.version == MQTT_3_1_1


def test_connect_mqisdp_31() -> None:
    data = b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03cid"
    packet = Connect("cid", MQTT_3_1, "MQIsdp", True, 60)
    decoder = Decoder()
    assert decoder.feed(data) == [packet]
    assert decoder.version == MQTT_3_1
    assert encode(packet) == data
    # later packets of a 3.1 connection decode like 3.1.1
    assert decoder.feed(b"\x40\x02\x00\x07") == [PubAck(7)]


def test_connect_5_with_properties_and_will_properties() -> None:
    body = (
        s("MQTT") + b"\x05\xce\x00\x0a"
        + b"\x05\x11\x00\x00\x00\x0a"  # session expiry interval 10
        + s("c5")
        + b"\x05\x18\x00\x00\x00\x1e"  # will delay interval 30
        + s("w") + s("bye")
        + s("u") + s("p")
    )  # fmt: skip
    packet = Connect(
        "c5", MQTT_5, "MQTT", True, 10,
        Will("w", b"bye", 1, False, {P.WILL_DELAY_INTERVAL: 30}),
        "u", b"p", {P.SESSION_EXPIRY_INTERVAL: 10},
    )  # fmt: skip
    assert encode(packet, MQTT_3_1_1) == frame(0x10, body)  # CONNECT states its own level
    decoder = Decoder()
    assert decoder.feed(frame(0x10, body)) == [packet]
    assert decoder.version == MQTT_5


def test_connect_sets_version_for_following_packets() -> None:
    decoder = Decoder()
    connect = encode(Connect("x", MQTT_5))
    puback = b"\x40\x04\x00\x01\x10\x00"  # 5.0 PUBACK: reason 0x10 + empty properties
    assert decoder.feed(connect + puback) == [Connect("x", MQTT_5), PubAck(1, 0x10)]


def test_version_none_decodes_non_connect_as_311() -> None:
    decoder = Decoder()
    assert decoder.feed(b"\x40\x02\x00\x01") == [PubAck(1)]
    assert decoder.version is None
    assert_malformed(b"\x40\x03\x00\x01\x10", None)  # 5.0 form is trailing bytes in 3.1.1


@pytest.mark.parametrize(
    ("name", "level"),
    # 0x84 is a bridge's 3.1.1 (test_interop_bridge); the bridge bit on an unknown level is not.
    [("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4), ("HTTP", 4), ("MQTT", 0x86), ("MQIsdp", 0x84)],
)
def test_connect_unsupported_protocol_MQTT_3_1_2_2(name: str, level: int) -> None:
    data = frame(0x10, s(name) + bytes((level, 2, 0, 60)) + s("c"))
    err = decode_raises(data, None)
    assert isinstance(err, UnsupportedProtocolVersion)
    assert err.protocol_level == level
    assert err.reason_code == 0x84


def test_connect_version_known_even_if_rest_is_malformed() -> None:
    decoder = Decoder()
    with pytest.raises(MalformedPacket):
        decoder.feed(frame(0x10, s("MQTT") + b"\x05\x03\x00\x3c\x00" + s("c")))
    assert decoder.version == MQTT_5


def test_pingreq_pingresp_known_bytes() -> None:
    assert encode(PingReq()) == b"\xc0\x00"
    assert encode(PingResp(), MQTT_5) == b"\xd0\x00"
    assert decode_one(b"\xc0\x00") == PingReq()
    assert decode_one(b"\xd0\x00", MQTT_5) == PingResp()


def test_disconnect_known_bytes() -> None:
    assert encode(Disconnect()) == b"\xe0\x00"
    assert encode(Disconnect(0x8E)) == b"\xe0\x00"  # reason codes do not exist in 3.1.1
    assert decode_one(b"\xe0\x00") == Disconnect()
    # 5.0 short forms (3.14.2.1): empty body, reason only
    assert encode(Disconnect(), MQTT_5) == b"\xe0\x00"
    assert encode(Disconnect(0x8E), MQTT_5) == b"\xe0\x01\x8e"
    assert decode_one(b"\xe0\x00", MQTT_5) == Disconnect()
    assert decode_one(b"\xe0\x01\x8e", MQTT_5) == Disconnect(0x8E)
    full = Disconnect(0x04, {P.REASON_STRING: "bye"})
    assert encode(full, MQTT_5) == b"\xe0\x08\x04\x06\x1f" + s("bye")
    assert decode_one(encode(full, MQTT_5), MQTT_5) == full
    assert_malformed(b"\xe0\x01\x00")  # 3.1.1 DISCONNECT has no body


def test_connack_known_bytes() -> None:
    assert encode(ConnAck(True, 0)) == b"\x20\x02\x01\x00"
    assert decode_one(b"\x20\x02\x00\x05") == ConnAck(False, 5)
    packet = ConnAck(False, 0x87, {P.REASON_STRING: "no"})
    data = b"\x20\x08\x00\x87\x05\x1f" + s("no")
    assert encode(packet, MQTT_5) == data
    assert decode_one(data, MQTT_5) == packet
    assert encode(ConnAck(False, 0), MQTT_5) == b"\x20\x03\x00\x00\x00"


def test_connack_5_codes_mapped_in_311() -> None:
    assert encode(ConnAck(False, 0x87)) == b"\x20\x02\x00\x05"  # not authorized
    assert encode(ConnAck(False, 0x84)) == b"\x20\x02\x00\x01"  # unacceptable version
    with pytest.raises(ProtocolError):
        encode(ConnAck(False, 0x06))


def test_connack_reserved_return_code_311() -> None:
    assert_protocol_error(b"\x20\x02\x00\x06")


def test_connack_reserved_flags_MQTT_3_2_2_1() -> None:
    assert_malformed(b"\x20\x02\x02\x00")


def test_publish_known_bytes() -> None:
    qos0 = Publish("a/b", b"hello")
    assert encode(qos0) == b"\x30\x0a" + s("a/b") + b"hello"
    qos1 = Publish("a/b", b"hi", 1, True, True, 10)
    assert encode(qos1) == b"\x3b\x09" + s("a/b") + b"\x00\x0ahi"
    assert decode_one(encode(qos1)) == qos1
    v5 = Publish("t", b"", 2, False, False, 1, {P.TOPIC_ALIAS: 3, P.USER_PROPERTY: [("k", "v")]})
    data = b"\x34\x10" + s("t") + b"\x00\x01\x0a\x23\x00\x03\x26" + s("k") + s("v")
    assert encode(v5, MQTT_5) == data
    assert decode_one(data, MQTT_5) == v5
    assert encode(Publish("t", b"x"), MQTT_5) == b"\x30\x05" + s("t") + b"\x00x"


def test_publish_fast_path_matches_encode() -> None:
    props: Properties = {P.MESSAGE_EXPIRY_INTERVAL: 5, P.SUBSCRIPTION_IDENTIFIER: [1, 2]}
    for version in (MQTT_3_1, MQTT_3_1_1, MQTT_5):
        for qos, pid in ((0, None), (1, 5), (2, 65535)):
            packet = Publish("x/y", b"p" * 300, qos, True, False, pid, props)
            fast = encode_publish("x/y", b"p" * 300, qos, True, False, pid, props, version)
            assert fast == encode(packet, version)


def test_publish_large_payload_four_byte_length() -> None:
    packet = Publish("big", b"\x01" * 2_100_000, 1, packet_id=9)
    data = encode(packet)
    assert data[1] & 0x80 and data[2] & 0x80 and data[3] & 0x80 and not data[4] & 0x80
    assert decode_one(data) == packet


def test_puback_family_short_forms_5() -> None:
    assert encode(PubAck(1), MQTT_5) == b"\x40\x02\x00\x01"
    assert encode(PubAck(1, 0x10), MQTT_5) == b"\x40\x03\x00\x01\x10"
    assert encode(PubRec(1, 0x80, {P.REASON_STRING: "x"}), MQTT_5) == (
        b"\x50\x08\x00\x01\x80\x04\x1f" + s("x")
    )
    assert decode_one(b"\x40\x02\x00\x01", MQTT_5) == PubAck(1)
    assert decode_one(b"\x40\x03\x00\x01\x10", MQTT_5) == PubAck(1, 0x10)
    assert decode_one(b"\x40\x04\x00\x01\x10\x00", MQTT_5) == PubAck(1, 0x10)
    assert decode_one(b"\x62\x03\x00\x02\x92", MQTT_5) == PubRel(2, 0x92)
    assert decode_one(b"\x70\x02\x00\x03", MQTT_5) == PubComp(3)


def test_puback_family_311_is_packet_id_only() -> None:
    assert encode(PubAck(5, 0x10, {P.REASON_STRING: "ignored"})) == b"\x40\x02\x00\x05"
    assert encode(PubRel(5)) == b"\x62\x02\x00\x05"
    assert decode_one(b"\x62\x02\x00\x05") == PubRel(5)
    assert_malformed(b"\x40\x03\x00\x05\x00")


def test_invalid_reason_code_5_is_protocol_error() -> None:
    assert_protocol_error(b"\x40\x03\x00\x01\x92", MQTT_5)  # 0x92 is for PUBREL/PUBCOMP
    assert_protocol_error(b"\xe0\x01\x01", MQTT_5)
    assert_protocol_error(b"\xf0\x01\x01", MQTT_5)
    with pytest.raises(ProtocolError):
        encode(PubAck(1, 0x92), MQTT_5)


def test_subscribe_known_bytes() -> None:
    packet = Subscribe(10, [SubscriptionRequest("a/+", 1), SubscriptionRequest("#", 2)])
    data = b"\x82\x0c\x00\x0a" + s("a/+") + b"\x01" + s("#") + b"\x02"
    assert encode(packet) == data
    assert decode_one(data) == packet
    v5 = Subscribe(
        1, [SubscriptionRequest("t", 2, True, True, 2)], {P.SUBSCRIPTION_IDENTIFIER: [7]}
    )
    data5 = b"\x82\x09\x00\x01\x02\x0b\x07" + s("t") + b"\x2e"
    assert encode(v5, MQTT_5) == data5
    assert decode_one(data5, MQTT_5) == v5


def test_suback_unsuback_known_bytes() -> None:
    assert encode(SubAck(1, [0, 1, 2, 0x80])) == b"\x90\x06\x00\x01\x00\x01\x02\x80"
    assert encode(SubAck(1, [0x87])) == b"\x90\x03\x00\x01\x80"  # 5.0 failure -> 0x80
    assert decode_one(b"\x90\x03\x00\x01\x02") == SubAck(1, [2])
    assert encode(SubAck(1, [0x87]), MQTT_5) == b"\x90\x04\x00\x01\x00\x87"
    assert encode(UnsubAck(5, [0x11])) == b"\xb0\x02\x00\x05"
    assert decode_one(b"\xb0\x02\x00\x05") == UnsubAck(5)
    assert encode(UnsubAck(5, [0x11, 0]), MQTT_5) == b"\xb0\x05\x00\x05\x00\x11\x00"
    assert decode_one(b"\xb0\x05\x00\x05\x00\x11\x00", MQTT_5) == UnsubAck(5, [0x11, 0])


def test_suback_311_reserved_code_MQTT_3_9_3_2() -> None:
    assert_protocol_error(b"\x90\x03\x00\x01\x03")
    assert_protocol_error(b"\x90\x03\x00\x01\x87")


def test_unsubscribe_known_bytes() -> None:
    packet = Unsubscribe(3, ["a", "b/c"])
    data = b"\xa2\x0a\x00\x03" + s("a") + s("b/c")
    assert encode(packet) == data
    assert decode_one(data) == packet


def test_auth_5_only() -> None:
    assert encode(Auth(), MQTT_5) == b"\xf0\x00"
    packet = Auth(0x18, {P.AUTHENTICATION_METHOD: "SCRAM"})
    assert decode_one(encode(packet, MQTT_5), MQTT_5) == packet
    with pytest.raises(ProtocolError):
        encode(Auth(), MQTT_3_1_1)
    assert_malformed(b"\xf0\x00", MQTT_3_1_1)  # type 15 is reserved in 3.1.1


# --- fixed header ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x60\x02\x00\x01",  # PUBREL with flags 0
        b"\x80\x06\x00\x01\x00\x01a\x00",  # SUBSCRIBE with flags 0
        b"\xa0\x05\x00\x01\x00\x01a",  # UNSUBSCRIBE with flags 0
        b"\x11\x00",  # CONNECT with flags 1
        b"\x42\x02\x00\x01",  # PUBACK with flags 2
        b"\xc1\x00",  # PINGREQ with flags 1
        b"\xe8\x00",  # DISCONNECT with flags 8
    ],
)
def test_reserved_fixed_header_flags_MQTT_2_2_2_1_and_2(data: bytes) -> None:
    assert_malformed(data)
    assert_malformed(data[:1])  # rejected from the first byte alone


def test_reserved_packet_type_0_is_malformed() -> None:
    assert_malformed(b"\x00\x00")


def test_remaining_length_of_5_bytes_is_malformed() -> None:
    assert_malformed(b"\x30\xff\xff\xff\xff\x7f")
    assert_malformed(b"\x30\xff\xff\xff\xff")  # known after the 4th continuation byte


def test_max_packet_size_enforced_after_fixed_header_only() -> None:
    decoder = Decoder(max_packet_size=1024)
    assert decoder.feed(b"\x30") == []
    assert decoder.feed(b"\xff\xff") == []
    with pytest.raises(PacketTooLarge) as info:
        decoder.feed(b"\x7f")  # 2 MB declared, no body sent
    assert info.value.reason_code == 0x95


def test_max_packet_size_boundary_and_settable() -> None:
    packet = encode(Publish("t", b"x" * 100))
    assert Decoder(max_packet_size=len(packet)).feed(packet) == [Publish("t", b"x" * 100)]
    decoder = Decoder()
    decoder.max_packet_size = len(packet) - 1
    with pytest.raises(PacketTooLarge):
        decoder.feed(packet[:2])


# --- PUBLISH ---------------------------------------------------------------------------------


def test_publish_qos3_is_malformed_MQTT_3_3_1_4() -> None:
    assert_malformed(b"\x36\x05" + s("t") + b"\x00\x01")


def test_publish_qos0_with_dup_is_malformed_MQTT_3_3_1_2() -> None:
    assert_malformed(b"\x38\x03" + s("t"))
    with pytest.raises(ProtocolError):
        encode(Publish("t", dup=True))


def test_publish_topic_past_end_is_malformed() -> None:
    assert_malformed(b"\x30\x03\x00\x05a")


# --- CONNECT ---------------------------------------------------------------------------------


def connect_body(flags: int, rest: bytes = b"", level: int = 4) -> bytes:
    props = b"\x00" if level == 5 else b""
    return frame(0x10, s("MQTT") + bytes((level, flags)) + b"\x00\x3c" + props + s("c") + rest)


def test_connect_reserved_flag_MQTT_3_1_2_3() -> None:
    assert_malformed(connect_body(0x03), None)
    assert_malformed(connect_body(0x03, level=5), None)


def test_connect_will_qos_without_will_flag_MQTT_3_1_2_11_13() -> None:
    assert_malformed(connect_body(0x0A), None)


def test_connect_will_retain_without_will_flag_MQTT_3_1_2_15() -> None:
    assert_malformed(connect_body(0x22), None)


def test_connect_will_qos3_MQTT_3_1_2_14() -> None:
    assert_malformed(connect_body(0x1E, s("w") + s("m")), None)


def test_connect_password_without_username_MQTT_3_1_2_22() -> None:
    assert_malformed(connect_body(0x42, s("pw")), None)
    assert_malformed(frame(0x10, s("MQIsdp") + b"\x03\x42\x00\x3c" + s("c") + s("pw")), None)
    packet = decode_one(connect_body(0x42, s("pw"), level=5), None)  # allowed in 5.0
    assert isinstance(packet, Connect)
    assert (packet.username, packet.password) == (None, b"pw")
    assert encode(Connect("c", MQTT_5, password=b"pw"))
    with pytest.raises(ProtocolError):
        encode(Connect("c", MQTT_3_1_1, password=b"pw"))


def test_connect_trailing_bytes_malformed() -> None:
    assert_malformed(connect_body(0x02, b"\x00"), None)


def test_connect_truncated_is_malformed() -> None:
    assert_malformed(frame(0x10, s("MQTT") + b"\x04\x02\x00"), None)
    assert_malformed(frame(0x10, s("MQTT")), None)
    assert_malformed(connect_body(0xC2, s("user")), None)  # password missing


# --- UTF-8 strings ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80"])
def test_invalid_utf8_is_malformed_MQTT_1_5_3_1(raw: bytes) -> None:
    topic = len(raw).to_bytes(2, "big") + raw
    assert_malformed(frame(0x30, topic))
    assert_malformed(frame(0x82, b"\x00\x01" + topic + b"\x00"))
    assert_malformed(frame(0x10, s("MQTT") + b"\x04\x02\x00\x3c" + topic), None)


def test_null_character_is_malformed_MQTT_1_5_3_2() -> None:
    assert_malformed(frame(0x30, s("a\x00b")))
    assert_malformed(frame(0xA2, b"\x00\x01" + s("\x00")))
    with pytest.raises(ProtocolError):
        encode(Publish("a\x00b"))


# --- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------------------


def test_subscribe_without_filters_is_protocol_error_MQTT_3_8_3_3() -> None:
    assert_protocol_error(b"\x82\x02\x00\x01")
    assert_protocol_error(b"\x82\x03\x00\x01\x00", MQTT_5)
    with pytest.raises(ProtocolError):
        encode(Subscribe(1, []))


def test_unsubscribe_without_filters_is_protocol_error_MQTT_3_10_3_2() -> None:
    assert_protocol_error(b"\xa2\x02\x00\x01")
    with pytest.raises(ProtocolError):
        encode(Unsubscribe(1, []))


@pytest.mark.parametrize("options", [0x03, 0x04, 0x10, 0x80])
def test_subscribe_311_reserved_bits_or_qos3_malformed_MQTT_3_8_3_4(options: int) -> None:
    assert_malformed(frame(0x82, b"\x00\x01" + s("a") + bytes((options,))))


@pytest.mark.parametrize("options", [0x40, 0x80])
def test_subscribe_5_reserved_bits_malformed_MQTT_3_8_3_5(options: int) -> None:
    assert_malformed(frame(0x82, b"\x00\x01\x00" + s("a") + bytes((options,))), MQTT_5)


@pytest.mark.parametrize("options", [0x03, 0x30])
def test_subscribe_5_qos3_or_retain_handling3_protocol_error_5_0_3_8_3_1(options: int) -> None:
    """5.0 section 3.8.3.1 calls Maximum QoS 3 and Retain Handling 3 a Protocol Error."""
    assert_protocol_error(frame(0x82, b"\x00\x01\x00" + s("a") + bytes((options,))), MQTT_5)


def test_subscribe_filter_without_options_malformed() -> None:
    assert_malformed(frame(0x82, b"\x00\x01" + s("a")))


# --- packet identifiers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x32\x05" + s("t") + b"\x00\x00",  # PUBLISH QoS 1
        b"\x34\x05" + s("t") + b"\x00\x00",  # PUBLISH QoS 2
        b"\x82\x06\x00\x00" + s("a") + b"\x00",
        b"\xa2\x05\x00\x00" + s("a"),
        b"\x40\x02\x00\x00",
        b"\x50\x02\x00\x00",
        b"\x62\x02\x00\x00",
        b"\x70\x02\x00\x00",
        b"\x90\x03\x00\x00\x00",
        b"\xb0\x02\x00\x00",
    ],
)
def test_packet_id_zero_is_protocol_error_MQTT_2_2_1_3(data: bytes) -> None:
    assert_protocol_error(data)


@pytest.mark.parametrize("packet_id", [0, 65536, -1, None])
def test_encode_packet_id_out_of_range(packet_id: int | None) -> None:
    with pytest.raises(ProtocolError):
        encode(Publish("t", b"", 1, packet_id=packet_id))
    with pytest.raises(ProtocolError):
        encode(PubAck(packet_id))  # type: ignore[arg-type]


# --- lengths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (b"\xc0\x01\x00", MQTT_3_1_1),  # PINGREQ with a body
        (b"\xd0\x01\x00", MQTT_5),
        (b"\x40\x05\x00\x01\x00\x00\x00", MQTT_5),  # PUBACK: bytes after properties
        (b"\x20\x03\x00\x00\x00", MQTT_3_1_1),
        (b"\xb0\x03\x00\x01\x00", MQTT_3_1_1),
        (b"\xf0\x03\x00\x00\x00", MQTT_5),
    ],
)
def test_trailing_bytes_are_malformed(data: bytes, version: int) -> None:
    assert_malformed(data, version)


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (b"\x20\x01\x00", MQTT_3_1_1),  # CONNACK
        (b"\x40\x01\x00", MQTT_3_1_1),  # PUBACK
        (b"\x32\x03" + s("t"), MQTT_3_1_1),  # PUBLISH QoS 1 without packet id
        (b"\x30\x01\x00", MQTT_3_1_1),  # topic length cut
        (b"\x90\x02\x00\x01", MQTT_5),  # SUBACK without properties
        (b"\x40\x04\x00\x01\x00\x05", MQTT_5),  # property length past the end
    ],
)
def test_body_too_short_is_malformed(data: bytes, version: int) -> None:
    assert_malformed(data, version)


# --- properties ------------------------------------------------------------------------------


def puback5(block: bytes) -> bytes:
    return frame(0x40, b"\x00\x01\x00" + encode_varint(len(block)) + block)


def test_property_unknown_id_is_malformed() -> None:
    assert_malformed(puback5(b"\x7f\x00"), MQTT_5)


def test_property_not_allowed_in_packet_is_protocol_error() -> None:
    assert_protocol_error(puback5(b"\x23\x00\x01"), MQTT_5)  # TOPIC_ALIAS in PUBACK
    with pytest.raises(ProtocolError):
        encode(PubAck(1, 0, {P.TOPIC_ALIAS: 1}), MQTT_5)


def test_property_duplicate_is_protocol_error() -> None:
    block = b"\x1f" + s("a") + b"\x1f" + s("b")
    assert_protocol_error(puback5(block), MQTT_5)


@pytest.mark.parametrize(
    ("packet", "block"),
    [
        (0x10, b"\x21\x00\x00"),  # RECEIVE_MAXIMUM 0 in CONNECT
        (0x10, b"\x27\x00\x00\x00\x00"),  # MAXIMUM_PACKET_SIZE 0
        (0x10, b"\x17\x02"),  # REQUEST_PROBLEM_INFORMATION 2
        (0x30, b"\x01\x02"),  # PAYLOAD_FORMAT_INDICATOR 2
        (0x30, b"\x0b\x00"),  # SUBSCRIPTION_IDENTIFIER 0
        (0x30, b"\x23\x00\x00"),  # TOPIC_ALIAS 0
    ],
)
def test_property_value_out_of_range_is_protocol_error(packet: int, block: bytes) -> None:
    props = encode_varint(len(block)) + block
    if packet == 0x10:
        data = frame(0x10, s("MQTT") + b"\x05\x02\x00\x3c" + props + s("c"))
    else:
        data = frame(0x30, s("t") + props)
    assert_protocol_error(data, MQTT_5)


def test_property_value_out_of_range_on_encode() -> None:
    bad: list[Properties] = [
        {P.RECEIVE_MAXIMUM: 0},
        {P.MAXIMUM_PACKET_SIZE: 0},
        {P.SESSION_EXPIRY_INTERVAL: -1},
        {P.SESSION_EXPIRY_INTERVAL: 2**32},
        {P.AUTHENTICATION_METHOD: b"bytes"},
    ]
    for props in bad:
        with pytest.raises(ProtocolError):
            encode(Connect("c", MQTT_5, properties=props))
    with pytest.raises(ProtocolError):
        encode(Publish("t", properties={P.PAYLOAD_FORMAT_INDICATOR: 2}), MQTT_5)


def test_user_properties_keep_order_and_repeats() -> None:
    pairs = [("b", "1"), ("a", "2"), ("b", "3")]
    packet = Publish("t", b"", properties={P.USER_PROPERTY: pairs})
    decoded = decode_one(encode(packet, MQTT_5), MQTT_5)
    assert isinstance(decoded, Publish)
    assert decoded.properties[P.USER_PROPERTY] == pairs


def test_subscription_identifier_repeats_in_publish_not_in_subscribe() -> None:
    packet = Publish("t", b"", properties={P.SUBSCRIPTION_IDENTIFIER: [1, 268_435_455]})
    assert decode_one(encode(packet, MQTT_5), MQTT_5) == packet
    block = b"\x0b\x01\x0b\x02"
    data = frame(0x82, b"\x00\x01" + encode_varint(len(block)) + block + s("a") + b"\x00")
    assert_protocol_error(data, MQTT_5)
    with pytest.raises(ProtocolError):
        encode(Subscribe(1, [SubscriptionRequest("a")], {P.SUBSCRIPTION_IDENTIFIER: [1, 2]}), 5)


def test_properties_ignored_in_311() -> None:
    assert encode(Publish("t", b"", properties={P.TOPIC_ALIAS: 1})) == b"\x30\x03" + s("t")


# --- encoding limits -------------------------------------------------------------------------


def test_encode_topic_too_long() -> None:
    with pytest.raises(ProtocolError):
        encode(Publish("x" * 65536))
    assert encode(Publish("x" * 65535))


def test_encode_rejects_lone_surrogate_qos3_bad_version_and_non_packets() -> None:
    with pytest.raises(ProtocolError):
        encode(Publish("\ud800"))
    with pytest.raises(ProtocolError):
        encode(Publish("t", qos=3, packet_id=1))
    with pytest.raises(ProtocolError):
        encode(PingReq(), 6)
    with pytest.raises(ProtocolError):
        encode("not a packet")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        encode(Connect("c", will=Will("w", b"", qos=3)))
    with pytest.raises(ProtocolError):
        encode(Subscribe(1, [SubscriptionRequest("a", retain_handling=3)]), MQTT_5)
    with pytest.raises(ProtocolError):
        encode_varint(268_435_456)


# --- streaming -------------------------------------------------------------------------------


def test_many_packets_in_one_chunk_and_one_byte_at_a_time() -> None:
    packets: list[Packet] = [Publish("a", b"1"), PubAck(1), PingReq(), Unsubscribe(2, ["x"])]
    stream = b"".join(encode(p) for p in packets)
    assert Decoder().feed(stream) == packets
    decoder = Decoder()
    out = []
    for byte in stream:
        out += decoder.feed(bytes((byte,)))
    assert out == packets


def test_partial_packet_waits_and_is_kept() -> None:
    decoder = Decoder()
    stream = encode(Publish("a", b"12345")) * 2
    assert decoder.feed(stream[:12]) == [Publish("a", b"12345")]
    assert decoder.feed(b"") == []
    assert decoder.feed(stream[12:]) == [Publish("a", b"12345")]


def test_error_carries_packets_decoded_before_it() -> None:
    decoder = Decoder()
    with pytest.raises(MalformedPacket) as info:
        decoder.feed(b"\xc0\x00" + b"\x40\x02\x00\x01" + b"\x36\x00")
    assert info.value.packets == [PingReq(), PubAck(1)]
