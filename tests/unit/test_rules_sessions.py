"""Session rules: redelivery on reconnect, QoS 2 state across connections, expiry, offline QoS 0
(MQTT 3.1.1 sections 3.1.2.4, 3.2.2.2, 4.3.3, 4.4) on the in-memory harness
(tests/memharness.py); expiry is reached by moving the fake clock. The rules with real clients
stay in tests/integration/test_core_sessions.py."""

from __future__ import annotations

from memharness import MemBroker, MemClient

from broker.protocol.packets import Disconnect, PubAck, PubComp, Publish, PubRec, PubRel


def _disconnect(mem: MemBroker, client: MemClient, client_id: str) -> None:
    """Clean DISCONNECT (which keeps a clean=0 session)."""
    client.send(Disconnect())
    assert client.closed
    assert client_id not in mem.broker.connected


def _drop(mem: MemBroker, client: MemClient, client_id: str) -> None:
    """The socket goes without DISCONNECT."""
    client.lose()
    assert client_id not in mem.broker.connected


def test_unacked_qos1_resent_with_dup_on_reconnect_MQTT_4_4_0_1() -> None:
    mem = MemBroker()
    sub, _ = mem.connect("redeliver1", clean_start=False)
    pub, _ = mem.connect("redeliver1-pub")
    sub.subscribe(("rd1/t", 1))
    pub.publish_qos1("rd1/t", b"m1", 1)
    first = sub.expect(Publish)
    assert (first.payload, first.qos, first.dup) == (b"m1", 1, False)
    _drop(mem, sub, "redeliver1")  # no PUBACK
    pub.publish_qos1("rd1/t", b"m2", 2)  # queued while offline

    sub, ack = mem.connect("redeliver1", clean_start=False)
    assert ack.session_present is True
    again = sub.expect(Publish)
    # The same message, same packet id, DUP=1 (MQTT-3.3.1-1), before anything newer.
    assert (again.payload, again.qos, again.dup) == (b"m1", 1, True)
    assert again.packet_id == first.packet_id
    queued = sub.expect(Publish)
    assert (queued.payload, queued.dup) == (b"m2", False)
    assert queued.packet_id != again.packet_id
    sub.send(PubAck(again.packet_id or 0))
    sub.send(PubAck(queued.packet_id or 0))
    assert sub.ping_barrier() == []
    assert mem.broker.sessions["redeliver1"].inflight == {}


def test_qos2_unacked_publish_resent_with_dup_MQTT_4_4_0_1() -> None:
    mem = MemBroker()
    sub, _ = mem.connect("redeliver2a", clean_start=False)
    pub, _ = mem.connect("redeliver2a-pub")
    sub.subscribe(("rd2a/t", 2))
    pub.send(Publish("rd2a/t", b"q2", qos=2, packet_id=1))
    pub.expect(PubRec)
    first = sub.expect(Publish)
    assert (first.qos, first.dup) == (2, False)
    _drop(mem, sub, "redeliver2a")  # no PUBREC

    sub, ack = mem.connect("redeliver2a", clean_start=False)
    assert ack.session_present is True
    again = sub.expect(Publish)
    assert (again.payload, again.qos, again.dup) == (b"q2", 2, True)
    assert again.packet_id == first.packet_id
    sub.send(PubRec(again.packet_id or 0))
    assert sub.expect(PubRel).packet_id == again.packet_id
    sub.send(PubComp(again.packet_id or 0))
    assert sub.ping_barrier() == []
    assert mem.broker.sessions["redeliver2a"].inflight == {}


