"""Persistence (`persistence = true`): retained messages and persistent sessions in
`<data_dir>/broker.db` survive a restart of the node; a corrupt database stops the start.

In-process nodes on the same data directory, restarted gracefully; the SIGKILL cases with real
processes are in test_noloss_restart.py. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from rawclient import RawClient

from broker.protocol.constants import MQTT_5, PropertyId
from broker.protocol.packets import (
    ConnAck,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.config import ConfigError, parse_config
from broker.server.node import Node
from broker.server.persistence import FILE_NAME, PersistenceError, decode_value

PERSIST = {"persistence": True, "persistence_interval": 50}

NodeFactory = Callable[..., Any]


async def connect(node: Node, client_id: str, clean: bool = False, **kw: Any) -> RawClient:
    client, ack = await RawClient.connect(node.tcp_port, client_id, clean_start=clean, **kw)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    return client


async def subscribe(client: RawClient, filt: str, qos: int) -> None:
    client.send(Subscribe(1, [SubscriptionRequest(filt, qos)]))
    assert isinstance(await client.recv(), SubAck)


async def bye(client: RawClient) -> None:
    client.send(Disconnect())
    await client.close()


def stored_sessions(path: Path) -> dict[str, Any]:
    """What another reader sees in the database right now (the node keeps running)."""
    db = sqlite3.connect(path)
    try:
        return {cid: decode_value(blob) for cid, blob in db.execute("SELECT * FROM sessions")}
    finally:
        db.close()


async def flushed(node: Node) -> None:
    """Wait (bounded) until the node's periodic flush has written every change."""
    broker, persistence = node.broker, node.persistence
    assert persistence is not None
    async with asyncio.timeout(5):
        while broker.dirty_sessions or broker.dirty_retained:
            await asyncio.sleep(0.02)
        flushes = persistence.flushes
        while persistence.flushes == flushes and (broker.dirty_sessions or flushes == 0):
            await asyncio.sleep(0.02)


async def test_retained_and_queued_messages_survive_a_restart(node_factory: NodeFactory) -> None:
    node = await node_factory(**PERSIST)
    sub = await connect(node, "keeper")
    await subscribe(sub, "p/#", 2)
    await bye(sub)
    pub = await connect(node, "pub", clean=True)
    for i in range(1, 11):
        qos = 1 if i <= 5 else 2
        pub.send(Publish("p/x", f"m{i}".encode(), qos, packet_id=i))
        ack = await pub.recv()
        if qos == 2:
            assert isinstance(ack, PubRec)
            pub.send(PubRel(i))
            assert isinstance(await pub.recv(), PubComp)
    pub.send(Publish("r/1", b"kept", 1, retain=True, packet_id=99))
    assert isinstance(await pub.recv(), PubAck)
    await bye(pub)
    await node.stop()

    again = await node_factory(**PERSIST)
    assert again.broker.sessions["keeper"].subscriptions.keys() == {"p/#"}
    client, ack = await RawClient.connect(again.tcp_port, "keeper", clean_start=False)
    assert isinstance(ack, ConnAck) and ack.session_present
    got = []
    for _ in range(10):
        packet = await client.recv()
        assert isinstance(packet, Publish)
        got.append(packet.payload)
        assert packet.packet_id is not None
        client.send(PubAck(packet.packet_id) if packet.qos == 1 else PubRec(packet.packet_id))
    assert got == [f"m{i}".encode() for i in range(1, 11)]
    fresh = await connect(again, "fresh", clean=True)
    fresh.send(Subscribe(1, [SubscriptionRequest("r/#", 1)]))
    packets = [await fresh.recv(), await fresh.recv()]
    retained = [p for p in packets if isinstance(p, Publish)]
    assert [(p.topic, p.payload, p.retain) for p in retained] == [("r/1", b"kept", True)]
    await client.close()
    await fresh.close()


