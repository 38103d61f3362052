"""The run scanner (`broker.protocol.runs`) and `Decoder.feed_runs`: a run holds exactly the
plain QoS 0 PUBLISH frames the decoder would make into equal packets but for the payload, and
runs plus the other packets put back together are the input, however it is cut."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol.acked_runs import AckedRun
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId
from broker.protocol.decode import Run, expand_run
from broker.protocol.errors import MalformedPacket
from broker.protocol.packets import Packet, PingReq, Properties, Publish
from broker.protocol.runs import PublishRun, measure_run, scan_run

# Topics of one length, so that frames differing only in the topic line up column by column.
TOPICS = ["a/b", "a/c", "x/b", "a/bb", "sensor/1/temperature"]


def publishes(version: int) -> st.SearchStrategy[Packet]:
    """PUBLISHes that may and may not make runs, and a control packet now and then."""
    plain = st.builds(
        Publish,
        topic=st.sampled_from(TOPICS),
        payload=st.sampled_from([b"", b"x", b"y" * 60, b"z" * 61, b"q" * 200, b"w" * 17_000]),
    )
    props: st.SearchStrategy[Properties] = st.sampled_from(
        [{PropertyId.CONTENT_TYPE: "text/plain"}, {PropertyId.USER_PROPERTY: [("k", "v")]}]
    )
    other = st.one_of(
        st.builds(
            Publish, topic=st.sampled_from(TOPICS), payload=st.just(b"r"), retain=st.just(True)
        ),
        st.builds(
            Publish,
            topic=st.sampled_from(TOPICS),
            payload=st.just(b"p"),
            qos=st.sampled_from([1, 2]),
            packet_id=st.integers(1, 5),
        ),
        st.just(PingReq()),
    )
    if version == MQTT_5:
        other = st.one_of(
            other,
            st.builds(
                Publish, topic=st.sampled_from(TOPICS), payload=st.just(b"m"), properties=props
            ),
        )
    # Mostly plain frames with a few payload sizes, so that long runs happen.
    repeated = st.lists(plain, min_size=1, max_size=3).flatmap(
        lambda distinct: st.lists(st.sampled_from(distinct), min_size=1, max_size=60)
    )
    return st.one_of(repeated, other.map(lambda p: [p])).map(lambda x: x)  # type: ignore[return-value]


def streams(version: int) -> st.SearchStrategy[list[Packet]]:
    return st.lists(publishes(version), max_size=12).map(
        lambda groups: [p for g in groups for p in g]
    )  # type: ignore[misc]


def feed_in_chunks(decoder: Decoder, data: bytes, cuts: list[int]) -> list[Packet | Run]:
    out: list[Packet | Run] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, stop in itertools.pairwise(bounds):
        out.extend(decoder.feed_runs(data[start:stop]))
    return out


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([MQTT_3_1_1, MQTT_5]), st.data())
def test_runs_and_packets_reassemble_to_the_input(version: int, data: st.DataObject) -> None:
    packets = data.draw(streams(version))
    wire = b"".join(encode(p, version) for p in packets)
    cuts = data.draw(st.lists(st.integers(0, max(len(wire), 1)), max_size=6))
    items = feed_in_chunks(Decoder(version=version), wire, cuts)
    # Encoding is canonical, so a packet stands for its own bytes.
    runs = (PublishRun, AckedRun)  # QoS 1 runs: tests/unit/test_acked_runs.py
    rebuilt = b"".join(i.data if isinstance(i, runs) else encode(i, version) for i in items)
    assert rebuilt == wire
    # As packets, the same list the packet decoder gives, whatever the chunks.
    expanded: list[Packet] = []
    for item in items:
        expanded.extend(expand_run(item) if isinstance(item, runs) else [item])
    assert expanded == Decoder(version=version).feed(wire) == packets


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([MQTT_3_1_1, MQTT_5]), st.data())
def test_a_run_claims_only_plain_qos0_frames_of_its_topic(
    version: int, data: st.DataObject
) -> None:
    packets = data.draw(streams(version))
    wire = b"".join(encode(p, version) for p in packets)
    for item in Decoder(version=version).feed_runs(wire):
        if not isinstance(item, PublishRun):
            continue
        assert item.v5 is (version == MQTT_5)
        frames = Decoder(version=version).feed(item.data)
        assert len(frames) == item.count == len(item.data) // item.frame_len
        for i, frame in enumerate(frames):
            assert isinstance(frame, Publish)
            assert (frame.qos, frame.retain, frame.dup, frame.properties) == (0, False, False, {})
            assert frame.topic == item.topic
            raw = item.data[i * item.frame_len : (i + 1) * item.frame_len]
            assert raw == encode(frame, version), "never a split inside a frame"


def test_a_long_run_is_counted_to_the_frame_where_it_ends() -> None:
    # Past the one-by-one frames the column check takes over; the break falls mid-window.
    same = encode(Publish("a/b", b"0123456789"))
    other_topic = encode(Publish("a/c", b"0123456789"))  # same length, one byte differs
    for length in (1, 2, 8, 9, 16, 17, 37, 500):
        wire = same * length + other_topic + same * 3
        items = Decoder().feed_runs(wire)
        assert [(i.topic, i.count) for i in items if isinstance(i, PublishRun)] == [
            ("a/b", length),
            ("a/c", 1),
            ("a/b", 3),
        ]


def test_payloads_that_look_like_heads_do_not_extend_a_run() -> None:
    # The payload repeats the head of the next frame: only frame starts are compared.
    head = encode(Publish("a/b", b""))[:2]
    frame = encode(Publish("a/b", bytes(head) * 5))
    wire = frame * 20 + encode(Publish("a/b", b"short"))
    items = Decoder().feed_runs(wire)
    assert [i.count for i in items if isinstance(i, PublishRun)] == [20, 1]


@pytest.mark.parametrize(
    "wire",
    [
        b"\x30\x85\x00\x00\x01a\x00\x00",  # Remaining Length 5 in 2 bytes: not minimal
        b"\x30\x05\x00\x01\xff\x00\x00",  # topic not UTF-8
        b"\x30\x05\x00\x01\x00\x00\x00",  # topic is U+0000
        b"\x30\x01\x00",  # no room for the topic length
        b"\x30\x03\x00\x05a",  # topic runs past the end
    ],
)
def test_frames_the_decoder_refuses_or_reads_otherwise_are_never_a_run(wire: bytes) -> None:
    buf = bytearray(wire)
    assert scan_run(buf, 0, len(buf), False, 1 << 20) is None
    try:
        packets = Decoder().feed_runs(wire)
    except MalformedPacket:
        return
    assert not any(isinstance(p, PublishRun) for p in packets)


def test_incomplete_and_oversized_frames_are_left_to_the_decoder() -> None:
    frame = encode(Publish("a/b", b"x" * 10))
    buf = bytearray(frame * 3)
    assert scan_run(buf, 0, len(frame) - 1, False, 1 << 20) is None  # not complete yet
    assert scan_run(buf, 0, len(buf), False, len(frame) - 1) is None  # over max_packet_size
    run = scan_run(buf, 0, len(buf) - 1, False, 1 << 20)
    assert run is not None and run.count == 2, "a partial last frame is not in the run"
    assert measure_run(bytes(buf), 0, len(buf), False, 1 << 20) == ("a/b", 3, len(frame))


def test_a_v5_frame_with_properties_ends_a_run() -> None:
    plain = encode(Publish("a/b", b"x"), MQTT_5)
    with_props = encode(Publish("a/b", b"x", properties={PropertyId.CONTENT_TYPE: "t"}), MQTT_5)
    items = Decoder(version=MQTT_5).feed_runs(plain * 10 + with_props + plain)
    assert [type(i).__name__ for i in items] == ["PublishRun", "Publish", "PublishRun"]
    assert isinstance(items[0], PublishRun) and items[0].count == 10
    # A 3.1.1 frame read as 5.0 (no property length) is not a 5.0 run.
    assert scan_run(bytearray(encode(Publish("a/b", b"x"))), 0, 8, True, 1 << 20) is None


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([MQTT_3_1_1, MQTT_5]),
    st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t),
    st.lists(st.just(0), min_size=1, max_size=20),
    st.sampled_from([0, 1, 120, 121, 122, 123, 124, 125, 16_370, 16_371, 16_372, 16_373]),
)
def test_a_run_in_the_other_family_is_what_the_encoder_gives(
    version: int, topic: str, frames: list[int], size: int
) -> None:
    # Sizes around 127 and 16,383 bytes of Remaining Length: the header grows or shrinks.
    messages = [Publish(topic, bytes([i % 256]) * size) for i in range(len(frames))]
    wire = b"".join(encode(m, version) for m in messages)
    items = Decoder(version=version).feed_runs(wire)
    if not items or not all(isinstance(i, PublishRun) for i in items):
        return  # a header too long for a run: nothing to convert
    for v5 in (False, True):
        other = MQTT_5 if v5 else MQTT_3_1_1
        converted = b"".join(i.for_family(v5).data for i in items if isinstance(i, PublishRun))
        assert converted == b"".join(encode(m, other) for m in messages)
        for item in items:
            assert isinstance(item, PublishRun)
            again = item.for_family(v5)
            assert again.frame_len == item.frame_len_for(v5) == len(encode(messages[0], other))
            assert again.count == item.count and again.v5 is v5
            assert item.for_family(v5) is again, "made once"
