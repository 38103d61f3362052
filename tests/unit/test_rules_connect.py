"""CONNECT, PINGREQ and keepalive rules (MQTT 3.1.1 sections 3.1, 3.2, 3.12) on the in-memory
harness (tests/memharness.py), with a fake clock: the keepalive deadline is reached by moving the
clock, not by waiting. The takeover and real-client rules stay in
tests/integration/test_core_connect_takeover.py."""

from __future__ import annotations

from memharness import MemBroker

from broker.protocol.packets import Connect, PingReq, PingResp, Publish


def test_zero_length_client_id_with_clean_session_is_assigned_MQTT_3_1_3_6() -> None:
    mem = MemBroker()
    a, ack_a = mem.connect("", clean_start=True)
    b, ack_b = mem.connect("", clean_start=True)
    assert ack_a.reason_code == 0 and ack_b.reason_code == 0
    assert ack_a.session_present is False
    assert len(mem.broker.connected) == 2  # two distinct, unique identifiers
    assert all(cid for cid in mem.broker.connected)
    # And the connection works.
    assert a.subscribe(("anon/t", 1)) == [1]
    b.publish_qos1("anon/t", b"hi", 1)
    assert a.expect(Publish).payload == b"hi"


def test_zero_length_client_id_without_clean_session_refused_MQTT_3_1_3_8() -> None:
    mem = MemBroker()
    client, ack = mem.connect("", clean_start=False)
    assert (ack.reason_code, ack.session_present) == (0x02, False)  # identifier rejected
    assert client.closed  # MQTT-3.2.2-5
    assert mem.broker.connected == {}


def test_anonymous_refused_with_code_5_and_closed_MQTT_3_2_2_4_and_5() -> None:
    client, ack = MemBroker(allow_anonymous=False).connect("anon")
    assert (ack.reason_code, ack.session_present) == (0x05, False)
    assert client.closed


def test_second_connect_closes_MQTT_3_1_0_2() -> None:
    mem = MemBroker()
    client, _ = mem.connect("twice")
    client.send(Connect("twice"))
    assert client.closed
    assert client.received() == []
    assert "twice" not in mem.broker.connected


def test_pingreq_gets_pingresp_MQTT_3_12_4_1() -> None:
    client, _ = MemBroker().connect("pinger")
    for _ in range(3):
        client.send(PingReq())
        client.expect(PingResp)


def test_keepalive_timeout_closes_connection_MQTT_3_1_2_24() -> None:
    """keepalive=1 and silence: disconnected after 1.5 keepalives (checked by the tick)."""
    mem = MemBroker()
    client, _ = mem.connect("sleepy", keepalive=1)
    mem.advance(1.5)
    assert not client.closed, "not past one and a half keepalives yet"
    client.send(PingReq())  # any packet restarts the count
    client.expect(PingResp)
    mem.advance(1.5)
    assert not client.closed
    mem.advance(0.1)
    assert client.closed
    assert "sleepy" not in mem.broker.connected
