"""The late QoS 2 copies a held session copy parks, and the fold of another copy into it
(`broker.core.late_hold`), driven directly on a `Session` with a fake outlet."""

from __future__ import annotations

from typing import Any

from test_session import FakeOutlet, make_session

from broker.core.hlc import Stamp
from broker.core.late_hold import LateHold
from broker.core.message import Message, message_to_dict


def _qos2(i: int, node: str = "b") -> Message:
    message = Message(f"w/{i}", b"x", 2, publisher="p", node=node)
    message.stamp = Stamp(100 + i, 0, node)
    return message


def test_parked_until_released_then_each_once_MQTT_4_3_3() -> None:
    session, _ = make_session(max_queued=10)
    outlet = FakeOutlet()
    session.attach(outlet)
    hold = LateHold()
    hold.hold("c")
    for i in range(3):
        assert hold.park(session, _qos2(i), 2, False, None)
    assert outlet.sent == []
    assert session.accept_qos2(Stamp(101, 0, "b"))  # w/1 reached the session another way
    assert hold.release("c", session, 0.0) == (2, 1)
    assert [topic for topic, *_ in outlet.sent] == ["w/0", "w/2"]
    assert "c" not in hold and not hold.park(session, _qos2(4), 2, False, None)


def test_parking_is_bounded_by_the_queue_limit() -> None:
    session, _ = make_session(max_queued=2)
    hold = LateHold()
    hold.hold("c")
    assert [hold.park(session, _qos2(i), 2, False, None) for i in range(3)] == [
        True,
        True,
        False,  # delivered at once by the caller: a repeat is possible, nothing is lost
    ]


def test_a_session_gone_drops_what_was_parked() -> None:
    session, _ = make_session()
    hold = LateHold()
    hold.hold("c")
    hold.park(session, _qos2(0), 2, False, None)
    assert hold.release("c", None, 0.0) == (0, 1)


def _state(
    seen: list[Stamp], queue: list[Message], inflight: list[tuple[Message, bool]]
) -> dict[str, Any]:
    return {
        "qos2_seen": [list(s) for s in seen],
        "queue": [[message_to_dict(m), m.qos, False, None] for m in queue],
        "inflight": [
            [i + 1, message_to_dict(m), m.qos, False, None, comp]
            for i, (m, comp) in enumerate(inflight)
        ],
    }


def test_fold_in_records_what_the_other_copy_delivered_and_carries_the_rest() -> None:
    """The other copy delivered d (in its record, not held), released r (awaiting PUBCOMP),
    sent u without a PUBREC (a client that delivers on PUBREL has not had it), and queued q
    and a QoS 1 message. Here: d and r are repeats from now on; r's exchange goes on here (a
    PUBREL for its packet id, never the message again); u, the QoS 1 message and q are
    delivered; q2, which this copy had already, is not."""
    session, _ = make_session(max_inflight=10, max_queued=10)
    outlet = FakeOutlet()
    session.attach(outlet)
    _, r, u, q, q2 = (_qos2(i, "a") for i in range(5))  # d: delivered, in the record only
    stamps = [Stamp(100 + i, 0, "a") for i in range(5)]
    qos1 = Message("w/9", b"x", 1, publisher="p", node="a")
    session.accept_qos2(stamps[4])
    state = _state(stamps, [q, qos1, q2], [(r, True), (u, False)])
    hold = LateHold()
    assert hold.fold_in(session, state, 0.0) == (4, 1)
    assert outlet.pubrels == [1]  # r's packet id
    assert [topic for topic, *_ in outlet.sent] == ["w/2", "w/3", "w/9"]
    assert 1 not in [packet_id for _, _, packet_id, _ in outlet.sent]
    assert not session.accept_qos2(stamps[0]) and not session.accept_qos2(stamps[1])


def test_a_released_exchange_is_taken_over_only_on_a_free_packet_id() -> None:
    """`Session.adopt_released`: the PUBREL goes out, and the PUBCOMP completes it; an id
    in use here is the client's state for this copy's own message, so it is left alone."""
    session, _ = make_session(max_inflight=10)
    outlet = FakeOutlet()
    session.attach(outlet)
    session.deliver(_qos2(0), 2, False, None, 0.0)  # packet id 1, here
    assert not session.adopt_released(1, _qos2(1), False, None, 0.0)
    assert session.adopt_released(7, _qos2(2), False, None, 0.0)
    assert outlet.pubrels == [7]
    assert session.on_pubcomp(7, 0.0) and 7 not in session.inflight
    session.start_packet_ids_at(65535)
    assert session.next_packet_id() == 65535 and session.next_packet_id() == 2  # 1 in use


def test_a_resumed_copys_queue_waits_for_the_fold_MQTT_4_3_3() -> None:
    """`hold_queue` (a copy resumed while a member heals): its queued QoS 2 messages wait,
    the rest of the queue does not. The other copy's fold says it delivered one of them (a
    message published just after the heal reached both copies), so only the other is
    delivered here at the release, without asking the repeat record that accepted both when
    they were queued (MQTT-4.3.3-2: exactly once)."""
    session, _ = make_session(max_queued=10)
    both, only_here = _qos2(0, "a"), _qos2(1, "a")
    plain = Message("w/q1", b"x", 1, publisher="p", node="a")
    for message in (both, plain, only_here):
        if message.stamp is not None:
            assert session.accept_qos2(message.stamp)  # as routing here accepted it
        session.deliver(message, message.qos, False, None, 0.0)  # offline: queued
    hold = LateHold()
    assert hold.hold_queue(session) == 2
    assert [m.topic for m, *_ in session.queue] == ["w/q1"]
    assert "c" in hold and hold.holds_any("c")
    on_disk = hold.on_disk("c", {"queue": []})  # a restart meanwhile delivers them
    assert [item[0]["topic"] for item in on_disk["queue"]] == ["w/0", "w/1"]
    assert both.stamp is not None
    hold.fold_in(session, _state([both.stamp], [], []), 0.0)
    assert hold.release("c", session, 0.0) == (1, 0)
    assert [m.topic for m, *_ in session.queue] == ["w/q1", "w/1"]
    assert not hold.holds_any("c")
