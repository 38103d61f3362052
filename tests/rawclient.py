"""A tiny raw MQTT client over asyncio streams, built on our codec, for cases real clients hide
(exact packets, reason codes, broken input, DUP redelivery)."""

from __future__ import annotations

import asyncio
import contextlib

from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import Connect, Packet


class RawClient:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.version = version
        self.decoder = Decoder(version=version)
        self.pending: list[Packet] = []

    @classmethod
    async def open(cls, port: int, version: int = MQTT_3_1_1, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, version)

    @classmethod
    async def connect(
        cls, port: int, client_id: str, version: int = MQTT_3_1_1, **fields: object
    ) -> tuple[RawClient, Packet]:
        """Open a connection, send CONNECT, return the client and the CONNACK."""
        client = await cls.open(port, version)
        client.send(Connect(client_id, protocol_level=version, **fields))  # type: ignore[arg-type]
        return client, await client.recv()

    def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet, self.version))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> Packet:
        """Next packet from the broker; raises TimeoutError, or EOFError if the broker closed."""
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("connection closed by broker")
                self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the broker has closed the connection (reading any packets before it)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
                    self.pending.extend(self.decoder.feed(data))
        except (ConnectionError, TimeoutError):
            return isinstance(self.reader.exception(), ConnectionError)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
