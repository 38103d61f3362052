"""The MQTT 5.0 property codec against the specification's own table (section 2.2.2.2).

test_codec_properties.py checks the codec against `PROPERTY_SPECS`; this file checks
`PROPERTY_SPECS` itself against a literal transcription of Table 2-4 of the specification, and
adds what a table-driven codec could still get wrong: values outside the range the spec allows,
duplicates hidden among other properties, properties that may repeat keeping their order, and
whole blocks valid for one packet type sent in another. Every rejection must be a plain
ProtocolError (a Protocol Error in the spec's terms), except an unknown identifier (Malformed).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol import Decoder, MalformedPacket, PacketType, PropertyId, ProtocolError
from broker.protocol.constants import MQTT_5, ReasonCode
from broker.protocol.properties import (
    BINARY,
    BYTE,
    FOUR_BYTE,
    PROPERTY_SPECS,
    TWO_BYTE,
    UTF8,
    UTF8_PAIR,
    VARINT,
    WILL,
    encode_properties,
    encode_varint,
    read_varint,
)

T = PacketType
P = PropertyId

# Table 2-4 of MQTT 5.0, transcribed by hand: identifier -> (name, data type, packets).
SPEC_TABLE: dict[int, tuple[str, int, set[int]]] = {
    0x01: ("Payload Format Indicator", BYTE, {T.PUBLISH, WILL}),
    0x02: ("Message Expiry Interval", FOUR_BYTE, {T.PUBLISH, WILL}),
    0x03: ("Content Type", UTF8, {T.PUBLISH, WILL}),
    0x08: ("Response Topic", UTF8, {T.PUBLISH, WILL}),
    0x09: ("Correlation Data", BINARY, {T.PUBLISH, WILL}),
    0x0B: ("Subscription Identifier", VARINT, {T.PUBLISH, T.SUBSCRIBE}),
    0x11: ("Session Expiry Interval", FOUR_BYTE, {T.CONNECT, T.CONNACK, T.DISCONNECT}),
    0x12: ("Assigned Client Identifier", UTF8, {T.CONNACK}),
    0x13: ("Server Keep Alive", TWO_BYTE, {T.CONNACK}),
    0x15: ("Authentication Method", UTF8, {T.CONNECT, T.CONNACK, T.AUTH}),
    0x16: ("Authentication Data", BINARY, {T.CONNECT, T.CONNACK, T.AUTH}),
    0x17: ("Request Problem Information", BYTE, {T.CONNECT}),
    0x18: ("Will Delay Interval", FOUR_BYTE, {WILL}),
    0x19: ("Request Response Information", BYTE, {T.CONNECT}),
    0x1A: ("Response Information", UTF8, {T.CONNACK}),
    0x1C: ("Server Reference", UTF8, {T.CONNACK, T.DISCONNECT}),
    0x1F: ("Reason String", UTF8, {T.CONNACK, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP,
                                   T.SUBACK, T.UNSUBACK, T.DISCONNECT, T.AUTH}),
    0x21: ("Receive Maximum", TWO_BYTE, {T.CONNECT, T.CONNACK}),
    0x22: ("Topic Alias Maximum", TWO_BYTE, {T.CONNECT, T.CONNACK}),
    0x23: ("Topic Alias", TWO_BYTE, {T.PUBLISH}),
    0x24: ("Maximum QoS", BYTE, {T.CONNACK}),
    0x25: ("Retain Available", BYTE, {T.CONNACK}),
    0x26: ("User Property", UTF8_PAIR, {T.CONNECT, T.CONNACK, T.PUBLISH, WILL, T.PUBACK,
                                       T.PUBREC, T.PUBREL, T.PUBCOMP, T.SUBSCRIBE, T.SUBACK,
                                       T.UNSUBSCRIBE, T.UNSUBACK, T.DISCONNECT, T.AUTH}),
    0x27: ("Maximum Packet Size", FOUR_BYTE, {T.CONNECT, T.CONNACK}),
    0x28: ("Wildcard Subscription Available", BYTE, {T.CONNACK}),
    0x29: ("Subscription Identifier Available", BYTE, {T.CONNACK}),
    0x2A: ("Shared Subscription Available", BYTE, {T.CONNACK}),
}  # fmt: skip

# Values the spec calls a Protocol Error (the "It is a Protocol Error to ..." sentences).
SPEC_RANGES: dict[int, tuple[int, int]] = {
    P.PAYLOAD_FORMAT_INDICATOR: (0, 1),  # 3.3.2.3.2
    P.REQUEST_PROBLEM_INFORMATION: (0, 1),  # 3.1.2.11.7
    P.REQUEST_RESPONSE_INFORMATION: (0, 1),  # 3.1.2.11.6
    P.MAXIMUM_QOS: (0, 1),  # 3.2.2.3.4
    P.RETAIN_AVAILABLE: (0, 1),  # 3.2.2.3.5
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: (0, 1),  # 3.2.2.3.11
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: (0, 1),  # 3.2.2.3.12
    P.SHARED_SUBSCRIPTION_AVAILABLE: (0, 1),  # 3.2.2.3.13
    P.RECEIVE_MAXIMUM: (1, 0xFFFF),  # 3.1.2.11.3 / 3.2.2.3.3: 0 is a Protocol Error
    P.MAXIMUM_PACKET_SIZE: (1, 0xFFFF_FFFF),  # 3.1.2.11.4 / 3.2.2.3.6
    P.TOPIC_ALIAS: (1, 0xFFFF),  # 3.3.2.3.4 (0 is answered with 0x94, MQTT-3.3.2-8)
    P.SUBSCRIPTION_IDENTIFIER: (1, 268_435_455),  # 3.3.2.3.8 / 3.8.2.1.2
}


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def s(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def block(entries: bytes) -> bytes:
    return encode_varint(len(entries)) + entries


# A 5.0 packet of each type around a property block (WILL: the will properties of CONNECT).
RAW: dict[int, Any] = {
    T.CONNECT: lambda b: frame(0x10, s("MQTT") + b"\x05\x02\x00\x00" + b + s("c")),
    WILL: lambda b: frame(0x10, s("MQTT") + b"\x05\x06\x00\x00\x00" + s("c") + b + s("w") + s("")),
    T.CONNACK: lambda b: frame(0x20, b"\x00\x00" + b),
    T.PUBLISH: lambda b: frame(0x30, s("t") + b + b"payload"),
    T.PUBACK: lambda b: frame(0x40, b"\x00\x01\x00" + b),
    T.PUBREC: lambda b: frame(0x50, b"\x00\x01\x00" + b),
    T.PUBREL: lambda b: frame(0x62, b"\x00\x01\x00" + b),
    T.PUBCOMP: lambda b: frame(0x70, b"\x00\x01\x00" + b),
    T.SUBSCRIBE: lambda b: frame(0x82, b"\x00\x01" + b + s("a") + b"\x00"),
    T.SUBACK: lambda b: frame(0x90, b"\x00\x01" + b + b"\x00"),
    T.UNSUBSCRIBE: lambda b: frame(0xA2, b"\x00\x01" + b + s("a")),
    T.UNSUBACK: lambda b: frame(0xB0, b"\x00\x01" + b + b"\x00"),
    T.DISCONNECT: lambda b: frame(0xE0, b"\x00" + b),
    T.AUTH: lambda b: frame(0xF0, b"\x00" + b),
}


def decode(data: bytes) -> Any:
    (packet,) = Decoder(version=MQTT_5).feed(data)
    return packet


def properties_of(packet: Any, kind: int) -> dict[int, Any]:
    if kind == WILL:
        return dict(packet.will.properties)
    return dict(packet.properties)


def entries(props: dict[int, Any], kind: int) -> bytes:
    """The encoded properties of a block, without the block's length prefix."""
    encoded = encode_properties(props, kind)
    _length, start = read_varint(encoded, 0, len(encoded))
    return encoded[start:]


