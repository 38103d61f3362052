"""A session resumed behind a partition folds the far side's copy in at the heal
(`cluster.takeover_heal`, `broker.core.late_hold`), with real nodes and a real MQTT client.

Two nodes, each reached by its peer only through a relay (test_cluster_dead_hold's `pair`), so
refusing and cutting both relays is a partition. The client `roam` (persistent, QoS 2) has its
session on `b`; during the cut it is served on `a` (a fresh copy: `b` is out of reach), gets
m1 there, and goes back to `b`, which resumes its own copy. `a` held m1 for `b` (the route of
`b`'s copy, kept within `dead_hold`); at the heal that held forward reaches `b` while the
client is connected there. MQTT-4.3.3-2: a QoS 2 message is delivered exactly once, so `b`
must not deliver m1 again: it parks the late copy, asks `a` for its copy when `a` is alive
again, learns m1 was delivered, and drops the parked one. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from api_support import eventually
from cluster_support import ClusterNodes
from test_cluster_dead_hold import TIMEOUT, B, dead_at_a, pair, partition, prometheus_counter

from broker.app import NodeApp
from cluster.members import MemberState

pytestmark = pytest.mark.cluster

A = "a@127.0.0.1"


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[ClusterNodes]:
    cluster = ClusterNodes(tmp_path)
    yield cluster
    await cluster.stop_all()


def roam(port: int) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier="roam", clean_session=False, timeout=5)


async def read_until(client: aiomqtt.Client, got: Counter[str], want: str) -> None:
    """Count every payload received until `want` arrives (bounded by TIMEOUT)."""

    async def read() -> None:
        async for message in client.messages:
            payload = bytes(message.payload).decode()  # type: ignore[arg-type]
            got[payload] += 1
            if payload == want:
                return

    await asyncio.wait_for(read(), TIMEOUT)


async def publish(app: NodeApp, payload: str) -> None:
    async with aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier="pub", timeout=5) as p:
        await p.publish("t/x", payload.encode(), qos=2)  # returns on PUBCOMP


async def test_a_copy_resumed_behind_a_cut_does_not_deliver_again_what_the_far_side_did(
    nodes: ClusterNodes,
) -> None:
    a, b, relays = await pair(nodes, dead_hold=60.0)
    assert a.cluster is not None and b.cluster is not None
    try:
        async with roam(b.node.tcp_port) as client:  # the session's home: b
            await client.subscribe("t/#", qos=2)
        await eventually(lambda: a.cluster is not None and B in a.cluster.table.remote_match("t/x"))
        partition(relays, True)
        await dead_at_a(a)

        def b_sees_a_dead() -> bool:
            member = b.cluster.membership.get(A) if b.cluster is not None else None
            return member is not None and member.state is MemberState.DEAD

        await eventually(b_sees_a_dead, timeout=TIMEOUT)
        on_a: Counter[str] = Counter()
        async with roam(a.node.tcp_port) as client:  # b out of reach: a fresh copy on a
            await client.subscribe("t/#", qos=2)
            reading = asyncio.create_task(read_until(client, on_a, "m1"))
            await publish(a, "m1")  # delivered here, and held at a for b's route
            await reading
        assert a.cluster.forwarder.held() >= 1
        on_b: Counter[str] = Counter()
        async with roam(b.node.tcp_port) as client:  # b resumes its own copy, alone
            assert "roam" in b.node.broker.late_hold  # held: a is apart
            partition(relays, False)  # the heal: a's held forward for b arrives
            await eventually(lambda: b.cluster is not None and b.cluster.is_live(A), TIMEOUT)
            await eventually(lambda: "roam" not in b.node.broker.late_hold, TIMEOUT)
            reading = asyncio.create_task(read_until(client, on_b, "m2"))
            await eventually(
                lambda: a.cluster is not None and B in a.cluster.table.remote_match("t/x")
            )
            await publish(a, "m2")
            await reading
        assert on_a == {"m1": 1}
        assert on_b == {"m2": 1}  # m1 not again
        assert b.cluster.ports.locator.stats["apart/folded"] == 1
        shown = await prometheus_counter(b, "minibroker_cluster_takeover_apart_folded")
        assert shown == 1  # what an operator sees of it
    finally:
        for relay in relays:
            await relay.close()
