"""Shared subscription groups cluster-wide: replicated shared routes and the dispatcher."""

from __future__ import annotations

from collections import Counter

import pytest
from cluster_fakes import FakeClient, FakeCluster

from broker.core.broker import Broker
from broker.core.message import Message
from broker.core.session import Subscription
from broker.core.settings import Settings
from broker.core.topics import parse_shared
from cluster.routes import RouteDelta, RouteTable, shared_route_key, valid_route_key
from cluster.shared_dispatch import ClusterSharedDispatcher
from cluster.sync import RouteSync

NODES = ["a", "b", "c"]


def members(cluster: FakeCluster, spec: dict[str, list[str]], filt: str) -> dict[str, FakeClient]:
    """Connect and subscribe clients: {node: [client ids]} -> {client id: client}."""
    out = {}
    for node, ids in spec.items():
        for cid in ids:
            client = cluster.client(node)
            client.connect(cid)
            client.subscribe(filt, qos=1)
            client.received()
            out[cid] = client
    return out


def publish(cluster: FakeCluster, node: str, topic: str, n: int, qos: int = 1) -> None:
    for i in range(n):
        message = Message(topic, b"%d" % i, qos, publisher="pub", node=node)
        cluster[node].publish(message)


def counts(clients: dict[str, FakeClient]) -> Counter[str]:
    got: Counter[str] = Counter()
    for cid, client in clients.items():
        got[cid] += len(client.publishes())
    return got


# -- the route table carries shared routes ---------------------------------------------------


def test_shared_route_keys() -> None:
    assert shared_route_key("g", "a/+") == "$share/g/a/+"
    assert parse_shared(shared_route_key("$queue", "x")) == ("$queue", "x")
    for good in ("a/b", "#", "$share/g/a/#", "$share/$queue/x"):
        assert valid_route_key(good), good
    for bad in ("$share/g", "$share//x", "$queue/x", "$share/g/a/#/b", "", "a/#/b"):
        assert not valid_route_key(bad), bad


def test_shared_routes_match_apart_from_normal_routes() -> None:
    a, b = RouteTable("a", 1), RouteTable("b", 1)
    b.apply(a.local_shared_update("g", "s/+", True))
    b.apply(a.local_update("n/#", True))
    assert b.match("s/1") == set()  # forwarding never sees shared-only routes
    assert b.match_shared("s/1") == [("g", "s/+", ["a"])]
    assert b.match_shared("n/1") == []
    assert b.routes() == [("n/#", "a")] and len(b) == 1
    assert b.shared_routes() == [("g", "s/+", "a")] and b.shared_count() == 1
    delta = a.local_shared_update("g", "s/+", False)
    assert RouteDelta.from_wire(delta.to_wire()) == delta
    b.apply(delta)
    assert b.match_shared("s/1") == [] and b.shared_count() == 0


def test_has_groups_follows_the_shared_routes_of_the_table() -> None:
    """`has_groups` (what a lone PUBLISH asks first) reads the table's count of shared routes:
    it answers as `match_shared` does, before the first group, with one, and after the last."""
    a, b = RouteTable("a", 1), RouteTable("b", 1)
    dispatcher = ClusterSharedDispatcher(b, "b", lambda *_: 0, lambda *_: False)
    assert not dispatcher.has_groups("s/1")
    b.apply(a.local_update("s/1", True))  # a normal route only
    assert not dispatcher.has_groups("s/1")
    b.apply(a.local_shared_update("g", "s/+", True))
    assert dispatcher.has_groups("s/1") and not dispatcher.has_groups("n/1")
    b.apply(a.local_shared_update("g", "s/+", False))
    assert not dispatcher.has_groups("s/1")


def test_shared_routes_travel_by_push_pull_and_are_purged() -> None:
    a, c = RouteTable("a", 1), RouteTable("c", 1)
    a.local_shared_update("g", "x", True)
    a.local_shared_update("h", "x", True)
    a.local_shared_update("h", "x", False)
    assert c.merge_full(a.state_for_push_pull())
    assert c.shared_routes() == [("g", "x", "a")]
    assert c.purge("a")
    assert c.shared_routes() == [] and c.match_shared("x") == []


