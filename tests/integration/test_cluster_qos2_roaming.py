"""A QoS 2 message reaches a persistent session once when the session moves to a node that was
cut off, and that node then gets the message late from the grace of a dead peer
(`[cluster] dead_hold`): `Broker.late_for` with the publish stamp the message carries.

Two nodes behind relays (`test_cluster_dead_hold.pair`): `b` has a bystander subscriber, so
`a` routes `t/x` to `b` too. A persistent QoS 2 session "roamer" is on `a`; the relays cut
the cluster; `a` acknowledges QoS 2 messages, delivers them to the roamer and holds copies for
`b`. The roamer then connects to `b` (its takeover cannot reach `a`: a fresh copy there), and
after the heal `b` gets the held copies. Those published before the roamer arrived on `b`
reached it on `a` already and must not reach it again (MQTT-4.3.3-2: a QoS 2 message is
delivered exactly once); those published after it arrived are delivered there, once.
Every wait is bounded.
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
from test_cluster_dead_hold import TIMEOUT, dead_at_a, pair, partition, publish, subscribed
from test_cluster_delivery import Subscriber

pytestmark = pytest.mark.cluster


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[ClusterNodes]:
    cluster = ClusterNodes(tmp_path)
    yield cluster
    await cluster.stop_all()


class Roamer:
    """One connection of the persistent session "roamer" on `t/#` at QoS 2, counting what it
    gets, until `leave` is set (then a normal DISCONNECT: the session stays on that node)."""

    def __init__(self, port: int, got: Counter[str]) -> None:
        self.port = port
        self.got = got
        self.subscribed = asyncio.Event()
        self.leave = asyncio.Event()

    async def run(self) -> None:
        client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier="roamer", clean_session=False, timeout=10
        )
        async with client:
            await client.subscribe("t/#", qos=2)
            self.subscribed.set()
            messages = aiter(client.messages)
            pending: asyncio.Future[aiomqtt.Message] | None = None
            while not self.leave.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({pending}, timeout=0.2)
                if done:
                    message, pending = pending.result(), None
                    self.got[bytes(message.payload).decode()] += 1  # type: ignore[arg-type]
            if pending is not None:
                pending.cancel()


async def test_a_qos2_message_held_for_a_node_reaches_a_session_that_moved_there_once(
    nodes: ClusterNodes,
) -> None:
    a, b, relays = await pair(nodes, dead_hold=60.0)
    assert a.cluster is not None
    keeper = Subscriber(b.node.tcp_port, qos=2)  # makes `a` route t/x to `b`
    keeper_task = asyncio.create_task(keeper.run())
    got: Counter[str] = Counter()
    tasks = [keeper_task]
    try:
        await subscribed(keeper, a)
        at_a = Roamer(a.node.tcp_port, got)
        tasks.append(asyncio.create_task(at_a.run()))
        await asyncio.wait_for(at_a.subscribed.wait(), TIMEOUT)
        partition(relays, True)
        await dead_at_a(a)
        before = [f"before-{i}" for i in range(10)]
        await publish(a.node.tcp_port, before, qos=2)
        await eventually(lambda: all(got[p] == 1 for p in before), timeout=TIMEOUT)
        assert a.cluster.forwarder.held() >= 10  # copies held for `b` (the keeper's route)
        at_a.leave.set()
        await asyncio.wait_for(tasks[-1], TIMEOUT)

        # The roamer moves to `b` while it is cut off: a copy of the session arrives there.
        at_b = Roamer(b.node.tcp_port, got)
        tasks.append(asyncio.create_task(at_b.run()))
        await asyncio.wait_for(at_b.subscribed.wait(), TIMEOUT)
        after = [f"after-{i}" for i in range(5)]
        await publish(a.node.tcp_port, after, qos=2)  # held for `b` too; the roamer is there

        partition(relays, False)
        await eventually(
            lambda: all(keeper.got[p] >= 1 for p in before + after), timeout=TIMEOUT
        )  # `b` got what was held
        await eventually(lambda: all(got[p] >= 1 for p in after), timeout=TIMEOUT)
        await asyncio.sleep(1.0)  # a late duplicate would arrive now
        assert {p: n for p, n in got.items() if n != 1} == {}
        assert b.node.broker.late_skipped >= len(before)
    finally:
        keeper.running = False
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        await asyncio.wait_for(keeper_task, 10)
        for relay in relays:
            await relay.close()
