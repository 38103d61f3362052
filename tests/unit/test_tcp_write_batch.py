"""`broker.server.tcp.WriteBatch`: what a read routes is written in that read, not a loop turn
later: a connection's first write at once, the rest in one transport write at the end of the
read (or of the batch of reads); writes made outside any read go out at the end of the loop
turn, as before. Order is kept, and one connection's failure to write does not keep the others'
writes back nor fail the read."""

from __future__ import annotations

import asyncio

from broker.core.broker import Broker
from broker.protocol.codec import encode
from broker.protocol.packets import Connect, Publish, Subscribe, SubscriptionRequest
from broker.server.listeners import ListenerStats
from broker.server.tcp import MqttConnection, TcpListener, WriteBatch


class Transport:
    """Records writes; enough of a transport for `MqttConnection`."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def client(listener: TcpListener, client_id: str) -> tuple[MqttConnection, Transport]:
    conn = MqttConnection(listener)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(encode(Connect(client_id=client_id)))
    transport.written.clear()  # the CONNACK, sent at the end of that read
    return conn, transport


async def pair() -> tuple[MqttConnection, Transport, Transport]:
    """A publisher and a subscriber to "t" on one listener; their set-up writes done."""
    listener = TcpListener(Broker(), ListenerStats("mqtt:tcp", "127.0.0.1", 0))
    sub, sub_t = client(listener, "sub")
    sub.data_received(encode(Subscribe(1, [SubscriptionRequest("t", 0)])))
    pub, pub_t = client(listener, "pub")
    await asyncio.sleep(0)
    sub_t.written.clear()
    return pub, pub_t, sub_t


async def test_a_routed_message_is_written_at_the_end_of_its_read() -> None:
    pub, _, sub_t = await pair()
    pub.data_received(encode(Publish("t", b"one")))
    assert sub_t.written == [encode(Publish("t", b"one"))], "sent before the loop turns"


async def test_what_one_read_routes_to_a_connection_is_two_writes_at_most_in_order() -> None:
    pub, _, sub_t = await pair()
    frames = [encode(Publish("t", b"m%d" % i)) for i in range(5)]
    # a run, then PUBLISHes of another kind: the run at once, the others at the read's end
    pub.data_received(
        frames[0]
        + frames[1]
        + b"".join(encode(Publish("t", b"m%d" % i, retain=True)) for i in (2, 3))
    )
    assert sub_t.written == [frames[0] + frames[1], frames[2] + frames[3]]
    await asyncio.sleep(0)
    assert len(sub_t.written) == 2, "nothing sent twice"


async def test_an_open_batch_holds_writes_until_its_outermost_end() -> None:
    """The lean transport's poller opens one batch around all the sockets it found ready."""
    pub, _, sub_t = await pair()
    batch = pub.listener.batch
    batch.begin()
    pub.data_received(encode(Publish("t", b"a")))
    pub.data_received(encode(Publish("t", b"b")))
    pub.data_received(encode(Publish("t", b"c")))
    assert sub_t.written == [encode(Publish("t", b"a"))], "inside the batch: the first only"
    batch.end()
    assert sub_t.written[1:] == [encode(Publish("t", b"b")) + encode(Publish("t", b"c"))]
    await asyncio.sleep(0)
    assert len(sub_t.written) == 2, "nothing sent twice"
    pub.data_received(encode(Publish("t", b"d")))  # the next batch: at once again
    assert sub_t.written[2:] == [encode(Publish("t", b"d"))]


async def test_a_write_outside_any_read_goes_out_at_the_end_of_the_loop_turn() -> None:
    _, pub_t, _ = await pair()
    conn = MqttConnection(TcpListener(Broker(), ListenerStats("mqtt:tcp", "127.0.0.1", 0)))
    transport = Transport()
    conn.transport = transport  # type: ignore[assignment]
    conn.write(b"x")
    conn.write(b"y")
    assert transport.written == []
    await asyncio.sleep(0)
    assert transport.written == [b"xy"]
    assert pub_t.written == []


async def test_one_failing_connection_does_not_hold_back_the_others() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        batch = WriteBatch(loop)
        listener = TcpListener(Broker(), ListenerStats("mqtt:tcp", "127.0.0.1", 0), batch=batch)

        class Broken(Transport):
            def write(self, data: bytes) -> None:
                raise RuntimeError("broken transport")

        first, second = MqttConnection(listener), MqttConnection(listener)
        first.transport = Broken()  # type: ignore[assignment]
        healthy = Transport()
        second.transport = healthy  # type: ignore[assignment]
        batch.begin()
        first.write(b"1")  # at once: fails, reported, not raised to the reader
        second.write(b"2")
        first.write(b"1b")  # at the end of the batch: fails there, reported
        second.write(b"2b")
        batch.end()
        assert healthy.written == [b"2", b"2b"]
        assert len(reported) == 2
        assert all(isinstance(context["exception"], RuntimeError) for context in reported)
        first.transport = Transport()  # type: ignore[assignment]
        first.write(b"3")  # not stuck as "already scheduled"
        await asyncio.sleep(0)
        assert first.transport.written == [b"3"]  # type: ignore[attr-defined]
    finally:
        loop.set_exception_handler(None)
