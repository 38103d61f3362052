"""A cleared retained topic stays cleared across a restart (issue 14, retained convergence).

Real nodes (`cluster_support.ClusterNodes`, persistence on) and real MQTT clients on loopback.
Node b is away (stopped, the old value on its disk) while a client clears the topic on a; then
a restarts (its clear must come back from disk: `broker.server.persistence` format 3 stores the
tombstone with its hybrid-clock stamp) and b comes back with the old value. Without the stored
tombstone, a's anti-entropy would take b's older write and both nodes would serve it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from api_support import eventually
from cluster_support import ClusterNodes, converged

from broker.app import NodeApp

A, B = "a@127.0.0.1", "b@127.0.0.1"
TOPIC = "r/cleared"
TIMEOUT = 10.0


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[ClusterNodes]:
    nodes = ClusterNodes(tmp_path, persistence=True)
    yield nodes
    await nodes.stop_all()


def client(app: NodeApp, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, timeout=TIMEOUT)


def held(app: NodeApp) -> bytes | None:
    message = app.broker.retained.get(TOPIC)
    return None if message is None else message.payload


async def retained_seen(app: NodeApp) -> list[bytes]:
    """What a new subscriber on `app` gets for the topic within 1 s (MQTT-3.3.1-6: the
    retained message, if there is one)."""
    got: list[bytes] = []
    async with client(app, f"reader-{app.config.node_name}") as sub:
        await sub.subscribe(TOPIC, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in sub.messages:
                    got.append(bytes(message.payload))  # type: ignore[arg-type]
    return got


async def test_a_clear_survives_a_restart_against_a_peer_with_the_old_value(
    nodes: ClusterNodes,
) -> None:
    a = await nodes.start(A)
    b = await nodes.start(B, a)
    await converged(a, b)
    async with client(a, "writer") as pub:
        await pub.publish(TOPIC, b"old", qos=1, retain=True)
    await eventually(lambda: held(b) == b"old", timeout=TIMEOUT)

    await nodes.stop(b)  # b keeps the old value on its disk
    async with client(a, "clearer") as pub:
        # MQTT-3.3.1-10: an empty retained PUBLISH removes the topic's retained message
        await pub.publish(TOPIC, b"", qos=1, retain=True)
    await eventually(lambda: held(a) is None, timeout=TIMEOUT)
    cleared = a.broker.retained_gone[TOPIC]

    await nodes.stop(a)  # a graceful stop writes everything, the tombstone included
    a = await nodes.start(A)
    assert a.broker.retained_gone.get(TOPIC) == cleared
    b = await nodes.start(B, a)  # back with the old value, which a must not take
    assert held(b) == b"old"
    await converged(a, b)
    await eventually(lambda: held(a) is None and held(b) is None, timeout=TIMEOUT)
    assert await retained_seen(a) == []
    assert await retained_seen(b) == []
