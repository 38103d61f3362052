"""cluster.transport flow control: `hold_until_drained` on real sockets (127.0.0.1, port 0).

A link is congested from `hold_queue` frames (or `hold_queue_bytes`) waiting; the callback
registered then runs once the link has written its queue down below a quarter of that, or once
the link fails or is closed. The peer is either a real `Transport` or `StalledPeer`, which does
the handshake and then reads nothing until told to, so the sender's socket buffers fill up and
its queue grows while the link stays up. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_support import eventually

from cluster.transport import Transport, TransportConfig
from cluster.wire import (
    Address,
    Body,
    FrameDecoder,
    Hello,
    MessageType,
    encode_frame,
    hello_ack_body,
)

COOKIE = "flow-cookie"
WAIT = 5.0
PAD = b"x" * 65536  # a 64 KiB frame body: socket buffers fill within a few hundred frames


class StalledPeer:
    """A cluster peer that answers HELLO, then reads nothing until `read()` (or `abort()`)."""

    def __init__(self) -> None:
        self.address: Address = ("127.0.0.1", 0)
        self.frames = 0
        self.connected = asyncio.Event()
        self._reading = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = ("127.0.0.1", int(self._server.sockets[0].getsockname()[1]))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        decoder = FrameDecoder()
        frames: list[tuple[int, MessageType, Body]] = []
        with contextlib.suppress(OSError):
            while not frames:
                data = await reader.read(65536)
                if not data:
                    return
                frames = decoder.feed(data)
            assert frames[0][1] is MessageType.HELLO
            ack = hello_ack_body("stalled", 1, self.address, frames[0][2]["version"])
            writer.write(encode_frame(MessageType.HELLO_ACK, ack))
            await writer.drain()
            self.frames += len(frames) - 1
            self.connected.set()
            await self._reading.wait()
            while data := await reader.read(1 << 20):
                self.frames += len(decoder.feed(data))

    def read(self) -> None:
        self._reading.set()

    def abort(self) -> None:
        """Drop the connections at once (RST: unread data is waiting)."""
        for writer in self._writers:
            writer.transport.abort()

    async def close(self) -> None:
        self.abort()
        self.read()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT):
                    await self._server.wait_closed()


def _transport(name: str, config: TransportConfig, received: list[Body] | None = None) -> Transport:
    def on_frame(hello: Hello, msg_type: MessageType, body: Body) -> None:
        if received is not None:
            received.append(body)

    return Transport(name, 1, COOKIE, on_frame, config=config)


def _gossip(i: int, pad: bytes = b"") -> dict[str, Any]:
    return {"from": "a", "i": i, "pad": pad}


@pytest.fixture
async def closing() -> AsyncIterator[list[Transport | StalledPeer]]:
    """Whatever a test puts here is closed after it."""
    things: list[Transport | StalledPeer] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def _up(sender: Transport, address: Address) -> None:
    """Bring the link up with one small frame."""
    assert sender.send(address, MessageType.GOSSIP, _gossip(-1))
    await eventually(lambda: sender.is_up(address) and sender.queued() == 0, WAIT)


async def _congest(sender: Transport, peer: StalledPeer, release: asyncio.Event) -> int:
    """Send 64 KiB frames to the stalled `peer` until the link is congested and `release.set`
    is registered; returns how many frames were sent."""
    for i in range(2000):
        assert sender.send(peer.address, MessageType.GOSSIP, _gossip(i, PAD)), "none dropped"
        if sender.hold_until_drained(peer.address, release.set):
            return i + 1
        await asyncio.sleep(0)  # the link's writer runs: until its socket is full
    raise AssertionError("the link never got congested")


async def test_hold_until_drained_is_false_when_not_congested(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=8, hold_queue_bytes=1 << 20)
    received: list[Body] = []
    b = _transport("b", config, received)
    a = _transport("a", config)
    closing += [b, a]
    b.address = ("127.0.0.1", await b.listen("127.0.0.1", 0))
    called: list[str] = []
    assert not a.hold_until_drained(b.address, lambda: called.append("unknown")), "no link"
    await _up(a, b.address)
    for i in range(7):  # one fewer than hold_queue
        a.send(b.address, MessageType.GOSSIP, _gossip(i))
    assert not a.hold_until_drained(b.address, lambda: called.append("below"))
    await eventually(lambda: len(received) == 8, WAIT)
    for i in range(3):
        a.send(b.address, MessageType.GOSSIP, _gossip(i))
    await eventually(lambda: len(received) == 11, WAIT)
    assert called == [], "a callback refused with False is never called"


async def test_hold_until_drained_is_false_for_a_link_that_is_not_up(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=2, backoff_min=5.0)
    a = _transport("a", config)
    closing.append(a)
    nowhere = ("127.0.0.1", 1)  # nobody listens: the link connects, then fails
    for i in range(5):
        a.send(nowhere, MessageType.GOSSIP, _gossip(i))
    assert not a.is_up(nowhere)
    assert not a.hold_until_drained(nowhere, lambda: None), "queued while connecting: not held"


async def test_a_burst_queued_at_once_is_released_after_the_writer_sent_it(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=8, hold_queue_bytes=1 << 20)
    received: list[Body] = []
    b = _transport("b", config, received)
    a = _transport("a", config)
    closing += [b, a]
    b.address = ("127.0.0.1", await b.listen("127.0.0.1", 0))
    await _up(a, b.address)
    for i in range(10):  # synchronously: the link's writer has not run yet
        assert a.send(b.address, MessageType.GOSSIP, _gossip(i))
    released = asyncio.Event()
    assert a.hold_until_drained(b.address, released.set)
    assert not released.is_set(), "released from the writer, not at once"
    await asyncio.wait_for(released.wait(), WAIT)
    assert a.queued() < config.hold_queue // 4
    await eventually(lambda: len(received) == 11, WAIT)
    assert a.stats["dropped"] == 0


async def test_congested_by_bytes(closing: list[Transport | StalledPeer]) -> None:
    config = TransportConfig(hold_queue=1000, hold_queue_bytes=16 * 1024)
    b = _transport("b", config)
    a = _transport("a", config)
    closing += [b, a]
    b.address = ("127.0.0.1", await b.listen("127.0.0.1", 0))
    await _up(a, b.address)
    a.send(b.address, MessageType.GOSSIP, _gossip(0, b"x" * 8000))
    assert not a.hold_until_drained(b.address, lambda: None), "under both limits"
    a.send(b.address, MessageType.GOSSIP, _gossip(1, b"x" * 8500))
    released = asyncio.Event()
    assert a.hold_until_drained(b.address, released.set), "two frames, but 16 KiB"
    await asyncio.wait_for(released.wait(), WAIT)


async def test_a_congested_link_is_released_only_once_the_receiver_reads(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=4, hold_queue_bytes=1 << 20)
    peer = StalledPeer()
    a = _transport("a", config)
    closing += [peer, a]
    await peer.start()
    await _up(a, peer.address)
    await asyncio.wait_for(peer.connected.wait(), WAIT)
    released = asyncio.Event()
    sent = await _congest(a, peer, released)
    await asyncio.sleep(0.3)
    assert not released.is_set(), "the peer reads nothing: still congested"
    assert a.is_up(peer.address)
    peer.read()
    await asyncio.wait_for(released.wait(), WAIT)
    await eventually(lambda: peer.frames == sent + 1, WAIT)  # + the one of `_up`
    assert a.stats["dropped"] == 0


async def test_a_hold_is_released_when_the_link_fails(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=4, hold_queue_bytes=1 << 20)
    peer = StalledPeer()
    a = _transport("a", config)
    closing += [peer, a]
    await peer.start()
    await _up(a, peer.address)
    await asyncio.wait_for(peer.connected.wait(), WAIT)
    released = asyncio.Event()
    await _congest(a, peer, released)
    peer.abort()
    await asyncio.wait_for(released.wait(), WAIT)
    await eventually(lambda: not a.is_up(peer.address), WAIT)
    assert a.stats["dropped/link_failed"] >= config.hold_queue


async def test_a_hold_is_released_when_the_link_is_forgotten(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=4, hold_queue_bytes=1 << 20)
    peer = StalledPeer()
    a = _transport("a", config)
    closing += [peer, a]
    await peer.start()
    await _up(a, peer.address)
    await asyncio.wait_for(peer.connected.wait(), WAIT)
    released = asyncio.Event()
    await _congest(a, peer, released)
    a.forget(peer.address)
    await asyncio.wait_for(released.wait(), WAIT)
    assert a.stats["dropped/closed"] >= config.hold_queue


async def test_a_hold_is_released_when_the_transport_closes(
    closing: list[Transport | StalledPeer],
) -> None:
    config = TransportConfig(hold_queue=4, hold_queue_bytes=1 << 20, flush_timeout=0.2)
    peer = StalledPeer()
    a = _transport("a", config)
    closing.append(peer)
    await peer.start()
    await _up(a, peer.address)
    await asyncio.wait_for(peer.connected.wait(), WAIT)
    released = asyncio.Event()
    await _congest(a, peer, released)
    await asyncio.wait_for(a.close(), WAIT)  # the flush times out: the peer reads nothing
    assert released.is_set()


async def test_forget_closes_the_peers_connections_to_us_too(
    closing: list[Transport | StalledPeer],
) -> None:
    """A peer declared dead is forgotten both ways: after a partition its kernel would
    otherwise deliver, by TCP retransmits, what it sent into the cut on the old connection,
    seconds late (issue 14's fault suite: QoS 2 batches and takeover claims). What it sends
    next comes on a new connection."""
    config = TransportConfig(backoff_min=0.05, backoff_max=0.1)
    received: list[Body] = []
    b = _transport("b", config, received)
    a = _transport("a", config)
    closing += [b, a]
    b.address = ("127.0.0.1", await b.listen("127.0.0.1", 0))
    await _up(a, b.address)
    await eventually(lambda: len(received) == 1, WAIT)
    assert b.stats["accepted"] == 1
    b.forget(a.address)  # (a's advertised address: what its HELLO named)
    await eventually(lambda: not a.is_up(b.address), WAIT)  # a saw its connection close
    await eventually(  # (sent again while a's link backs off: each send is one gossip frame)
        lambda: a.send(b.address, MessageType.GOSSIP, _gossip(1)) and len(received) >= 2, WAIT
    )
    assert b.stats["accepted"] == 2  # a new connection