async def test_outgoing_qos2_after_pubrec_resumes_with_pubrel(node_factory: NodeFactory) -> None:
    node = await node_factory(**PERSIST)
    sub = await connect(node, "q2-sub")
    await subscribe(sub, "q2", 2)
    pub = await connect(node, "q2-pub", clean=True)
    pub.send(Publish("q2", b"once", 2, packet_id=1))
    publish = await sub.recv()
    assert isinstance(publish, Publish) and publish.packet_id is not None
    sub.send(PubRec(publish.packet_id))
    assert isinstance(await sub.recv(), PubRel)  # ... and no PUBCOMP: the flow stays open
    sub.writer.transport.abort()
    await pub.close()
    await node.stop()

    again = await node_factory(**PERSIST)
    client, ack = await RawClient.connect(again.tcp_port, "q2-sub", clean_start=False)
    assert isinstance(ack, ConnAck) and ack.session_present
    packet = await client.recv()
    assert packet == PubRel(publish.packet_id)  # not the PUBLISH again: exactly once
    client.send(PubComp(publish.packet_id))
    with pytest.raises(TimeoutError):
        await client.recv(0.3)
    await client.close()


async def test_incoming_qos2_awaiting_pubrel_is_not_routed_twice(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(**PERSIST)
    sub = await connect(node, "in-sub")
    await subscribe(sub, "in", 1)
    pub = await connect(node, "in-pub")
    pub.send(Publish("in", b"one", 2, packet_id=7))
    assert await pub.recv() == PubRec(7)
    first = await sub.recv()
    assert isinstance(first, Publish) and first.payload == b"one"
    assert first.packet_id is not None
    sub.send(PubAck(first.packet_id))
    await asyncio.sleep(0.05)  # (the PUBACK is read before the stop)
    pub.writer.transport.abort()
    await bye(sub)
    await node.stop()

    again = await node_factory(**PERSIST)
    assert 7 in again.broker.sessions["in-pub"].awaiting_rel
    sub = await connect(again, "in-sub")
    pub = await connect(again, "in-pub")
    pub.send(Publish("in", b"one", 2, dup=True, packet_id=7))  # resent after the restart
    assert await pub.recv() == PubRec(7)
    pub.send(PubRel(7))
    assert await pub.recv() == PubComp(7)
    with pytest.raises(TimeoutError):
        await sub.recv(0.3)  # already routed before the restart: not again
    await pub.close()
    await sub.close()


async def test_periodic_flush_and_clean_sessions_not_stored(node_factory: NodeFactory) -> None:
    node = await node_factory(**PERSIST)
    clean = await connect(node, "clean-one", clean=True)
    await subscribe(clean, "c/#", 1)
    keeper = await connect(node, "offline-one")
    await subscribe(keeper, "c/#", 1)
    await bye(keeper)
    pub = await connect(node, "c-pub", clean=True)
    pub.send(Publish("c/1", b"queued", 1, packet_id=1))
    assert isinstance(await pub.recv(), PubAck)
    await flushed(node)
    stored = stored_sessions(Path(node.config.data_dir) / FILE_NAME)
    assert set(stored) == {"offline-one"}  # nothing for expiry-0 sessions
    assert [item[0]["payload"] for item in stored["offline-one"]["queue"]] == [b"queued"]
    await clean.close()
    await pub.close()


async def test_session_expiry_keeps_counting_across_restarts(node_factory: NodeFactory) -> None:
    node = await node_factory(**PERSIST)
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: 300}
    client = await connect(node, "expiring", version=MQTT_5, properties=props)
    await bye(client)
    await asyncio.sleep(0.05)
    disconnected_at = node.broker.sessions["expiring"].disconnected_at
    assert disconnected_at is not None
    await node.stop()
    again = await node_factory(**PERSIST)
    session = again.broker.sessions["expiring"]
    assert session.expiry_interval == 300
    assert session.disconnected_at == disconnected_at  # wall time kept, not the restart time


@pytest.mark.parametrize(
    "garbage",
    [b"this is not a database\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["text", "bad-header"],
)
async def test_corrupt_database_stops_the_start(tmp_path: Path, garbage: bytes) -> None:
    cfg = make_config(tmp_path, **PERSIST)
    path = Path(cfg.data_dir) / FILE_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)
    node = Node(cfg)
    with pytest.raises(PersistenceError) as info:
        await node.start()
    assert str(path) in str(info.value)
    assert "corrupt or unreadable" in str(info.value)
    assert node.tcp_port == 0  # nothing was started
    assert path.read_bytes() == garbage  # and the file is left as it was, for the operator


def test_persistence_is_accepted_by_the_config() -> None:
    cfg = parse_config("persistence = true\npersistence_interval = 250\n")
    assert cfg.persistence and cfg.persistence_interval == 250
    with pytest.raises(ConfigError, match="persistence_interval"):
        parse_config("persistence_interval = 0\n")
