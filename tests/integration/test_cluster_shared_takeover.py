"""Shared groups cluster-wide and client takeover across nodes, with three real nodes.

`NodeApp`s with the cluster on port 0 (as tests/integration/test_cluster_runtime.py), real
sockets for MQTT (aiomqtt, RawClient) and between the nodes. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"
TIMEOUT = 5.0


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


def shared_routes(app: NodeApp) -> list[tuple[str, str, str]]:
    assert app.cluster is not None
    return app.cluster.table.shared_routes()


def client(app: NodeApp, client_id: str, **kwargs: Any) -> aiomqtt.Client:
    kwargs.setdefault("timeout", TIMEOUT)
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, **kwargs)


async def drain(sub: aiomqtt.Client, into: list[bytes], stop: asyncio.Event) -> None:
    async for message in sub.messages:
        into.append(bytes(message.payload))  # type: ignore[arg-type]
        if stop.is_set():
            return


async def test_shared_group_one_member_per_message_across_nodes(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    got: dict[str, list[bytes]] = {"m-b": [], "m-c": [], "n-c": []}
    async with (
        client(b, "m-b") as mb,
        client(c, "m-c") as mc,
        client(c, "n-c") as nc,
        client(a, "pub") as pub,
    ):
        await mb.subscribe("$share/g/job/#", qos=1)
        await mc.subscribe("$share/g/job/#", qos=1)
        await nc.subscribe("job/#", qos=1)  # a normal subscriber beside the group on c
        want = {("g", "job/#", B), ("g", "job/#", C)}
        await eventually(lambda: want <= set(shared_routes(a)))
        await eventually(lambda: ("job/#", C) in a.cluster.table.routes())  # type: ignore[union-attr]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(drain(s, got[name], stop))
            for name, s in (("m-b", mb), ("m-c", mc), ("n-c", nc))
        ]
        for i in range(12):
            await pub.publish("job/x", b"%d" % i, qos=1)
        await eventually(lambda: len(got["m-b"]) + len(got["m-c"]) >= 12 and len(got["n-c"]) >= 12)
        await asyncio.sleep(0.2)  # nothing more may come
        stop.set()
        for task in tasks:
            task.cancel()
    group = got["m-b"] + got["m-c"]
    assert sorted(group) == sorted(b"%d" % i for i in range(12))  # each exactly once
    assert (len(got["m-b"]), len(got["m-c"])) == (6, 6)  # round robin over the nodes
    assert sorted(got["n-c"]) == sorted(b"%d" % i for i in range(12))


async def test_group_with_members_on_other_nodes_only(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, _ = trio
    async with client(b, "m1") as m1, client(a, "pub") as pub:
        await m1.subscribe("$share/w/work", qos=1)
        await eventually(lambda: ("w", "work", B) in shared_routes(a))
        await pub.publish("work", b"job", qos=1)
        async with asyncio.timeout(TIMEOUT):
            message = await anext(aiter(m1.messages))
        assert message.payload == b"job"
    await eventually(lambda: ("w", "work", B) not in shared_routes(a))  # withdrawn after leaving


async def raw_connect(
    app: NodeApp, cid: str, version: int, clean: bool
) -> tuple[RawClient, ConnAck]:
    props = {} if version != MQTT_5 or clean else {0x11: 3600}
    raw, ack = await RawClient.connect(
        app.node.tcp_port, cid, version, clean_start=clean, properties=props
    )
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    return raw, ack


async def test_persistent_session_moves_with_queued_messages(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    old, ack = await raw_connect(a, "dev", MQTT_3_1_1, clean=False)
    old.send(Subscribe(1, [SubscriptionRequest("t/#", 1)]))
    assert isinstance(await old.recv(), SubAck)
    await old.close()
    await eventually(lambda: "dev" not in a.broker.connected)
    await eventually(lambda: ("t/#", A) in c.cluster.table.routes())  # type: ignore[union-attr]
    async with client(c, "pub") as pub:
        for i in range(3):
            await pub.publish("t/x", b"%d" % i, qos=1)
    await eventually(lambda: len(a.broker.sessions["dev"].queue) == 3)

    new, ack = await raw_connect(b, "dev", MQTT_3_1_1, clean=False)
    assert ack.session_present
    payloads = []
    for _ in range(3):
        packet = await new.recv()
        assert isinstance(packet, Publish) and packet.packet_id is not None
        payloads.append(packet.payload)
        new.send(PubAck(packet.packet_id))
    assert payloads == [b"0", b"1", b"2"]
    assert "dev" not in a.broker.sessions
    await eventually(lambda: ("t/#", B) in c.cluster.table.routes())  # type: ignore[union-attr]
    # a's route stays while its forwarding record lives (cluster.handoff), then goes
    await eventually(lambda: ("t/#", A) not in c.cluster.table.routes())  # type: ignore[union-attr]
    await new.close()


async def test_connected_client_is_taken_over_by_another_node(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, _ = trio
    old, _ack = await raw_connect(a, "dev5", MQTT_5, clean=True)
    new, ack = await raw_connect(b, "dev5", MQTT_5, clean=True)  # clean: the old one goes anyway
    assert not ack.session_present
    packet = await old.recv()
    assert isinstance(packet, Disconnect) and packet.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert await old.closed()
    await eventually(lambda: "dev5" not in a.broker.connected)
    assert "dev5" in b.broker.connected
    await new.close()
