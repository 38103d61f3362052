"""Routing through the whole core (Channel -> Broker.publish -> router -> Session -> bytes)
against a brute-force model, after any sequence of subscribes, unsubscribes and publishes.

The model tries every stored filter with the reference matcher `topic_matches` and applies the
rules for overlapping subscriptions of one client: one copy (MQTT-3.3.5-1) at the highest QoS
any matching subscription granted, capped at the message's (MQTT-3.8.4-8), carrying every
matching Subscription Identifier (MQTT-3.3.4-4/5), none for a No Local subscription of the
publisher itself (MQTT-3.8.3-3); `$`-topics are not matched by a first-level wildcard
(MQTT-4.7.2-1). Topics repeat, so the router's per-topic cache is filled, hit and forgotten.
"""

from __future__ import annotations

from cluster_fakes import FakeLink
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.core.topics import topic_matches
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_5, PropertyId
from broker.protocol.packets import (
    Connect,
    Publish,
    Subscribe,
    SubscriptionRequest,
    Unsubscribe,
)

CLIENTS = ["c0", "c1", "pub"]  # "pub" publishes, and may subscribe too (No Local)
LEVELS = ["a", "b", "", "$x"]
TOPICS = ["a", "a/b", "a/", "/a", "b/a", "a//b", "$x", "$x/a", "a/$x", "b"]

filters_st = st.lists(st.sampled_from([*LEVELS, "+"]), min_size=1, max_size=3).map("/".join).filter(
    bool
) | st.lists(st.sampled_from([*LEVELS, "+"]), max_size=2).map(
    lambda levels: "/".join([*levels, "#"])
)
steps_st = st.lists(
    st.one_of(
        st.tuples(
            st.just("sub"),
            st.sampled_from(CLIENTS),
            filters_st,
            st.integers(0, 2),  # granted QoS
            st.booleans(),  # No Local
            st.none() | st.integers(1, 4),  # Subscription Identifier
        ),
        st.tuples(
            st.just("unsub"),
            st.sampled_from(CLIENTS),
            filters_st,
            st.just(0),
            st.just(False),
            st.none(),
        ),
        st.tuples(
            st.just("pub"),
            st.just("pub"),
            st.sampled_from(TOPICS),
            st.integers(0, 2),
            st.just(False),
            st.none(),
        ),
    ),
    max_size=30,
)

Model = dict[tuple[str, str], tuple[int, bool, int | None]]


def expected(model: Model, topic: str, qos: int) -> dict[str, tuple[int, list[int]]]:
    """client -> (QoS, sorted subscription ids) of the one copy it must get."""
    out: dict[str, tuple[int, list[int]]] = {}
    for (client, filt), (granted, no_local, sub_id) in model.items():
        if not topic_matches(filt, topic) or (no_local and client == "pub"):
            continue
        best, ids = out.get(client, (-1, []))
        out[client] = (max(best, min(qos, granted)), ids + ([sub_id] if sub_id else []))
    return {c: (q, sorted(ids)) for c, (q, ids) in out.items()}


@settings(max_examples=200, deadline=None)
@given(steps=steps_st)
def test_every_client_gets_what_the_brute_force_model_says(
    steps: list[tuple[str, str, str, int, bool, int | None]],
) -> None:
    broker = Broker(clock=lambda: 100.0)
    links: dict[str, FakeLink] = {}
    channels: dict[str, Channel] = {}
    for cid in CLIENTS:
        link = FakeLink()
        channel = Channel(broker, link)
        channel.data_received(encode(Connect(cid, protocol_level=MQTT_5), MQTT_5))
        link.out.clear()  # CONNACK
        links[cid], channels[cid] = link, channel
    model: Model = {}
    packet_id = 0
    for kind, cid, arg, qos, no_local, sub_id in steps:
        packet_id += 1
        channel, link = channels[cid], links[cid]
        if kind == "sub":
            props = {PropertyId.SUBSCRIPTION_IDENTIFIER: [sub_id]} if sub_id else {}
            request = SubscriptionRequest(arg, qos, no_local)
            channel.data_received(encode(Subscribe(packet_id, [request], props), MQTT_5))
            model[(cid, arg)] = (qos, no_local, sub_id)
        elif kind == "unsub":
            channel.data_received(encode(Unsubscribe(packet_id, [arg]), MQTT_5))
            model.pop((cid, arg), None)
        else:
            for other in links.values():
                other.out.clear()  # SUBACKs, UNSUBACKs, earlier acks
            publish = Publish(arg, b"m", qos=qos, packet_id=packet_id if qos else None)
            channel.data_received(encode(publish, MQTT_5))
            want = expected(model, arg, qos)
            for client, other in links.items():
                got = [
                    p
                    for p in Decoder(version=MQTT_5).feed(bytes(other.out))
                    if isinstance(p, Publish)
                ]
                if client not in want:
                    assert got == [], (client, arg)
                    continue
                assert len(got) == 1, (client, arg, got)  # MQTT-3.3.5-1: one copy
                copy = got[0]
                wanted_qos, wanted_ids = want[client]
                assert (copy.topic, copy.payload, copy.qos) == (arg, b"m", wanted_qos)
                ids = copy.properties.get(PropertyId.SUBSCRIPTION_IDENTIFIER, [])
                assert sorted(ids) == wanted_ids
    # At most 30 steps: unacknowledged QoS 1/2 copies never fill a window (32), none is held.
