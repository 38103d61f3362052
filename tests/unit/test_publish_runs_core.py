"""The QoS 0 fast path changes nothing a client or an operator can see: the same scenario run
with runs (`Decoder.feed_runs`, `handle_publish_run`) and with every PUBLISH as a packet gives
every client the same bytes and leaves every counter the same (broker metrics and limits,
per-connection and per-session counts), whatever the subscribers' versions and options, the
ACL, and a subscriber's outgoing buffer running over `max_outgoing_buffer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memharness import MemBroker, MemClient
from runs_support import packets_only, run_spy

from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId
from broker.protocol.packets import (
    Packet,
    PingReq,
    Publish,
    Subscribe,
    SubscriptionRequest,
)

TOPICS = ["a/b", "a/c", "b/b", "$x/b"]
Subscriber = tuple[int, list[tuple[str, bool, int | None]]]
#: (version, [(filter, no_local, subscription identifier)]) per subscriber.
SUBSCRIBERS: list[Subscriber] = [
    (MQTT_3_1_1, [("a/b", False, None)]),
    (MQTT_3_1_1, [("a/#", False, None), ("a/+", False, None)]),  # overlapping: one copy
    (MQTT_5, [("a/b", False, None)]),
    (MQTT_5, [("+/b", False, 7)]),  # a subscription identifier: per-subscriber bytes
    (MQTT_3_1_1, [("b/#", False, None), ("$x/#", False, None)]),
]
#: More to draw from: 5.0 ones for a 5.0 publisher's runs, more 3.1.1 ones.
POOL: list[Subscriber] = [
    *SUBSCRIBERS,
    (MQTT_5, [("a/#", False, None), ("b/b", False, None)]),
    (MQTT_5, [("+/+", False, None)]),
    (MQTT_3_1_1, [("+/+", False, None)]),
    (MQTT_3_1_1, [("#", False, None)]),
]
#: CONNECT properties of a 5.0 subscriber by client id suffix: what it asked for applies to
#: runs too (a Maximum Packet Size smaller than some frames, outgoing topic aliases).
ASKS = {
    "mps": {PropertyId.MAXIMUM_PACKET_SIZE: 40},
    "alias": {PropertyId.TOPIC_ALIAS_MAXIMUM: 5},
}
POOL += [(MQTT_5, [("a/#", False, None)], "mps"), (MQTT_5, [("+/+", False, None)], "alias")]  # type: ignore[list-item]


def plain_batches() -> st.SearchStrategy[list[list[Packet]]]:
    plain = st.builds(
        Publish,
        topic=st.sampled_from(TOPICS),
        payload=st.sampled_from([b"x", b"y" * 40, b"", b"z" * 130]),  # 130: a 3-byte header
    )
    other = st.one_of(
        st.builds(
            Publish, topic=st.sampled_from(TOPICS), payload=st.just(b"r"), retain=st.just(True)
        ),
        st.builds(
            Publish,
            topic=st.sampled_from(TOPICS),
            payload=st.just(b"q"),
            qos=st.just(1),
            packet_id=st.just(9),
        ),
        st.just(PingReq()),
    )
    repeated = st.lists(plain, min_size=1, max_size=2).flatmap(
        lambda distinct: st.lists(st.sampled_from(distinct), min_size=1, max_size=30)
    )
    batch = st.lists(st.one_of(repeated, other.map(lambda p: [p])), max_size=6).map(
        lambda groups: [p for g in groups for p in g]
    )
    # A read of one plain PUBLISH alone (`runs.lone_frame`, the low-rate path) or of more.
    lone = plain.map(lambda p: [p])
    return st.lists(st.one_of(lone, batch), min_size=1, max_size=4)


def run_scenario(
    publisher_version: int,
    batches: list[list[Packet]],
    *,
    self_no_local: bool,
    deny: str | None,
    cap: int | None,
    subscribers: list[Subscriber] = SUBSCRIBERS,
    waiting: int = 0,
    grows: bool = True,
    on_sub: Callable[[MemClient], None] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Connect the subscribers and the publisher, publish `batches` (one read each) and
    return what every client got and every counter."""
    mem = MemBroker(**({"max_outgoing_buffer": cap} if cap else {}), **config)
    broker = mem.broker
    if deny is not None:
        broker.hooks.authorize.append(
            lambda info, action, topic: False if action == "publish" and topic == deny else None
        )
    subs: list[MemClient] = []
    for i, (version, filters, *ask) in enumerate(subscribers):
        props = ASKS[ask[0]] if ask else {}
        client, _ = mem.connect(f"sub{i}", version, properties=props)
        for j, (filt, no_local, ident) in enumerate(filters):
            props = {PropertyId.SUBSCRIPTION_IDENTIFIER: ident} if ident else {}
            client.send(Subscribe(j + 1, [SubscriptionRequest(filt, 0, no_local)], props))
        client.received()
        if cap:  # bytes the client has not read yet stay buffered: drops past the cap
            link = client.link
            link.buffered = lambda link=link: len(link.out) * grows + waiting  # type: ignore[method-assign]
        if on_sub is not None:
            on_sub(client)
        subs.append(client)
    publisher, _ = mem.connect("pub", publisher_version)
    publisher.send(Subscribe(1, [SubscriptionRequest("a/b", 0, self_no_local)]))
    publisher.received()
    for batch in batches:
        publisher.send_raw(b"".join(encode(p, publisher_version) for p in batch))
    outcome: dict[str, Any] = {
        "counters": {k: v for k, v in broker.metrics.counters.items() if v},
        "limits": {k: v for k, v in broker.limits.items() if v},
    }
    for client in [*subs, publisher]:
        channel = client.channel
        session = channel.session
        assert session is not None
        outcome[str(channel.client_id)] = (
            bytes(client.link.out),
            channel.recv_oct, channel.recv_pkt, channel.recv_msg,
            channel.send_oct, channel.send_cnt, channel.send_pkt, channel.send_msg,
            session.deliver_msg, session.mqueue_dropped, channel.recv_cnt,
        )  # fmt: skip
    return outcome


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([MQTT_3_1_1, MQTT_5]),
    plain_batches(),
    st.booleans(),
    st.sampled_from([None, "a/b", "b/b"]),
    st.sampled_from([None, 300, 2000]),
    st.lists(st.sampled_from(POOL), min_size=1, max_size=4),
)
def test_runs_change_nothing_a_client_or_operator_sees(
    version: int,
    batches: list[list[Packet]],
    no_local: bool,
    deny: str | None,
    cap: int | None,
    subscribers: list[Subscriber],
) -> None:
    args: dict[str, Any] = {
        "self_no_local": no_local,
        "deny": deny,
        "cap": cap,
        "subscribers": subscribers,
    }
    fast = run_scenario(version, batches, **args)
    with packets_only():
        reference = run_scenario(version, batches, **args)
    assert fast == reference


