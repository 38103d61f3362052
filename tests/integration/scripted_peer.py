"""A scripted cluster peer for link tests: the accepting end of a link that answers the
handshake at a chosen protocol version and records every frame after it (it never acks, so
what a sender holds stays held until a test says otherwise)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from cluster.wire import (
    Address,
    Body,
    FrameDecoder,
    MessageType,
    encode_frame,
    parse_forward,
    parse_forward_batch,
)

__all__ = ["Peer"]


class Peer:
    """Speaks protocol `version` under the name `name`; `refusing` aborts new links, `cut()`
    aborts the open ones."""

    def __init__(self, version: int, name: str = "b") -> None:
        self.version = version
        self.name = name
        self.frames: list[tuple[int, MessageType, Body]] = []
        self.server: asyncio.Server | None = None
        self.address: Address = ("127.0.0.1", 0)
        self.writers: set[asyncio.StreamWriter] = set()
        self.refusing = False
        self.accepted = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = ("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        self.writers.add(writer)
        decoder = FrameDecoder()
        greeted = False
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    if not greeted:
                        greeted = True
                        ack = {"name": self.name, "epoch": 1, "addr": list(self.address),
                               "version": self.version, "error": None}  # fmt: skip
                        writer.write(encode_frame(MessageType.HELLO_ACK, ack, version=1))
                        continue
                    self.frames.append(frame)
        self.writers.discard(writer)
        writer.close()

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()

    def batches(self) -> list[tuple[int | None, list[str]]]:
        """(seq, topics) of every FORWARD_BATCH received, in order."""
        return [
            (body.get("seq"), [m.topic for m, _ in parse_forward_batch(body)[0]])
            for _, msg_type, body in self.frames
            if msg_type is MessageType.FORWARD_BATCH
        ]

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
        self.cut()
        if self.server is not None:
            self.server.close()