def test_route_sync_queues_shared_deltas() -> None:
    sync = RouteSync(RouteTable("a", 1))
    delta = sync.local_shared_update("g", "t/#", True)
    assert delta.filter == "$share/g/t/#"
    assert sync.has_broadcasts()
    assert sync.broadcasts(1, 10_000, 10) == [delta.to_wire()]


def test_broker_announces_groups_once_per_node() -> None:
    broker = Broker()
    events: list[tuple[str, str, bool]] = []
    routes: list[tuple[str, bool]] = []
    broker.shared_route_listeners.append(lambda g, f, p: events.append((g, f, p)))
    broker.route_listeners.append(lambda f, p: routes.append((f, p)))
    s1 = broker.open_session(FakeClient(broker).channel, "m1", True, 0)[0]
    s2 = broker.open_session(FakeClient(broker).channel, "m2", True, 0)[0]

    def sub(session_id: str, filt: str) -> Subscription:
        group, real = parse_shared(filt)
        return Subscription(session_id, filt, real, group, 1)

    broker.subscribe(s1, sub("m1", "$share/g/t"))
    broker.subscribe(s1, sub("m1", "$share/g/t"))  # replaced: nothing new
    broker.subscribe(s2, sub("m2", "$share/g/t"))
    broker.subscribe(s2, sub("m2", "$queue/t"))
    broker.subscribe(s2, sub("m2", "t"))
    assert events == [("g", "t", True), ("$queue", "t", True)]
    assert routes == [("t", True)]  # route_listeners as before: the real filter, once
    broker.unsubscribe(s1, "$share/g/t")
    assert events[2:] == []
    broker.unsubscribe(s2, "$share/g/t")
    broker.discard_session("m2")
    assert events[2:] == [("g", "t", False), ("$queue", "t", False)]
    assert routes[1:] == [("t", False)]


# -- dispatch --------------------------------------------------------------------------------


def test_one_member_per_message_in_the_whole_cluster() -> None:
    cluster = FakeCluster(NODES)
    clients = members(cluster, {"a": ["a1"], "b": ["b1", "b2"], "c": ["c1"]}, "$share/g/t/#")
    publish(cluster, "a", "t/x", 30)
    got = counts(clients)
    assert sum(got.values()) == 30
    per_node = {"a": got["a1"], "b": got["b1"] + got["b2"], "c": got["c1"]}
    assert per_node == {"a": 10, "b": 10, "c": 10}  # round robin over the nodes
    assert got["b1"] == got["b2"] == 5  # then over the members of the node
    assert cluster.shared_dropped == 0


def test_fairness_from_every_publishing_node() -> None:
    cluster = FakeCluster(NODES)
    clients = members(cluster, {"a": ["a1"], "b": ["b1"], "c": ["c1"]}, "$share/g/t")
    for node in NODES:
        publish(cluster, node, "t", 9)
    got = counts(clients)
    assert sum(got.values()) == 27
    assert set(got.values()) == {9}


def test_group_only_on_remote_nodes_gets_messages() -> None:
    cluster = FakeCluster(NODES)
    clients = members(cluster, {"b": ["b1"], "c": ["c1"]}, "$share/g/t")
    publish(cluster, "a", "t", 10)  # a has no member, and not even a route of its own
    got = counts(clients)
    assert got == Counter({"b1": 5, "c1": 5})
    assert cluster["a"].metrics.counters["messages/dropped"] == 0


def test_no_duplicates_for_a_member_with_a_normal_subscription() -> None:
    cluster = FakeCluster(NODES)
    b1 = cluster.client("b")
    b1.connect("b1")
    b1.subscribe("$share/g/t", "t", qos=1)  # member and normal subscriber
    b2 = cluster.client("b")
    b2.connect("b2")
    b2.subscribe("t", qos=1)  # normal only
    c1 = cluster.client("c")
    c1.connect("c1")
    c1.subscribe("$share/g/t", qos=1)
    publish(cluster, "a", "t", 10)
    got = {"b1": len(b1.publishes()), "b2": len(b2.publishes()), "c1": len(c1.publishes())}
    # b1: 10 normal + 5 for the group; the forwarded copies never reach the group again
    assert got == {"b1": 15, "b2": 10, "c1": 5}