def test_qos2_pubrel_resent_after_pubrec_MQTT_4_4_0_1() -> None:
    mem = MemBroker()
    sub, _ = mem.connect("redeliver2b", clean_start=False)
    pub, _ = mem.connect("redeliver2b-pub")
    sub.subscribe(("rd2b/t", 2))
    pub.send(Publish("rd2b/t", b"q2", qos=2, packet_id=1))
    pub.expect(PubRec)
    first = sub.expect(Publish)
    sub.send(PubRec(first.packet_id or 0))
    assert sub.expect(PubRel).packet_id == first.packet_id
    _drop(mem, sub, "redeliver2b")  # no PUBCOMP

    sub, ack = mem.connect("redeliver2b", clean_start=False)
    assert ack.session_present is True
    rel = sub.expect(PubRel)  # not the PUBLISH again
    assert rel.packet_id == first.packet_id
    sub.send(PubComp(rel.packet_id))
    assert sub.ping_barrier() == []
    assert mem.broker.sessions["redeliver2b"].inflight == {}


def test_incoming_qos2_state_survives_reconnect_MQTT_4_3_3_2() -> None:
    """The publisher's side: PUBLISH QoS 2 routed, connection lost before PUBREL. After a
    clean=0 reconnect the resent PUBLISH (DUP=1) is not routed again and PUBREL completes."""
    mem = MemBroker()
    sub, _ = mem.connect("in2-sub")
    pub, _ = mem.connect("in2-pub", clean_start=False)
    sub.subscribe(("in2/t", 1))
    pub.send(Publish("in2/t", b"once", qos=2, packet_id=5))
    pub.expect(PubRec)
    _drop(mem, pub, "in2-pub")
    pub, ack = mem.connect("in2-pub", clean_start=False)
    assert ack.session_present is True
    pub.send(Publish("in2/t", b"once", qos=2, packet_id=5, dup=True))
    assert pub.expect(PubRec).packet_id == 5
    pub.send(PubRel(5))
    assert pub.expect(PubComp).packet_id == 5
    got = sub.expect(Publish)
    sub.send(PubAck(got.packet_id or 0))
    assert sub.ping_barrier() == []  # exactly one copy


def test_session_expires_after_interval() -> None:
    """session_expiry_interval=1: a disconnected clean=0 session is discarded by the tick once
    the interval has passed; reconnecting then finds no session (MQTT-3.2.2-3)."""
    mem = MemBroker(session_expiry_interval=1)
    sub, _ = mem.connect("expiring", clean_start=False)
    sub.subscribe(("exp/t", 1))
    _disconnect(mem, sub, "expiring")
    assert "expiring" in mem.broker.sessions
    mem.advance(0.5)
    assert "expiring" in mem.broker.sessions, "not expired yet"
    mem.advance(1.0)
    assert "expiring" not in mem.broker.sessions
    sub, ack = mem.connect("expiring", clean_start=False)
    pub, _ = mem.connect("expiring-pub")
    assert ack.session_present is False
    pub.publish_qos1("exp/t", b"x", 1)
    assert sub.ping_barrier() == []  # the subscription went with the session


def test_persistent_session_kept_when_expiry_setting_is_0_MQTT_3_1_2_5() -> None:
    mem = MemBroker(session_expiry_interval=0)
    sub, _ = mem.connect("zero-cap", clean_start=False)
    sub.subscribe(("zc/t", 1))
    _disconnect(mem, sub, "zero-cap")
    mem.advance(30 * 24 * 3600.0)  # a month later: 0 means kept for ever (mosquitto)
    pub, _ = mem.connect("zero-cap-pub")
    pub.publish_qos1("zc/t", b"stored", 1)
    sub, ack = mem.connect("zero-cap", clean_start=False)
    assert ack.session_present is True
    assert sub.expect(Publish).payload == b"stored"


def test_qos0_for_offline_session_counted_as_dropped() -> None:
    mem = MemBroker()
    sub, _ = mem.connect("offline-q0", clean_start=False)
    sub.subscribe(("oq0/t", 0))
    _disconnect(mem, sub, "offline-q0")
    counters = mem.broker.metrics.counters
    before = counters["messages/dropped"]
    pub, _ = mem.connect("offline-q0-pub")
    pub.publish_qos1("oq0/t", b"lost", 1)  # delivered at QoS 0
    assert counters["messages/dropped"] - before == 1
