"""The lean transports' sockets in asyncio's own epoll: one `epoll_wait` per wake-up.

`broker.server.socket_transport` gives each listener a `Poller`: an epoll of its own that the
loop watches as one descriptor. On asyncio's selector loop that costs every wake-up for a socket
two `epoll_wait`s and a `Handle`. A loop made by `new_event_loop` (what `minibroker start --loop
asyncio` runs) has a `LeanSelector` instead of asyncio's `EpollSelector`; a `Poller` on such a
loop registers its sockets in the loop's epoll, and the selector hands their readiness to them
from `select`. uvloop and other loops keep the poller's own epoll.

Only the protocol the transports offer (`Lean.ready`) is known here: this module imports
nothing of the transport's.
"""

from __future__ import annotations

import asyncio
import select
import selectors
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["MAX_LEAN_EVENTS", "Batch", "Lean", "LeanSelector", "new_event_loop"]

#: Lean sockets handled per `epoll_wait` at most (more stay ready for the next one).
MAX_LEAN_EVENTS = 1024
#: The longest wait of asyncio's loop (`asyncio.base_events.MAXIMUM_SELECT_TIMEOUT`).
MAXIMUM_SELECT_TIMEOUT = 24 * 3600
#: `select.select` takes descriptors below this only (glibc's FD_SETSIZE).
_FD_SETSIZE = 1024
#: What `_base_loop` needs of asyncio's loop to tell that a turn of it would do nothing.
_LOOP_STATE = ("_ready", "_scheduled", "_stopping", "_clock_resolution")


class Lean(Protocol):
    """A lean transport as the selector sees it."""

    def ready(self, event: int) -> None:
        """Its socket is ready for `event` (epoll's mask)."""


