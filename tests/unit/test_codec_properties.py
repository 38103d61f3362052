"""Property-based codec tests: round trips, fuzzing, chunking invariance, 5.0 property blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.protocol import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    PROTOCOL_NAMES,
    Auth,
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketType,
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
    Will,
    encode,
)
from broker.protocol.properties import (
    BINARY,
    CONNACK_CODES_3,
    PROPERTY_SPECS,
    REASON_CODES_5,
    SUBACK_CODES_3,
    UTF8,
    UTF8_PAIR,
    WILL,
    PropertySpec,
    encode_properties,
    encode_varint,
)

VERSIONS = (MQTT_3_1, MQTT_3_1_1, MQTT_5)
T = PacketType
HEAVY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIGHT = settings(max_examples=25, deadline=None)

texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
blobs = st.binary(max_size=40)
packet_ids = st.integers(1, 0xFFFF)


# --- strategies ------------------------------------------------------------------------------


def value_strategy(spec: PropertySpec, packet_type: int) -> st.SearchStrategy[Any]:
    if spec.key == PropertyId.USER_PROPERTY:
        return st.lists(st.tuples(texts, texts), min_size=1, max_size=3)
    if spec.key == PropertyId.SUBSCRIPTION_IDENTIFIER:
        most = 3 if packet_type == T.PUBLISH else 1
        return st.lists(st.integers(spec.low, spec.high), min_size=1, max_size=most)
    if spec.data_type == UTF8:
        return texts
    if spec.data_type == BINARY:
        return blobs
    return st.integers(spec.low, spec.high)


def allowed(packet_type: int) -> list[PropertySpec]:
    return [spec for spec in PROPERTY_SPECS.values() if packet_type in spec.allowed_in]


def props(packet_type: int, version: int) -> st.SearchStrategy[Properties]:
    if version != MQTT_5:
        return st.just({})
    optional = {spec.key: value_strategy(spec, packet_type) for spec in allowed(packet_type)}
    return st.fixed_dictionaries({}, optional=optional)  # type: ignore[arg-type]


def reason(packet_type: int, version: int) -> st.SearchStrategy[int]:
    if version != MQTT_5:
        return st.just(0)
    return st.sampled_from(sorted(REASON_CODES_5[packet_type]))


@st.composite
def connects(draw: st.DrawFn, version: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(draw(texts), draw(blobs), draw(st.integers(0, 2)), draw(st.booleans()),
                    draw(props(WILL, version)))  # fmt: skip
    username = draw(st.none() | texts)
    password = draw(st.none() | blobs) if username is not None or version == MQTT_5 else None
    return Connect(
        draw(texts), version, PROTOCOL_NAMES[version], draw(st.booleans()),
        draw(st.integers(0, 0xFFFF)), will, username, password, draw(props(T.CONNECT, version)),
    )  # fmt: skip


@st.composite
def publishes(draw: st.DrawFn, version: int) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(texts), draw(blobs), qos, draw(st.booleans()), draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None, draw(props(T.PUBLISH, version)),
    )  # fmt: skip


def subscription_requests(version: int) -> st.SearchStrategy[SubscriptionRequest]:
    if version != MQTT_5:
        return st.builds(SubscriptionRequest, texts, st.integers(0, 2))
    return st.builds(
        SubscriptionRequest, texts, st.integers(0, 2), st.booleans(), st.booleans(),
        st.integers(0, 2),
    )  # fmt: skip


def ack(cls: type[PubAck | PubRec | PubRel | PubComp], ptype: T, v: int) -> st.SearchStrategy[Any]:
    return st.builds(cls, packet_ids, reason(ptype, v), props(ptype, v))


def packet_strategies(version: int) -> dict[T, st.SearchStrategy[Any]]:
    """One strategy of valid packets per packet type that exists in `version`."""
    v = version
    v5 = v == MQTT_5
    suback_codes = sorted(REASON_CODES_5[T.SUBACK] if v5 else SUBACK_CODES_3)
    strategies: dict[T, st.SearchStrategy[Any]] = {
        T.CONNECT: connects(v),
        T.CONNACK: st.builds(ConnAck, st.booleans(),
                             reason(T.CONNACK, v) if v5
                             else st.sampled_from(sorted(CONNACK_CODES_3)),
                             props(T.CONNACK, v)),
        T.PUBLISH: publishes(v),
        T.PUBACK: ack(PubAck, T.PUBACK, v),
        T.PUBREC: ack(PubRec, T.PUBREC, v),
        T.PUBREL: ack(PubRel, T.PUBREL, v),
        T.PUBCOMP: ack(PubComp, T.PUBCOMP, v),
        T.SUBSCRIBE: st.builds(Subscribe, packet_ids,
                               st.lists(subscription_requests(v), min_size=1, max_size=4),
                               props(T.SUBSCRIBE, v)),
        T.SUBACK: st.builds(SubAck, packet_ids,
                            st.lists(st.sampled_from(suback_codes), min_size=1, max_size=4),
                            props(T.SUBACK, v)),
        T.UNSUBSCRIBE: st.builds(Unsubscribe, packet_ids, st.lists(texts, min_size=1, max_size=4),
                                 props(T.UNSUBSCRIBE, v)),
        T.UNSUBACK: st.builds(UnsubAck, packet_ids,
                              st.lists(st.sampled_from(sorted(REASON_CODES_5[T.UNSUBACK])),
                                       max_size=4) if v5 else st.just([]),
                              props(T.UNSUBACK, v)),
        T.PINGREQ: st.just(PingReq()),
        T.PINGRESP: st.just(PingResp()),
        T.DISCONNECT: st.builds(Disconnect, reason(T.DISCONNECT, v), props(T.DISCONNECT, v)),
    }  # fmt: skip
    if v5:
        strategies[T.AUTH] = st.builds(Auth, reason(T.AUTH, v), props(T.AUTH, v))
    return strategies


def packets(version: int) -> st.SearchStrategy[Packet]:
    return st.one_of(list(packet_strategies(version).values()))


def non_connect_packets(version: int) -> st.SearchStrategy[Packet]:
    strategies = packet_strategies(version)
    del strategies[T.CONNECT]
    return st.one_of(list(strategies.values()))


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@HEAVY
@given(data=st.data())
def test_round_trip_every_packet_type(version: int, data: st.DataObject) -> None:
    packet = data.draw(packets(version))
    wire = encode(packet, version)
    assert Decoder(version=version).feed(wire) == [packet]
    if isinstance(packet, Connect):  # a fresh server-side decoder learns the version
        decoder = Decoder()
        assert decoder.feed(wire) == [packet]
        assert decoder.version == version


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("packet_type", [t for t in T if t != T.CONNECT])
@LIGHT
@given(data=st.data())
def test_round_trip_each_type_explicitly(version: int, packet_type: T, data: st.DataObject) -> None:
    """Make sure no type is starved by `one_of` (AUTH is 5.0 only)."""
    if packet_type == T.AUTH and version != MQTT_5:
        return
    packet = data.draw(packet_strategies(version)[packet_type])
    assert Decoder(version=version).feed(encode(packet, version)) == [packet]


# --- fuzzing: only ProtocolError ever leaves the decoder -------------------------------------


def feed_all(decoder: Decoder, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except ProtocolError:
        pass


@pytest.mark.parametrize("version", [None, MQTT_3_1_1, MQTT_5])
@HEAVY
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(version: int | None, data: bytes) -> None:
    feed_all(Decoder(version=version), [data])


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """A valid-looking fixed header (type, usual flags, true length) over a random body."""
    ptype = draw(st.integers(1, 15))
    flags = {3: draw(st.integers(0, 15)), 6: 2, 8: 2, 10: 2}.get(ptype, 0)
    body = draw(st.binary(max_size=80))
    return bytes((ptype << 4 | flags,)) + encode_varint(len(body)) + body


@pytest.mark.parametrize("version", [None, MQTT_3_1_1, MQTT_5])
@HEAVY
@given(frames=st.lists(plausible_frames(), min_size=1, max_size=4))
def test_random_bodies_raise_only_protocol_error(version: int | None, frames: list[bytes]) -> None:
    feed_all(Decoder(version=version), frames)


@pytest.mark.parametrize("version", VERSIONS)
@HEAVY
@given(data=st.data())
def test_mutated_packets_raise_only_protocol_error(version: int, data: st.DataObject) -> None:
    wire = bytearray(encode(data.draw(packets(version)), version))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "insert":
            wire.insert(index, data.draw(st.integers(0, 255)))
        elif index < len(wire):
            if action == "flip":
                wire[index] ^= 1 << data.draw(st.integers(0, 7))
            elif action == "delete":
                del wire[index]
            else:
                del wire[index:]
    # the remaining length no longer matches: complete the frame with a fixed header too
    feed_all(Decoder(version=version), [bytes(wire)])
    body = bytes(wire[2:])
    feed_all(Decoder(version=version), [bytes(wire[:1]) + encode_varint(len(body)) + body])


# --- chunking invariance ---------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@HEAVY
@given(data=st.data())
def test_chunking_invariance(version: int, data: st.DataObject) -> None:
    stream_packets = data.draw(st.lists(non_connect_packets(version), min_size=1, max_size=6))
    connect = data.draw(connects(version))
    stream_packets.insert(0, connect)
    stream = b"".join(encode(p, version) for p in stream_packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = Decoder()
    out: list[Packet] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert out == stream_packets
    assert decoder.version == version


# --- 5.0 property blocks ---------------------------------------------------------------------


def block(props: bytes) -> bytes:
    return encode_varint(len(props)) + props


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def s(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


# Raw 5.0 packets of each type around a given property block (so that blocks the encoder refuses
# can still be put on the wire), and the same packets as objects for the round trip.
RAW: dict[int, Callable[[bytes], bytes]] = {
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
OBJECT: dict[int, Callable[[Properties], Packet]] = {
    T.CONNECT: lambda p: Connect("c", MQTT_5, keepalive=0, properties=p),
    WILL: lambda p: Connect("c", MQTT_5, keepalive=0, will=Will("w", b"", properties=p)),
    T.CONNACK: lambda p: ConnAck(False, 0, p),
    T.PUBLISH: lambda p: Publish("t", b"payload", properties=p),
    T.PUBACK: lambda p: PubAck(1, 0, p),
    T.PUBREC: lambda p: PubRec(1, 0, p),
    T.PUBREL: lambda p: PubRel(1, 0, p),
    T.PUBCOMP: lambda p: PubComp(1, 0, p),
    T.SUBSCRIBE: lambda p: Subscribe(1, [SubscriptionRequest("a")], p),
    T.SUBACK: lambda p: SubAck(1, [0], p),
    T.UNSUBSCRIBE: lambda p: Unsubscribe(1, ["a"], p),
    T.UNSUBACK: lambda p: UnsubAck(1, [0], p),
    T.DISCONNECT: lambda p: Disconnect(0, p),
    T.AUTH: lambda p: Auth(0, p),
}
ALLOWED_PAIRS = [
    (spec, kind) for spec in PROPERTY_SPECS.values() for kind in sorted(spec.allowed_in)
]
FORBIDDEN_PAIRS = [(spec, kind) for spec in PROPERTY_SPECS.values()
                   for kind in sorted(set(RAW) - spec.allowed_in)]  # fmt: skip


def sample_value(spec: PropertySpec) -> Any:
    if spec.key == PropertyId.USER_PROPERTY:
        return [("name", "value")]
    if spec.key == PropertyId.SUBSCRIPTION_IDENTIFIER:
        return [spec.high]
    return {UTF8: "text", BINARY: b"data"}.get(spec.data_type, spec.high)


def pair_id(pair: tuple[PropertySpec, int]) -> str:
    spec, kind = pair
    return f"{spec.key.name}-{'WILL' if kind == WILL else T(kind).name}"


def test_tables_cover_every_property_and_packet() -> None:
    assert set(PROPERTY_SPECS) == {int(p) for p in PropertyId}
    assert set(RAW) == set(OBJECT) == {WILL} | {int(t) for t in T if t not in (12, 13)}
    assert len(ALLOWED_PAIRS) == 64  # 2.2.2.2 lists 64 (property, packet) pairs incl. Will


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=pair_id)
@LIGHT
@given(data=st.data())
def test_property_round_trips_where_allowed(
    pair: tuple[PropertySpec, int], data: st.DataObject
) -> None:
    spec, kind = pair
    value = data.draw(value_strategy(spec, kind))
    packet = OBJECT[kind]({spec.key: value})
    wire = encode(packet, MQTT_5)
    assert Decoder(version=MQTT_5).feed(wire) == [packet]
    assert wire == RAW[kind](encode_properties({spec.key: value}, kind))  # same bytes by hand


@pytest.mark.parametrize("pair", FORBIDDEN_PAIRS, ids=pair_id)
def test_property_rejected_where_not_allowed(pair: tuple[PropertySpec, int]) -> None:
    spec, kind = pair
    some_kind = min(spec.allowed_in)
    value = sample_value(spec)
    with pytest.raises(ProtocolError):
        encode(OBJECT[kind]({spec.key: value}), MQTT_5)
    wire = RAW[kind](encode_properties({spec.key: value}, some_kind))
    with pytest.raises(ProtocolError) as info:
        Decoder(version=MQTT_5).feed(wire)
    assert type(info.value) is ProtocolError  # a protocol error, not a malformed packet


def may_repeat(spec: PropertySpec, kind: int) -> bool:
    return spec.data_type == UTF8_PAIR or (
        spec.key == PropertyId.SUBSCRIPTION_IDENTIFIER and kind == T.PUBLISH
    )


SINGLE_PAIRS = [(spec, kind) for spec, kind in ALLOWED_PAIRS if not may_repeat(spec, kind)]


@pytest.mark.parametrize("pair", SINGLE_PAIRS, ids=pair_id)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_duplicate_property_rejected(pair: tuple[PropertySpec, int], data: st.DataObject) -> None:
    spec, kind = pair
    one = encode_properties({spec.key: data.draw(value_strategy(spec, kind))}, kind)
    entry = one[1:] if one[0] < 0x80 else one[2:]  # drop the block length varint
    with pytest.raises(ProtocolError) as info:
        Decoder(version=MQTT_5).feed(RAW[kind](block(entry + entry)))
    assert type(info.value) is ProtocolError


@pytest.mark.parametrize("kind", sorted(RAW))
@settings(max_examples=40, deadline=None)
@given(pid=st.integers(0, 255).filter(lambda i: i not in PROPERTY_SPECS))
def test_unknown_property_id_is_malformed(kind: int, pid: int) -> None:
    with pytest.raises(MalformedPacket):
        Decoder(version=MQTT_5).feed(RAW[kind](block(bytes((pid, 0, 0, 0, 0)))))
