"""Session behaviour added for MQTT 5.0: deliveries that end unsent (expired, too large) and
message expiry in the queue, driven with a fake outlet (no sockets)."""

from __future__ import annotations

from broker.core.message import Message, expiry_left, is_expired
from broker.core.metrics import Metrics
from broker.core.session import Session
from broker.protocol.constants import PropertyId

EXPIRY = PropertyId.MESSAGE_EXPIRY_INTERVAL


class Outlet:
    """Refuses (returns False for) the payloads in `refuse`, as a channel does for a message
    that expired or is larger than the client's Maximum Packet Size."""

    def __init__(self, receive_maximum: int = 65535) -> None:
        self.receive_maximum = receive_maximum
        self.refuse: set[bytes] = set()
        self.sent: list[tuple[bytes, int | None, bool]] = []

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        dup: bool,
        subscription_ids: list[int] | None,
    ) -> bool:
        if message.payload in self.refuse:
            return False
        self.sent.append((message.payload, packet_id, dup))
        return True

    def send_pubrel(self, packet_id: int) -> None:
        pass


def session(max_inflight: int = 2, max_queued: int = 3) -> tuple[Session, Metrics]:
    metrics = Metrics()
    s = Session(
        "c",
        clean_start=False,
        expiry_interval=60,
        max_inflight=max_inflight,
        max_queued=max_queued,
        metrics=metrics,
        now=0.0,
    )
    return s, metrics


def message(payload: bytes, expiry: int | None = None, at: float = 0.0) -> Message:
    props = {EXPIRY: expiry} if expiry is not None else {}
    return Message("t", payload, 1, False, props, "p", at)


def test_expiry_left_counts_whole_seconds_waited_MQTT_3_3_2_6() -> None:
    m = message(b"x", 10, at=100.0)
    assert expiry_left(m, 100.9) == 10  # less than a second: unchanged (and cacheable)
    assert expiry_left(m, 103.5) == 7
    assert expiry_left(m, 99.0) == 10  # a clock behind the origin's never adds time
    assert not is_expired(m, 109.99) and is_expired(m, 110.0)
    assert expiry_left(message(b"y"), 500.0) is None
    assert expiry_left(message(b"z", 0), 500.0) is None  # 0: no expiry, as mosquitto


def test_refused_qos1_delivery_takes_no_window_slot_MQTT_3_1_2_25() -> None:
    s, metrics = session(max_inflight=1)
    outlet = Outlet()
    outlet.refuse = {b"too-big"}
    s.attach(outlet)
    s.deliver(message(b"too-big"), 1, False, None, 0.0)
    assert s.inflight == {}  # as if its delivery had completed
    s.deliver(message(b"ok"), 1, False, None, 0.0)
    assert [p for p, _, _ in outlet.sent] == [b"ok"]
    assert metrics.counters["messages/dropped"] == 1 and s.mqueue_dropped == 1


def test_queued_messages_refused_on_drain_do_not_block_the_queue() -> None:
    s, _ = session(max_inflight=1)
    s.deliver(message(b"a"), 1, False, None, 0.0)  # offline: queued
    s.deliver(message(b"expired"), 1, False, None, 0.0)
    s.deliver(message(b"b"), 1, False, None, 0.0)
    outlet = Outlet()
    outlet.refuse = {b"expired"}
    s.attach(outlet)
    s.resume(0.0)
    (pid_a,) = s.inflight
    assert s.on_puback(pid_a, 0.0)
    assert [p for p, _, _ in outlet.sent] == [b"a", b"b"]


def test_inflight_refused_on_resume_leaves_the_window_MQTT_3_3_2_5() -> None:
    s, _ = session(max_inflight=2)
    first = Outlet()
    s.attach(first)
    s.deliver(message(b"old"), 1, False, None, 0.0)
    s.deliver(message(b"new"), 1, False, None, 0.0)
    s.detach(1.0)
    second = Outlet()
    second.refuse = {b"old"}  # expired meanwhile
    s.attach(second)
    s.resume(2.0)
    assert [(p, dup) for p, _, dup in second.sent] == [(b"new", True)]
    assert len(s.inflight) == 1


def test_full_queue_sheds_expired_messages_first() -> None:
    s, metrics = session(max_queued=2)
    s.deliver(message(b"short", 5), 1, False, None, 0.0)
    s.deliver(message(b"long", 500), 1, False, None, 0.0)
    s.deliver(message(b"newcomer"), 1, False, None, 10.0)  # full, but "short" has expired
    assert [item[0].payload for item in s.queue] == [b"long", b"newcomer"]
    assert metrics.counters["messages/expired"] == 1
    s.deliver(message(b"no-room"), 1, False, None, 10.0)  # full of live ones: dropped
    assert [item[0].payload for item in s.queue] == [b"long", b"newcomer"]
    assert metrics.counters["messages/dropped"] == 2
