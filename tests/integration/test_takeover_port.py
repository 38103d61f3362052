"""A client id unique in the cluster: CONNECT on one broker takes the client over from another.

Brokers of a `FakeCluster` (tests/cluster_fakes.py) with the `session_locator` port answered by
the other brokers; deferred until `run_pending()`, as the real locator answers later on the loop.
"""

from __future__ import annotations

from cluster_fakes import FakeClient, FakeCluster

from broker.core.channel import CLOSED, CONNECTED, TAKEOVER
from broker.core.message import Message
from broker.protocol.constants import MQTT_3_1_1, PropertyId, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Disconnect,
    PingReq,
    PingResp,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Will,
)


def deferred() -> FakeCluster:
    return FakeCluster(["a", "b", "c"], immediate=False)


def connect(
    cluster: FakeCluster, node: str, cid: str, clean_start: bool, **kw: object
) -> FakeClient:
    client = cluster.client(node)
    client.connect(cid, clean_start=clean_start, **kw)
    cluster.run_pending()
    assert client.connack().reason_code == 0
    return client


def test_queued_messages_follow_the_client_to_another_node() -> None:
    cluster = deferred()
    old = connect(cluster, "a", "dev", clean_start=False)
    old.subscribe("t/#", qos=1)
    old.drop()
    for i in range(3):
        cluster["c"].publish(Message("t/x", b"%d" % i, 1))  # forwarded to a, queued there
    assert len(cluster["a"].sessions["dev"].queue) == 3

    new = cluster.client("b")
    new.connect("dev", clean_start=False)
    assert new.channel.state == TAKEOVER and new.received() == []  # waits for the others
    cluster.run_pending()
    ack = new.connack()
    assert ack.session_present
    assert [p.payload for p in new.publishes()] == [b"0", b"1", b"2"]
    assert "dev" not in cluster["a"].sessions
    # the subscription moved with it: routes now point at b
    assert cluster.tables["c"].match("t/y") == {"b"}
    cluster["c"].publish(Message("t/y", b"later", 1))
    assert [p.payload for p in new.publishes()] == [b"later"]


def test_connected_client_is_taken_over_with_its_inflight_window() -> None:
    cluster = deferred()
    old = connect(cluster, "a", "dev", clean_start=False)
    old.subscribe("t", qos=1)
    cluster["a"].publish(Message("t", b"unacked", 1))
    [first] = old.publishes(ack=False)

    new = cluster.client("b")
    new.connect("dev", clean_start=False)
    cluster.run_pending()
    assert old.received() == [Disconnect(ReasonCode.SESSION_TAKEN_OVER)]
    assert old.link.closed and old.channel.state == CLOSED
    assert new.connack().session_present
    [again] = new.publishes()
    assert again.dup and again.packet_id == first.packet_id and again.payload == b"unacked"


def test_clean_start_closes_the_old_connection_and_carries_nothing() -> None:
    cluster = deferred()
    old = connect(cluster, "a", "dev", clean_start=False)
    old.subscribe("t", qos=1)
    cluster["a"].publish(Message("t", b"x", 1))
    new = cluster.client("b")
    new.connect("dev", clean_start=True)
    cluster.run_pending()
    assert old.link.closed
    assert not new.connack().session_present
    assert new.publishes() == []
    assert "dev" not in cluster["a"].sessions
    assert cluster.tables["b"].match("t") == set()  # a's route is withdrawn


def test_persistent_session_on_another_node_with_clean_start_is_discarded() -> None:
    cluster = deferred()
    old = connect(cluster, "a", "dev", clean_start=False)
    old.subscribe("t", qos=1)
    old.drop()
    new = connect(cluster, "b", "dev", clean_start=True)
    assert "dev" not in cluster["a"].sessions
    assert cluster["b"].sessions["dev"].subscriptions == {}
    assert new.channel.state == CONNECTED


def test_input_during_takeover_is_handled_after_connack_in_order() -> None:
    cluster = deferred()
    connect(cluster, "a", "dev", clean_start=False).drop()
    new = cluster.client("b")
    new.connect("dev", clean_start=False)
    # in the same read as the CONNECT would be the same; here: a later read
    new.send(new.subscribe_packet("u", qos=1), PingReq())
    new.send(Publish("u", b"mine", 1, packet_id=1))
    assert new.received() == []
    cluster.run_pending()
    packets = new.received()
    kinds = [type(p) for p in packets]
    assert kinds[0] is ConnAck and kinds[1] is SubAck and kinds[2] is PingResp
    assert Publish in kinds  # the PUBLISH went through after the SUBSCRIBE: own message back


def test_packets_in_the_connect_read_are_held_too() -> None:
    from broker.protocol.packets import Connect

    cluster = deferred()
    client = cluster.client("b")
    client.send(
        Connect("dev", protocol_level=5, clean_start=True),
        client.subscribe_packet("v", qos=0),
    )
    assert client.channel.state == TAKEOVER and client.received() == []
    cluster.run_pending()
    assert [type(p) for p in client.received()] == [ConnAck, SubAck]


