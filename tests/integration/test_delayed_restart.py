"""Delayed publishes and delayed wills survive a restart with persistence (CLI node processes).

A `$delayed/3/...` message is accepted, then the node is stopped (SIGTERM: the full save at
stop) or killed (SIGKILL, once the periodic flush has written it) before it fires, and started
again on the same data directory: an offline persistent subscriber gets it after the restart,
once, and its row is gone once it fired. The same for 5.0 wills waiting on their Will Delay
Interval, including the will of a client the shutdown itself disconnected; a client that
reconnects after the restart, before its will fires, cancels it. Only processes started here
are signalled, by their PIDs; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from noloss_support import TIMEOUT, CliProc, Subscriber, start_cli
from rawclient import RawClient

from broker.protocol.constants import MQTT_5, PropertyId
from broker.protocol.packets import ConnAck, PubAck, Publish, Will
from broker.server.persistence import FILE_NAME, decode_value

pytestmark = pytest.mark.interop

NAME = "delayed@127.0.0.1"
DELAY = 3  # seconds: long enough to stop the node before it fires


def rows(db_path: Path, table: str) -> dict[Any, Any] | None:
    """The rows of `table` now (a read-only second reader; the node may be running), decoded;
    None while the table does not exist."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        found = db.execute(f"SELECT * FROM {table}").fetchall()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return {row[0]: decode_value(row[-1]) for row in found}


def queued_topics(db_path: Path, client_id: str) -> list[str]:
    """Topics stored in the session of `client_id` (queued or inflight)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM sessions WHERE client_id = ?", (client_id,)).fetchone()
    finally:
        db.close()
    if row is None:
        return []
    state = decode_value(row[0])
    return [item[0]["topic"] for item in state["queue"]] + [
        item[1]["topic"] for item in state["inflight"]
    ]


async def wait_rows(db_path: Path, table: str, count: int) -> dict[Any, Any]:
    """Until `table` holds `count` rows (the periodic flush wrote them); bounded."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            found = rows(db_path, table)
            if found is not None and len(found) == count:
                return found
            await asyncio.sleep(0.05)


def write_config(tmp_path: Path, interval: int) -> Path:
    config = tmp_path / "broker.toml"
    config.write_text(
        f"persistence = true\npersistence_interval = {interval}\n"
        "[plugins.delayed_publish]\nenabled = true\n"
    )
    return config


async def stop(node: CliProc, how: str, db_path: Path, table: str, count: int) -> None:
    """SIGTERM at once, or SIGKILL once the periodic flush has written `count` rows."""
    if how == "sigterm":
        assert await node.terminate() == 0
    else:
        await wait_rows(db_path, table, count)
        await node.kill()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_delayed_publish_survives_a_restart(tmp_path: Path, how: str) -> None:
    # SIGTERM with a long interval: only the save at stop can have written the message.
    config = write_config(tmp_path, 60_000 if how == "sigterm" else 100)
    data = tmp_path / "data"
    db_path = data / FILE_NAME
    log = tmp_path / "node.log"
    node = await start_cli(config, data, log, NAME)
    try:
        sub = Subscriber(node.mqtt_port, "dl-sub")
        await sub.connect()
        await sub.subscribe("dl/#", 1)
        await sub.disconnect()
        pub, ack = await RawClient.connect(node.mqtt_port, "dl-pub", clean_start=True)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        pub.send(Publish(f"$delayed/{DELAY}/dl/x", b"later", 1, packet_id=1))
        assert await pub.recv(TIMEOUT) == PubAck(1)
        await pub.close()
        await stop(node, how, db_path, "delayed", 1)

        stored = rows(db_path, "delayed")
        assert stored is not None and len(stored) == 1, stored
        [message] = stored.values()
        assert (message["topic"], message["payload"], message["qos"]) == ("dl/x", b"later", 1)
        assert queued_topics(db_path, "dl-sub") == []  # it had not fired before the stop

        node = await start_cli(config, data, log, NAME)
        await sub.connect(node.mqtt_port)
        assert sub.session_present
        await sub.receive(until={b"later"})
        await sub.settle()
        assert sub.counts[b"later"] == 1
        await sub.disconnect()
        if how == "sigterm":
            assert await node.terminate() == 0
            assert rows(db_path, "delayed") == {}  # fired: its row is gone
        else:
            await wait_rows(db_path, "delayed", 0)
    finally:
        await node.kill()


async def connect_with_will(port: int, client_id: str, delay: int = DELAY) -> RawClient:
    """A 5.0 client with a persistent session and a will delayed by `delay` seconds."""
    will = Will("dl/will", client_id.encode(), 1, False, {PropertyId.WILL_DELAY_INTERVAL: delay})
    client, ack = await RawClient.connect(
        port,
        client_id,
        version=MQTT_5,
        clean_start=False,
        will=will,
        properties={PropertyId.SESSION_EXPIRY_INTERVAL: 300},
    )
    assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
    return client


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_delayed_wills_survive_a_restart(tmp_path: Path, how: str) -> None:
    config = write_config(tmp_path, 60_000 if how == "sigterm" else 100)
    data = tmp_path / "data"
    db_path = data / FILE_NAME
    log = tmp_path / "node.log"
    node = await start_cli(config, data, log, NAME)
    clients: list[RawClient] = []
    try:
        sub = Subscriber(node.mqtt_port, "will-sub")
        await sub.connect()
        await sub.subscribe("dl/will", 1)
        await sub.disconnect()
        # Vanish without DISCONNECT: wills pending. w-back's delay is long, so that it is
        # surely back before it, whatever a restart takes here.
        for client_id, delay in (("w-lost", DELAY), ("w-back", 600)):
            client = await connect_with_will(node.mqtt_port, client_id, delay)
            client.writer.transport.abort()
        expected = {"w-lost", "w-back"}
        if how == "sigterm":  # still connected: the shutdown closes it, its will waits too
            clients.append(await connect_with_will(node.mqtt_port, "w-shutdown"))
            expected.add("w-shutdown")
        await stop(node, how, db_path, "wills", len(expected))
        for client in clients:
            client.writer.transport.abort()
        clients.clear()

        stored = rows(db_path, "wills")
        assert stored is not None and set(stored) == expected, stored
        assert queued_topics(db_path, "will-sub") == []  # none had fired before the stop

        node = await start_cli(config, data, log, NAME)
        # w-back is back before its will fires: the session goes on, the will is cancelled
        back = await connect_with_will(node.mqtt_port, "w-back", 600)
        clients.append(back)
        await sub.connect(node.mqtt_port)
        assert sub.session_present
        wanted = {cid.encode() for cid in expected - {"w-back"}}
        await sub.receive(until=wanted)  # at once if due at the restart, else at the deadline
        await sub.settle(1.5)
        assert dict(sub.counts) == dict.fromkeys(wanted, 1)
        await sub.disconnect()
        back.send_raw(b"\xe0\x00")  # DISCONNECT 0x00: this connection's will is dropped
        await back.close()
        clients.clear()
        # Every stored will is gone: two fired, w-back's cancelled by its return.
        if how == "sigterm":
            assert await node.terminate() == 0
            assert rows(db_path, "wills") == {}
        else:
            await wait_rows(db_path, "wills", 0)
    finally:
        for client in clients:
            client.writer.transport.abort()
        await node.kill()
