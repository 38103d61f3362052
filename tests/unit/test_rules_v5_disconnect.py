"""The 5.0 server DISCONNECT and its reason codes (MQTT 5 section 3.14, 4.13) on the in-memory
harness (tests/memharness.py); the keepalive deadline is reached by moving the fake clock. The
shutdown cases (a node stopping) stay in tests/integration/test_v5_basics.py."""

from __future__ import annotations

from memharness import MemBroker, MemClient

from broker.protocol.constants import MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import Connect, Disconnect, PingReq, PingResp, Publish
from broker.protocol.properties import encode_varint


def expect_server_disconnect(client: MemClient, code: int) -> Disconnect:
    """The next packet is DISCONNECT with `code`, then the broker closes the connection."""
    packet = client.expect(Disconnect)
    # MQTT-3.14.2-2: a server DISCONNECT never carries a Session Expiry Interval.
    assert PropertyId.SESSION_EXPIRY_INTERVAL not in packet.properties
    assert packet.reason_code == code, f"DISCONNECT {packet.reason_code:#04x}, want {code:#04x}"
    assert client.closed
    assert client.received() == [], "nothing after the DISCONNECT"
    return packet


def raw_publish_v5(topic: bytes, props: bytes, payload: bytes) -> bytes:
    """A QoS 0 5.0 PUBLISH with a hand-made property block (for values our encoder refuses)."""
    body = len(topic).to_bytes(2, "big") + topic + encode_varint(len(props)) + props + payload
    return b"\x30" + encode_varint(len(body)) + body


def test_server_disconnect_0x8E_session_taken_over_MQTT_3_1_4_3() -> None:
    mem = MemBroker()
    first, _ = mem.connect("same-id", MQTT_5)
    second, ack = mem.connect("same-id", MQTT_5)
    assert ack.reason_code == 0
    expect_server_disconnect(first, ReasonCode.SESSION_TAKEN_OVER)
    second.send(PingReq())  # the new connection is the live one
    second.expect(PingResp)


def test_server_disconnect_0x8D_keepalive_timeout_MQTT_3_1_2_22() -> None:
    mem = MemBroker()
    client, ack = mem.connect("sleepy", MQTT_5, keepalive=1)
    assert ack.reason_code == 0
    mem.advance(1.5)
    assert not client.closed
    # Nothing sent: after 1.5 x keepalive the broker closes, telling a 5.0 client why.
    mem.advance(0.1)
    expect_server_disconnect(client, ReasonCode.KEEP_ALIVE_TIMEOUT)


def test_server_disconnect_0x81_malformed_packet_MQTT_3_3_1_4() -> None:
    client, _ = MemBroker().connect("malformed", MQTT_5)
    client.send_raw(b"\x36\x05\x00\x01t\x00\x01")  # PUBLISH with QoS bits 11
    expect_server_disconnect(client, ReasonCode.MALFORMED_PACKET)


def test_server_disconnect_0x82_second_connect_MQTT_3_1_0_2() -> None:
    client, _ = MemBroker().connect("twice", MQTT_5)
    client.send(Connect("twice", protocol_level=MQTT_5))
    expect_server_disconnect(client, ReasonCode.PROTOCOL_ERROR)


def test_server_disconnect_0x94_topic_alias_zero_MQTT_3_3_2_8() -> None:
    client, _ = MemBroker().connect("alias-zero", MQTT_5)
    client.send_raw(raw_publish_v5(b"a/b", b"\x23\x00\x00", b"x"))  # Topic Alias = 0
    expect_server_disconnect(client, ReasonCode.TOPIC_ALIAS_INVALID)


def test_topic_alias_zero_closes_connection_MQTT_3_3_2_8() -> None:
    """Whatever the reason code, a Topic Alias of 0 ends the connection with an error."""
    client, _ = MemBroker().connect("alias-zero-any", MQTT_5)
    client.send_raw(raw_publish_v5(b"a/b", b"\x23\x00\x00", b"x"))
    assert client.expect(Disconnect).reason_code >= 0x80
    assert client.closed


def test_unknown_topic_alias_with_empty_topic_is_protocol_error_3_3_2_3_4() -> None:
    client, _ = MemBroker().connect("alias-unknown", MQTT_5)
    client.send(Publish("", b"x", 0, properties={PropertyId.TOPIC_ALIAS: 9}))
    expect_server_disconnect(client, ReasonCode.PROTOCOL_ERROR)


def test_disconnect_raising_session_expiry_from_zero_is_protocol_error_3_14_2_2_2() -> None:
    """Section 3.14.2.2.2: CONNECT said 0, a non-zero value in DISCONNECT is a Protocol Error."""
    mem = MemBroker()
    client, _ = mem.connect("raise-expiry", MQTT_5)  # Session Expiry Interval absent: 0
    client.send(Disconnect(0, {PropertyId.SESSION_EXPIRY_INTERVAL: 30}))
    expect_server_disconnect(client, ReasonCode.PROTOCOL_ERROR)
    assert "raise-expiry" not in mem.broker.sessions
