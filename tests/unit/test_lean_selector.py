"""`LeanSelector.select` waits again itself after a wake-up that found only lean sockets, but
only while the loop's next turn would do nothing but wait: a `call_soon` or a due timer from a
read, or `loop.stop()`, still get their turn at once. Each test runs its own loop (what
`minibroker start --loop asyncio` makes: `new_event_loop`) with a lean transport on one end of a
socket pair, fed from a thread; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from broker.server.lean_selector import LeanSelector, new_event_loop
from broker.server.socket_transport import Poller, SocketTransport

TIMEOUT = 5.0


class Reader(asyncio.Protocol):
    """Counts the bytes read and calls `on_read` with each read."""

    def __init__(self, on_read: Callable[[bytes], object] | None = None) -> None:
        self.data = bytearray()
        self.on_read = on_read

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.on_read is not None:
            self.on_read(data)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = new_event_loop()
    assert isinstance(getattr(loop, "_selector", None), LeanSelector)
    yield loop
    loop.close()


def _serve(
    loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol
) -> tuple[SocketTransport, socket.socket, Poller]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(TIMEOUT)
    poller = Poller(loop)
    transport = SocketTransport(poller, ours, protocol)
    transport.start()
    return transport, theirs, poller


class Sender(threading.Thread):
    """Sends up to `count` single bytes `gap` seconds apart, until `stop`."""

    def __init__(self, theirs: socket.socket, count: int, gap: float) -> None:
        super().__init__(daemon=True)
        self.theirs = theirs
        self.count = count
        self.gap = gap
        self.sent = 0
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while self.sent < self.count and not self.stopping.wait(self.gap):
            self.theirs.sendall(b"m")
            self.sent += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(TIMEOUT)


def _turns(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Counts the loop's turns (each `select` that returned: `_process_events` follows it)."""
    count = [0]
    process = loop._process_events  # type: ignore[attr-defined]

    def counting(event_list: list[object]) -> None:
        count[0] += 1
        process(event_list)

    loop._process_events = counting  # type: ignore[attr-defined]
    return count


def _close(
    loop: asyncio.AbstractEventLoop, transport: SocketTransport, theirs: socket.socket
) -> None:
    transport.abort()
    theirs.close()
    loop.run_until_complete(asyncio.sleep(0.01))


def test_lone_reads_do_not_each_cost_a_loop_turn(loop: asyncio.AbstractEventLoop) -> None:
    """20 reads that arrive one at a time, with nothing else for the loop to do, are served
    inside `select`: the loop turns a few times, not once per read."""
    done = loop.create_future()

    def on_read(_data: bytes) -> None:
        if len(protocol.data) >= 20 and not done.done():
            done.set_result(None)

    protocol = Reader(on_read)
    transport, theirs, _poller = _serve(loop, protocol)
    turns = _turns(loop)
    sender = Sender(theirs, 20, 0.002)
    loop.run_until_complete(asyncio.wait_for(done, TIMEOUT))
    sender.stop()
    assert bytes(protocol.data) == b"m" * 20
    assert turns[0] < 10, f"{turns[0]} loop turns for 20 lone reads"
    _close(loop, transport, theirs)


