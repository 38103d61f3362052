"""The session state machine, driven directly with a fake outlet (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.message import Message
from broker.core.metrics import Metrics
from broker.core.session import Session
from broker.protocol.constants import PropertyId


class FakeOutlet:
    def __init__(self, receive_maximum: int = 65535, accept_qos0: bool = True) -> None:
        self.receive_maximum = receive_maximum
        self.accept_qos0 = accept_qos0
        self.sent: list[tuple[str, int, int | None, bool]] = []  # (topic, qos, packet id, dup)
        self.pubrels: list[int] = []

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        dup: bool,
        subscription_ids: list[int] | None,
    ) -> bool:
        if qos == 0 and not self.accept_qos0:
            return False
        self.sent.append((message.topic, qos, packet_id, dup))
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self.pubrels.append(packet_id)


def make_session(**kw: int) -> tuple[Session, Metrics]:
    metrics = Metrics()
    session = Session(
        "c",
        clean_start=False,
        expiry_interval=kw.get("expiry", 60),
        max_inflight=kw.get("max_inflight", 3),
        max_queued=kw.get("max_queued", 5),
        metrics=metrics,
        now=0.0,
    )
    return session, metrics


def msg(i: int, qos: int = 1) -> Message:
    return Message(f"t/{i}", b"x", qos)


def test_inflight_window_then_queue_then_drain_in_order_MQTT_4_6_0() -> None:
    session, _ = make_session(max_inflight=2)
    outlet = FakeOutlet()
    session.attach(outlet)
    for i in range(5):
        session.deliver(msg(i), 1, False, None, 0.0)
    assert [s[0] for s in outlet.sent] == ["t/0", "t/1"]
    assert len(session.queue) == 3
    first_id = outlet.sent[0][2]
    assert first_id is not None
    assert session.on_puback(first_id, 1.0)
    assert [s[0] for s in outlet.sent] == ["t/0", "t/1", "t/2"]


def test_client_receive_maximum_narrows_the_window_MQTT_3_3_4_9() -> None:
    session, _ = make_session(max_inflight=10)
    outlet = FakeOutlet(receive_maximum=1)
    session.attach(outlet)
    session.deliver(msg(0), 1, False, None, 0.0)
    session.deliver(msg(1), 1, False, None, 0.0)
    assert len(outlet.sent) == 1 and len(session.queue) == 1


def test_offline_queue_is_bounded_and_drops_are_counted() -> None:
    session, metrics = make_session(max_queued=3)
    for i in range(5):
        session.deliver(msg(i, qos=2), 2, False, None, 0.0)
    assert len(session.queue) == 3
    assert session.mqueue_dropped == 2
    assert metrics.get("messages/dropped") == 2
    assert metrics.get("messages/qos2/dropped") == 2


def test_qos0_not_queued_offline_and_dropped_when_outlet_refuses() -> None:
    session, metrics = make_session()
    session.deliver(msg(0, 0), 0, False, None, 0.0)
    assert not session.queue
    assert metrics.get("messages/dropped") == 1  # offline QoS 0: not queued, but counted
    outlet = FakeOutlet(accept_qos0=False)
    session.attach(outlet)
    session.deliver(msg(1, 0), 0, False, None, 0.0)
    assert metrics.get("messages/dropped") == 2


def test_resume_resends_publish_with_dup_and_pubrel_in_order_MQTT_4_4_0_1() -> None:
    session, _ = make_session(max_inflight=3)
    first = FakeOutlet()
    session.attach(first)
    session.deliver(msg(0, 2), 2, False, None, 0.0)
    session.deliver(msg(1, 1), 1, False, None, 0.0)
    qos2_id = first.sent[0][2]
    assert qos2_id is not None
    assert session.on_pubrec(qos2_id, 0.5)
    session.detach(1.0)
    session.deliver(msg(2, 1), 1, False, None, 1.0)  # queued while offline
    second = FakeOutlet()
    session.attach(second)
    session.resume(2.0)
    assert second.pubrels == [qos2_id]
    assert second.sent[0][0] == "t/1" and second.sent[0][3] is True  # DUP on resend
    assert second.sent[1][0] == "t/2" and second.sent[1][3] is False
    assert session.on_pubcomp(qos2_id, 3.0)
    assert qos2_id not in session.inflight


def test_acks_for_unknown_or_wrong_qos_ids_are_refused() -> None:
    session, _ = make_session()
    outlet = FakeOutlet()
    session.attach(outlet)
    session.deliver(msg(0, 1), 1, False, None, 0.0)
    packet_id = outlet.sent[0][2]
    assert packet_id is not None
    assert not session.on_pubrec(packet_id, 0.0)  # a QoS 1 id cannot be PUBREC'd
    assert not session.on_pubcomp(packet_id, 0.0)
    assert not session.on_puback(packet_id + 1, 0.0)
    assert session.on_puback(packet_id, 0.0)
    assert not session.on_puback(packet_id, 0.0)  # only once


def test_packet_ids_skip_inflight_and_wrap_MQTT_2_2_1_3() -> None:
    session, _ = make_session(max_inflight=5)
    session._next_packet_id = 65534
    outlet = FakeOutlet()
    session.attach(outlet)
    for i in range(3):
        session.deliver(msg(i), 1, False, None, 0.0)
    assert [s[2] for s in outlet.sent] == [65534, 65535, 1]


def test_expiry_only_when_offline_and_past_interval() -> None:
    session, _ = make_session(expiry=10)
    session.attach(FakeOutlet())
    assert not session.expired(100.0)
    session.detach(100.0)
    assert not session.expired(109.0)
    assert session.expired(110.0)
    session.expiry_interval = 0xFFFFFFFF
    assert not session.expired(1e12)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.sampled_from(["deliver1", "deliver2", "ack", "rec", "comp", "bounce"]), max_size=60
    ),
    max_inflight=st.integers(1, 4),
)
def test_window_never_exceeded_and_nothing_lost(ops: list[str], max_inflight: int) -> None:
    """Whatever the order of deliveries, acks and reconnects: the inflight window holds, every
    delivered QoS 1/2 message is either acknowledged, inflight or queued, and ids are unique."""
    session, _ = make_session(max_inflight=max_inflight, max_queued=1000)
    outlet = FakeOutlet()
    session.attach(outlet)
    delivered = 0
    completed = 0
    for op in ops:
        if op.startswith("deliver"):
            qos = int(op[-1])
            session.deliver(msg(delivered, qos), qos, False, None, 0.0)
            delivered += 1
        elif op == "ack":
            ids = [pid for pid, e in session.inflight.items() if e.qos == 1]
            if ids and session.on_puback(ids[0], 0.0):
                completed += 1
        elif op == "rec":
            ids = [pid for pid, e in session.inflight.items() if e.qos == 2 and not e.awaiting_comp]
            if ids:
                assert session.on_pubrec(ids[0], 0.0)
        elif op == "comp":
            ids = [pid for pid, e in session.inflight.items() if e.awaiting_comp]
            if ids and session.on_pubcomp(ids[0], 0.0):
                completed += 1
        else:
            session.detach(0.0)
            outlet = FakeOutlet()
            session.attach(outlet)
            session.resume(0.0)
        assert len(session.inflight) <= max_inflight
        assert len(set(session.inflight)) == len(session.inflight)
        assert completed + len(session.inflight) + len(session.queue) == delivered


def test_full_queue_without_expiring_messages_is_not_rescanned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refusing a message at a full queue is O(1) unless something in it can expire (a scan
    per refused message made QoS 1 fan-in collapse under load)."""
    import broker.core.session as session_module

    calls = 0
    real = session_module.is_expired

    def counting(message: Message, now: float) -> bool:
        nonlocal calls
        calls += 1
        return real(message, now)

    monkeypatch.setattr(session_module, "is_expired", counting)
    session, metrics = make_session(max_queued=5)
    for i in range(105):
        session.deliver(msg(i), 1, False, None, 0.0)
    assert len(session.queue) == 5 and metrics.get("messages/dropped") == 100
    assert calls == 0


def test_full_queue_sheds_a_message_once_it_expires_MQTT_3_3_2_5() -> None:
    session, metrics = make_session(max_queued=2)
    expiring = Message("t/e", b"x", 1, properties={PropertyId.MESSAGE_EXPIRY_INTERVAL: 10})
    session.deliver(expiring, 1, False, None, 0.0)
    session.deliver(msg(1), 1, False, None, 0.0)
    session.deliver(msg(2), 1, False, None, 5.0)  # full, nothing expired yet: dropped
    assert [m.topic for m, *_ in session.queue] == ["t/e", "t/1"]
    session.deliver(msg(3), 1, False, None, 11.0)  # t/e has expired: it makes room
    assert [m.topic for m, *_ in session.queue] == ["t/1", "t/3"]
    assert metrics.get("messages/expired") == 1