def test_connection_closed_during_takeover_keeps_the_session() -> None:
    cluster = deferred()
    old = connect(cluster, "a", "dev", clean_start=False)
    old.subscribe("t", qos=1)
    old.drop()
    cluster["a"].publish(Message("t", b"kept", 1))
    events: list[str] = []
    b = cluster["b"]
    b.hooks.client_connected.append(lambda info: events.append("connected"))
    b.hooks.client_disconnected.append(lambda info, why: events.append("disconnected"))
    new = cluster.client("b")
    new.connect("dev", clean_start=False)
    new.drop()
    cluster.run_pending()
    assert events == []  # never connected as far as hooks know
    session = b.sessions["dev"]
    assert session.outlet is None and len(session.queue) == 1
    again = connect(cluster, "b", "dev", clean_start=False)
    assert [p.payload for p in again.publishes()] == [b"kept"]


def test_single_node_is_synchronous() -> None:
    cluster = FakeCluster(["solo"], immediate=False)
    client = cluster.client("solo")
    client.connect("dev")
    assert client.channel.state == CONNECTED and cluster.pending == []
    assert isinstance(client.received()[0], ConnAck)


def test_takeover_timeout_closes_a_stuck_channel() -> None:
    now = [1000.0]
    cluster = FakeCluster(["a", "b"], immediate=False, clock=lambda: now[0])
    client = cluster.client("b")
    client.connect("dev")
    now[0] += 10
    cluster["b"].tick()
    assert client.channel.state == TAKEOVER  # keepalive does not apply
    now[0] += 60
    cluster["b"].tick()
    assert client.channel.state == CLOSED
    cluster.run_pending()  # the late answer finds the channel gone
    assert "dev" not in cluster["b"].connected


def test_will_on_takeover() -> None:
    cluster = deferred()
    watcher = connect(cluster, "c", "watcher", clean_start=True)
    watcher.subscribe("will/#", qos=0)
    will = Will("will/dev", b"gone")
    connect(cluster, "a", "dev", clean_start=False, will=will)
    connect(cluster, "b", "dev", clean_start=False)
    # as for a takeover on one node: a session that goes on (now on b) publishes no will...
    assert watcher.publishes() == []
    connect(cluster, "a", "dev", clean_start=False, will=will)
    connect(cluster, "b", "dev", clean_start=True)
    # ... one that ends with the takeover (the new connection is clean) does
    assert [p.payload for p in watcher.publishes()] == [b"gone"]


def test_delayed_will_cancelled_by_a_continued_session_published_by_a_clean_one() -> None:
    cluster = deferred()
    watcher = connect(cluster, "c", "watcher", clean_start=True)
    watcher.subscribe("will/#", qos=0)
    delayed = Will("will/dev", b"late", properties={PropertyId.WILL_DELAY_INTERVAL: 60})
    connect(cluster, "a", "dev", clean_start=False, will=delayed).drop()
    assert len(cluster["a"].wills) == 1
    connect(cluster, "b", "dev", clean_start=False)
    assert len(cluster["a"].wills) == 0 and watcher.publishes() == []
    connect(cluster, "a", "dev2", clean_start=False, will=delayed).drop()
    connect(cluster, "b", "dev2", clean_start=True)
    assert [p.payload for p in watcher.publishes()] == [b"late"]


def test_qos2_awaiting_pubrel_moves_with_the_session() -> None:
    cluster = deferred()
    sub = connect(cluster, "a", "sub", clean_start=True)
    sub.subscribe("q", qos=2)
    pub = connect(cluster, "a", "pub", clean_start=False)
    pub.send(Publish("q", b"once", 2, packet_id=5))
    assert pub.received() == [PubRec(5)]
    assert len(sub.received()) == 1  # routed once, on arrival
    moved = connect(cluster, "b", "pub", clean_start=False)
    moved.send(Publish("q", b"once", 2, dup=True, packet_id=5))  # the resend: not routed again
    moved.send(PubRel(5))
    assert moved.received() == [PubRec(5), PubComp(5)]
    assert sub.received() == []


def test_mqtt311_client_moves_too() -> None:
    cluster = deferred()
    old = cluster.client("a", version=MQTT_3_1_1)
    old.connect("dev", clean_start=False)
    cluster.run_pending()
    old.connack()
    old.subscribe("t", qos=1)
    old.drop()
    cluster["a"].publish(Message("t", b"x", 1))
    new = cluster.client("b", version=MQTT_3_1_1)
    new.connect("dev", clean_start=False)
    cluster.run_pending()
    assert new.connack().session_present
    assert [p.payload for p in new.publishes()] == [b"x"]
