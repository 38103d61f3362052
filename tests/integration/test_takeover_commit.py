"""A persistent session taken over from another node is committed before its CONNACK
(`durable_acks`, issue 14): a node SIGKILLed right after that CONNACK has the session, and the
messages queued in it, when it starts again.

Real node processes started with the CLI on loopback, persistence on with
`persistence_interval` an hour: what is on disk was written by commits that held acks. The
session is made on node A with messages queued into it offline; the client then connects to
node B (the session moves from A to B: A lets it go), and B is killed as soon as the CONNACK
arrives. (Before this change the CONNACK went out at once and the moved session waited for a
periodic commit: B came back without it, and A no longer had it.) Only processes started here
are signalled, by their PIDs; every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from rawclient import RawClient
from test_cluster_first_sync import banner, launch, publish_once
from test_cluster_processes import TIMEOUT, NodeProc, reap

from broker.protocol.packets import (
    ConnAck,
    Disconnect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)

pytestmark = pytest.mark.cluster

A, B = "ta@127.0.0.1", "tb@127.0.0.1"
QUEUED = 5
CLIENT = "tc-roam"


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    reap(started)


async def test_session_moved_then_node_killed_after_connack(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        "persistence = true\ndurable_acks = true\npersistence_interval = 3600000\n",
        encoding="utf-8",
    )
    a = await banner(launch(A, tmp_path, config), tmp_path)
    nodes.append(a)
    join = ("--join", f"127.0.0.1:{a.ports['cluster']}")
    b = await banner(launch(B, tmp_path, config, *join), tmp_path)
    nodes.append(b)
    # The persistent session on A, offline, with QUEUED messages queued into it.
    client, ack = await RawClient.connect(a.mqtt, CLIENT, clean_start=False)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    client.send(Subscribe(1, [SubscriptionRequest("tc/#", 1)]))
    assert isinstance(await client.recv(TIMEOUT), SubAck)
    client.send(Disconnect())
    await client.close()
    for n in range(QUEUED):
        assert await publish_once(a.mqtt, n, "tc/x")  # acked: committed on A (durable_acks)
    # The client moves to B: A surrenders the session; B is killed at the CONNACK.
    client, ack = await RawClient.connect(b.mqtt, CLIENT, clean_start=False)
    b.proc.kill()  # our own child, by its PID
    b.proc.wait(TIMEOUT)
    await client.close()
    assert isinstance(ack, ConnAck) and ack.reason_code == 0 and ack.session_present
    b = await banner(launch(B, tmp_path, config, *join), tmp_path)
    nodes.append(b)
    client, ack = await RawClient.connect(b.mqtt, CLIENT, clean_start=False)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert ack.session_present, "the moved session did not survive the kill after CONNACK"
    got: set[int] = set()
    async with asyncio.timeout(TIMEOUT):
        while len(got) < QUEUED:
            packet = await client.recv(TIMEOUT)
            if isinstance(packet, Publish):
                got.add(int(packet.payload))
                client.send(PubAck(packet.packet_id))
    assert got == set(range(QUEUED))
    await client.close()