def test_a_call_soon_from_a_read_runs_before_the_next_read(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """What a read schedules with `call_soon` runs in that turn: `select` returns for it
    instead of waiting for more reads (none come here until the callback has run)."""
    seen: list[int] = []
    ran = loop.create_future()

    def callback() -> None:
        seen.append(len(protocol.data))
        if not ran.done():
            ran.set_result(None)

    def on_read(_data: bytes) -> None:
        loop.call_soon(callback)

    protocol = Reader(on_read)
    transport, theirs, _poller = _serve(loop, protocol)
    loop.call_later(0.01, theirs.sendall, b"a")  # while the loop waits in `select`
    with _wake_later(theirs):
        loop.run_until_complete(asyncio.wait_for(ran, TIMEOUT * 2))
    assert seen == [1]
    assert bytes(protocol.data) == b"a"
    _close(loop, transport, theirs)


def test_a_timer_runs_while_lone_reads_keep_coming(loop: asyncio.AbstractEventLoop) -> None:
    """A timer falls due while reads keep the loop's epoll busy: `select` returns for it (it
    runs while the reads still come), also when a read scheduled it."""
    fired: list[int] = []

    def fire() -> None:
        fired.append(len(protocol.data))

    def on_read(_data: bytes) -> None:
        if len(protocol.data) == 1:
            loop.call_later(0.02, fire)

    protocol = Reader(on_read)
    transport, theirs, _poller = _serve(loop, protocol)
    loop.call_later(0.03, fire)
    sender = Sender(theirs, 100, 0.002)  # at least 0.2 s of lone reads
    loop.run_until_complete(asyncio.sleep(0.15))
    sender.stop()
    assert len(fired) == 2
    assert all(count < 100 for count in fired), f"the timers waited for the reads: {fired}"
    _close(loop, transport, theirs)


def test_a_timer_after_a_lone_read_runs_on_time(loop: asyncio.AbstractEventLoop) -> None:
    """One read, then nothing: `select` waits no longer than the loop's first timer."""
    transport, theirs, _poller = _serve(loop, Reader())
    protocol = transport.get_protocol()
    assert isinstance(protocol, Reader)
    loop.call_later(0.01, theirs.sendall, b"a")
    with _wake_later(theirs):
        loop.run_until_complete(asyncio.sleep(0.1))
    assert bytes(protocol.data) == b"a", "the sleep's timer waited for another read"
    _close(loop, transport, theirs)


@contextlib.contextmanager
def _wake_later(theirs: socket.socket) -> Iterator[None]:
    """Sends b"b" after `TIMEOUT` unless done by then: what a loop stuck in `select` would
    need to go on (the test then sees the b"b" it should not have read)."""
    later = threading.Timer(TIMEOUT, lambda: theirs.sendall(b"b"))
    later.start()
    try:
        yield
    finally:
        later.cancel()
        later.join(TIMEOUT)


def test_stop_from_a_read_ends_run_forever_without_another_wake_up(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """`loop.stop()` in a read: `run_forever` returns, without waiting for the next read."""
    protocol = Reader(lambda _: loop.stop())
    transport, theirs, _poller = _serve(loop, protocol)
    loop.call_later(0.01, theirs.sendall, b"a")  # while the loop waits in `select`
    with _wake_later(theirs):
        loop.run_forever()
    assert bytes(protocol.data) == b"a"
    _close(loop, transport, theirs)


class SelectSpy:
    """Records the timeouts `select.select` is called with (as `lean_selector` calls it)."""

    def __init__(self, real: Callable[..., object]) -> None:
        self.real = real
        self.timeouts: list[float | None] = []

    def __call__(self, r: object, w: object, x: object, timeout: float | None = None) -> object:
        self.timeouts.append(timeout)
        return self.real(r, w, x, timeout)


def test_a_wait_is_kept_to_the_microsecond_not_epolls_millisecond(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part of a wait under 1 ms (a timer due before epoll's next millisecond) goes to
    `select.select` on the epoll's descriptor, not to `epoll.poll`, which would round it up to
    1 ms (at 1,000 msg/s: to the next message's arrival, README "Latency of a lone message");
    the whole milliseconds stay with epoll, and what is ready is still found."""
    transport, theirs, _poller = _serve(loop, Reader())
    selector = loop._selector  # type: ignore[attr-defined]
    assert isinstance(selector, LeanSelector)
    spy = SelectSpy(select.select)
    monkeypatch.setattr(select, "select", spy)
    assert selector._poll(0.0004, 8) == []  # nothing ready: waited 0.4 ms in `select.select`
    assert selector._poll(0.0025, 8) == []  # 2 ms in epoll, then 0.5 ms
    assert selector._poll(0.002, 8) == []  # whole milliseconds: epoll's own wait only
    assert len(spy.timeouts) == 2
    assert spy.timeouts[0] == 0.0004 and abs((spy.timeouts[1] or 0) - 0.0005) < 1e-9
    theirs.sendall(b"a")
    fd = transport.get_extra_info("socket").fileno()
    events = selector._poll(0.0004, 8)
    assert [f for f, _ in events] == [fd]
    assert selector._poll(0.0025, 8) == events  # (still unread) found by epoll at once
    assert selector._poll(0.0, 8) == events
    assert len(spy.timeouts) == 3
    monkeypatch.undo()
    _close(loop, transport, theirs)
