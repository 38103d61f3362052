"""MQTT 5.0 intervals: Session Expiry, Message Expiry and Will Delay.

Time is a `FakeClock` on the broker (see test_v5_support): a test makes seconds pass and runs
`broker.tick()` itself, so no test sleeps for an interval or asserts on timing. Each test names
the normative statement (MQTT-x.y.z-n) or section it checks.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from test_v5_support import (
    Paho,
    ack_publish,
    aio,
    expect,
    fake_clock,
    gone,
    next_message,
    paho_props,
    ping_barrier,
    publish1,
    raw5,
    subscribe,
)

from broker.protocol.constants import PropertyId, ReasonCode
from broker.protocol.packets import Disconnect, PubAck, Publish, SubscriptionRequest, Will
from broker.server.node import Node

P = PropertyId
EXPIRY = P.MESSAGE_EXPIRY_INTERVAL


def session(seconds: int) -> dict[int, Any]:
    return {P.SESSION_EXPIRY_INTERVAL: seconds}


# --------------------------------------------------------------------------- Session Expiry


async def test_session_expiry_interval_paho_resumes_session_MQTT_3_1_2_23(node: Node) -> None:
    """A non-zero Session Expiry Interval keeps the session after the connection closes."""
    props = paho_props(PacketTypes.CONNECT, SessionExpiryInterval=120)
    sub = Paho(node.tcp_port, "se-paho")
    _flags, rc, _ = await sub.connect(props, clean_start=False)
    assert rc == 0
    await sub.subscribe("se/paho", SubscribeOptions(qos=1))
    await sub.close()
    await gone(node, "se-paho")
    assert "se-paho" in node.broker.sessions  # kept while offline

    pub, _ = await raw5(node, "se-paho-pub")
    assert (await publish1(pub, "se/paho", b"offline")).reason_code == ReasonCode.SUCCESS
    again = Paho(node.tcp_port, "se-paho")
    flags, rc, _ = await again.connect(props, clean_start=False)
    try:
        assert rc == 0 and flags.session_present  # MQTT-3.2.2-3
        message = await again.message()
        assert (message.topic, message.payload, message.qos) == ("se/paho", b"offline", 1)
    finally:
        await again.close()
        await pub.close()


async def test_session_expiry_capped_and_announced_in_connack_3_2_2_3_2(
    node_factory: Any,
) -> None:
    """The server may shorten the interval; it then says so in CONNACK (3.2.2.3.2)."""
    node = await node_factory(session_expiry_interval=30)
    client, ack = await raw5(node, "se-cap", clean_start=False, properties=session(3600))
    assert ack.properties[P.SESSION_EXPIRY_INTERVAL] == 30
    assert node.broker.sessions["se-cap"].expiry_interval == 30
    await client.close()


async def test_session_expires_after_interval_MQTT_3_1_2_23(node: Node) -> None:
    clock = fake_clock(node)
    client, _ = await raw5(node, "se-clock", clean_start=False, properties=session(10))
    await client.close()
    await gone(node, "se-clock")
    clock.advance(9)
    node.broker.tick()
    assert "se-clock" in node.broker.sessions
    clock.advance(2)
    node.broker.tick()
    assert "se-clock" not in node.broker.sessions
    again, ack = await raw5(node, "se-clock", clean_start=False, properties=session(10))
    assert not ack.session_present  # MQTT-3.2.2-3
    await again.close()


async def test_disconnect_sets_a_new_session_expiry_interval_3_14_2_2_2(node: Node) -> None:
    """The Session Expiry Interval of DISCONNECT replaces the one of CONNECT."""
    clock = fake_clock(node)
    client, _ = await raw5(node, "se-disc", clean_start=False, properties=session(10))
    client.send(Disconnect(ReasonCode.SUCCESS, session(100)))
    assert await client.closed()
    clock.advance(50)
    node.broker.tick()
    assert node.broker.sessions["se-disc"].expiry_interval == 100
    clock.advance(51)
    node.broker.tick()
    assert "se-disc" not in node.broker.sessions


# --------------------------------------------------------------------------- Message Expiry


async def offline_subscriber(node: Node, client_id: str, topic: str) -> None:
    sub, _ = await raw5(node, client_id, clean_start=False, properties=session(600))
    await subscribe(sub, SubscriptionRequest(topic, 1))
    sub.send(Disconnect())
    assert await sub.closed()


async def test_expired_message_not_delivered_from_queue_MQTT_3_3_2_5(node: Node) -> None:
    clock = fake_clock(node)
    await offline_subscriber(node, "me-q", "me/q")
    pub, _ = await raw5(node, "me-q-pub")
    await publish1(pub, "me/q", b"short", properties={EXPIRY: 5})
    await publish1(pub, "me/q", b"long", properties={EXPIRY: 60})
    await publish1(pub, "me/q", b"forever")
    expired_before = node.broker.metrics.counters["messages/expired"]
    clock.advance(6)
    sub, ack = await raw5(node, "me-q", clean_start=False, properties=session(600))
    assert ack.session_present
    got = [await ack_publish(sub) for _ in range(2)]
    assert [m.payload for m in got] == [b"long", b"forever"]
    assert got[0].properties[EXPIRY] == 54  # MQTT-3.3.2-6: 60 minus the 6 s it waited
    assert EXPIRY not in got[1].properties
    assert await ping_barrier(sub) == []
    assert node.broker.metrics.counters["messages/expired"] == expired_before + 1
    await sub.close()
    await pub.close()


async def test_remaining_interval_sent_onward_aiomqtt_MQTT_3_3_2_6(node: Node) -> None:
    clock = fake_clock(node)
    props = paho_props(PacketTypes.CONNECT, SessionExpiryInterval=600)
    async with aio(node, "me-aio", clean_start=False, properties=props) as sub:
        await sub.subscribe("me/aio", qos=1)
    async with aio(node, "me-aio-pub") as pub:
        publish_props = paho_props(PacketTypes.PUBLISH, MessageExpiryInterval=30)
        await pub.publish("me/aio", b"x", qos=1, properties=publish_props)
    clock.advance(12)
    async with aio(node, "me-aio", clean_start=False, properties=props) as sub:
        message = await next_message(sub)
        assert message.payload == b"x"
        assert message.properties is not None
        assert message.properties.MessageExpiryInterval == 18  # type: ignore[attr-defined]


async def test_live_message_keeps_its_expiry_interval_paho_MQTT_3_3_2_6(node: Node) -> None:
    """Forwarded at once, a message has waited 0 s: the interval goes on unchanged."""
    sub = Paho(node.tcp_port, "me-live")
    await sub.connect()
    await sub.subscribe("me/live", SubscribeOptions(qos=1))
    pub = Paho(node.tcp_port, "me-live-pub")
    await pub.connect()
    try:
        props = paho_props(PacketTypes.PUBLISH, MessageExpiryInterval=45)
        await pub.publish("me/live", b"now", 1, properties=props)
        message = await sub.message()
        assert message.payload == b"now"
        assert message.properties.MessageExpiryInterval == 45
    finally:
        await sub.close()
        await pub.close()


async def test_expired_inflight_message_not_resent_MQTT_3_3_2_5(node: Node) -> None:
    """An unacknowledged QoS 1 message is resent on reconnect (MQTT-4.4.0-1) unless it has
    expired meanwhile; the one still valid goes out with DUP=1 and what is left of its
    interval."""
    clock = fake_clock(node)
    sub, _ = await raw5(node, "me-inflight", clean_start=False, properties=session(600))
    await subscribe(sub, SubscriptionRequest("me/inflight", 1))
    pub, _ = await raw5(node, "me-inflight-pub")
    await publish1(pub, "me/inflight", b"dies", properties={EXPIRY: 5})
    await publish1(pub, "me/inflight", b"lives", properties={EXPIRY: 100})
    first = await expect(sub, Publish)
    second = await expect(sub, Publish)
    assert (first.payload, second.payload) == (b"dies", b"lives")
    await sub.close()  # neither acknowledged
    await gone(node, "me-inflight")
    clock.advance(10)
    sub, ack = await raw5(node, "me-inflight", clean_start=False, properties=session(600))
    assert ack.session_present
    resent = await expect(sub, Publish)
    assert (resent.payload, resent.dup, resent.packet_id) == (b"lives", True, second.packet_id)
    assert resent.properties[EXPIRY] == 90
    assert await ping_barrier(sub) == []  # "dies" is never resent
    assert len(node.broker.sessions["me-inflight"].inflight) == 1
    sub.send(PubAck(second.packet_id))
    await sub.close()
    await pub.close()


async def test_expired_retained_message_not_delivered_MQTT_3_3_2_5(node: Node) -> None:
    clock = fake_clock(node)
    pub, _ = await raw5(node, "me-ret-pub")
    await publish1(pub, "me/ret", b"kept", retain=True, properties={EXPIRY: 20})
    clock.advance(5)
    early, _ = await raw5(node, "me-ret-early")
    await subscribe(early, SubscriptionRequest("me/ret", 1))
    message = await expect(early, Publish)
    assert (message.payload, message.retain) == (b"kept", True)
    assert message.properties[EXPIRY] == 15  # MQTT-3.3.2-6 for the retained copy too
    clock.advance(16)
    late, _ = await raw5(node, "me-ret-late")
    await subscribe(late, SubscriptionRequest("me/ret", 1))
    assert await ping_barrier(late) == []
    assert node.broker.retained.get("me/ret") is None  # and it is gone from the store
    for client in (early, late, pub):
        await client.close()


# --------------------------------------------------------------------------- Will Delay


def will(delay: int, payload: bytes = b"gone", **props: Any) -> Will:
    return Will("wd/status", payload, 1, False, {P.WILL_DELAY_INTERVAL: delay, **props})


async def watcher(node: Node, client_id: str) -> Any:
    client, _ = await raw5(node, client_id)
    await subscribe(client, SubscriptionRequest("wd/#", 1))
    return client


async def test_will_published_after_will_delay_MQTT_3_1_3_9(node: Node) -> None:
    clock = fake_clock(node)
    watch = await watcher(node, "wd-watch")
    client, _ = await raw5(node, "wd-1", will=will(5), properties=session(60))
    await client.close()  # no DISCONNECT: the will is due, after its delay
    await gone(node, "wd-1")
    node.broker.tick()
    assert await ping_barrier(watch) == []  # not before the delay
    clock.advance(5)
    node.broker.tick()
    message = await expect(watch, Publish)
    assert (message.topic, message.payload) == ("wd/status", b"gone")
    assert P.WILL_DELAY_INTERVAL not in message.properties  # a will property only
    await watch.close()


async def test_will_cancelled_by_reconnect_within_delay_MQTT_3_1_3_9(node: Node) -> None:
    clock = fake_clock(node)
    watch = await watcher(node, "wd-watch-2")
    client, _ = await raw5(node, "wd-2", will=will(30), properties=session(60))
    await client.close()
    await gone(node, "wd-2")
    clock.advance(10)
    client, ack = await raw5(node, "wd-2", clean_start=False, properties=session(60))
    assert ack.session_present
    clock.advance(60)
    node.broker.tick()
    assert await ping_barrier(watch) == []  # the will was never sent
    await client.close()
    await watch.close()


async def test_will_published_at_session_end_before_delay_MQTT_3_1_2_8(node: Node) -> None:
    """The will goes out at the earlier of its delay and the end of the session."""
    clock = fake_clock(node)
    watch = await watcher(node, "wd-watch-3")
    client, _ = await raw5(node, "wd-3", will=will(300), properties=session(5))
    await client.close()
    await gone(node, "wd-3")
    clock.advance(5)
    node.broker.tick()
    assert "wd-3" not in node.broker.sessions
    assert (await expect(watch, Publish)).payload == b"gone"
    await watch.close()


async def test_will_immediate_when_session_ends_with_connection_MQTT_3_1_2_8(node: Node) -> None:
    """Session Expiry Interval 0: the session ends with the connection, so does the delay."""
    watch = await watcher(node, "wd-watch-4")
    client, _ = await raw5(node, "wd-4", will=will(300))
    await client.close()
    assert (await expect(watch, Publish)).payload == b"gone"
    await watch.close()


async def test_clean_start_reconnect_publishes_pending_will_MQTT_3_1_2_8(node: Node) -> None:
    """A reconnect with Clean Start ends the old session: its delayed will is sent then."""
    fake_clock(node)
    watch = await watcher(node, "wd-watch-5")
    client, _ = await raw5(node, "wd-5", will=will(300), properties=session(600))
    await client.close()
    await gone(node, "wd-5")
    assert await ping_barrier(watch) == []
    client, ack = await raw5(node, "wd-5", clean_start=True)
    assert not ack.session_present
    assert (await expect(watch, Publish)).payload == b"gone"
    await client.close()
    await watch.close()


async def test_will_delay_with_paho_disconnect_0x04_MQTT_3_14_2_1(node: Node) -> None:
    """paho: a Will Delay Interval in the will properties, DISCONNECT 0x04 (keep the will)."""
    clock = fake_clock(node)
    watch = await watcher(node, "wd-watch-6")
    client = Paho(node.tcp_port, "wd-paho")
    will_props = paho_props(PacketTypes.WILLMESSAGE, WillDelayInterval=20)
    client.client.will_set("wd/paho", b"paho-will", 1, properties=will_props)
    await client.connect(paho_props(PacketTypes.CONNECT, SessionExpiryInterval=60), keepalive=0)
    client.client.disconnect(PahoReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    await gone(node, "wd-paho")
    await client.close()
    assert await ping_barrier(watch) == []
    clock.advance(20)
    node.broker.tick()
    message = await expect(watch, Publish)
    assert (message.topic, message.payload) == ("wd/paho", b"paho-will")
    await watch.close()
