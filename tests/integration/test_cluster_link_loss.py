"""Pending RPCs to a peer whose process is gone fail at once (`cluster.link_loss`), over real
loopback sockets: a `Transport` and an `RpcEndpoint` call `Silent`, a peer that completes the
handshake and never answers. When its connection ends and a new dial is refused (the peer
is gone) or answered by another run (epoch), the call fails with `NodeUnreachable` long
before its timeout; when the same run answers the new dial, the call keeps waiting. Before
`LinkLoss` the call waited for its timeout (60 s here) in all three. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import pytest

from cluster.link_loss import LinkLoss
from cluster.rpc import NodeUnreachable, RpcEndpoint
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

COOKIE = "loss-cookie"
WAIT = 10.0
CALL_TIMEOUT = 60.0


class Silent:
    """A peer named "p" of run `epoch`: answers HELLO, then reads and never answers."""

    def __init__(self) -> None:
        self.epoch = 1
        self.port = 0
        self.dialled = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        decoder = FrameDecoder()
        frames: list[Any] = []
        with contextlib.suppress(OSError):
            while not frames:
                data = await reader.read(65536)
                if not data:
                    return
                frames = decoder.feed(data)
            ack = hello_ack_body("p", self.epoch, self.address, frames[0][2]["version"])
            writer.write(encode_frame(MessageType.HELLO_ACK, ack))
            await writer.drain()
            self.dialled.set()
            while await reader.read(65536):
                pass

    async def drop(self, listening: bool) -> None:
        """End its connections (RST), and stop listening unless `listening`."""
        self.dialled.clear()
        if not listening and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        await self.drop(listening=False)


def _node() -> tuple[Transport, RpcEndpoint]:
    def on_frame(hello: Hello, msg_type: MessageType, body: Body) -> None:
        pass

    config = TransportConfig(backoff_min=5.0, backoff_max=5.0)  # no redial but LinkLoss's
    transport = Transport("a", 1, COOKIE, on_frame, config=config)
    rpc = RpcEndpoint("a", transport.send, None)
    loss = LinkLoss(transport, rpc, Counter())
    transport.on_link_down = loss.down
    transport.on_link_up = loss.up
    return transport, rpc


@pytest.mark.parametrize("then", ["gone", "restarted", "same run"])
async def test_a_pending_call_fails_when_its_peer_is_gone(then: str) -> None:
    peer = Silent()
    await peer.listen()
    transport, rpc = _node()
    try:
        call = asyncio.ensure_future(rpc.call("p", peer.address, "m", {}, CALL_TIMEOUT))
        await asyncio.wait_for(peer.dialled.wait(), WAIT)
        if then == "restarted":
            peer.epoch = 2  # the next dial is answered by a new run
        await peer.drop(listening=then != "gone")
        if then == "same run":
            await asyncio.wait_for(peer.dialled.wait(), WAIT)  # dialled again at once
            for _ in range(20):
                await asyncio.sleep(0)
            assert not call.done(), "the peer is still there: its answer may come"
            call.cancel()
            return
        with pytest.raises(NodeUnreachable):
            await asyncio.wait_for(call, WAIT)
    finally:
        await transport.close()
        await peer.close()


async def test_a_call_whose_first_dial_is_refused_fails_at_once() -> None:
    """Nothing listens at the peer's address (it died before we ever reached it): the request
    was dropped with the link's queue, and the call fails then, not at its timeout."""
    peer = Silent()
    await peer.listen()
    address = peer.address
    await peer.close()  # the port is closed now: a dial is refused
    transport, rpc = _node()
    try:
        with pytest.raises(NodeUnreachable):
            await asyncio.wait_for(rpc.call("p", address, "m", {}, CALL_TIMEOUT), WAIT)
    finally:
        await transport.close()
