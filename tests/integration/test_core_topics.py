"""Topic filters and wildcards, SUBSCRIBE/UNSUBSCRIBE rules (MQTT 3.1.1 sections 3.8-3.11, 4.7)."""

from __future__ import annotations

import pytest
from rawclient import RawClient
from test_core_support import (
    aio,
    expect,
    next_message,
    ping_barrier,
    raw_connect,
    raw_publish_qos1,
    raw_subscribe,
    until_sentinel,
)

from broker.protocol.packets import PubAck, PubComp, Publish, PubRec, PubRel, UnsubAck, Unsubscribe
from broker.server.node import Node

TOPICS = [
    "a",
    "a/b",
    "a/b/c",
    "a//c",
    "/a",
    "a/",
    "b/b",
    "$x/y",
    "$other/a",
]


async def _matched(node: Node, filt: str) -> list[str]:
    """Publish to every topic in TOPICS; return the topics a subscriber to `filt` receives."""
    sub, _ = await raw_connect(node, "wild-sub")
    pub, _ = await raw_connect(node, "wild-pub")
    try:
        assert await raw_subscribe(sub, (filt, 0)) == [0]
        for i, topic in enumerate(TOPICS, start=1):
            await raw_publish_qos1(pub, topic, b"x", i)
        received = await ping_barrier(sub)
    finally:
        await sub.close()
        await pub.close()
    assert all(isinstance(p, Publish) for p in received)
    return [p.topic for p in received if isinstance(p, Publish)]


@pytest.mark.parametrize(
    ("filt", "expected"),
    [
        # MQTT-4.7.1-2: "#" matches the parent level and any number of child levels.
        ("#", ["a", "a/b", "a/b/c", "a//c", "/a", "a/", "b/b"]),
        ("a/#", ["a", "a/b", "a/b/c", "a//c", "a/"]),
        ("a/b/#", ["a/b", "a/b/c"]),
        # MQTT-4.7.1-3: "+" matches exactly one level, which may be empty.
        ("+", ["a"]),
        ("a/+", ["a/b", "a/"]),
        ("+/b", ["a/b", "b/b"]),
        ("a/+/c", ["a/b/c", "a//c"]),
        ("+/+", ["a/b", "/a", "a/", "b/b"]),
        ("/+", ["/a"]),
        ("+/#", ["a", "a/b", "a/b/c", "a//c", "/a", "a/", "b/b"]),
        # Exact filters match only themselves (case and empty levels included, MQTT-4.7.3-4).
        ("a/b", ["a/b"]),
        ("a//c", ["a//c"]),
    ],
)
async def test_wildcard_matching_MQTT_4_7_1(node: Node, filt: str, expected: list[str]) -> None:
    assert await _matched(node, filt) == expected


@pytest.mark.parametrize(
    ("filt", "expected"),
    [
        ("#", []),
        ("+/x", []),
        ("+/#", []),
        ("$x/#", ["$x/y"]),
        ("$x/+", ["$x/y"]),
        ("$other/#", ["$other/a"]),
    ],
)
async def test_dollar_topics_not_matched_by_leading_wildcard_MQTT_4_7_2_1(
    node: Node, filt: str, expected: list[str]
) -> None:
    """Client-published `$` topics; test_core_shared_sys checks the broker's own `$SYS`."""
    got = await _matched(node, filt)
    assert [t for t in got if t.startswith("$")] == expected