def entry(pid: int, value_bytes: bytes) -> bytes:
    return bytes((pid,)) + value_bytes


def raw_value(pid: int, value: int) -> bytes:
    dtype = PROPERTY_SPECS[pid].data_type
    return encode_varint(value) if dtype == VARINT else value.to_bytes(dtype, "big")


texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8)


def value_for(pid: int, kind: int) -> st.SearchStrategy[Any]:
    spec = PROPERTY_SPECS[pid]
    if pid == P.USER_PROPERTY:
        return st.lists(st.tuples(texts, texts), min_size=1, max_size=3)
    if pid == P.SUBSCRIPTION_IDENTIFIER:
        return st.lists(st.integers(1, 268_435_455), min_size=1,
                        max_size=3 if kind == T.PUBLISH else 1)  # fmt: skip
    if spec.data_type == UTF8:
        return texts
    if spec.data_type == BINARY:
        return st.binary(max_size=8)
    return st.integers(spec.low, spec.high)


def allowed_block(kind: int) -> st.SearchStrategy[dict[int, Any]]:
    pids = [pid for pid, spec in PROPERTY_SPECS.items() if kind in spec.allowed_in]
    return st.fixed_dictionaries({}, optional={pid: value_for(pid, kind) for pid in pids})


# --------------------------------------------------------------------------- the table


def test_property_table_matches_the_specification_2_2_2_2() -> None:
    assert set(PROPERTY_SPECS) == set(SPEC_TABLE) == {int(p) for p in PropertyId}
    for pid, (name, dtype, packets) in SPEC_TABLE.items():
        spec = PROPERTY_SPECS[pid]
        assert spec.key.name == name.upper().replace(" ", "_"), name
        assert spec.data_type == dtype, name
        assert set(spec.allowed_in) == {int(p) for p in packets}, name


