"""Forwards in batches (`cluster.forwarder`) over real sockets, against peers of both versions.

A peer here is a small asyncio server that does the accepting side of the handshake and
answers HELLO_ACK with the version it chooses, then records every frame it gets. Our side is
a real `Transport` with a `Forwarder`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_support import eventually

from broker.core.message import Message
from cluster.forwarder import Forwarder
from cluster.transport import Transport, TransportConfig
from cluster.wire import (
    Address,
    Body,
    FrameDecoder,
    MessageType,
    encode_frame,
    parse_forward,
    parse_forward_batch,
)


class Peer:
    """The accepting end of links, speaking protocol `version`; records frames."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.frames: list[tuple[int, MessageType, Body]] = []
        self.server: asyncio.Server | None = None
        self.address: Address = ("127.0.0.1", 0)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = ("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        greeted = False
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    if not greeted:
                        greeted = True
                        ack = {"name": "old", "epoch": 1, "addr": list(self.address),
                               "version": self.version, "error": None}  # fmt: skip
                        writer.write(encode_frame(MessageType.HELLO_ACK, ack, version=1))
                        continue
                    self.frames.append(frame)
        writer.close()

    def messages(self) -> list[str]:
        """The topics received, in order, whatever the frame type."""
        out: list[str] = []
        for _, msg_type, body in self.frames:
            if msg_type is MessageType.FORWARD:
                out.append(parse_forward(body).topic)
            elif msg_type is MessageType.FORWARD_BATCH:
                out.extend(i[0].topic for i in parse_forward_batch(body)[0] if type(i) is tuple)
        return out

    def types(self) -> Counter[MessageType]:
        return Counter(t for _, t, _ in self.frames)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def sender() -> AsyncIterator[tuple[Transport, Forwarder, list[int]]]:
    dropped: list[int] = []
    transport = Transport("a@127.0.0.1", 1, "cookie", lambda *a: None, config=TransportConfig())
    forwarder = Forwarder(transport, "a@127.0.0.1", Counter(), dropped.append)
    yield transport, forwarder, dropped
    await transport.close()


async def connected(transport: Transport, peer: Peer) -> None:
    transport.send(peer.address, MessageType.GOSSIP, {"from": "a@127.0.0.1", "updates": []})
    await eventually(lambda: transport.peer_version(peer.address) is not None)


def msg(i: int) -> Message:
    return Message(f"t/{i}", b"x", 1, False, {}, "c", 0.0)


@pytest.mark.parametrize("version", [1, 2])
async def test_batches_only_to_a_peer_of_version_2(
    sender: tuple[Transport, Forwarder, list[int]], version: int
) -> None:
    transport, forwarder, dropped = sender
    peer = Peer(version)
    await peer.start()
    try:
        # before any handshake: one FORWARD per message (any peer understands it)
        forwarder.send(peer.address, msg(0))
        await connected(transport, peer)
        assert transport.peer_version(peer.address) == version
        for i in range(1, 51):  # one loop turn
            forwarder.send(peer.address, msg(i), {"kind": "retain"} if i == 7 else None)
        await eventually(lambda: len(peer.messages()) == 51)
        assert peer.messages() == [f"t/{i}" for i in range(51)]  # in order
        types = peer.types()
        if version == 1:
            assert types[MessageType.FORWARD] == 51 and not types[MessageType.FORWARD_BATCH]
            assert peer.frames[-1][0] == 1  # encoded in the negotiated version
        else:
            assert types[MessageType.FORWARD_BATCH] == 1 and types[MessageType.FORWARD] == 1
            batch = next(b for _, t, b in peer.frames if t is MessageType.FORWARD_BATCH)
            assert parse_forward_batch(batch)[0][6][1] == {"kind": "retain"}
        assert dropped == [] and transport.stats["dropped"] == 0
    finally:
        await peer.close()


async def test_a_large_turn_is_cut_into_bounded_batches(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    transport, forwarder, _ = sender
    forwarder.max_batch = 100
    peer = Peer(2)
    await peer.start()
    try:
        await connected(transport, peer)
        for i in range(250):
            forwarder.send(peer.address, msg(i))
        await eventually(lambda: len(peer.messages()) == 250)
        assert peer.messages() == [f"t/{i}" for i in range(250)]
        assert peer.types()[MessageType.FORWARD_BATCH] == 3  # 100 + 100 + the rest at turn end
    finally:
        await peer.close()


async def test_a_dropped_batch_counts_every_message(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    """A peer that goes away: the batches queued for it are dropped, counted as messages."""
    transport, forwarder, _ = sender
    lost: list[tuple[MessageType, int]] = []
    transport.on_drop = lambda address, msg_type, count: lost.append((msg_type, count))
    peer = Peer(2)
    await peer.start()
    await connected(transport, peer)
    link: Any = transport._links[peer.address]
    for i in range(40):
        forwarder.send(peer.address, msg(i))
    forwarder.flush()
    assert len(link.queue) == 1  # queued; its writer runs at the next turn, too late:
    transport.forget(peer.address)
    await eventually(lambda: sum(c for _, c in lost) == 40)
    assert {t for t, _ in lost} == {MessageType.FORWARD_BATCH}
    assert transport.stats["dropped/FORWARD_BATCH"] == 40
    await peer.close()


@pytest.mark.parametrize("version", [2, 3, 4])
async def test_a_run_is_one_entry_only_for_a_peer_of_version_4(
    sender: tuple[Transport, Forwarder, list[int]], version: int
) -> None:
    """`send_run` appends a run (`cluster.runs`) as one entry, in order with the messages,
    only on a link that negotiated `RUN_VERSION`; else it does nothing and says so (the
    caller then forwards message by message). A run counts as its messages in a batch."""
    from broker.protocol.codec import encode
    from broker.protocol.packets import Publish
    from broker.protocol.runs import PublishRun
    from cluster.wire import RUN_VERSION, ForwardedRun

    transport, forwarder, dropped = sender
    forwarder.max_batch = 250
    peer = Peer(version)
    await peer.start()
    try:
        await connected(transport, peer)
        frames = b"".join(encode(Publish("r/x", b"%04d" % i)) for i in range(200))
        run = ForwardedRun(PublishRun("r/x", frames, 200, len(frames) // 200, False), "pub")
        forwarder.send(peer.address, msg(0))
        taken = forwarder.send_run(peer.address, run)
        assert taken is (version >= RUN_VERSION)
        forwarder.send(peer.address, msg(1))
        if taken:
            assert forwarder.pending() == 202
            forwarder.send_run(peer.address, run)  # 402 messages: over max_batch, sent now
            assert forwarder.pending() == 0
        await eventually(lambda: len(peer.messages()) == 2)
        batches = [b for _, t, b in peer.frames if t is MessageType.FORWARD_BATCH]
        items = [item for b in batches for item in parse_forward_batch(b)[0]]
        kinds = ["run" if isinstance(i, ForwardedRun) else i[0].topic for i in items]
        assert kinds == (["t/0", "run", "t/1", "run"] if taken else ["t/0", "t/1"])
        assert forwarder.stats["forward/batched"] == (402 if taken else 2)
        assert dropped == []
    finally:
        await peer.close()
