"""The grace of a peer declared dead (`[cluster] dead_hold`, `cluster.dead_hold`) with real
nodes and real MQTT clients over loopback.

Two nodes, each reached by its peer only through a relay in front of its cluster port (each
advertises its relay, and `a` joins through `b`'s), so refusing and cutting both relays is a
partition: `a` declares `b` dead. `b` has a persistent QoS 1 subscriber, `a` a publisher.
* Within the grace: `b` keeps its route at `a` (shown dead by the REST API all along), what `a`
  acknowledges for `b`'s subscriber meanwhile is held, and when the partition heals every
  message arrives, a QoS 2 one once (MQTT-4.3.3-2: delivered exactly once).
* After the grace: what was held is dropped and counted in `messages/dropped` and
  `forward/held_dropped` (Prometheus `minibroker_cluster_forward_held_dropped`); `b`'s route
  stays, frozen, so what `a` acknowledges for it afterwards is dropped and counted too; after
  the heal none of it arrives, and what is published then does.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, basic, eventually
from cluster_support import ClusterNodes, converged
from prometheus_client.parser import text_string_to_metric_families
from test_cluster_delivery import Relay, Subscriber

from broker.app import NodeApp
from broker.core.message import Message
from cluster.members import MemberState

pytestmark = pytest.mark.cluster

TIMEOUT = 20.0
A, B = "a@127.0.0.1", "b@127.0.0.1"


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[ClusterNodes]:
    cluster = ClusterNodes(tmp_path)
    yield cluster
    await cluster.stop_all()


async def pair(nodes: ClusterNodes, dead_hold: float) -> tuple[NodeApp, NodeApp, list[Relay]]:
    """`a` and `b` clustered, each behind its relay (started, not refusing)."""
    relays = [Relay(delay=0.0), Relay(delay=0.0)]
    for relay in relays:
        await relay.start()
    ra, rb = relays
    b = await nodes.start(B, cluster_advertise=f"127.0.0.1:{rb.port}", cluster_dead_hold=dead_hold)
    assert b.cluster is not None
    rb.upstream = b.cluster.port
    a = await nodes.start(
        A,
        cluster_join=[f"127.0.0.1:{rb.port}"],
        cluster_advertise=f"127.0.0.1:{ra.port}",
        cluster_dead_hold=dead_hold,
        # b answers a's join through ra, wired to a only once a has started: a must not wait
        # for that answer before its listeners open (`cluster.first_sync`), or it waits out
        # sync_timeout and joins late
        cluster_sync_timeout=0,
    )
    assert a.cluster is not None
    ra.upstream = a.cluster.port
    await converged(a, b, timeout=TIMEOUT)
    return a, b, relays


def partition(relays: list[Relay], on: bool) -> None:
    for relay in relays:
        relay.refusing = on
        if on:
            relay.cut()


async def status_of(app: NodeApp, node: str) -> str:
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}", headers=basic(*ADMIN)) as http,
        http.get(f"/api/v3/nodes/{node}") as reply,
    ):
        assert reply.status == 200
        return str((await reply.json())["node_status"])


async def prometheus_counter(app: NodeApp, name: str) -> float:
    """A `minibroker_cluster_*` counter as `GET /metrics` shows it (the management layer)."""
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}", headers=basic(*ADMIN)) as http,
        http.get("/metrics") as reply,
    ):
        assert reply.status == 200
        text = await reply.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return float(families[name].samples[0].value)


async def publish(port: int, payloads: list[str], qos: int) -> None:
    """Each publish returns on its PUBACK/PUBCOMP: acknowledged by `a`."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="pub", timeout=5) as pub:
        for payload in payloads:
            await pub.publish("t/x", payload.encode(), qos=qos)


async def subscribed(sub: Subscriber, a: NodeApp) -> None:
    await asyncio.wait_for(sub.subscribed.wait(), TIMEOUT)
    await eventually(lambda: a.cluster is not None and B in a.cluster.table.remote_match("t/x"))


async def dead_at_a(a: NodeApp) -> None:
    def dead() -> bool:
        assert a.cluster is not None
        member = a.cluster.membership.get(B)
        return member is not None and member.state is MemberState.DEAD

    await eventually(dead, timeout=TIMEOUT)