def test_value_ranges_match_the_specification() -> None:
    for pid, (low, high) in SPEC_RANGES.items():
        spec = PROPERTY_SPECS[pid]
        assert (spec.low, spec.high) == (low, high), spec.key.name


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("kind", sorted(RAW), ids=lambda k: "WILL" if k == WILL else T(k).name)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_allowed_block_decodes_to_itself(kind: int, data: st.DataObject) -> None:
    props = data.draw(allowed_block(kind))
    packet = decode(RAW[kind](encode_properties(props, kind)))
    assert properties_of(packet, kind) == props


@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.tuples(texts, texts), min_size=2, max_size=6),
       ids=st.lists(st.integers(1, 268_435_455), min_size=2, max_size=4),
       data=st.data())  # fmt: skip
def test_repeatable_properties_keep_their_order_MQTT_3_3_2_18(
    pairs: list[tuple[str, str]], ids: list[int], data: st.DataObject
) -> None:
    """User Property (anywhere) and Subscription Identifier (in PUBLISH) may repeat."""
    entries = [entry(P.USER_PROPERTY, s(k) + s(v)) for k, v in pairs]
    entries += [entry(P.SUBSCRIPTION_IDENTIFIER, encode_varint(i)) for i in ids]
    order = data.draw(st.permutations(range(len(entries))))
    packet = decode(RAW[T.PUBLISH](block(b"".join(entries[i] for i in order))))
    user_order = [i for i in order if i < len(pairs)]
    id_order = [i - len(pairs) for i in order if i >= len(pairs)]
    assert packet.properties[P.USER_PROPERTY] == [pairs[i] for i in user_order]
    assert packet.properties[P.SUBSCRIPTION_IDENTIFIER] == [ids[i] for i in id_order]


# --------------------------------------------------------------------------- rejected

BOUNDED = [(pid, kind) for pid in SPEC_RANGES for kind in sorted(PROPERTY_SPECS[pid].allowed_in)]


@pytest.mark.parametrize(
    ("pid", "kind"),
    BOUNDED,
    ids=[f"{P(p).name}-{'WILL' if k == WILL else T(k).name}" for p, k in BOUNDED],
)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_values_outside_the_spec_range_are_protocol_errors(
    pid: int, kind: int, data: st.DataObject
) -> None:
    low, high = SPEC_RANGES[pid]
    dtype = PROPERTY_SPECS[pid].data_type
    top = 268_435_455 if dtype == VARINT else (1 << (8 * dtype)) - 1
    ranges = []
    if low > 0:
        ranges.append(st.integers(0, low - 1))
    if high < top:
        ranges.append(st.integers(high + 1, top))
    value = data.draw(st.one_of(ranges))
    with pytest.raises(ProtocolError) as info:
        Decoder(version=MQTT_5).feed(RAW[kind](block(entry(pid, raw_value(pid, value)))))
    assert not isinstance(info.value, MalformedPacket)
    expected = ReasonCode.TOPIC_ALIAS_INVALID if pid == P.TOPIC_ALIAS else ReasonCode.PROTOCOL_ERROR
    assert info.value.reason_code == expected


SINGLE = [
    (pid, kind)
    for pid, spec in PROPERTY_SPECS.items()
    for kind in sorted(spec.allowed_in)
    if pid != P.USER_PROPERTY and not (pid == P.SUBSCRIPTION_IDENTIFIER and kind == T.PUBLISH)
]


@pytest.mark.parametrize(("pid", "kind"), SINGLE)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_duplicate_among_other_properties_is_protocol_error(
    pid: int, kind: int, data: st.DataObject
) -> None:
    """'It is a Protocol Error to include <property> more than once', wherever the copy is."""
    others = data.draw(allowed_block(kind).map(lambda d: {k: v for k, v in d.items() if k != pid}))
    single = entries({pid: data.draw(value_for(pid, kind))}, kind)
    keys = list(others)
    split = data.draw(st.integers(0, len(keys)))
    before = entries({k: others[k] for k in keys[:split]}, kind)
    after = entries({k: others[k] for k in keys[split:]}, kind)
    body = before + single + after + single  # the copy comes after other properties
    with pytest.raises(ProtocolError) as info:
        Decoder(version=MQTT_5).feed(RAW[kind](block(body)))
    assert type(info.value) is ProtocolError


@pytest.mark.parametrize("kind", sorted(RAW), ids=lambda k: "WILL" if k == WILL else T(k).name)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_block_with_a_property_from_another_packet_is_protocol_error(
    kind: int, data: st.DataObject
) -> None:
    foreign = [pid for pid, spec in PROPERTY_SPECS.items() if kind not in spec.allowed_in]
    pid = data.draw(st.sampled_from(foreign))
    home = min(PROPERTY_SPECS[pid].allowed_in)
    stranger = entries({pid: data.draw(value_for(pid, home))}, home)
    own = entries(data.draw(allowed_block(kind)), kind)
    cut = data.draw(st.sampled_from([0, len(own)]))  # first or last in the block
    body = own[:cut] + stranger + own[cut:]
    with pytest.raises(ProtocolError) as info:
        Decoder(version=MQTT_5).feed(RAW[kind](block(body)))
    assert type(info.value) is ProtocolError
