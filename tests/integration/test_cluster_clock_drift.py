"""The drift rule of the node's one hybrid clock (broker.core.hlc), between real nodes.

Two clustered `NodeApp`s on loopback (`cluster_support`), real MQTT clients. Node b's wall
clock runs 10 minutes ahead (its broker clock is shifted, as a machine set wrong would be).
Before the rule, b's stamps beat every write of a for 10 minutes; now a rejects them: a
retained write stamped by b is refused on a (and the message still delivered), a's clock does
not jump, and a claim of a client id from b is ordered by a's own clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from api_support import eventually
from cluster_support import ClusterNodes, converged

from broker.app import NodeApp
from cluster.registry import owner_of

A, B = "a@127.0.0.1", "b@127.0.0.1"
AHEAD = 600.0
TIMEOUT = 10.0


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[NodeApp, NodeApp]]:
    nodes = ClusterNodes(tmp_path)
    a = await nodes.start(A)
    b = await nodes.start(B, a)
    await converged(a, b)
    b.broker.clock = lambda: time.time() + AHEAD  # b's machine is 10 minutes ahead
    yield a, b
    await nodes.stop_all()


def client(app: NodeApp, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, timeout=TIMEOUT)


def held(app: NodeApp, topic: str) -> bytes | None:
    message = app.broker.retained.get(topic)
    return None if message is None else message.payload


async def test_a_peer_far_ahead_does_not_win_retained_writes(pair: tuple[NodeApp, NodeApp]) -> None:
    a, b = pair
    async with client(a, "sub-a") as sub:
        await sub.subscribe("d/#", qos=1)
        assert b.cluster is not None
        routes = b.cluster.table
        await eventually(lambda: A in routes.remote_match("d/t"), timeout=TIMEOUT)
        async with client(b, "pub-b") as pub:
            await pub.publish("d/t", b"from-b", qos=1, retain=True)
        async with asyncio.timeout(TIMEOUT):
            message = await anext(aiter(sub.messages))
        assert bytes(message.payload) == b"from-b"  # type: ignore[arg-type]  # delivered
    assert held(b, "d/t") == b"from-b"
    await eventually(lambda: a.broker.hlc.rejected >= 1, timeout=TIMEOUT)
    assert held(a, "d/t") is None  # refused: stamped beyond the drift bound
    assert a.broker.hlc.peek().ms < (time.time() + 60) * 1000  # a's clock did not jump
    async with client(a, "pub-a") as pub:
        await pub.publish("d/t", b"from-a", qos=1, retain=True)
    await eventually(lambda: held(a, "d/t") == b"from-a", timeout=TIMEOUT)  # not beaten


async def test_a_claim_stamped_far_ahead_is_ordered_by_the_owner(
    pair: tuple[NodeApp, NodeApp],
) -> None:
    a, b = pair
    nodes = [A, B]
    cid = next(f"dev{i}" for i in range(1000) if owner_of(f"dev{i}", nodes) == A)
    assert a.cluster is not None
    locator = a.cluster.ports.locator
    async with client(b, cid):
        await eventually(lambda: locator.registry.get(cid) is not None, timeout=TIMEOUT)
        entry = locator.registry.get(cid)
        assert entry is not None and entry.node == B
        assert entry.stamp[0] < (time.time() + 60) * 1000  # a's stamp, not b's
        assert locator.stats["stamps_rejected"] == 1
