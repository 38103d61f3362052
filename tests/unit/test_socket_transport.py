"""The lean TCP transport (`broker.server.socket_transport`) keeps asyncio's transport contract:
bytes in order, flow control at the water marks, one `connection_lost` whatever the ending, the
socket closed after it. Each test drives it over a real loopback socket pair on asyncio's own
loop (with the poller's own epoll, and on the `LeanSelector` that serves it from the loop's
epoll) and on uvloop's (when installed: the node uses this transport on both); every wait is
bounded."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import pytest
from loops import LOOPS, loop_policy

from broker.server.lean_selector import LeanSelector
from broker.server.socket_transport import (
    HIGH_WATER,
    Poller,
    SocketServer,
    SocketTransport,
    available,
)

TIMEOUT = 5.0
#: SO_SNDBUF/SO_RCVBUF of the test sockets (the kernel doubles and rounds them).
KERNEL_BUFFER = 32 * 1024


# pytest-asyncio 1.x deprecates this fixture for a conftest hook that would apply to every test
# of the directory; this module alone runs on both loops.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(params=LOOPS, scope="module")
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test of this module on each loop of `loops.LOOPS`."""
    return loop_policy(request.param)


async def test_the_loop_of_this_test_can_run_the_lean_transport() -> None:
    assert available(asyncio.get_running_loop())