def spied_scenario(batch: list[Packet]) -> tuple[list[int], dict[str, Any]]:
    """Run one batch; also what `handle_publish_run` answered for each run (+count: taken
    as bytes, -count: handed back to the packet path)."""
    with run_spy() as calls:
        outcome = run_scenario(MQTT_3_1_1, [batch], self_no_local=False, deny=None, cap=None)
    return calls, outcome


def test_a_run_takes_the_fast_path_and_is_counted_per_message() -> None:
    # 'a/c' reaches sub1 only ('a/#' and 'a/+': one copy), a 3.1.1 client like the publisher.
    batch: list[Packet] = [Publish("a/c", bytes([i]) * 10) for i in range(50)]
    calls, outcome = spied_scenario(batch)
    assert calls == [50]
    counters = outcome["counters"]
    assert counters["messages/received"] == counters["messages/qos0/received"] == 50
    assert counters["packets/publish/received"] == 50
    assert counters["messages/sent"] == counters["packets/publish/sent"] == 50
    assert outcome["sub1"][0] == b"".join(encode(p) for p in batch), "the very bytes, in order"


def test_what_runs_decline_goes_the_packet_way() -> None:
    """`a/b` has a subscriber with a subscription identifier (sub3, `+/b`): the run goes
    back to the packet path, whole."""
    batch: list[Packet] = [Publish("a/b", bytes([i])) for i in range(20)]
    calls, outcome = spied_scenario(batch)
    assert calls == [-20]
    counters = outcome["counters"]
    assert counters["messages/received"] == 20
    # sub0 (a/b), sub1 (a/# + a/+, one copy), sub2 (5.0), sub3 (+/b), pub itself (a/b)
    assert counters["messages/sent"] == 5 * 20


