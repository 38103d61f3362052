"""No loss across a broker restart with persistence, with the real CLI as a process.

A persistent subscriber is offline while QoS 1 and QoS 2 streams are published to it and a
retained message is set; then the node is stopped (SIGTERM: the full save at stop, no waiting)
or killed (SIGKILL, once the periodic flush has written what was acknowledged: the durability
window) and started again on the same data directory. Every acknowledged message arrives,
QoS 2 exactly once, and the retained message is still there. Only processes started here are
signalled, by their PIDs; every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from noloss_support import (
    TIMEOUT,
    CliProc,
    Subscriber,
    check_no_loss,
    payload,
    publish_stream,
    start_cli,
)
from rawclient import RawClient

from broker.protocol.packets import ConnAck, PubAck, Publish, Subscribe, SubscriptionRequest
from broker.server.persistence import FILE_NAME, decode_value

pytestmark = pytest.mark.interop

COUNT = 200  # per QoS
NAME = "noloss@127.0.0.1"


def stored(db_path: Path, client_id: str) -> tuple[int, bool]:
    """Deliveries stored for `client_id`, and whether keep/it is stored, right now (read by a
    second SQLite reader while the node runs)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM sessions WHERE client_id = ?", (client_id,)).fetchone()
        kept = db.execute("SELECT 1 FROM retained WHERE topic = 'keep/it'").fetchone()
    except sqlite3.OperationalError:
        return 0, False  # (the tables do not exist yet)
    finally:
        db.close()
    if row is None:
        return 0, kept is not None
    state = decode_value(row[0])
    return len(state["queue"]) + len(state["inflight"]), kept is not None


async def retained_is_there(port: int) -> None:
    client, ack = await RawClient.connect(port, "ret-check", clean_start=True)
    assert isinstance(ack, ConnAck)
    client.send(Subscribe(1, [SubscriptionRequest("keep/#", 1)]))
    async with asyncio.timeout(TIMEOUT):
        while True:
            packet = await client.recv(TIMEOUT)
            if isinstance(packet, Publish):
                assert (packet.topic, packet.payload, packet.retain) == ("keep/it", b"v", True)
                break
    await client.close()


async def fill(node: CliProc, sub: Subscriber) -> dict[int, set[int]]:
    """Subscribe, go offline, publish both streams and a retained message; the acked ids."""
    await sub.connect(node.mqtt_port)
    await sub.subscribe("noloss/#", 2)
    await sub.disconnect()
    acked = {}
    for qos in (1, 2):
        acked[qos] = await publish_stream(
            node.mqtt_port, f"pub-{qos}", "noloss/x", qos, f"rs{qos}", range(COUNT)
        )
        assert len(acked[qos]) == COUNT
    client, _ = await RawClient.connect(node.mqtt_port, "ret-pub", clean_start=True)
    client.send(Publish("keep/it", b"v", 1, retain=True, packet_id=1))
    assert await client.recv(TIMEOUT) == PubAck(1)
    await client.close()
    return acked


async def drain(node: CliProc, sub: Subscriber, acked: dict[int, set[int]]) -> None:
    await sub.connect(node.mqtt_port)
    assert sub.session_present
    wanted = {payload(f"rs{q}", n) for q, ids in acked.items() for n in ids}
    await sub.receive(until=wanted)
    await sub.settle()
    for qos, ids in acked.items():
        check_no_loss(sub, f"rs{qos}", ids, qos, sent=COUNT)
    await sub.disconnect()
    await retained_is_there(node.mqtt_port)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_restart_loses_nothing_acknowledged(tmp_path: Path, how: str) -> None:
    # SIGTERM with a long interval: only the save at stop can have written the messages.
    interval = 60_000 if how == "sigterm" else 100
    config = tmp_path / "broker.toml"
    config.write_text(f"persistence = true\npersistence_interval = {interval}\n")
    data = tmp_path / "data"
    log = tmp_path / "node.log"
    node = await start_cli(config, data, log, NAME)
    try:
        sub = Subscriber(node.mqtt_port, "noloss-restart")
        acked = await fill(node, sub)
        if how == "sigterm":
            assert await node.terminate() == 0
        else:
            total = sum(len(ids) for ids in acked.values())
            async with asyncio.timeout(TIMEOUT):  # the durability window has passed
                while stored(data / FILE_NAME, sub.client_id) != (total, True):
                    await asyncio.sleep(0.05)
            await node.kill()
        node = await start_cli(config, data, log, NAME)
        await drain(node, sub, acked)
    finally:
        await node.kill()
