"""Session state export/import (moving a session to another node) and the message dict form."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from cluster_fakes import FakeClient, msgpack_roundtrip
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.broker import Broker
from broker.core.message import Message, message_from_dict, message_to_dict
from broker.core.session import InflightEntry, Session, Subscription
from broker.core.settings import Settings
from broker.core.topics import parse_shared, validate_topic_filter
from broker.protocol.constants import PropertyId
from broker.protocol.packets import Publish, PubRel

NOW = 1000.0

levels = st.text("abc", min_size=0, max_size=3)
topics = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
plain_filters = st.one_of(
    topics,
    topics.map(lambda t: t + "/#"),
    st.just("#"),
    st.lists(st.sampled_from(["a", "+", "b", ""]), min_size=1, max_size=3).map("/".join),
)
filters = st.one_of(
    plain_filters,
    st.tuples(st.sampled_from(["g", "h"]), plain_filters).map(lambda t: f"$share/{t[0]}/{t[1]}"),
    plain_filters.map(lambda f: "$queue/" + f),
).filter(validate_topic_filter)
properties = st.fixed_dictionaries(
    {},
    optional={
        int(PropertyId.MESSAGE_EXPIRY_INTERVAL): st.integers(1, 10_000),
        int(PropertyId.CONTENT_TYPE): st.text(max_size=5),
        int(PropertyId.CORRELATION_DATA): st.binary(max_size=5),
        int(PropertyId.USER_PROPERTY): st.lists(
            st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=3
        ),
    },
)
messages = st.builds(
    Message,
    topic=topics,
    payload=st.binary(max_size=20),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    properties=properties,
    publisher=st.text(max_size=5),
    timestamp=st.floats(0, 2000, allow_nan=False),
    node=st.text(max_size=5),
)
sub_ids = st.none() | st.lists(st.integers(1, 268_435_455), min_size=1, max_size=2)


def make_session(client_id: str = "c") -> Session:
    return Session(
        client_id,
        clean_start=False,
        expiry_interval=3600,
        max_inflight=100,
        max_queued=100,
        metrics=Broker().metrics,
        now=NOW,
    )


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    session = make_session(draw(st.text("xyz", min_size=1, max_size=4)))
    session.username = draw(st.none() | st.text(max_size=4))
    session.expiry_interval = draw(st.integers(0, 0xFFFFFFFF))
    session.created_at = draw(st.floats(0, 2000, allow_nan=False))
    session.disconnected_at = draw(st.floats(0, 2000, allow_nan=False))
    for filt in draw(st.lists(filters, max_size=5, unique=True)):
        group, real = parse_shared(filt)
        session.add_subscription(
            Subscription(
                session.client_id,
                filt,
                real,
                group,
                draw(st.integers(0, 2)),
                draw(st.booleans()) if group is None else False,
                draw(st.booleans()),
                draw(st.integers(0, 2)),
                draw(st.none() | st.integers(1, 1000)),
            )
        )
    # Fresh sessions share read-only empty structures (session.py docstring): give it its own.
    session.queue, session.inflight, session.awaiting_rel = deque(), {}, {}
    for _ in range(draw(st.integers(0, 4))):
        qos = draw(st.integers(0, 2))
        session.queue.append((draw(messages), qos, draw(st.booleans()), draw(sub_ids)))
    for packet_id in draw(st.lists(st.integers(1, 65535), max_size=4, unique=True)):
        qos = draw(st.integers(1, 2))
        entry = InflightEntry(draw(messages), qos, draw(st.booleans()), draw(sub_ids), NOW)
        entry.awaiting_comp = qos == 2 and draw(st.booleans())
        session.inflight[packet_id] = entry
    for packet_id in draw(st.lists(st.integers(1, 65535), max_size=3, unique=True)):
        session.awaiting_rel[packet_id] = NOW
    return session


@settings(max_examples=150, deadline=None)
@given(sessions())
def test_export_msgpack_import_round_trip(session: Session) -> None:
    state = session.export_state()
    broker = Broker(Settings(max_queued_messages=100), clock=lambda: NOW)
    imported = broker.import_session(msgpack_roundtrip(state))
    assert imported.export_state() == state
    assert broker.sessions[session.client_id] is imported
    assert imported.outlet is None  # offline until a connection resumes it
    assert set(imported.subscriptions) == set(session.subscriptions)
    for filt in session.subscriptions:
        assert broker.router.get(filt, session.client_id) is imported.subscriptions[filt]


@settings(max_examples=100, deadline=None)
@given(messages)
def test_message_dict_round_trip(message: Message) -> None:
    back = message_from_dict(msgpack_roundtrip(message_to_dict(message)))
    assert message_to_dict(back) == message_to_dict(message)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"topic": "t", "payload": "str", "qos": 0},
        {"topic": "t", "payload": b"", "qos": 3},
        {"topic": "t", "payload": b"", "qos": True},
        {"topic": "t", "payload": b"", "qos": 0, "props": {"x": 1}},
        {"topic": "t", "payload": b"", "qos": 0, "props": {38: [["a"]]}},
    ],
)
def test_message_from_dict_refuses_malformed(bad: Any) -> None:
    with pytest.raises(ValueError):
        message_from_dict(bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"client_id": ""},
        {"client_id": "c", "expiry_interval": -1},
        {"client_id": "c", "subscriptions": [["a/#/b", 0, False, False, 0, None]]},
        {"client_id": "c", "subscriptions": [["a", 3, False, False, 0, None]]},
        {"client_id": "c", "queue": [[{"topic": "t"}, 1, False, None]]},
        {
            "client_id": "c",
            "inflight": [[0, message_to_dict(Message("t", b"")), 1, False, None, False]],
        },
        {"client_id": "c", "awaiting_rel": ["x"]},
    ],
)
def test_import_refuses_malformed_state_without_changing_anything(bad: dict[str, Any]) -> None:
    broker = Broker()
    routes: list[tuple[str, bool]] = []
    broker.route_listeners.append(lambda f, p: routes.append((f, p)))
    bad = {"subscriptions": [["ok/#", 1, False, False, 0, None]], **bad}
    with pytest.raises(ValueError):
        broker.import_session(bad)
    assert broker.sessions == {} and routes == [] and len(broker.router) == 0


def test_surrender_exports_discards_and_withdraws_routes() -> None:
    broker = Broker(clock=lambda: NOW)
    routes: list[tuple[str, bool]] = []
    broker.route_listeners.append(lambda f, p: routes.append((f, p)))
    client = FakeClient(broker)
    client.connect("c", clean_start=False)
    client.subscribe("t/#", qos=1)
    client.drop()
    broker.publish(Message("t/1", b"q", 1))
    state = broker.surrender_session("c", "other")
    assert state is not None and len(state["queue"]) == 1
    assert state["subscriptions"] == [["t/#", 1, False, False, 0, None]]
    assert broker.sessions == {} and routes == [("t/#", True), ("t/#", False)]
    assert broker.surrender_session("c", "other") is None


def test_imported_inflight_is_resent_with_its_packet_ids() -> None:
    old = make_session()
    old.inflight, old.queue = {}, deque()  # its own, not the shared empty ones
    old.inflight[7] = InflightEntry(Message("t", b"one", 1), 1, False, None, NOW)
    entry = InflightEntry(Message("t", b"two", 2), 2, False, None, NOW)
    entry.awaiting_comp = True
    old.inflight[9] = entry
    old.queue.append((Message("t", b"three", 1), 1, False, [5]))
    broker = Broker(clock=lambda: NOW)
    broker.import_session(msgpack_roundtrip(old.export_state()))
    client = FakeClient(broker)
    client.connect("c", clean_start=False)
    assert client.connack().session_present
    packets = client.received()
    assert isinstance(packets[0], Publish) and packets[0].dup and packets[0].packet_id == 7
    assert packets[0].payload == b"one"
    assert packets[1] == PubRel(9)
    assert isinstance(packets[2], Publish) and packets[2].payload == b"three"
    assert packets[2].packet_id not in (7, 9)
    assert packets[2].properties[PropertyId.SUBSCRIPTION_IDENTIFIER] == [5]