class Batch(Protocol):
    """Told when a poller starts and ends handling its ready sockets, so that what the reads
    caused (writes to other connections) can be done once at the end of all of them, in this
    loop turn (`broker.server.tcp.WriteBatch`)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


class LeanSelector(selectors.EpollSelector):
    """asyncio's epoll selector that also serves the lean transports of the loop it is given to
    (`new_event_loop`): their sockets are registered in the loop's own epoll, and `select` hands
    their readiness straight to them, between a `begin` and an `end` of the pollers' batches.

    Why: with a `Poller` of its own, each wake-up for a socket cost the loop's `epoll_wait`, a
    `Handle` for the poller's callback and the poller's second `epoll_wait` (README "Latency of
    a lone message"). Here one `epoll_wait` finds the socket and its transport reads at once.
    Memory per connection is the same (one entry of `transports`, as in a poller's own dict).

    The transports' reads run inside `select`, before the loop runs the turn's callbacks (what
    they `call_soon` runs in this turn, not the next); an error escaping a transport goes to the
    loop's exception handler, as a failing callback's does. A socket is looked up among the
    transports first: a transport unregisters its socket before it closes (`Poller.forget`), so
    a number in `transports` is never the loop's.

    When a wake-up found only lean sockets, `select` waits again itself instead of returning,
    as long as the loop's next turn would do nothing but wait: no callback ready, not stopping,
    and its first timer (not cancelled) not due; it then waits as long as that turn would. What
    the reads scheduled (a `call_soon`, an earlier timer) makes it return. Why: at a low rate
    each message paid for the loop's empty turn around `select` (its timer bookkeeping, clock
    reads and timeout arithmetic): about 4-6 us of CPU per message, cold (README "Latency of a
    lone message", round four)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoll: select.epoll = self._selector  # type: ignore[attr-defined]
        #: The epoll's descriptor, for `select.select` (`_poll`), or -1 where it cannot take it.
        fd = self.epoll.fileno()
        self._epoll_fd = fd if fd < _FD_SETSIZE else -1
        self._keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]
        #: fd -> transport, for the lean sockets registered now (shared by the pollers).
        self.transports: dict[int, Lean] = {}
        self.open = True
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The loop again, when `select` may look at its state (`_base_loop`), else None.
        self._base: Any = None
        #: The loop's clock: `time.monotonic` itself unless its `time` is another.
        self._clock: Callable[[], float] = time.monotonic
        self._attached: list[Batch | None] = []
        #: The distinct batches of the attached pollers.
        self._batches: list[Batch] = []

    def attach(self, loop: asyncio.AbstractEventLoop, batch: Batch | None) -> None:
        """A poller of `loop` serves its transports through this selector."""
        self._loop = loop
        self._base = _base_loop(loop)
        self._clock = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self._attached.append(batch)
        self._batches = _distinct(self._attached)

    def detach(self, batch: Batch | None) -> None:
        self._attached.remove(batch)
        self._batches = _distinct(self._attached)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        transports = self.transports
        if not transports:
            return super().select(timeout)
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:  # at least `timeout` (`_poll`: to the microsecond, not epoll's rounded ms)
            wait = timeout
        keys = self._keys
        while True:
            try:
                events = self._poll(wait, len(keys) + MAX_LEAN_EVENTS)
            except InterruptedError:
                return []
            if not events:
                return []
            if len(events) == 1 and events[0][0] in transports:
                ready: list[tuple[selectors.SelectorKey, int]] = []
                lean = events  # one lean socket (a lone message): served without sorting
            else:
                ready, lean = self._sort(events)
                if not lean:
                    return ready
            # Hand each socket its readiness, as `Poller._ready` does, in one batch (here, not
            # in a method of its own: this runs once per message at a low rate).
            batches = self._batches
            for batch in batches:
                batch.begin()
            try:
                for fd, event in lean:
                    transport = transports.get(fd)  # (a read before may have closed it)
                    if transport is None:
                        continue
                    try:
                        transport.ready(event)
                    except Exception as exc:  # as the loop reports a callback's error
                        self._report(exc, transport)
            finally:
                for batch in batches:
                    try:
                        batch.end()
                    except Exception as exc:
                        self._report(exc, None)
            if ready or not wait:
                return ready
            # Only lean sockets were ready: wait again here while the loop's next turn would
            # only wait (class docstring), as long as it would.
            loop = self._base
            if loop is None or loop._ready or loop._stopping:
                return ready
            scheduled = loop._scheduled
            if scheduled:
                head = scheduled[0]
                if head._cancelled:
                    return ready  # the loop's turn drops it
                left = head._when - self._clock()
                if left < loop._clock_resolution:
                    return ready  # due: the loop's turn runs it
                wait = left if left < MAXIMUM_SELECT_TIMEOUT else MAXIMUM_SELECT_TIMEOUT
            else:
                wait = -1.0
            if not transports:
                return ready

    def _poll(self, wait: float, most: int) -> list[tuple[int, int]]:
        """`epoll.poll(wait, most)`, but kept to the microsecond: epoll waits the whole
        milliseconds of `wait`, and the rest (under 1 ms) is waited by `select.select` on the
        epoll's own descriptor, then `epoll.poll(0)`.

        Why: epoll rounds a wait up to whole milliseconds, so a timer due 0.3 ms after a
        wake-up fired 1 ms after it; at 1,000 msg/s that is when the next message arrives,
        and the timer's work (housekeeping, membership: 0.1-0.3 ms) then ran right after that
        message's send, on the core its subscriber's client may be waiting for: nearly every
        timer delayed a message by its whole length (README "Latency of a lone message", the
        p99). On time, it lands between messages."""
        fd = self._epoll_fd
        if wait <= 0.0 or fd < 0:
            return self.epoll.poll(wait, most)
        whole = int(wait * 1e3) * 1e-3
        if whole:
            events = self.epoll.poll(whole, most)
            if events:
                return events
        rest = wait - whole
        if rest <= 0.0:
            return []
        readable, _, _ = select.select((fd,), (), (), rest)
        return self.epoll.poll(0.0, most) if readable else []

    def _sort(
        self, events: list[tuple[int, int]]
    ) -> tuple[list[tuple[selectors.SelectorKey, int]], list[tuple[int, int]]]:
        """The loop's ready keys with their masks (as asyncio's `select` returns them) and the
        lean sockets' events, in the order found."""
        transports = self.transports
        keys = self._keys
        ready: list[tuple[selectors.SelectorKey, int]] = []
        lean: list[tuple[int, int]] = []
        for fd, event in events:
            if fd in transports:
                lean.append((fd, event))
                continue
            key = keys.get(fd)
            if key is not None:
                mask = (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0) | (
                    selectors.EVENT_READ if event & ~select.EPOLLOUT else 0
                )
                ready.append((key, mask & key.events))
        return ready, lean

    def _report(self, exc: Exception, transport: Lean | None) -> None:
        if self._loop is not None:
            self._loop.call_exception_handler(
                {"message": "lean transport failed", "exception": exc, "transport": transport}
            )

    def close(self) -> None:
        self.open = False
        super().close()


def _base_loop(loop: asyncio.AbstractEventLoop) -> Any:
    """`loop` if it is asyncio's own (`BaseEventLoop`, with the state `select` reads to tell
    that the loop's next turn would only wait again), else None: then `select` returns after
    every wake-up, as asyncio's selector does."""
    if isinstance(loop, asyncio.BaseEventLoop) and all(hasattr(loop, n) for n in _LOOP_STATE):
        return loop
    return None


def _distinct(batches: list[Batch | None]) -> list[Batch]:
    out: list[Batch] = []
    for batch in batches:
        if batch is not None and not any(batch is seen for seen in out):
            out.append(batch)
    return out


def new_event_loop() -> asyncio.AbstractEventLoop:
    """asyncio's own loop, on a `LeanSelector` where epoll exists (what `minibroker start
    --loop asyncio` runs); elsewhere `asyncio.new_event_loop()`."""
    if not hasattr(select, "epoll"):
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(LeanSelector())
