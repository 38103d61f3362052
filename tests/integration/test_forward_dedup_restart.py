"""A receiver SIGKILLed after the commit of a forward batch, whatever became of its FORWARD_ACK,
recognises that batch when the sender resends it to its next run (issue 14): the de-duplication
record is committed with the sessions (`kept`, persistence format 4), so the QoS 2 message is
queued once, not twice.

The node is the real CLI as a process (persistence on, `persistence_interval` an hour: what is
on disk was written by the commits the held FORWARD_ACKs asked for). The sending node is
scripted here: it dials the node's cluster port with HELLO and sends numbered FORWARD_BATCH
frames; the node's FORWARD_ACKs come back over the link it dials to the address the sender
advertised, a `scripted_peer.Peer`. Only processes started here are signalled, by their PIDs;
every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from cli_tree import closed_port
from noloss_support import TIMEOUT, CliProc, start_cli
from rawclient import RawClient
from scripted_peer import Peer
from test_durable_acks import queued

from broker.core.message import Message
from broker.protocol.packets import ConnAck, Subscribe, SubscriptionRequest
from broker.server.persistence import FILE_NAME
from cluster.wire import (
    FrameDecoder,
    MessageType,
    encode_frame,
    forward_batch_body,
    forward_entry,
    hello_body,
)

pytestmark = pytest.mark.interop

NAME = "dedup@127.0.0.1"
SENDER = "sender@127.0.0.1"
EPOCH = 1  # (the scripted peer answers the node's HELLO with epoch 1: one run of the sender)


async def start(tmp_path: Path, cluster_port: int) -> CliProc:
    config = tmp_path / "broker.toml"
    config.write_text("persistence = true\npersistence_interval = 3600000\n")
    return await start_cli(config, tmp_path / "data", tmp_path / "node.log", NAME, cluster_port)


class Sender:
    """The dialling end of a link from SENDER: HELLO, then numbered batches of one message."""

    def __init__(self, advertised: tuple[str, int]) -> None:
        self.advertised = advertised
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        hello = hello_body("minibroker", SENDER, EPOCH, self.advertised)
        writer.write(encode_frame(MessageType.HELLO, hello, version=1))
        decoder = FrameDecoder()
        async with asyncio.timeout(TIMEOUT):
            while True:
                data = await reader.read(65536)
                assert data, "the node closed the link during the handshake"
                frames = decoder.feed(data)
                if frames:
                    _, msg_type, body = frames[0]
                    assert msg_type is MessageType.HELLO_ACK and not body.get("error"), body
                    return

    def send_batch(self, seq: int, payload: bytes) -> None:
        body = forward_batch_body(SENDER, [forward_entry(Message("fd/x", payload, 2, False))])
        body["seq"] = seq
        assert self.writer is not None
        self.writer.write(encode_frame(MessageType.FORWARD_BATCH, body, version=3))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def acked(peer: Peer, seq: int) -> None:
    """Wait until the node's FORWARD_ACK covers `seq` (it leaves after the commit)."""
    async with asyncio.timeout(TIMEOUT):
        while not any(
            msg_type is MessageType.FORWARD_ACK and body.get("seq", 0) >= seq
            for _, msg_type, body in peer.frames
        ):
            await asyncio.sleep(0.02)


async def test_a_batch_resent_after_a_sigkill_is_only_acknowledged(tmp_path: Path) -> None:
    cluster_port = closed_port()
    peer = Peer(3, name=SENDER)
    await peer.start()
    sender = Sender(peer.address)
    node = await start(tmp_path, cluster_port)
    db = tmp_path / "data" / FILE_NAME
    try:
        sub, ack = await RawClient.connect(node.mqtt_port, "fd-sub", clean_start=False)
        assert isinstance(ack, ConnAck)
        sub.send(Subscribe(1, [SubscriptionRequest("fd/#", 2)]))
        await sub.recv(TIMEOUT)  # SUBACK
        await sub.close()  # offline: what the batches carry is queued in its session
        await sender.connect(cluster_port)
        sender.send_batch(1, b"one")
        await acked(peer, 1)
        assert queued(db, "fd-sub") == 1
        await node.kill()  # SIGKILL after the commit (here even after the ack)
        sender.close()
        peer.frames.clear()
        # The sender did not see the ack (as if the kill had come before it): it resends.
        node = await start(tmp_path, cluster_port)
        await sender.connect(cluster_port)
        sender.send_batch(1, b"one")
        await acked(peer, 1)  # recognised: acknowledged again
        sender.send_batch(2, b"two")
        await acked(peer, 2)
        assert queued(db, "fd-sub") == 2  # "one" once and "two", not "one" twice
    finally:
        sender.close()
        await node.kill()
        with contextlib.suppress(Exception):
            await peer.close()