@pytest.mark.parametrize(
    "bad", ["a/#/b", "a#", "#/a", "a/b+", "+a/b", "a/++", "", "$share/g", "$share//t"]
)
async def test_invalid_filter_gets_suback_failure_MQTT_3_9_3_and_4_7_1(
    node: Node, bad: str
) -> None:
    """An invalid filter gets return code 0x80; the other filters of the same SUBSCRIBE are still
    granted, one return code per filter in order (MQTT-3.8.4-4/5, MQTT-3.9.3-1)."""
    sub, _ = await raw_connect(node, "bad-filter")
    try:
        codes = await raw_subscribe(sub, ("ok/1", 1), (bad, 1), ("ok/2", 2))
        assert codes == [1, 0x80, 2]
        assert set(node.broker.sessions["bad-filter"].subscriptions) == {"ok/1", "ok/2"}
        # The connection stays usable.
        assert await ping_barrier(sub) == []
    finally:
        await sub.close()


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+"])
async def test_wildcard_in_publish_topic_closes_connection_MQTT_3_3_2_2(
    node: Node, topic: str
) -> None:
    async with aio(node, "healthy") as healthy:
        await healthy.subscribe("#", qos=1)
        bad, _ = await raw_connect(node, "wild-pub")
        try:
            bad.send(Publish(topic, b"x", qos=1, packet_id=1))
            assert await bad.closed()
            assert [p for p in bad.pending if not isinstance(p, Publish)] == []  # no PUBACK
        finally:
            await bad.close()
        assert "wild-pub" not in node.broker.connected
        async with aio(node, "pub") as pub:
            assert await until_sentinel(healthy, pub, "after/bad") == []


async def test_empty_publish_topic_closes_connection_MQTT_4_7_3_1(node: Node) -> None:
    bad, _ = await raw_connect(node, "empty-topic")
    try:
        bad.send(Publish("", b"x", qos=0))
        assert await bad.closed()
    finally:
        await bad.close()


@pytest.mark.parametrize(
    "packet",
    [
        b"\x82\x08\x00\x01\x00\x03a\x00b\x00",  # SUBSCRIBE filter "a<U+0000>b"
        b"\x30\x06\x00\x03a\x00bx",  # PUBLISH topic "a<U+0000>b"
        b"\x82\x07\x00\x01\x00\x02\xc3\x28\x00",  # SUBSCRIBE filter of invalid UTF-8
    ],
)
async def test_null_character_or_invalid_utf8_closes_connection_MQTT_1_5_3_1_and_2(
    node: Node, packet: bytes
) -> None:
    bad, _ = await raw_connect(node, "utf8")
    try:
        bad.send_raw(packet)
        assert await bad.closed()
        assert bad.pending == []
    finally:
        await bad.close()


async def test_client_publish_to_sys_is_not_delivered(node: Node) -> None:
    """Like mosquitto, `$SYS/...` belongs to the broker: a client's PUBLISH there is acknowledged
    (MQTT-3.3.4-1) but not routed."""
    sub, _ = await raw_connect(node, "sys-sub")
    pub, _ = await raw_connect(node, "sys-pub")
    try:
        await raw_subscribe(sub, ("$SYS/#", 0))
        await raw_publish_qos1(pub, "$SYS/broker/fake", b"x", 1)
        assert await ping_barrier(sub) == []
    finally:
        await sub.close()
        await pub.close()


async def test_subscribe_with_no_filters_closes_connection_MQTT_3_8_3_3(node: Node) -> None:
    bad, _ = await raw_connect(node, "no-filters")
    try:
        # SUBSCRIBE, packet id 1, no payload.
        bad.send_raw(b"\x82\x02\x00\x01")
        assert await bad.closed()
    finally:
        await bad.close()


async def test_unsubscribe_stops_delivery_and_is_acknowledged_MQTT_3_10_4_2_and_4(
    node: Node,
) -> None:
    sub, _ = await raw_connect(node, "unsub")
    pub, _ = await raw_connect(node, "unsub-pub")
    try:
        await raw_subscribe(sub, ("u/+", 0), ("u/keep", 0))
        await raw_publish_qos1(pub, "u/x", b"before", 1)
        got = await expect(sub, Publish)
        assert got.payload == b"before"
        sub.send(Unsubscribe(5, ["u/+"]))
        assert (await expect(sub, UnsubAck)).packet_id == 5  # MQTT-3.10.4-4
        await raw_publish_qos1(pub, "u/x", b"after", 2)
        await raw_publish_qos1(pub, "u/keep", b"kept", 3)
        after = await ping_barrier(sub)
        assert [(p.topic, p.payload) for p in after if isinstance(p, Publish)] == [
            ("u/keep", b"kept")
        ]
        assert len(after) == 1
        assert set(node.broker.sessions["unsub"].subscriptions) == {"u/keep"}
    finally:
        await sub.close()
        await pub.close()


