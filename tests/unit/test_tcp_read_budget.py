"""The TCP connection's read budget: a client that has sent `READ_BUDGET` bytes sits out one
loop turn, so a flood from some clients cannot starve the writes to others (uvloop reads a
readable socket up to 32 times in a row before it runs any queued write)."""

from __future__ import annotations

import asyncio

from broker.core.broker import Broker
from broker.protocol.codec import encode
from broker.protocol.packets import Connect, PingReq
from broker.server.listeners import ListenerStats
from broker.server.tcp import READ_BUDGET, MqttConnection


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []
        self.closed = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def connected() -> tuple[MqttConnection, FakeTransport]:
    broker = Broker()
    conn = MqttConnection(broker, ListenerStats("mqtt:tcp", "127.0.0.1", 0))
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(encode(Connect(client_id="flooder")))
    return conn, transport


async def test_a_client_over_its_budget_sits_out_one_turn() -> None:
    conn, transport = connected()
    ping = encode(PingReq())
    chunk = ping * (READ_BUDGET // len(ping) // 4)
    for _ in range(3):
        conn.data_received(chunk)
    assert transport.reading, "under the budget: keeps reading"
    conn.data_received(chunk)
    conn.data_received(chunk)
    assert not transport.reading, "over the budget: paused for the rest of this turn"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.reading, "the next turn reads again"
    assert len(b"".join(transport.written)) > 0  # CONNACK and PINGRESPs were answered


async def test_the_turn_does_not_undo_a_pause_for_a_full_write_buffer() -> None:
    conn, transport = connected()
    ping = encode(PingReq())
    conn.data_received(ping * (READ_BUDGET // len(ping) + 1))
    assert not transport.reading
    conn.pause_writing()  # the client stopped reading our replies meanwhile
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not transport.reading, "still paused: its replies have nowhere to go"
    conn.resume_writing()
    assert transport.reading


async def test_a_full_write_buffer_does_not_end_the_budget_pause_early() -> None:
    conn, transport = connected()
    ping = encode(PingReq())
    conn.pause_writing()
    conn.data_received(ping * (READ_BUDGET // len(ping) + 1))
    conn.resume_writing()
    assert not transport.reading, "the budget pause lasts until the next turn"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.reading
