"""The QoS 1 run scanner (`broker.protocol.acked_runs`): a run holds exactly the plain QoS 1
PUBLISH frames the decoder would make into packets equal but for packet id and payload; its
PUBACKs and QoS 0 frames are the encoder's bytes; a packet id of 0 is left to the decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol import acked_runs
from broker.protocol.acked_runs import AckedRun
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId
from broker.protocol.decode import Run, expand_run
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import Packet, PingReq, PubAck, Publish
from broker.protocol.runs import PublishRun

TOPICS = ["a/b", "a/c", "sensor/1/temperature"]
#: Packet ids whose bytes hold zeros in every place: 0 itself only is refused (MQTT-2.3.1-1).
IDS = [0, 1, 0x0100, 0x00FF, 0xFF00, 0xFFFF, 0x8000]


def frames(version: int) -> st.SearchStrategy[list[Packet]]:
    plain = st.builds(
        Publish,
        topic=st.sampled_from(TOPICS),
        payload=st.sampled_from([b"", b"x", b"y" * 60, b"z" * 200]),
        qos=st.just(1),
        packet_id=st.sampled_from(IDS[1:]),
    )
    other = st.one_of(
        st.builds(Publish, topic=st.sampled_from(TOPICS), payload=st.just(b"q")),
        st.builds(
            Publish, topic=st.just("a/b"), payload=st.just(b"r"), qos=st.just(1),
            retain=st.just(True), packet_id=st.just(3),
        ),
        st.builds(
            Publish, topic=st.just("a/b"), payload=st.just(b"d"), qos=st.just(1),
            dup=st.just(True), packet_id=st.just(4),
        ),
        st.just(PingReq()),
    )  # fmt: skip
    if version == MQTT_5:
        other = st.one_of(
            other,
            st.builds(
                Publish, topic=st.just("a/b"), payload=st.just(b"m"), qos=st.just(1),
                packet_id=st.just(5), properties=st.just({PropertyId.CONTENT_TYPE: "t"}),
            ),
        )  # fmt: skip
    repeated = st.lists(plain, min_size=1, max_size=2).flatmap(
        lambda distinct: st.lists(st.sampled_from(distinct), min_size=1, max_size=40)
    )
    return st.lists(st.one_of(repeated, other.map(lambda p: [p])), max_size=8).map(
        lambda groups: [p for g in groups for p in g]
    )


def with_zero_id(wire: bytes, packets: list[Packet], version: int, k: int) -> bytes:
    """`wire` with the packet id of the `k`-th QoS 1 PUBLISH (if any) set to 0."""
    at = 0
    seen = 0
    for packet in packets:
        size = len(encode(packet, version))
        if isinstance(packet, Publish) and packet.qos:
            if seen == k:
                head = 2 if wire[at + 1] < 0x80 else 3
                id_at = at + head + 2 + len(packet.topic.encode())
                return wire[:id_at] + b"\x00\x00" + wire[id_at + 2 :]
            seen += 1
        at += size
    return wire


def decode_all(decoder: Decoder, wire: bytes, runs: bool) -> tuple[list[Packet | Run], bool]:
    try:
        return (decoder.feed_runs(wire) if runs else decoder.feed(wire)), False  # type: ignore[return-value]
    except ProtocolError as exc:
        return exc.packets, True


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([MQTT_3_1_1, MQTT_5]), st.data())
def test_runs_are_what_the_decoder_makes_and_zero_ids_are_refused(
    version: int, data: st.DataObject
) -> None:
    packets = data.draw(frames(version))
    wire = b"".join(encode(p, version) for p in packets)
    wire = with_zero_id(wire, packets, version, data.draw(st.integers(0, 50)))
    items, failed = decode_all(Decoder(version=version), wire, True)
    reference, reference_failed = decode_all(Decoder(version=version), wire, False)
    assert failed == reference_failed  # MQTT-2.3.1-1: a packet id of 0 is a protocol error
    expanded: list[Packet | Run] = []
    for item in items:
        expanded.extend(expand_run(item) if isinstance(item, AckedRun | PublishRun) else [item])
    assert expanded == reference
    for item in items:
        if not isinstance(item, AckedRun):
            continue
        assert item.v5 is (version == MQTT_5)
        publishes = Decoder(version=version).feed(item.data)
        assert len(publishes) == item.count == len(item.data) // item.frame_len
        for i, publish in enumerate(publishes):
            assert isinstance(publish, Publish)
            assert (publish.qos, publish.retain, publish.dup, publish.properties) == (
                1, False, False, {},
            )  # fmt: skip
            assert publish.topic == item.topic
            assert publish.payload == item.payload(i)
        ids = [p.packet_id for p in publishes if isinstance(p, Publish)]
        assert item.packet_ids() == ids
        assert item.acks() == b"".join(encode(PubAck(i), version) for i in ids)
        assert item.acks(0x10) == b"".join(encode(PubAck(i, 0x10), version) for i in ids)
        qos0 = item.as_qos0()
        assert qos0.data == b"".join(
            encode(Publish(item.topic, item.payload(i)), version) for i in range(item.count)
        )
        assert (qos0.count, qos0.v5) == (item.count, item.v5)
        assert qos0.frame_len * qos0.count == len(qos0.data)


def test_a_zero_packet_id_ends_a_run_before_it() -> None:
    """MQTT-2.3.1-1: the frame with packet id 0 is the decoder's to refuse; the frames before
    it still make a run, also when zero bytes straddle two ids (0x0100 then 0x00FF)."""
    ids = [0x0100, 0x00FF, 7, 0, 9]
    wire = b"".join(encode(Publish("a/b", b"p", qos=1, packet_id=i)) for i in ids[:3])
    zero = bytearray(encode(Publish("a/b", b"p", qos=1, packet_id=1)))
    zero[7:9] = b"\x00\x00"
    wire += bytes(zero) + encode(Publish("a/b", b"p", qos=1, packet_id=9))
    try:
        Decoder().feed_runs(wire)
    except ProtocolError as exc:
        (run,) = exc.packets
        assert isinstance(run, AckedRun)
        assert run.packet_ids() == [0x0100, 0x00FF, 7]
    else:
        raise AssertionError("a packet id of 0 was accepted")


@pytest.mark.parametrize("patterns", [True, False])
def test_a_payload_that_holds_the_frame_head_does_not_hide_a_frame(
    patterns: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run's rest is counted by one pattern match (frame head, then payload and the
    same head, repeated) or, with no pattern to spare, by columns: a payload that holds
    the frames' head changes neither."""
    if not patterns:
        monkeypatch.setattr(acked_runs, "_PATTERNS", {})
        monkeypatch.setattr(acked_runs, "_MAX_PATTERNS", 0)
    # 'a/b' with a 20-byte payload: Remaining Length 27, head 32 1b 00 03 'a/b'.
    head = b"\x32\x1b\x00\x03a/b"
    payload = head + b"p" * (20 - len(head))
    packets = [Publish("a/b", payload, qos=1, packet_id=i + 1) for i in range(12)]
    packets.append(Publish("a/c", payload, qos=1, packet_id=13))  # another topic ends it
    wire = b"".join(encode(p) for p in packets)
    assert wire.startswith(head)
    items = Decoder().feed_runs(wire)
    assert isinstance(items[0], AckedRun)
    assert items[0].count == 12
    expanded = [p for i in items for p in (expand_run(i) if isinstance(i, AckedRun) else [i])]
    assert expanded == packets
    plain = b"p" * 20
    wire = b"".join(encode(Publish("a/b", plain, qos=1, packet_id=i + 1)) for i in range(12))
    (run,) = Decoder().feed_runs(wire)
    assert isinstance(run, AckedRun)
    assert run.count == 12
    assert [run.payload(i) for i in range(12)] == [plain] * 12