async def test_unsuback_sent_even_if_nothing_matched_MQTT_3_10_4_5(node: Node) -> None:
    sub, _ = await raw_connect(node, "unsub-none")
    try:
        sub.send(Unsubscribe(77, ["never/subscribed", "x/#"]))
        ack = await expect(sub, UnsubAck)
        assert ack.packet_id == 77
        assert await ping_barrier(sub) == []
    finally:
        await sub.close()


async def test_unsubscribe_filter_compared_literally_MQTT_3_10_4_1(node: Node) -> None:
    """`a/+` does not remove `a/b`: filters are compared character by character."""
    async with aio(node, "lit") as sub, aio(node, "lit-pub") as pub:
        await sub.subscribe("lit/b", qos=0)
        await sub.unsubscribe("lit/+")
        await pub.publish("lit/b", b"still", qos=0)
        message = await next_message(sub)
    assert message.payload == b"still"


async def test_resubscribe_replaces_subscription_MQTT_3_8_4_3(node: Node) -> None:
    """Same filter again: the QoS is replaced and the flow of messages is not duplicated."""
    sub, _ = await raw_connect(node, "resub")
    pub, _ = await raw_connect(node, "resub-pub")
    try:
        assert await raw_subscribe(sub, ("r/t", 0), packet_id=1) == [0]
        assert await raw_subscribe(sub, ("r/t", 1), packet_id=2) == [1]
        await raw_publish_qos1(pub, "r/t", b"m", 1)
        received = await ping_barrier(sub)
        assert [(p.payload, p.qos) for p in received if isinstance(p, Publish)] == [(b"m", 1)]
        assert len(received) == 1
        assert len(node.broker.sessions["resub"].subscriptions) == 1
    finally:
        await sub.close()
        await pub.close()


async def test_suback_grants_requested_qos_MQTT_3_9_3(node: Node) -> None:
    sub, _ = await raw_connect(node, "grant")
    try:
        codes = await raw_subscribe(sub, ("g/0", 0), ("g/1", 1), ("g/2", 2), packet_id=1234)
        assert codes == [0, 1, 2]
    finally:
        await sub.close()


async def test_subscribe_with_qos_3_closes_connection_MQTT_3_8_3_4(node: Node) -> None:
    """Requested QoS 3 (or reserved option bits) is malformed in 3.1.1."""
    bad: RawClient
    bad, _ = await raw_connect(node, "qos3")
    try:
        # SUBSCRIBE id 1, filter "a", requested QoS byte 0x03.
        bad.send_raw(b"\x82\x06\x00\x01\x00\x01a\x03")
        assert await bad.closed()
    finally:
        await bad.close()


async def test_unsubscribe_completes_inflight_delivery_MQTT_3_10_4_3(node: Node) -> None:
    """A QoS 1/2 message already sent before UNSUBSCRIBE is still completed normally."""
    sub, _ = await raw_connect(node, "unsub-inflight")
    pub, _ = await raw_connect(node, "unsub-inflight-pub")
    try:
        await raw_subscribe(sub, ("ui/1", 1), ("ui/2", 2))
        await raw_publish_qos1(pub, "ui/1", b"one", 1)
        pub.send(Publish("ui/2", b"two", qos=2, packet_id=2))
        await expect(pub, PubRec)
        one = await expect(sub, Publish)
        two = await expect(sub, Publish)
        sub.send(Unsubscribe(9, ["ui/1", "ui/2"]))
        assert (await expect(sub, UnsubAck)).packet_id == 9
        sub.send(PubAck(one.packet_id or 0))
        sub.send(PubRec(two.packet_id or 0))
        assert (await expect(sub, PubRel)).packet_id == two.packet_id
        sub.send(PubComp(two.packet_id or 0))
        assert await ping_barrier(sub) == []
        session = node.broker.sessions["unsub-inflight"]
        assert session.inflight == {} and session.subscriptions == {}
        assert node.broker.metrics.counters["packets/puback/missed"] == 0
        assert node.broker.metrics.counters["packets/pubcomp/missed"] == 0
    finally:
        await sub.close()
        await pub.close()
