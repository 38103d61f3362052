"""cluster.wire run entries (v4): a run of QoS 0 frames as one FORWARD_BATCH entry, round
trip through msgpack and the frame decoder, in order with message entries, and malformed run
entries (bytes that are not exactly such a run) skipped and counted, never delivered."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.message import Message
from broker.core.runs_delivery import run_messages
from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5
from broker.protocol.packets import Publish
from broker.protocol.runs import PublishRun
from cluster.wire import (
    PROTOCOL_VERSION,
    RUN_VERSION,
    ForwardedRun,
    FrameDecoder,
    MessageType,
    encode_frame,
    entry_weight,
    forward_batch_body,
    forward_entry,
    parse_forward_batch,
    run_entry,
)


def make_run(topic: str, payloads: list[bytes], v5: bool) -> PublishRun:
    """The run of equal-length frames, as the decoder's `scan_run` would make it."""
    version = MQTT_5 if v5 else MQTT_3_1_1
    frames = [encode(Publish(topic, p), version) for p in payloads]
    assert len({len(f) for f in frames}) == 1
    return PublishRun(topic, b"".join(frames), len(frames), len(frames[0]), v5)


def parse(entries: list[Any]) -> tuple[list[Any], int]:
    frame = encode_frame(MessageType.FORWARD_BATCH, forward_batch_body("n1", entries))
    ((version, _, body),) = FrameDecoder().feed(frame)
    assert version == PROTOCOL_VERSION >= RUN_VERSION
    return parse_forward_batch(body, now=5.0)


@settings(max_examples=60, deadline=None)
@given(
    topic=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
        min_size=1,
        max_size=30,
    ),
    size=st.integers(0, 300),
    count=st.integers(1, 40),
    v5=st.booleans(),
    seed=st.binary(min_size=1, max_size=1),
)
def test_a_run_entry_round_trips_in_order_with_messages(
    topic: str, size: int, count: int, v5: bool, seed: bytes
) -> None:
    payloads = [bytes([(seed[0] + i) % 256]) * size for i in range(count)]
    run = make_run(topic, payloads, v5)
    before = forward_entry(Message("a", b"1", 0, False, {}, "c", 1.0))
    after = forward_entry(Message("b", b"2", 1, False, {}, "c", 1.0))
    entry = run_entry(run, "pub")
    assert entry_weight(entry) == count and entry_weight(before) == 1
    out, bad = parse([before, entry, after])
    assert bad == 0 and len(out) == 3
    assert out[0][0].topic == "a" and out[2][0].topic == "b"
    got = out[1]
    assert isinstance(got, ForwardedRun) and got.publisher == "pub"
    assert (got.run.topic, got.run.count, got.run.frame_len, got.run.v5) == (
        topic,
        count,
        run.frame_len,
        v5,
    )
    assert got.run.data == run.data
    # Back to messages: what `handle_publish` would have made of each frame.
    messages = run_messages(got.run, "pub", 7.0, "n1")
    assert [(m.topic, m.payload, m.qos, m.retain, m.publisher) for m in messages] == [
        (topic, p, 0, False, "pub") for p in payloads
    ]
    assert all(m.frames is not None and m.frames.raw is not None for m in messages)


def test_malformed_run_entries_are_counted_not_delivered() -> None:
    run = make_run("t/x", [b"aa", b"bb", b"cc"], False)
    good = run_entry(run, "p")
    other = encode(Publish("t/y", b"aa"))  # same length, another topic
    retained = encode(Publish("t/x", b"aa", retain=True))
    hostile: list[Any] = [
        ["t/x", "p", False, 3, run.data[:-1]],  # not a multiple of the count
        ["t/x", "p", False, 2, run.data[: 2 * run.frame_len] + b"\x00"],  # wrong count
        ["t/y", "p", False, 3, run.data],  # another topic than the frames'
        ["t/x", "p", True, 3, run.data],  # 3.1.1 frames read as 5.0
        ["t/x", "p", False, 1, run.data],  # one frame's length is not the bytes'
        ["t/x", "p", False, 3, other + run.data[run.frame_len :]],  # the first frame's topic
        ["t/x", "p", False, 3, run.data[: 2 * run.frame_len] + retained],
        ["t/x", "p", False, 3, run.data[: run.frame_len] + retained + run.data[: run.frame_len]],
        ["t/x", "p", False, 0, b""],
        ["t/x", 1, False, 3, run.data],
        ["t/x", "p", 0, 3, run.data],
        ["t/x", "p", False, True, run.data],
        ["t/x", "p", False, 3, "text"],
    ]
    body = msgpack.unpackb(
        msgpack.packb(forward_batch_body("n", [*hostile, good]), use_bin_type=True), raw=False
    )
    out, bad = parse_forward_batch(body)
    assert bad == len(hostile)
    assert len(out) == 1 and isinstance(out[0], ForwardedRun) and out[0].run.data == run.data


def test_a_run_entry_framing_is_checked_in_every_frame_its_topic_in_the_first() -> None:
    """The receiver checks the bytes that frame each frame (fixed header, topic length, 5.0
    property length) in all of them, and the whole head in the first; the later frames' topic
    bytes come on trust from the peer that found the run (`measure_framed_run`), like `raw`."""
    for v5 in (False, True):
        run = make_run("t/x", [b"aa", b"bb", b"cc"], v5)
        version = MQTT_5 if v5 else MQTT_3_1_1
        longer = encode(Publish("t/xy", b"a"), version)  # same length, longer topic
        same_length_topic = encode(Publish("t/y", b"aa"), version)
        assert len(longer) == len(same_length_topic) == run.frame_len
        out, bad = parse(
            [
                ["t/x", "p", v5, 3, run.data[: 2 * run.frame_len] + longer],
                ["t/x", "p", v5, 3, run.data[: 2 * run.frame_len] + same_length_topic],
            ]
        )
        assert bad == 1 and len(out) == 1 and out[0].run.count == 3
    v5_run = make_run("t/x", [b"aa", b"bb"], True)
    with_property = bytearray(v5_run.data)
    with_property[-3] = 1  # the second frame's property length
    out, bad = parse([["t/x", "p", True, 2, bytes(with_property)]])
    assert (out, bad) == ([], 1)