def test_several_groups_and_local_member_on_the_publishing_node() -> None:
    cluster = FakeCluster(NODES)
    g = members(cluster, {"a": ["a1"], "c": ["c1"]}, "$share/g/t/+")
    h = members(cluster, {"b": ["b1"]}, "$share/h/t/#")
    publish(cluster, "a", "t/1", 4)
    assert counts(g) == Counter({"a1": 2, "c1": 2})
    assert counts(h) == Counter({"b1": 4})


def test_last_member_leaving_stops_dispatch_to_that_node() -> None:
    cluster = FakeCluster(NODES)
    clients = members(cluster, {"b": ["b1"], "c": ["c1"]}, "$share/g/t")
    clients["c1"].drop()  # clean session: gone, and with it the group on c
    assert cluster.tables["a"].match_shared("t") == [("g", "t", ["b"])]
    publish(cluster, "a", "t", 4)
    assert counts(clients)["b1"] == 4


def test_dead_node_is_skipped_and_failed_send_tries_the_next() -> None:
    cluster = FakeCluster(NODES)
    clients = members(cluster, {"b": ["b1"], "c": ["c1"]}, "$share/g/t")
    cluster.down.add("c")  # not alive: b takes everything while c is down
    publish(cluster, "a", "t", 6)
    assert counts(clients) == Counter({"b1": 6})
    assert cluster.dispatchers["a"].dropped == 0


def test_send_failure_falls_through_then_counts() -> None:
    table = RouteTable("a", 1)
    for node in ("b", "c"):
        table.apply(RouteTable(node, 1).local_shared_update("g", "t", True))
    sent: list[str] = []
    ok = {"b": False, "c": True}

    def send(node: str, group: str, filt: str, message: Message) -> bool:
        sent.append(node)
        return ok[node]

    dispatcher = ClusterSharedDispatcher(table, "a", lambda m, g, f: 0, send)
    message = Message("t", b"x", 1)
    assert [dispatcher.dispatch(message) for _ in range(4)] == [1, 1, 1, 1]
    assert sent.count("c") == 4  # every message ended on c
    ok["c"] = False
    assert dispatcher.dispatch(message) == 0
    assert dispatcher.dropped == 1


@pytest.mark.parametrize("strategy", ["hash_clientid", "hash_topic"])
def test_hash_strategies_pick_the_same_node_from_every_origin(strategy: str) -> None:
    cluster = FakeCluster(NODES, strategy=strategy)
    clients = members(cluster, {"a": ["a1"], "b": ["b1"], "c": ["c1"]}, "$share/g/t/#")
    chosen = []
    for origin in NODES:
        cluster[origin].publish(Message("t/same", b"x", 1, publisher="p1"))
        got = counts(clients)
        assert sum(got.values()) == 1
        chosen.append(next(cid for cid, n in got.items() if n))
    assert len(set(chosen)) == 1


def test_publish_shared_false_leaves_groups_out_on_a_single_node() -> None:
    broker = Broker(Settings())
    client = FakeClient(broker)
    client.connect("m")
    client.subscribe("$share/g/t")
    assert broker.publish(Message("t", b"1", 1), forward=False, shared=False).deliveries == 0
    assert broker.metrics.counters["messages/dropped"] == 0  # a forwarded copy: not a drop
    assert broker.publish(Message("t", b"2", 1)).deliveries == 1
    assert [p.payload for p in client.publishes()] == [b"2"]


def test_deliver_shared_local_without_member_returns_zero() -> None:
    broker = Broker(Settings())
    assert broker.deliver_shared_local(Message("t", b"x"), "g", "t") == 0
