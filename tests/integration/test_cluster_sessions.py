"""One session per client id in a real cluster: the registry, concurrent CONNECTs, a takeover
under a steady QoS 1 stream, the RPC cost of a CONNECT.

Whole `NodeApp`s joined over their cluster ports (tests/integration/cluster_support.py), real
sockets everywhere, raw MQTT clients (tests/rawclient.py) to see exact packets. Every wait is
bounded.
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
from rawclient import RawClient

from broker.app import NodeApp
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, ReasonCode
from broker.protocol.packets import (
    ConnAck,
    Disconnect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from cluster.registry import owner_of

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[tuple[NodeApp, NodeApp, NodeApp]]:
    nodes = ClusterNodes(tmp_path)
    try:
        a = await nodes.start(A)
        b = await nodes.start(B, a)
        c = await nodes.start(C, a)
        await converged(a, b, c)
        yield a, b, c
    finally:
        await nodes.stop_all()


def rpc_calls(*apps: NodeApp) -> int:
    total = 0
    for app in apps:
        assert app.cluster is not None
        total += app.cluster.rpc.stats["calls"]
    return total


def connected_on(apps: tuple[NodeApp, ...], cid: str) -> list[str]:
    return [app.config.node_name for app in apps if cid in app.broker.connected]


async def stays_open(client: RawClient, seconds: float) -> bool:
    """No close (nor DISCONNECT) from the broker within `seconds`."""
    return not await client.closed(timeout=seconds) and not client.pending


@pytest.mark.parametrize("version", [MQTT_5, MQTT_3_1_1])
async def test_concurrent_connects_with_one_id_leave_exactly_one(
    trio: tuple[NodeApp, NodeApp, NodeApp], version: int
) -> None:
    """MQTT-3.1.4-3 across nodes: of two CONNECTs with one client id on two nodes at the same
    moment, one connection stays; the other gets DISCONNECT 0x8E (5.0) or is closed (3.1.1)."""
    apps = trio
    for k in range(6):
        cid = f"twin-{version}-{k}"
        x, y = apps[k % 3], apps[(k + 1) % 3]
        (one, ack1), (two, ack2) = await asyncio.gather(
            RawClient.connect(x.node.tcp_port, cid, version, clean_start=True),
            RawClient.connect(y.node.tcp_port, cid, version, clean_start=True),
        )
        try:
            assert isinstance(ack1, ConnAck) and isinstance(ack2, ConnAck)
            closed = [await one.closed(timeout=3.0), await two.closed(timeout=0.5)]
            if not closed[0]:
                closed[1] = await two.closed(timeout=3.0)
            assert closed.count(True) == 1, f"{cid}: {closed}"
            loser, winner = (one, two) if closed[0] else (two, one)
            if version == MQTT_5:
                assert loser.pending, "the loser gets a DISCONNECT first"
                packet = loser.pending[0]
                assert isinstance(packet, Disconnect)
                assert packet.reason_code == ReasonCode.SESSION_TAKEN_OVER
            else:
                assert loser.pending == []  # 3.1.1 has no DISCONNECT from the server
            assert await stays_open(winner, 1.0)
            assert len(connected_on(apps, cid)) == 1
        finally:
            await one.close()
            await two.close()


async def test_a_lone_node_makes_no_cluster_call_on_connect(tmp_path: Path) -> None:
    nodes = ClusterNodes(tmp_path)
    try:
        alone = await nodes.start(A)
        before = rpc_calls(alone)
        for i in range(10):
            client, ack = await RawClient.connect(
                alone.node.tcp_port, f"solo{i}", MQTT_5, clean_start=i % 2 == 0
            )
            assert isinstance(ack, ConnAck) and ack.reason_code == 0
            await client.close()
        assert rpc_calls(alone) == before
    finally:
        await nodes.stop_all()


async def test_rpc_calls_per_connect_do_not_grow_with_the_peers(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    apps = trio
    names = sorted(app.config.node_name for app in apps)
    await asyncio.sleep(0.5)  # let the joins' own calls (table pulls) finish
    before = rpc_calls(*apps)
    fresh = 0
    for i in range(12):
        cid = f"fresh{i}"
        app = apps[i % 3]
        fresh += owner_of(cid, names) != app.config.node_name
        client, ack = await RawClient.connect(app.node.tcp_port, cid, MQTT_5, clean_start=False,
                                              properties={0x11: 60})  # fmt: skip
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        await client.close()
    await eventually(lambda: all(f"fresh{i}" not in a.broker.connected for a in apps
                                 for i in range(12)))  # fmt: skip
    fresh_calls = rpc_calls(*apps) - before
    # Each CONNECT of a new id: one claim when another node owns the id, none otherwise.
    assert fresh_calls == fresh
    before = rpc_calls(*apps)
    # Each session moves to the next node: claim + surrender at most on the CONNECT's path,
    # then the new node's confirmation to the old one (`cluster.takeover_park`).
    for i in range(12):
        app = apps[(i + 1) % 3]
        client, ack = await RawClient.connect(app.node.tcp_port, f"fresh{i}", MQTT_5,
                                              clean_start=False, properties={0x11: 60})  # fmt: skip
        assert isinstance(ack, ConnAck) and ack.session_present
        await client.close()
    moved_calls = rpc_calls(*apps) - before
    assert moved_calls <= 3 * 12
    print(f"RPC calls: {fresh_calls} for 12 new ids, {moved_calls} for 12 moves (3 nodes)")


async def test_takeover_under_a_qos1_stream_loses_nothing(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    total = 300
    props = {0x11: 3600}
    old, ack = await RawClient.connect(a.node.tcp_port, "mover", MQTT_5, clean_start=False,
                                       properties=props)  # fmt: skip
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    old.send(Subscribe(1, [SubscriptionRequest("load/#", 1)]))
    assert isinstance(await old.recv(), SubAck)
    await eventually(lambda: ("load/#", A) in c.cluster.table.routes())  # type: ignore[union-attr]
    got: list[bytes] = []
    done_publishing = asyncio.Event()

    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", c.node.tcp_port, identifier="loadpub") as pub:
            for i in range(total):
                await pub.publish("load/x", b"%d" % i, qos=1)
                if i % 10 == 0:
                    await asyncio.sleep(0.01)  # a steady stream, not one burst
        done_publishing.set()

    async def read(client: RawClient, until: int) -> None:
        while len(set(got)) < until:
            packet = await client.recv(timeout=10.0)
            if isinstance(packet, Publish):
                got.append(packet.payload)
                assert packet.packet_id is not None
                client.send(PubAck(packet.packet_id))

    publisher = asyncio.create_task(publish())
    try:
        await read(old, 60)
        new, ack = await RawClient.connect(b.node.tcp_port, "mover", MQTT_5, clean_start=False,
                                           properties=props)  # fmt: skip
        assert isinstance(ack, ConnAck) and ack.session_present
        # the old connection ends with 0x8E; what it had not acknowledged comes again below
        with contextlib.suppress(EOFError, ConnectionError, TimeoutError):
            while True:
                packet = await old.recv(timeout=3.0)
                if isinstance(packet, Disconnect):
                    assert packet.reason_code == ReasonCode.SESSION_TAKEN_OVER
                    break
        with contextlib.suppress(TimeoutError):
            await read(new, total)
        async with asyncio.timeout(20):
            await done_publishing.wait()
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await publisher
    missing = sorted(i for i in range(total) if b"%d" % i not in set(got))
    stats = [(app.cluster.ports.handoff.stats, app.cluster.ports.locator.stats)  # type: ignore[union-attr]
             for app in trio]  # fmt: skip
    assert missing == [], f"lost {missing}; handoff/locator stats {stats}"  # QoS 1: at least once
    await old.close()
    await new.close()
