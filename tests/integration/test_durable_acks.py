"""`durable_acks`: an ack leaves the broker only once what it acknowledges is committed, so a
SIGKILL right after it loses nothing; with it off, acks never wait for a commit.

The node is the real CLI as a process, with `persistence_interval` at its maximum (an hour), so
the periodic flush never runs during a test: whatever is on disk was written by the commits the
held acks asked for. Publishers are aiomqtt (QoS 1) and raw clients where a test must stop in
the middle of a QoS 2 flow. Only processes started here are signalled, by their PIDs; every wait
is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiomqtt
import pytest
from noloss_support import TIMEOUT, CliProc, Subscriber, check_no_loss, payload, start_cli
from rawclient import RawClient

from broker.protocol.packets import (
    ConnAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.persistence import FILE_NAME, decode_value

pytestmark = pytest.mark.interop

NAME = "durable@127.0.0.1"
COUNT = 20


def wal_size(data: Path) -> int:
    """Bytes in the write-ahead log: every commit appends to it (nothing checkpoints it
    back while the node runs these few commits), so an unchanged size means no commit."""
    return (data / (FILE_NAME + "-wal")).stat().st_size


def queued(db_path: Path, client_id: str) -> int:
    """Deliveries stored on disk for `client_id` right now (a second, read-only reader)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM sessions WHERE client_id = ?", (client_id,)).fetchone()
    except sqlite3.OperationalError:
        return 0  # (the tables do not exist yet)
    finally:
        db.close()
    if row is None:
        return 0
    state = decode_value(row[0])
    return len(state["queue"]) + len(state["inflight"])


async def start(tmp_path: Path, durable: bool) -> tuple[CliProc, Path]:
    config = tmp_path / "broker.toml"
    config.write_text(
        "persistence = true\npersistence_interval = 3600000\n"
        f"durable_acks = {'true' if durable else 'false'}\n"
    )
    data = tmp_path / "data"
    node = await start_cli(config, data, tmp_path / "node.log", NAME)
    return node, data


