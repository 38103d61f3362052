"""Topic filters and wildcards, SUBSCRIBE/UNSUBSCRIBE rules (MQTT 3.1.1 sections 3.8-3.11, 4.7),
on the in-memory harness (tests/memharness.py): the same packets as over a socket, no socket.
The rules that involve a real client stay in tests/integration/test_core_topics.py."""

from __future__ import annotations

import pytest
from memharness import MemBroker

from broker.protocol.packets import PubAck, PubComp, Publish, PubRec, PubRel, UnsubAck, Unsubscribe

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


def _matched(filt: str) -> list[str]:
    """Publish to every topic in TOPICS; return the topics a subscriber to `filt` receives."""
    mem = MemBroker()
    sub, _ = mem.connect("wild-sub")
    pub, _ = mem.connect("wild-pub")
    assert sub.subscribe((filt, 0)) == [0]
    for i, topic in enumerate(TOPICS, start=1):
        pub.publish_qos1(topic, b"x", i)
    received = sub.ping_barrier()
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
def test_wildcard_matching_MQTT_4_7_1(filt: str, expected: list[str]) -> None:
    assert _matched(filt) == expected


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
def test_dollar_topics_not_matched_by_leading_wildcard_MQTT_4_7_2_1(
    filt: str, expected: list[str]
) -> None:
    """Client-published `$` topics; test_core_shared_sys checks the broker's own `$SYS`."""
    got = _matched(filt)
    assert [t for t in got if t.startswith("$")] == expected


@pytest.mark.parametrize(
    "bad", ["a/#/b", "a#", "#/a", "a/b+", "+a/b", "a/++", "", "$share/g", "$share//t"]
)
def test_invalid_filter_gets_suback_failure_MQTT_3_9_3_and_4_7_1(bad: str) -> None:
    """An invalid filter gets return code 0x80; the other filters of the same SUBSCRIBE are still
    granted, one return code per filter in order (MQTT-3.8.4-4/5, MQTT-3.9.3-1)."""
    mem = MemBroker()
    sub, _ = mem.connect("bad-filter")
    codes = sub.subscribe(("ok/1", 1), (bad, 1), ("ok/2", 2))
    assert codes == [1, 0x80, 2]
    assert set(mem.broker.sessions["bad-filter"].subscriptions) == {"ok/1", "ok/2"}
    # The connection stays usable.
    assert sub.ping_barrier() == []


def test_empty_publish_topic_closes_connection_MQTT_4_7_3_1() -> None:
    bad, _ = MemBroker().connect("empty-topic")
    bad.send(Publish("", b"x", qos=0))
    assert bad.closed


@pytest.mark.parametrize(
    "packet",
    [
        b"\x82\x08\x00\x01\x00\x03a\x00b\x00",  # SUBSCRIBE filter "a<U+0000>b"
        b"\x30\x06\x00\x03a\x00bx",  # PUBLISH topic "a<U+0000>b"
        b"\x82\x07\x00\x01\x00\x02\xc3\x28\x00",  # SUBSCRIBE filter of invalid UTF-8
    ],
)
def test_null_character_or_invalid_utf8_closes_connection_MQTT_1_5_3_1_and_2(
    packet: bytes,
) -> None:
    bad, _ = MemBroker().connect("utf8")
    bad.send_raw(packet)
    assert bad.closed
    assert bad.received() == []


def test_client_publish_to_sys_is_not_delivered() -> None:
    """Like mosquitto, `$SYS/...` belongs to the broker: a client's PUBLISH there is acknowledged
    (MQTT-3.3.4-1) but not routed."""
    mem = MemBroker()
    sub, _ = mem.connect("sys-sub")
    pub, _ = mem.connect("sys-pub")
    sub.subscribe(("$SYS/#", 0))
    pub.publish_qos1("$SYS/broker/fake", b"x", 1)
    assert sub.ping_barrier() == []


def test_subscribe_with_no_filters_closes_connection_MQTT_3_8_3_3() -> None:
    bad, _ = MemBroker().connect("no-filters")
    bad.send_raw(b"\x82\x02\x00\x01")  # SUBSCRIBE, packet id 1, no payload.
    assert bad.closed