class Recorder(asyncio.Protocol):
    """Records every call the transport makes."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets (socketpair() is AF_UNIX only on Linux), with small
    kernel buffers so that a few MiB written surely wait in the transport."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        theirs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
        theirs.settimeout(TIMEOUT)
        theirs.connect(listener.getsockname())
        ours, _addr = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
    return ours, theirs


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SocketTransport, Recorder, socket.socket]]:
    """A started transport on one end of a TCP pair; the other end, blocking with a timeout."""
    ours, theirs = _tcp_pair()
    ours.setblocking(False)
    theirs.settimeout(TIMEOUT)
    protocol = Recorder()
    poller = Poller(asyncio.get_running_loop())
    transport = SocketTransport(poller, ours, protocol)
    transport.start()
    yield transport, protocol, theirs
    transport.abort()
    theirs.close()
    await asyncio.sleep(0)
    poller.close_when_idle()
    assert poller.closed  # the last connection went: the poller closed with it


async def _until(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_reads_in_order_and_eof_closes(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    transport, protocol, theirs = pair
    theirs.sendall(b"hello ")
    theirs.sendall(b"world")
    await _until(lambda: protocol.data == b"hello world", "the bytes")
    theirs.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(protocol.lost, TIMEOUT) is None
    assert protocol.events == ["made", "eof", "lost"]
    assert transport._sock.fileno() == -1  # closed after connection_lost


async def test_write_buffers_pauses_and_resumes(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    transport, protocol, theirs = pair
    chunk = bytes(range(256)) * 256  # 64 KiB
    sent = bytearray()
    for _ in range(64):  # 4 MiB: more than the kernel buffers of both ends take
        transport.write(chunk)
        sent += chunk
        if "pause_writing" in protocol.events:
            break
    assert "pause_writing" in protocol.events
    assert transport.get_write_buffer_size() > HIGH_WATER
    received = bytearray()
    loop = asyncio.get_running_loop()
    while len(received) < len(sent):
        received += await loop.run_in_executor(None, theirs.recv, 1 << 20)
    assert received == sent
    await _until(lambda: transport.get_write_buffer_size() == 0, "the buffer to drain")
    assert protocol.events == ["made", "pause_writing", "resume_writing"]
    assert transport._buffer is None  # no buffer object kept once everything went out


async def test_close_sends_what_waits_then_loses_once(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    transport, protocol, theirs = pair
    payload = b"x" * (4 << 20)
    transport.write(payload)
    transport.close()
    transport.close()
    transport.write(b"after close")  # dropped, as asyncio drops it
    assert transport.is_closing()
    received = bytearray()
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.run_in_executor(None, theirs.recv, 1 << 20)
        if not data:
            break
        received += data
    assert received == payload
    assert await asyncio.wait_for(protocol.lost, TIMEOUT) is None
    assert protocol.events.count("lost") == 1


async def test_abort_drops_the_buffer(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    transport, protocol, _theirs = pair
    transport.write(b"x" * (4 << 20))
    assert transport.get_write_buffer_size() > 0
    transport.abort()
    transport.abort()
    transport.close()
    assert await asyncio.wait_for(protocol.lost, TIMEOUT) is None
    assert protocol.events == ["made", "pause_writing", "lost"]
    assert transport.get_write_buffer_size() == 0


async def test_reset_by_peer_is_connection_lost_with_the_error(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    _transport, protocol, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    theirs.close()  # linger 0: RST
    exc = await asyncio.wait_for(protocol.lost, TIMEOUT)
    assert isinstance(exc, OSError)
    assert protocol.events == ["made", "lost"]


async def test_pause_reading_holds_input_until_resumed(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    transport, protocol, theirs = pair
    transport.pause_reading()
    transport.pause_reading()
    assert not transport.is_reading()
    theirs.sendall(b"held")
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert protocol.data == b""
    transport.resume_reading()
    await _until(lambda: protocol.data == b"held", "the held bytes")


async def test_addresses_are_asked_of_the_socket(
    pair: tuple[SocketTransport, Recorder, socket.socket],
) -> None:
    transport, _protocol, theirs = pair
    assert transport.get_extra_info("peername") == theirs.getsockname()
    assert transport.get_extra_info("sockname") == theirs.getpeername()
    assert transport.get_extra_info("peercert", "none") == "none"
    assert not hasattr(transport, "__dict__")  # slots only: the point of this transport


@pytest.mark.skipif(sys.platform == "win32", reason="selector loop with TCP sockets")
async def test_server_accepts_and_stops() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    server = SocketServer(loop, listener, factory)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    await _until(lambda: made and made[0].transport is not None, "the accepted connection")
    assert made[0].transport is not None
    made[0].transport.write(b"hi")
    assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"hi"
    server.close()
    assert not server.is_serving()
    await server.wait_closed()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    writer.close()  # the accepted connection outlives the server, as asyncio's do
    assert await asyncio.wait_for(made[0].lost, TIMEOUT) is None


async def test_a_poller_batch_brackets_the_handling_of_all_its_ready_sockets() -> None:
    """The poller tells its `Batch` when it starts and ends handling the sockets it found ready
    (what `broker.server.tcp.WriteBatch` sends its writes at): every read of one readiness falls
    between one `begin` and one `end`, also when a protocol raises."""
    log: list[str] = []

    class Batch:
        def begin(self) -> None:
            log.append("begin")

        def end(self) -> None:
            log.append("end")

    class Logging(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            log.append(f"read {self.name}")
            if data == b"boom":
                raise RuntimeError("protocol bug")

    poller = Poller(asyncio.get_running_loop(), Batch())
    sockets = [_tcp_pair(), _tcp_pair()]
    protocols = [Logging(), Logging()]
    transports = []
    for (ours, _theirs), protocol, name in zip(sockets, protocols, "ab", strict=True):
        protocol.name = name  # type: ignore[attr-defined]
        ours.setblocking(False)
        transport = SocketTransport(poller, ours, protocol)
        transport.start()
        transports.append(transport)
    try:
        sockets[0][1].sendall(b"x")
        sockets[1][1].sendall(b"y")
        await asyncio.sleep(0.05)  # both ready before the loop looks
        await _until(lambda: len(log) >= 4, "both reads")
        assert log[0] == "begin" and log[-1] == "end"
        assert sorted(log[1:-1]) == ["read a", "read b"], "one readiness, one batch"
        log.clear()
        sockets[0][1].sendall(b"boom")  # data_received raises: the batch still ends
        await asyncio.wait_for(protocols[0].lost, TIMEOUT)
        assert log[:3] == ["begin", "read a", "end"]
    finally:
        for transport in transports:
            transport.abort()
        for _ours, theirs in sockets:
            theirs.close()
        await asyncio.sleep(0)
        poller.close_when_idle()


async def test_on_the_lean_selector_the_loop_and_the_transports_share_one_epoll() -> None:
    """On a `LeanSelector` loop the poller has no epoll of its own: its sockets are in the
    loop's, served from `select` beside the loop's own readers (both ready in one turn), and
    closing the last connection of a closed listener leaves the loop's epoll open."""
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, LeanSelector):
        pytest.skip("the poller's own epoll on this loop")
    poller = Poller(loop)
    assert poller._epoll is selector.epoll
    ours, theirs = _tcp_pair()
    ours.setblocking(False)
    protocol = Recorder()
    transport = SocketTransport(poller, ours, protocol)
    transport.start()
    fd = ours.fileno()
    assert selector.transports[fd] is transport
    other_ours, other_theirs = _tcp_pair()
    other_ours.setblocking(False)
    loop_reads: list[bytes] = []
    loop.add_reader(other_ours.fileno(), lambda: loop_reads.append(other_ours.recv(100)))
    try:
        theirs.sendall(b"lean")
        other_theirs.sendall(b"loop")
        await asyncio.sleep(0.05)  # both ready before the loop looks
        await _until(lambda: bytes(protocol.data) == b"lean" and loop_reads == [b"loop"], "reads")
        transport.write(b"back")
        assert theirs.recv(100) == b"back"
    finally:
        loop.remove_reader(other_ours.fileno())
        other_ours.close()
        other_theirs.close()
        theirs.close()
    await asyncio.wait_for(protocol.lost, TIMEOUT)
    poller.close_when_idle()
    assert poller.closed
    assert fd not in selector.transports
    assert not selector.epoll.closed and selector.open
