"""Structural facts about what an idle session holds (issue 15: memory per connection).

No sizes or timings are asserted: only which objects exist. Sizes are measured by
`minibroker-bench memory`.
"""

from __future__ import annotations

import pytest
from test_session import FakeOutlet, make_session, msg


def test_a_fresh_session_owns_no_inflight_queue_or_awaiting_rel() -> None:
    a, _ = make_session()
    b, _ = make_session()
    assert a.inflight is b.inflight and not a.inflight
    assert a.queue is b.queue and not a.queue
    assert a.awaiting_rel is b.awaiting_rel and not a.awaiting_rel
    assert a.subscriptions is b.subscriptions and not a.subscriptions


def test_a_subscription_gives_the_session_its_own_dict() -> None:
    from broker.core.session import Subscription

    a, _ = make_session()
    b, _ = make_session()
    a.add_subscription(Subscription("c", "t/#", "t/#", None, 1))
    assert list(a.subscriptions) == ["t/#"] and not b.subscriptions
    with pytest.raises(TypeError):
        b.subscriptions["x"] = Subscription("c", "x", "x", None, 0)


def test_the_shared_empty_structures_refuse_writes() -> None:
    session, _ = make_session()
    with pytest.raises(TypeError):
        session.inflight[1] = None  # type: ignore[assignment]
    with pytest.raises(TypeError):
        session.queue.append((msg(1), 1, False, None))
    with pytest.raises(TypeError):
        session.awaiting_rel[1] = 0.0
    assert not session.inflight and not session.queue and not session.awaiting_rel


def test_first_use_takes_its_own_and_an_emptied_one_is_given_back() -> None:
    session, _ = make_session(max_inflight=1)
    other, _ = make_session()
    session.attach(FakeOutlet())
    session.deliver(msg(1), 1, False, None, 1.0)
    session.deliver(msg(2), 1, False, None, 1.0)  # window of 1: this one is queued
    assert list(session.inflight) == [1] and len(session.queue) == 1
    assert session.inflight is not other.inflight and session.queue is not other.queue
    assert session.on_puback(1, 2.0)  # the queued one moves into the window
    assert list(session.inflight) == [2] and session.queue is other.queue
    assert session.on_puback(2, 3.0)
    assert session.inflight is other.inflight


def test_awaiting_rel_is_taken_and_given_back() -> None:
    session, _ = make_session()
    other, _ = make_session()
    session.await_rel(5, 1.0)
    assert session.awaiting_rel == {5: 1.0} and other.awaiting_rel == {}
    assert not session.release_rel(6)
    assert session.release_rel(5)
    assert session.awaiting_rel is other.awaiting_rel


def test_a_queue_for_an_offline_session_is_its_own() -> None:
    session, _ = make_session()
    other, _ = make_session()
    session.deliver(msg(1), 1, False, None, 1.0)  # offline: queued
    assert len(session.queue) == 1 and not other.queue
    session.attach(FakeOutlet())
    session.resume(2.0)
    assert not session.queue and session.queue is other.queue
    assert list(session.inflight) == [1]


def test_the_decoder_holds_no_buffer_between_whole_packets() -> None:
    from broker.protocol.codec import Decoder, encode
    from broker.protocol.packets import PingReq

    decoder = Decoder()
    frame = encode(PingReq())
    assert decoder.feed(frame) == [PingReq()] and decoder._buf is None
    assert decoder.feed(frame + frame[:1]) == [PingReq()]
    assert decoder._buf == frame[:1]  # a partial packet waits
    assert decoder.feed(frame[1:]) == [PingReq()] and decoder._buf is None


def test_every_connection_shares_the_protocol_name_string() -> None:
    from broker.protocol.codec import Decoder, encode
    from broker.protocol.packets import Connect

    names = []
    for client_id in ("a", "b"):
        packet = Decoder().feed(encode(Connect(client_id=client_id)))[0]
        assert isinstance(packet, Connect)
        names.append(packet.protocol_name)
    assert names[0] == "MQTT" and names[0] is names[1]


def test_shared_empties_refuse_in_place_operators_too() -> None:
    from collections import deque

    from broker.core.shared_empty import SharedEmptyDeque, SharedEmptyDict

    d: dict[int, int] = SharedEmptyDict()
    q: deque[int] = SharedEmptyDeque()
    for write in (
        lambda: d.update({1: 1}),
        lambda: d.setdefault(1, 1),
        lambda: d.__ior__({1: 1}),
        lambda: q.extend([1]),
        lambda: q.appendleft(1),
        lambda: q.insert(0, 1),
        lambda: q.__iadd__([1]),
    ):
        with pytest.raises(TypeError):
            write()
    assert not d and not q


def test_an_idle_connection_holds_no_takeover_buffers_and_shares_the_alias_table() -> None:
    from memharness import MemBroker

    from broker.protocol.constants import MQTT_5, PropertyId
    from broker.protocol.packets import Publish

    mem = MemBroker()
    a, _ = mem.connect("a", MQTT_5)
    b, _ = mem.connect("b", MQTT_5)
    for client in (a, b):
        assert client.channel.held_packets is None and client.channel.held_bytes is None
    assert a.channel.topic_aliases is b.channel.topic_aliases and not a.channel.topic_aliases
    # The first alias a client sets gives its connection its own table (MQTT-3.3.2-12).
    a.send(Publish("t/1", b"x", properties={PropertyId.TOPIC_ALIAS: 1}))
    assert a.channel.topic_aliases == {1: "t/1"} and not b.channel.topic_aliases
    assert not a.closed