def test_unsubscribe_stops_delivery_and_is_acknowledged_MQTT_3_10_4_2_and_4() -> None:
    mem = MemBroker()
    sub, _ = mem.connect("unsub")
    pub, _ = mem.connect("unsub-pub")
    sub.subscribe(("u/+", 0), ("u/keep", 0))
    pub.publish_qos1("u/x", b"before", 1)
    assert sub.expect(Publish).payload == b"before"
    sub.send(Unsubscribe(5, ["u/+"]))
    assert sub.expect(UnsubAck).packet_id == 5  # MQTT-3.10.4-4
    pub.publish_qos1("u/x", b"after", 2)
    pub.publish_qos1("u/keep", b"kept", 3)
    after = sub.ping_barrier()
    assert [(p.topic, p.payload) for p in after if isinstance(p, Publish)] == [("u/keep", b"kept")]
    assert len(after) == 1
    assert set(mem.broker.sessions["unsub"].subscriptions) == {"u/keep"}


def test_unsuback_sent_even_if_nothing_matched_MQTT_3_10_4_5() -> None:
    sub, _ = MemBroker().connect("unsub-none")
    sub.send(Unsubscribe(77, ["never/subscribed", "x/#"]))
    assert sub.expect(UnsubAck).packet_id == 77
    assert sub.ping_barrier() == []


def test_resubscribe_replaces_subscription_MQTT_3_8_4_3() -> None:
    """Same filter again: the QoS is replaced and the flow of messages is not duplicated."""
    mem = MemBroker()
    sub, _ = mem.connect("resub")
    pub, _ = mem.connect("resub-pub")
    assert sub.subscribe(("r/t", 0), packet_id=1) == [0]
    assert sub.subscribe(("r/t", 1), packet_id=2) == [1]
    pub.publish_qos1("r/t", b"m", 1)
    received = sub.ping_barrier()
    assert [(p.payload, p.qos) for p in received if isinstance(p, Publish)] == [(b"m", 1)]
    assert len(received) == 1
    assert len(mem.broker.sessions["resub"].subscriptions) == 1


def test_suback_grants_requested_qos_MQTT_3_9_3() -> None:
    sub, _ = MemBroker().connect("grant")
    assert sub.subscribe(("g/0", 0), ("g/1", 1), ("g/2", 2), packet_id=1234) == [0, 1, 2]


def test_subscribe_with_qos_3_closes_connection_MQTT_3_8_3_4() -> None:
    """Requested QoS 3 (or reserved option bits) is malformed in 3.1.1."""
    bad, _ = MemBroker().connect("qos3")
    bad.send_raw(b"\x82\x06\x00\x01\x00\x01a\x03")  # SUBSCRIBE id 1, filter "a", QoS byte 3
    assert bad.closed


def test_unsubscribe_completes_inflight_delivery_MQTT_3_10_4_3() -> None:
    """A QoS 1/2 message already sent before UNSUBSCRIBE is still completed normally."""
    mem = MemBroker()
    sub, _ = mem.connect("unsub-inflight")
    pub, _ = mem.connect("unsub-inflight-pub")
    sub.subscribe(("ui/1", 1), ("ui/2", 2))
    pub.publish_qos1("ui/1", b"one", 1)
    pub.send(Publish("ui/2", b"two", qos=2, packet_id=2))
    pub.expect(PubRec)
    one = sub.expect(Publish)
    two = sub.expect(Publish)
    sub.send(Unsubscribe(9, ["ui/1", "ui/2"]))
    assert sub.expect(UnsubAck).packet_id == 9
    sub.send(PubAck(one.packet_id or 0))
    sub.send(PubRec(two.packet_id or 0))
    assert sub.expect(PubRel).packet_id == two.packet_id
    sub.send(PubComp(two.packet_id or 0))
    assert sub.ping_barrier() == []
    session = mem.broker.sessions["unsub-inflight"]
    assert session.inflight == {} and session.subscriptions == {}
    assert mem.broker.metrics.counters["packets/puback/missed"] == 0
    assert mem.broker.metrics.counters["packets/pubcomp/missed"] == 0