async def test_held_for_a_dead_peer_and_delivered_when_it_returns_within_the_grace(
    nodes: ClusterNodes,
) -> None:
    a, b, relays = await pair(nodes, dead_hold=60.0)
    assert a.cluster is not None
    sub = Subscriber(b.node.tcp_port, qos=2)
    task = asyncio.create_task(sub.run())
    try:
        await subscribed(sub, a)
        partition(relays, True)
        await dead_at_a(a)
        assert await status_of(a, B) == "Stopped"  # the node lists show it dead
        assert a.cluster.table.remote_match("t/x") == {B}  # its route is kept
        held_before = a.cluster.forwarder.held()
        await publish(a.node.tcp_port, [f"q1-{i}" for i in range(10)], qos=1)
        await publish(a.node.tcp_port, [f"q2-{i}" for i in range(10)], qos=2)
        assert a.cluster.forwarder.held() == held_before + 20
        assert a.cluster.stats["dead_hold/started"] == 1
        assert await status_of(a, B) == "Stopped"
        partition(relays, False)  # healed
        want = {f"q{q}-{i}" for q in (1, 2) for i in range(10)}
        await eventually(lambda: want <= set(sub.got), timeout=TIMEOUT)
        await eventually(lambda: a.cluster is not None and a.cluster.is_live(B), timeout=TIMEOUT)
        await asyncio.sleep(0.5)  # a late duplicate would arrive now
        assert [p for p in want if p.startswith("q2") and sub.got[p] > 1] == []
        stats = a.cluster.stats
        assert stats["forward/held_dropped"] == 0 and stats["dead_hold/expired"] == 0
        assert stats["dead_hold/returned"] == 1
        assert await status_of(a, B) == "Running"
    finally:
        sub.running = False
        await asyncio.wait_for(task, 10)
        for relay in relays:
            await relay.close()


async def test_dropped_and_counted_when_the_grace_ends_first(nodes: ClusterNodes) -> None:
    a, b, relays = await pair(nodes, dead_hold=5.0)
    assert a.cluster is not None
    sub = Subscriber(b.node.tcp_port, qos=1)
    task = asyncio.create_task(sub.run())
    try:
        await subscribed(sub, a)
        partition(relays, True)
        await dead_at_a(a)
        dropped = a.node.broker.metrics.counters["messages/dropped"]
        lost = [f"lost-{i}" for i in range(10)]
        await publish(a.node.tcp_port, lost, qos=1)
        assert a.cluster.grace.holds(B) and a.cluster.forwarder.held() >= 10
        # the grace is 5 s from the dead verdict: wait for it with room for a late timer
        await eventually(
            lambda: a.cluster is not None and not a.cluster.grace.holds(B), timeout=TIMEOUT
        )
        stats = a.cluster.stats
        assert stats["dead_hold/expired"] == 1 and stats["forward/held_dropped/peer_gone"] >= 10
        # Past the grace the route stays, frozen: a message for b is dropped and counted.
        assert a.cluster.table.remote_match("t/x") == {B}
        late = [f"late-{i}" for i in range(5)]
        await publish(a.node.tcp_port, late, qos=1)
        assert stats["forward/held_dropped/after_grace"] == 5
        lost += late
        assert a.node.broker.metrics.counters["messages/dropped"] >= dropped + 10
        shown = await prometheus_counter(a, "minibroker_cluster_forward_held_dropped")
        assert shown == stats["forward/held_dropped"] >= 15
        assert a.cluster.forwarder.held() == 0
        # A heal the links see before the membership does: past the grace, a peer whose link
        # is up again is sent its QoS 1/2 forwards (held in its outbox until it takes them),
        # not dropped (fault suite long_partition: 8-32 per run were dropped in that window).
        member = a.cluster.membership.get(B)
        assert member is not None and member.state is MemberState.DEAD
        real_is_up = a.cluster.transport.is_up
        a.cluster.transport.is_up = lambda address: address == member.address  # type: ignore[method-assign]
        try:
            linked = Message("t/x", b"linked", 1, publisher="pub", node=A)
            assert a.cluster.send_forward(B, linked) == 1
        finally:
            a.cluster.transport.is_up = real_is_up  # type: ignore[method-assign]
        assert stats["forward/held_dropped/after_grace"] == 5
        partition(relays, False)
        await eventually(lambda: a.cluster is not None and a.cluster.is_live(B), timeout=TIMEOUT)
        await eventually(lambda: a.cluster is not None and B in a.cluster.table.remote_match("t/x"))
        await publish(a.node.tcp_port, ["after"], qos=1)
        await eventually(lambda: "after" in sub.got and "linked" in sub.got, timeout=TIMEOUT)
        await asyncio.sleep(0.5)
        assert [p for p in lost if p in sub.got] == []  # dropped, not delivered late
    finally:
        sub.running = False
        await asyncio.wait_for(task, 10)
        for relay in relays:
            await relay.close()