@pytest.mark.parametrize(("topic", "answer"), [("a/c", 1), ("a/b", -1), ("$x/b", -1)])
def test_a_lone_message_takes_the_same_way_as_in_a_batch(topic: str, answer: int) -> None:
    """A read of one plain PUBLISH (the run of one `Channel._dispatch` hands over without
    its queue): taken as bytes, or ('a/b': sub3's subscription identifier; a `$` topic)
    handed back whole; either way what every client gets and every counter is what the
    packet path gives."""
    batch: list[Packet] = [Publish(topic, b"lone")]
    calls, outcome = spied_scenario(batch)
    assert calls == [answer]
    with packets_only():
        reference = run_scenario(MQTT_3_1_1, [batch], self_no_local=False, deny=None, cap=None)
    assert outcome == reference


def test_a_slow_subscriber_drops_from_the_same_message_as_before() -> None:
    """`max_outgoing_buffer` (QoS 0 drop policy) applies per message inside a run: a
    subscriber whose unread bytes pass the cap loses the rest of the run, counted."""
    only: list[Subscriber] = [(MQTT_3_1_1, [("#", False, None)])]
    for waiting in (0, 100, 299, 300, 301, 5000):
        batches: list[list[Packet]] = [[Publish("a/c", b"y" * 40)] * 30]  # 47-byte frames
        args: dict[str, Any] = {  # `waiting`: bytes unread by the subscriber before the run
            "self_no_local": False, "deny": None, "cap": 300, "subscribers": only,
            "waiting": waiting,
        }  # fmt: skip
        fast = run_scenario(MQTT_3_1_1, batches, **args)
        with packets_only():
            reference = run_scenario(MQTT_3_1_1, batches, **args)
        assert fast == reference
        sent = 0 if waiting > 300 else (300 - waiting) // 47 + 1
        assert fast["counters"].get("messages/sent", 0) == sent
        assert fast["limits"]["max_outgoing_buffer"] == 30 - sent
        assert fast["sub0"][9] == 30 - sent  # the session's dropped count


def test_a_link_whose_buffer_does_not_grow_with_writes_drops_as_before() -> None:
    """Hypothesis found it: the one-write shortcut must not assume more than the link
    reports (here every message finds the same bytes waiting, so none or all are sent)."""
    only: list[Subscriber] = [(MQTT_3_1_1, [("#", False, None)])]
    for waiting in (0, 299, 300, 301):
        batches: list[list[Packet]] = [[Publish("a/c", b"y" * 40)] * 30]
        args: dict[str, Any] = {
            "self_no_local": False, "deny": None, "cap": 300, "subscribers": only,
            "waiting": waiting, "grows": False,
        }  # fmt: skip
        fast = run_scenario(MQTT_3_1_1, batches, **args)
        with packets_only():
            reference = run_scenario(MQTT_3_1_1, batches, **args)
        assert fast == reference
        assert fast["counters"].get("messages/sent", 0) == (30 if waiting <= 300 else 0)


@pytest.mark.parametrize("ask", ["mps", "alias"])
def test_what_a_5_0_subscriber_asked_for_in_connect_still_applies(ask: str) -> None:
    """A Maximum Packet Size below the frames' (MQTT-3.1.2-25: not sent, counted) and
    outgoing topic aliases (per-connection bytes) keep the run off the fast path."""
    subs: list[Subscriber] = [
        (MQTT_3_1_1, [("#", False, None)]),
        (MQTT_5, [("#", False, None)], ask),  # type: ignore[list-item]
    ]
    topic = "sensors/hall/temperature"  # long enough to be worth an alias
    batches: list[list[Packet]] = [[Publish(topic, b"y" * 40)] * 20 + [Publish(topic, b"x")] * 20]
    args: dict[str, Any] = {"self_no_local": False, "deny": None, "cap": None, "subscribers": subs}
    fast = run_scenario(MQTT_3_1_1, batches, **args)
    with packets_only():
        reference = run_scenario(MQTT_3_1_1, batches, **args)
    assert fast == reference
    sent = fast["counters"]["messages/sent"]
    assert sent == (60 if ask == "mps" else 80)  # mps: the 20 large frames not to sub1
    if ask == "alias":  # the alias is set up once, then the topic is left out
        assert fast["sub1"][0].count(topic.encode()) == 1
