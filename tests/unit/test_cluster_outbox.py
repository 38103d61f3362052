"""The bookkeeping of reliable QoS 1/2 forwards (`cluster.outbox`): numbering, cumulative
acknowledgement, bounds, and the receiver's de-duplication per run of each sender."""

from __future__ import annotations

import pytest

from cluster.outbox import Inbox, Outbox
from cluster.wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    MessageType,
    WireError,
    batch_seq,
    encode_frame,
    forward_ack_body,
    negotiate,
)


def entries(n: int, start: int = 0) -> list[list[object]]:
    return [[f"t/{i}", b"x", 1, False, {}, "c", 0.0] for i in range(start, start + n)]


def test_records_are_numbered_when_sent_and_freed_by_a_cumulative_ack() -> None:
    box = Outbox(max_messages=100, max_bytes=10_000)
    first, _ = box.add(entries(3), 30)
    second, _ = box.add(entries(2, 3), 20)
    assert first is not None and second is not None
    assert box.parked() == [first, second] and box.messages == 5 and box.size == 50
    assert box.number(first) == 1 and box.number(second) == 2
    assert box.ack(1) == 3 and box.records[0] is second and box.messages == 2
    assert box.ack(1) == 0  # an old ack again changes nothing
    assert box.ack(2) == 2 and box.messages == 0 and box.size == 0


def test_a_refused_frame_gives_its_number_back_so_numbers_stay_increasing() -> None:
    box = Outbox(max_messages=100, max_bytes=10_000)
    record, _ = box.add(entries(1), 10)
    assert record is not None
    assert box.number(record) == 1
    box.unnumber(record)  # the transport did not take it
    assert record.seq is None and box.parked() == [record] and box.numbered() == []
    assert box.number(record) == 1  # the receiver never saw 1: it is reused
    assert box.parked() == [] and box.numbered() == [record]


def test_the_buffer_is_bounded_in_messages_and_bytes_and_says_what_did_not_fit() -> None:
    """(What does not fit is sent without being held: the forwarder's business.)"""
    box = Outbox(max_messages=5, max_bytes=1_000)
    record, dropped = box.add(entries(4), 40)
    assert record is not None and dropped == 0
    record, dropped = box.add(entries(3), 30)
    assert record is not None and len(record.entries) == 1 and dropped == 2
    assert box.messages == 5
    record, dropped = box.add(entries(1), 10)
    assert record is None and dropped == 1  # full
    small = Outbox(max_messages=100, max_bytes=50)
    assert small.add(entries(1), 60) == (None, 1)  # too many bytes
    assert box.drop_all() == 5 and box.messages == 0 and not box.records


def test_numbering_survives_drop_all() -> None:
    """A peer declared dead may come back with the same run (a healed partition): its
    de-duplication still holds our last number, so ours must go on from there."""
    box = Outbox(max_messages=100, max_bytes=10_000)
    record, _ = box.add(entries(1), 10)
    assert record is not None
    box.number(record)
    box.drop_all()
    record, _ = box.add(entries(1), 10)
    assert record is not None
    assert box.number(record) == 2


def test_inbox_processes_each_number_once_per_run_of_the_sender() -> None:
    inbox = Inbox()
    assert inbox.accept("a", 100, 1)
    assert inbox.accept("a", 100, 2)
    assert not inbox.accept("a", 100, 2)  # a resend of what was processed
    assert not inbox.accept("a", 100, 1)
    assert inbox.accept("b", 5, 1)  # per sender
    assert inbox.accept("a", 200, 1)  # a new run of the sender numbers from 1 again
    assert not inbox.accept("a", 200, 1)
    assert inbox.accept("a", 100, 3)  # a late frame of the previous run is not compared
    assert not inbox.accept("a", 200, 1)  # ... and does not replace the current run


def test_forward_ack_and_batch_numbers_exist_from_version_3_only() -> None:
    """Wire compatibility: FORWARD_ACK is never encoded for a version-2 peer; a batch's `seq`
    is read only when present and valid."""
    with pytest.raises(WireError):
        encode_frame(MessageType.FORWARD_ACK, forward_ack_body("a", 1), version=2)
    frame = encode_frame(MessageType.FORWARD_ACK, forward_ack_body("a", 7), version=3)
    [(version, msg_type, body)] = FrameDecoder().feed(frame)
    assert (version, msg_type, body) == (3, MessageType.FORWARD_ACK, {"from": "a", "seq": 7})
    assert PROTOCOL_VERSION >= 3 and negotiate(2) == 2
    assert batch_seq({"origin": "a", "msgs": []}) is None
    assert batch_seq({"origin": "a", "msgs": [], "seq": 3}) == 3
    for bad in (0, -1, True, "3", 1.5):
        with pytest.raises(WireError):
            batch_seq({"origin": "a", "msgs": [], "seq": bad})