async def publish_qos1(port: int, stream: str) -> None:
    """COUNT QoS 1 messages with aiomqtt; each `publish` returns once its PUBACK arrived."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{stream}") as client:
        for n in range(COUNT):
            await client.publish("da/x", payload(stream, n), qos=1)


async def test_sigkill_right_after_puback_loses_nothing(tmp_path: Path) -> None:
    node, data = await start(tmp_path, durable=True)
    try:
        sub = Subscriber(node.mqtt_port, "da-sub")
        await sub.connect()
        await sub.subscribe("da/#", 1)
        await sub.disconnect()  # offline: the messages wait in its persistent session
        await publish_qos1(node.mqtt_port, "k")
        # Every PUBACK came after the commit that holds its message (the hour-long interval
        # never ran): the file has them all, read while the node still runs.
        assert queued(data / FILE_NAME, sub.client_id) == COUNT
        await node.kill()  # SIGKILL right after the last PUBACK
        node, _ = await start(tmp_path, durable=True)
        await sub.connect(node.mqtt_port)
        assert sub.session_present
        await sub.receive(until={payload("k", n) for n in range(COUNT)})
        await sub.settle()
        check_no_loss(sub, "k", set(range(COUNT)), 1, sent=COUNT)
    finally:
        await node.kill()


async def test_without_durable_acks_the_puback_does_not_wait_for_a_commit(
    tmp_path: Path,
) -> None:
    """The default: PUBACKs come although nothing was committed (the window the README
    states); a SIGKILL now would lose them."""
    node, data = await start(tmp_path, durable=False)
    try:
        sub = Subscriber(node.mqtt_port, "da-sub")
        await sub.connect()
        await sub.subscribe("da/#", 1)
        await sub.disconnect()
        wal = wal_size(data)
        await publish_qos1(node.mqtt_port, "d")  # all COUNT acknowledged
        assert wal_size(data) == wal, "no commit was made for the acks"
        assert queued(data / FILE_NAME, sub.client_id) == 0
        assert await node.terminate() == 0  # a graceful stop saves everything
        node, _ = await start(tmp_path, durable=False)
        await sub.connect(node.mqtt_port)
        await sub.receive(until={payload("d", n) for n in range(COUNT)})
        check_no_loss(sub, "d", set(range(COUNT)), 1, sent=COUNT)
    finally:
        await node.kill()


async def test_qos2_publish_killed_after_pubrec_is_delivered_exactly_once(tmp_path: Path) -> None:
    """MQTT-4.3.3-9 across a crash: the PUBREC came after the commit of both the subscriber's
    queued copy and the publisher's awaiting_rel entry, so after the restart the resent
    PUBLISH (DUP) is acknowledged but not routed again, and PUBREL completes it."""
    node, _ = await start(tmp_path, durable=True)
    try:
        sub = Subscriber(node.mqtt_port, "da-sub2")
        await sub.connect()
        await sub.subscribe("da/#", 2)
        await sub.disconnect()
        pub, ack = await RawClient.connect(node.mqtt_port, "da-pub2", clean_start=False)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        pub.send(Publish("da/q2", payload("e", 0), 2, packet_id=1))
        assert await pub.recv(TIMEOUT) == PubRec(1)
        await node.kill()  # SIGKILL right after the PUBREC
        await pub.close()
        node, _ = await start(tmp_path, durable=True)
        pub, ack = await RawClient.connect(node.mqtt_port, "da-pub2", clean_start=False)
        assert isinstance(ack, ConnAck) and ack.session_present
        # A client that had not seen the PUBREC would resend the PUBLISH with DUP.
        pub.send(Publish("da/q2", payload("e", 0), 2, packet_id=1, dup=True))
        assert await pub.recv(TIMEOUT) == PubRec(1)
        pub.send(PubRel(1))
        assert await pub.recv(TIMEOUT) == PubComp(1)
        await pub.close()
        await sub.connect(node.mqtt_port)
        await sub.receive(until={payload("e", 0)})
        await sub.settle()
        check_no_loss(sub, "e", {0}, 2, sent=1)
    finally:
        await node.kill()


async def test_qos2_delivery_killed_after_pubrel_is_not_sent_again(tmp_path: Path) -> None:
    """The broker's PUBREL came after the commit of the 'released' state: the restored session
    resends PUBREL for that packet id, never the PUBLISH (which the client would take as a new
    message, MQTT-4.3.3-10: it has forgotten the id once it sent PUBCOMP... here, once it got
    PUBREL)."""
    node, _ = await start(tmp_path, durable=True)
    try:
        sub, ack = await RawClient.connect(node.mqtt_port, "da-sub3", clean_start=False)
        assert isinstance(ack, ConnAck)
        sub.send(Subscribe(1, [SubscriptionRequest("da/#", 2)]))
        await sub.recv(TIMEOUT)  # SUBACK
        pub, _ = await RawClient.connect(node.mqtt_port, "da-pub3", clean_start=True)
        pub.send(Publish("da/q2", b"once", 2, packet_id=1))
        delivery = await sub.recv(TIMEOUT)
        assert isinstance(delivery, Publish) and delivery.payload == b"once"
        assert delivery.packet_id is not None
        sub.send(PubRec(delivery.packet_id))
        assert await sub.recv(TIMEOUT) == PubRel(delivery.packet_id)
        await node.kill()  # SIGKILL right after the PUBREL, before our PUBCOMP
        await sub.close()
        await pub.close()
        node, _ = await start(tmp_path, durable=True)
        sub, ack = await RawClient.connect(node.mqtt_port, "da-sub3", clean_start=False)
        assert isinstance(ack, ConnAck) and ack.session_present
        assert await sub.recv(TIMEOUT) == PubRel(delivery.packet_id)  # MQTT-4.4.0-1
        sub.send(PubComp(delivery.packet_id))
        with pytest.raises(TimeoutError):  # nothing else: the PUBLISH is not sent again
            extra = await sub.recv(1.0)
            raise AssertionError(f"sent again after the restart: {extra}")
        await sub.close()
    finally:
        await node.kill()


@pytest.mark.parametrize("durable", [True, False])
async def test_clean_subscribers_never_wait(tmp_path: Path, durable: bool) -> None:
    """A message for clean sessions only is acknowledged without any commit, either way."""
    node, data = await start(tmp_path, durable=durable)
    try:
        async with aiomqtt.Client(
            "127.0.0.1", node.mqtt_port, identifier="clean-sub", clean_session=True
        ) as client:
            await client.subscribe("da/#", qos=1)
            wal = wal_size(data)
            await publish_qos1(node.mqtt_port, "c")  # each publish returns on its PUBACK
            assert wal_size(data) == wal, "no commit was made for the acks"
            got: list[bytes] = []
            async with asyncio.timeout(TIMEOUT):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    got.append(message.payload)
                    if len(got) == COUNT:
                        break
            assert got == [payload("c", n) for n in range(COUNT)]
    finally:
        await node.kill()
