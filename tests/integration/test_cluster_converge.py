"""Retained messages and bans converge on every node: the last writer by hybrid-clock stamp
wins.

Real nodes (`cluster_support.ClusterNodes`) on loopback, real MQTT clients (aiomqtt). The
writes reach the nodes in different orders; each node must end with the write of the largest
stamp (`broker.core.hlc`), and a divergence made without any membership change is repaired by
one anti-entropy exchange (`cluster.replicas`), both ways.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, basic, eventually
from cluster_support import ClusterNodes, converged

from broker.app import NodeApp
from broker.core.banned import BanEntry
from broker.core.hlc import Stamp
from broker.core.message import Message, retained_stamp
from cluster.membership_config import MembershipConfig
from cluster.runtime import ClusterConfig

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"
TIMEOUT = 10.0


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[tuple[NodeApp, NodeApp, NodeApp]]:
    nodes = ClusterNodes(tmp_path)
    a = await nodes.start(A)
    b = await nodes.start(B, a)
    c = await nodes.start(C, a)
    await converged(a, b, c)
    yield a, b, c
    await nodes.stop_all()


def client(app: NodeApp, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, timeout=TIMEOUT)


def record_stamps(app: NodeApp, seen: dict[bytes, Stamp]) -> None:
    """Note the stamp of every retained write `app` takes or receives (payload -> stamp)."""
    retain: Callable[[Message], bool] = app.broker.retain

    def recording(message: Message) -> bool:
        taken = retain(message)
        assert message.stamp is not None  # every write has a stamp once it passed retain()
        seen[message.payload] = message.stamp
        return taken

    app.broker.retain = recording  # type: ignore[method-assign]


def held(app: NodeApp, topic: str) -> bytes | None:
    message = app.broker.retained.get(topic)
    return None if message is None else message.payload


async def read_retained(app: NodeApp, topic: str) -> bytes:
    """What a new subscriber on `app` gets for `topic` (MQTT-3.3.1-6: the retained message)."""
    async with client(app, f"reader-{app.config.node_name}") as sub:
        await sub.subscribe(topic, qos=1)
        async with asyncio.timeout(TIMEOUT):
            message = await anext(aiter(sub.messages))
    assert message.retain
    return bytes(message.payload)  # type: ignore[arg-type]


async def test_concurrent_retained_writes_on_three_nodes_converge_to_the_largest_stamp(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    seen: dict[bytes, Stamp] = {}
    for app in trio:
        record_stamps(app, seen)
    pubs = [client(app, f"w{i}") for i, app in enumerate(trio)]
    for pub in pubs:
        await pub.__aenter__()
    try:
        for round_ in range(5):  # the three writes of a round race each other on the links
            await asyncio.gather(
                *(
                    pub.publish("conv/t", f"{i}:{round_}".encode(), qos=1, retain=True)
                    for i, pub in enumerate(pubs)
                )
            )
    finally:
        for pub in pubs:
            await pub.__aexit__(None, None, None)
    written = {f"{i}:{r}".encode() for i in range(3) for r in range(5)}
    await eventually(lambda: written <= set(seen), timeout=TIMEOUT)
    winner = max(written, key=lambda payload: seen[payload])
    await eventually(lambda: all(held(app, "conv/t") == winner for app in trio), timeout=TIMEOUT)
    for app in trio:
        stored = app.broker.retained.get("conv/t")
        assert stored is not None and retained_stamp(stored) == seen[winner]
        assert await read_retained(app, "conv/t") == winner


async def test_an_older_write_arriving_late_does_not_replace_a_newer_one_nor_a_clear(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, _c = trio
    async with client(a, "w") as pub:
        await pub.publish("conv/late", b"new", qos=1, retain=True)
    await eventually(lambda: held(b, "conv/late") == b"new", timeout=TIMEOUT)
    newer = b.broker.retained.get("conv/late")
    assert newer is not None and newer.stamp is not None
    stale = Message("conv/late", b"old", 1, True)
    stale.stamp = Stamp(newer.stamp.ms - 1, 0, "z")  # written earlier, delivered now
    assert b.broker.retain(stale) is False
    assert held(b, "conv/late") == b"new"
    async with client(a, "w") as pub:  # a clear (MQTT-3.3.1-10) leaves a tombstone stamp
        await pub.publish("conv/late", b"", qos=1, retain=True)
    await eventually(lambda: held(b, "conv/late") is None, timeout=TIMEOUT)
    assert b.broker.retain(stale) is False
    assert held(b, "conv/late") is None


def local_write(app: NodeApp, topic: str, payload: bytes) -> None:
    """A retained write this node takes without telling anyone (a lost replication)."""
    assert app.broker.retain(Message(topic, payload, 1, True, timestamp=app.broker.clock()))


async def test_one_anti_entropy_exchange_repairs_retained_apart_both_ways(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, _c = trio
    local_write(a, "conv/only-a", b"a")
    local_write(b, "conv/only-b", b"b")
    local_write(a, "conv/both", b"older")
    local_write(b, "conv/both", b"newer")  # b's write comes later: it wins everywhere
    assert a.cluster is not None
    apart = await a.cluster.replicas.exchange(B)
    assert "retained" in apart
    for app in (a, b):
        await eventually(lambda app=app: held(app, "conv/only-b") == b"b", timeout=TIMEOUT)  # type: ignore[misc]
        await eventually(lambda app=app: held(app, "conv/only-a") == b"a", timeout=TIMEOUT)  # type: ignore[misc]
        await eventually(lambda app=app: held(app, "conv/both") == b"newer", timeout=TIMEOUT)  # type: ignore[misc]
    # a clear on one node alone: the exchange carries its tombstone
    local_write(b, "conv/only-a", b"")
    assert await a.cluster.replicas.exchange(B) == ["retained"]
    await eventually(lambda: held(a, "conv/only-a") is None, timeout=TIMEOUT)
    # a node's own $SYS topics (MQTT-4.7.2-1: `#` does not match them) are not replicated
    local_write(a, "$SYS/brokers/a@127.0.0.1/uptime", b"1")
    digests: list[Any] = [app.cluster.replicas.digests() for app in (a, b) if app.cluster]
    assert digests[0] == digests[1]
    assert await a.cluster.replicas.exchange(B) == []


async def test_bans_converge_by_last_writer_also_for_removals(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    a, b, c = trio
    base = f"http://127.0.0.1:{a.http_port}"
    ban = {"who": "spam", "as": "client_id"}
    async with (
        aiohttp.ClientSession(base, headers=basic(*ADMIN)) as http,
        http.post("/api/v3/banned", json=ban) as reply,
    ):
        assert reply.status == 201
        body = await reply.json()
    assert body["who"] == "spam" and "hlc" not in body  # not part of the API's object
    entries = [app.broker.banned.get("client_id", "spam") for app in trio]
    assert all(e is not None and e.stamp is not None and e.stamp.node == A for e in entries)
    assert len({e.stamp for e in entries if e is not None}) == 1  # one stamp, every node
    # lifted on b alone (its replication lost): a's copy is older, so it does not come back
    assert b.broker.banned.remove("client_id", "spam", b.broker.hlc.now())
    # banned on a alone: b gets it and disconnects its matching client
    a.broker.banned.add(BanEntry("late", "client_id", at=time.time(), stamp=a.broker.hlc.now()))
    async with client(b, "late") as victim:
        assert a.cluster is not None
        assert "banned" in await a.cluster.replicas.exchange(B)
        await eventually(lambda: b.broker.banned.get("client_id", "late") is not None)
        await eventually(lambda: a.broker.banned.get("client_id", "spam") is None)
        with pytest.raises(aiomqtt.MqttError):  # kicked by the ban b took
            async with asyncio.timeout(TIMEOUT):
                await anext(aiter(victim.messages))
    assert c.cluster is not None  # c pulls from a in its own round: the same bans
    await c.cluster.replicas.exchange(A)
    for app in trio:
        await eventually(  # type: ignore[misc]
            lambda app=app: sorted(e.who for e in app.broker.banned.entries()) == ["late"]
        )


async def test_a_clear_through_the_api_is_one_write_with_one_stamp_on_every_node(
    trio: tuple[NodeApp, NodeApp, NodeApp],
) -> None:
    _a, b, c = trio
    async with client(c, "w") as pub:
        await pub.publish("conv/api", b"x", qos=1, retain=True)
    await eventually(lambda: all(held(app, "conv/api") == b"x" for app in trio), timeout=TIMEOUT)
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{b.http_port}", headers=basic(*ADMIN)) as http,
        http.delete("/api/v3/retained/conv%2Fapi") as reply,
    ):
        assert reply.status == 200
    stamps = {app.broker.retained_gone.get("conv/api") for app in trio}
    assert len(stamps) == 1 and None not in stamps  # the tombstone b stamped, everywhere
    assert next(iter(stamps)).node == B  # type: ignore[union-attr]
    assert all(held(app, "conv/api") is None for app in trio)


async def test_the_periodic_anti_entropy_round_repairs_a_divergence_on_its_own(
    tmp_path: Path,
) -> None:
    """No membership change, no call from the test: each node's round (every push/pull
    interval, one random live peer) finds the digest apart and pulls both ways."""
    quick = ClusterConfig(membership=MembershipConfig(push_pull_interval=0.3))
    nodes = ClusterNodes(tmp_path)
    try:
        a = await nodes.start(A, cluster_config=quick)
        b = await nodes.start(B, a, cluster_config=quick)
        c = await nodes.start(C, a, cluster_config=quick)
        await converged(a, b, c)
        local_write(b, "conv/ae", b"only-b")  # as if its forwards were lost
        await eventually(
            lambda: all(held(app, "conv/ae") == b"only-b" for app in (a, b, c)), timeout=TIMEOUT
        )
        repairs = sum(app.cluster.replicas.stats["repairs"] for app in (a, b, c) if app.cluster)
        assert repairs >= 1
    finally:
        await nodes.stop_all()
