"""cluster.wire: frame round-trips, chunking invariance, hostile bytes, handshake, FORWARD."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.message import Message
from broker.protocol.constants import PropertyId
from cluster.wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    HandshakeError,
    MessageType,
    WireError,
    check_hello,
    encode_frame,
    forward_batch_body,
    forward_body,
    forward_entry,
    hello_ack_body,
    hello_body,
    negotiate,
    parse_forward,
    parse_forward_batch,
    parse_hello_ack,
    rpc_request_body,
    rpc_response_body,
)

# msgpack values as our bodies hold them (no floats NaN: NaN != NaN breaks equality checks).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 300), inner, max_size=4)
    ),
    max_leaves=12,
)
_bodies = st.dictionaries(st.text(max_size=10), _values, max_size=6)
_types = st.sampled_from(list(MessageType))


def _frames(items: list[tuple[MessageType, dict[str, Any]]]) -> bytes:
    return b"".join(encode_frame(t, b) for t, b in items)


@given(st.lists(st.tuples(_types, _bodies), max_size=6))
def test_round_trip(items: list[tuple[MessageType, dict[str, Any]]]) -> None:
    decoded = FrameDecoder().feed(_frames(items))
    assert [(t, b) for _, t, b in decoded] == items
    assert all(v == PROTOCOL_VERSION for v, _, _ in decoded)


@given(st.lists(st.tuples(_types, _bodies), min_size=1, max_size=5), st.data())
def test_chunking_invariance(items: list[tuple[MessageType, dict[str, Any]]], data: Any) -> None:
    stream = _frames(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    out = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    assert [(t, b) for _, t, b in out] == items
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.binary(max_size=200), st.binary(max_size=50))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes, more: bytes) -> None:
    decoder = FrameDecoder(max_frame=1024)
    try:
        decoder.feed(data)
        decoder.feed(more)
    except WireError:
        pass


@given(st.binary(max_size=100))
def test_arbitrary_body_in_valid_frame_raises_only_wire_error(body: bytes) -> None:
    frame = struct.pack(">I", len(body) + 2) + bytes((1, int(MessageType.GOSSIP))) + body
    try:
        ((_, msg_type, decoded),) = FrameDecoder().feed(frame)
    except WireError:
        return
    assert msg_type is MessageType.GOSSIP and isinstance(decoded, dict)


def _raw(version: int, type_byte: int, body: bytes) -> bytes:
    return struct.pack(">I", len(body) + 2) + bytes((version, type_byte)) + body


def test_bad_inputs() -> None:
    ok = msgpack.packb({"a": 1})
    cases = [
        _raw(0, 3, ok),  # version 0
        _raw(1, 200, ok),  # unknown type at our version
        _raw(1, 3, b"\xc1"),  # never-used msgpack byte
        _raw(1, 3, msgpack.packb([1, 2])),  # not a map
        _raw(1, 3, msgpack.packb({1: 2})),  # non-string top-level key
        _raw(1, 3, ok + b"\x00"),  # trailing bytes
        struct.pack(">I", 1) + b"\x01",  # shorter than its header
    ]
    for frame in cases:
        with pytest.raises(WireError):
            FrameDecoder().feed(frame)


def test_max_frame_checked_before_buffering() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(WireError):
        decoder.feed(struct.pack(">I", 101))
    with pytest.raises(WireError):  # stays failed
        decoder.feed(encode_frame(MessageType.PING, {}))
    with pytest.raises(WireError):
        encode_frame(MessageType.GOSSIP, {"x": b"y" * 200}, max_frame=100)


def test_newer_version_forward_compatible() -> None:
    decoder = FrameDecoder()
    newer = PROTOCOL_VERSION + 1
    frames = (
        _raw(newer, int(MessageType.PING), msgpack.packb({"seq": 1, "new_field": [1, 2]}))
        + _raw(newer, 250, msgpack.packb({"whatever": 1}))  # a type we do not know yet
        + encode_frame(MessageType.ACK, {"seq": 1})
    )
    out = decoder.feed(frames)
    assert [(v, t) for v, t, _ in out] == [
        (newer, MessageType.PING),
        (PROTOCOL_VERSION, MessageType.ACK),
    ]
    assert out[0][2]["seq"] == 1
    assert decoder.skipped == 1
    assert negotiate(newer) == PROTOCOL_VERSION and negotiate(1) == 1


def test_unencodable_body() -> None:
    with pytest.raises(WireError):
        encode_frame(MessageType.GOSSIP, {"x": object()})


def test_handshake() -> None:
    body = hello_body("s3cret", "node1@h", 1234, ("127.0.0.1", 7946))
    ((_, _, decoded),) = FrameDecoder().feed(encode_frame(MessageType.HELLO, body))
    hello = check_hello(decoded, "s3cret")
    assert (hello.name, hello.epoch, hello.address) == ("node1@h", 1234, ("127.0.0.1", 7946))
    with pytest.raises(HandshakeError):
        check_hello(decoded, "other")
    with pytest.raises(HandshakeError):
        check_hello({**decoded, "cookie": None}, "s3cret")
    with pytest.raises(HandshakeError):
        check_hello({**decoded, "addr": ["h", "port"]}, "s3cret")
    ack = hello_ack_body("node2@h", 99, ("127.0.0.1", 7947), peer_version=7)
    assert parse_hello_ack(ack).version == PROTOCOL_VERSION
    with pytest.raises(HandshakeError):
        parse_hello_ack(hello_ack_body("n", 1, ("h", 1), 1, error="bad cookie"))


def test_forward_round_trip_keeps_properties() -> None:
    props = {
        int(PropertyId.USER_PROPERTY): [("k", "v"), ("k", "w")],
        int(PropertyId.CORRELATION_DATA): b"\x00\xff",
        int(PropertyId.CONTENT_TYPE): "text/plain",
        int(PropertyId.MESSAGE_EXPIRY_INTERVAL): 30,
    }
    message = Message("a/b", b"\x00payload", 1, True, props, "client-1", 12.5)
    frame = encode_frame(MessageType.FORWARD, forward_body(message, "node1"))
    ((_, _, body),) = FrameDecoder().feed(frame)
    out = parse_forward(body)
    assert (out.topic, out.payload, out.qos, out.retain) == ("a/b", b"\x00payload", 1, True)
    assert (out.publisher, out.node, out.timestamp) == ("client-1", "node1", 12.5)
    assert out.properties == props
    assert parse_forward(body, now=99.0).timestamp == 99.0  # stamped with the receiver's clock
    for bad in ({"payload": "str"}, {"qos": 3}, {"retain": 1}, {"props": {"x": 1}}):
        with pytest.raises(WireError):
            parse_forward({**body, **bad})


def test_rpc_bodies() -> None:
    assert rpc_request_body(1, "clients.list", {"page": 1})["method"] == "clients.list"
    assert rpc_response_body(1, result=[1])["ok"] is True
    assert rpc_response_body(1, error="nodedown") == {"id": 1, "ok": False, "error": "nodedown"}


def test_forward_batch_round_trip_in_order_with_extra_fields() -> None:
    plain = Message("a/1", b"one", 0, False, {}, "c1", 1.0)
    shared = Message("a/2", b"two", 2, True, {int(PropertyId.CONTENT_TYPE): "x"}, "c2", 2.0)
    entries = [
        forward_entry(plain),
        forward_entry(shared, {"kind": "shared", "shared": ["g", "a/#"]}),
    ]
    frame = encode_frame(MessageType.FORWARD_BATCH, forward_batch_body("node1", entries))
    ((version, msg_type, body),) = FrameDecoder().feed(frame)
    assert (version, msg_type) == (PROTOCOL_VERSION, MessageType.FORWARD_BATCH)
    out, bad = parse_forward_batch(body, now=50.0)
    assert bad == 0
    assert [(m.topic, m.payload, m.qos, m.retain, m.node, m.timestamp) for m, _ in out] == [
        ("a/1", b"one", 0, False, "node1", 50.0),
        ("a/2", b"two", 2, True, "node1", 50.0),
    ]
    assert out[0][1] == {} and out[1][1] == {"kind": "shared", "shared": ["g", "a/#"]}
    assert out[1][0].properties == shared.properties


def test_forward_batch_skips_malformed_entries_and_rejects_a_malformed_batch() -> None:
    good = forward_entry(Message("t", b"p", 1, False, {}, "c", 0.0))
    hostile: list[Any] = [good, [1, 2], "x", [*good[:2], 3, *good[3:]], [*good, "not a map"], good]
    out, bad = parse_forward_batch({"origin": "n", "msgs": hostile})
    assert len(out) == 2 and bad == 4
    for body in ({"msgs": []}, {"origin": "n"}, {"origin": "n", "msgs": {"a": 1}}):
        with pytest.raises(WireError):
            parse_forward_batch(body)


def test_forward_batch_exists_from_version_2_only() -> None:
    """The compatibility rule: FORWARD_BATCH is never encoded for a version-1 peer, and a frame
    that claims it in version 1 is a broken peer."""
    body = forward_batch_body("n", [])
    with pytest.raises(WireError):
        encode_frame(MessageType.FORWARD_BATCH, body, version=1)
    raw = msgpack.packb(body, use_bin_type=True)
    frame = struct.pack(">I", len(raw) + 2) + bytes((1, int(MessageType.FORWARD_BATCH))) + raw
    with pytest.raises(WireError):
        FrameDecoder().feed(frame)
    assert negotiate(1) == 1 and PROTOCOL_VERSION >= 2


def test_forward_batch_carries_the_client_bytes_of_a_small_qos0_publish() -> None:
    """`raw`: the receiver reuses the QoS 0 PUBLISH bytes (as the origin does) instead of
    encoding them again; only for QoS 0 and payloads up to RAW_MAX, and only bytes made from
    this very message (`Frames.fits`)."""
    from broker.protocol.codec import encode
    from broker.protocol.packets import Publish
    from broker.protocol.wire import Frames
    from cluster.wire import RAW_MAX

    def message(payload: bytes, qos: int = 0, raw: bytes | None = None) -> Message:
        m = Message("a/b", payload, qos, False, {}, "c", 1.0)
        m.frames = Frames(m.topic, m.payload, m.properties, raw)
        return m

    raw = encode(Publish("a/b", b"hello", qos=0))
    small = message(b"hello", raw=raw)
    stale = Message("a/b", b"hello", 0, False, {}, "c", 1.0)
    stale.frames = small.frames  # bytes of another message object: never shipped
    entries = [
        forward_entry(small),
        forward_entry(small, {"kind": "shared", "shared": ["g", "a/#"]}),
        forward_entry(message(b"x" * (RAW_MAX + 1), raw=b"whatever")),
        forward_entry(message(b"hello", 1, raw)),
        forward_entry(stale),
        forward_entry(message(b"hello")),  # nothing encoded yet
    ]
    assert [len(e) for e in entries] == [8, 8, 7, 7, 7, 7]
    body = msgpack.unpackb(msgpack.packb(forward_batch_body("n", entries)), raw=False)
    out, bad = parse_forward_batch(body)
    assert bad == 0
    first = out[0][0]
    assert first.frames is not None and first.frames.raw == raw and first.frames.raw_v5 is False
    assert first.frames.fits(first.topic, first.payload, first.properties)
    assert first.frames.qos0(False, 4) == raw and out[0][1] == {}
    assert out[1][1] == {"kind": "shared", "shared": ["g", "a/#"]}
    assert out[1][0].frames is not None and out[1][0].frames.raw == raw
    assert all(m.frames is None for m, _ in out[2:])
    # a raw that does not fit its message is a malformed entry
    qos1 = forward_entry(Message("a/b", b"hello", 1, False, {}, "c", 1.0), {"raw": [False, raw]})
    hostile = {"origin": "n", "msgs": [qos1, [*entries[0][:7], {"raw": 1}]]}
    assert parse_forward_batch(hostile) == ([], 2)
