"""The TCP connection's read budget: a client that has sent `READ_BUDGET` bytes sits out one
loop turn, so a flood from some clients cannot starve the writes to others (uvloop reads a
readable socket up to 32 times in a row before it runs any queued write).

Reading is paused for three reasons that combine: the budget (one turn), a full write buffer
(`pause_writing`) and flow control (`pause_reading`, from `Channel.hold_input`); it resumes only
once none is left."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from broker.core.broker import Broker
from broker.protocol.codec import encode
from broker.protocol.packets import Connect, PingReq
from broker.server.listeners import ListenerStats
from broker.server.tcp import READ_BUDGET, MqttConnection, TcpListener


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []
        self.closed = False
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.calls.append("resume")

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


def connected(broker: Broker | None = None) -> tuple[MqttConnection, FakeTransport]:
    broker = broker or Broker()
    conn = MqttConnection(TcpListener(broker, ListenerStats("mqtt:tcp", "127.0.0.1", 0)))
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


# -- flow control (`Link.pause_reading`) combined with the other pause reasons -------------


def over_budget(conn: MqttConnection) -> None:
    ping = encode(PingReq())
    conn.data_received(ping * (READ_BUDGET // len(ping) + 1))


async def next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_held_client_is_not_resumed_by_the_next_turn() -> None:
    conn, transport = connected()
    over_budget(conn)
    conn.pause_reading()  # flow control, while sitting out the turn
    await next_turn()
    assert not transport.reading, "still held: the turn ending does not resume it"
    conn.resume_reading()
    assert transport.reading
    assert transport.calls == ["pause", "resume"]


async def test_a_release_during_the_turn_waits_for_the_next_turn() -> None:
    conn, transport = connected()
    over_budget(conn)
    conn.pause_reading()
    conn.resume_reading()
    assert not transport.reading, "the budget pause lasts until the next turn"
    await next_turn()
    assert transport.reading
    assert transport.calls == ["pause", "resume"]


@pytest.mark.parametrize("release_first", [True, False])
async def test_held_and_write_full_resume_only_when_both_are_cleared(release_first: bool) -> None:
    conn, transport = connected()
    conn.pause_reading()
    conn.pause_writing()
    assert not transport.reading
    if release_first:
        conn.resume_reading()
        assert not transport.reading, "the client still does not read our replies"
        conn.resume_writing()
    else:
        conn.resume_writing()
        assert not transport.reading, "still held by flow control"
        conn.resume_reading()
    assert transport.reading
    assert transport.calls == ["pause", "resume"]


@pytest.mark.parametrize("order", list(itertools.permutations(["turn", "held", "write_full"])))
async def test_all_three_reasons_must_be_cleared_to_resume(order: tuple[str, ...]) -> None:
    conn, transport = connected()
    over_budget(conn)
    conn.pause_reading()
    conn.pause_writing()
    assert transport.calls == ["pause"]
    clear = {
        "turn": next_turn,
        "held": _async(conn.resume_reading),
        "write_full": _async(conn.resume_writing),
    }
    for i, reason in enumerate(order):
        assert not transport.reading, f"resumed with {order[i:]} left"
        await clear[reason]()
    await next_turn()  # a turn that ended earlier does not matter any more
    assert transport.reading
    assert transport.calls == ["pause", "resume"]


def _async(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()

    return run


async def test_channel_hold_and_release_go_through_the_connection() -> None:
    now = [1000.0]
    conn, transport = connected(Broker(clock=lambda: now[0]))
    channel = conn.channel
    assert channel is not None
    assert channel.hold_input()
    assert not transport.reading
    over_budget(conn)  # and its budget for this turn runs out too
    await next_turn()
    assert not transport.reading, "held: the turn does not resume it"
    channel.release_input()
    assert transport.reading
    assert transport.calls == ["pause", "resume"]


async def test_a_closing_connection_is_not_resumed() -> None:
    conn, transport = connected()
    conn.pause_reading()
    conn.close()
    conn.resume_reading()
    assert transport.closed
    assert not transport.reading
