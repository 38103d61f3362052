"""A lean transport for plain TCP on asyncio's own (selector) event loop or uvloop's, on Linux.

Why: on the standard loop an idle MQTT connection cost about 1,900 bytes in asyncio alone:
`_SelectorSocketTransport` with its instance dict, its `_extra` dict (a `TransportSocket`, the
peer and local addresses as tuples of fresh strings), a bound method kept for reading, an empty
write bytearray, a weak reference in the loop's transport registry, and the loop's reader
registration (a Handle, its Context, the callback's arguments, a selector key, an entry in the
selector's map). Here a connection is its socket and a `SocketTransport` with a few slots; the
write buffer exists only while bytes wait, the addresses are asked of the socket when someone
wants them, and readiness comes from one epoll per listener (`Poller`) that the loop watches as
a single descriptor: a connection costs that epoll one dict entry, not five loop objects.

Theory of operation
-------------------
`SocketServer` watches the listening socket with `loop.add_reader` and accepts up to `BACKLOG`
connections per readiness, as asyncio's server does; out of descriptors (EMFILE/ENFILE, ...) it
reports to the loop's exception handler with the listening socket in the context (what
`broker.server.node.AcceptErrors` counts), stops watching and retries after
`ACCEPT_RETRY_DELAY`, also as asyncio does. Each accepted socket gets a `SocketTransport`; the
protocol's `connection_made` runs at once, then reading starts (unless it closed already).

`Poller` is level-triggered like asyncio's selector: a socket is registered for reading while
it is read, for writing while bytes wait, and not at all otherwise (an error or hang-up is
reported to whichever side is registered, as the selector does). When the loop finds the
poller's epoll readable it takes up to `MAX_EVENTS` ready sockets and calls their transports;
more stay ready for the next loop turn. Callbacks these make with `call_soon` run in the next
turn, as with the loop's own readers. A `Batch` given to the server is told when the handling of
the ready sockets begins and ends (the MQTT connections send what their reads routed at its end).

Reading: one `recv(MAX_READ)` per readiness, the bytes to `data_received`; an empty read is EOF
(`eof_received`, then close unless it returns true). Writing: `write` sends at once when nothing
waits; what the kernel does not take waits in a bytearray and is sent when the socket is
writable. Above `HIGH_WATER` buffered bytes the protocol's `pause_writing` is called, at or
below `LOW_WATER` `resume_writing` (asyncio's defaults). `close` stops reading and closes once
the buffer is sent; `abort` and any socket error close at once. Either way the protocol's
`connection_lost` is called once, in a later loop turn, and then the socket closes.

It serves on asyncio's selector loop and on uvloop's alike (the poller's epoll is one reader to
either). TLS and systems without epoll keep the loop's own transports (`broker.server.node`
chooses: `available`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
from asyncio.trsock import TransportSocket
from typing import Any

from broker.server.lean_selector import Batch, LeanSelector

__all__ = [
    "HIGH_WATER",
    "LOW_WATER",
    "MAX_READ",
    "Batch",
    "LeanSelector",
    "Poller",
    "SocketServer",
    "SocketTransport",
    "available",
]

#: Bytes read per readiness, as asyncio's socket transport.
MAX_READ = 256 * 1024
#: Write-buffer limits for `pause_writing`/`resume_writing`: asyncio's defaults.
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
#: Connections accepted per readiness of the listening socket (asyncio's `backlog` default).
BACKLOG = 100
#: Ready sockets handled per readiness of a poller; the rest in the next loop turn.
MAX_EVENTS = 1024
#: Seconds before accepting again after running out of descriptors (asyncio's constant).
ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# `SocketTransport._state` bits.
_READING = 1  # wants readiness for reading
_CLOSING = 2  # close() or abort(): no more reading; the socket closes once the buffer is sent
_LOST = 4  # connection_lost is scheduled or done
_WRITE_PAUSED = 8  # the protocol was told to pause writing

if hasattr(select, "epoll"):
    _IN = select.EPOLLIN
    _OUT = select.EPOLLOUT
    # An error or hang-up wakes whichever side is registered, as asyncio's selector does.
    _READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
    _WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


def available(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this transport can serve on `loop`: asyncio's selector loop or uvloop's, on a
    system with epoll (Linux). Elsewhere the loop's own transport is used.

    It needs of the loop only `add_reader` for two descriptors (the listener and the poller's
    epoll) and `call_soon`/`call_later`, which uvloop has as well. On uvloop it holds an idle
    connection in about 900 B less than uvloop's `TCPTransport` and its libuv handle, and a
    lone message's path costs about as much as uvloop's C read path (issue 15, README).
    """
    if not hasattr(select, "epoll"):
        return False
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return True
    return type(loop).__module__.split(".", 1)[0] == "uvloop"


class _Detached:
    """The batch of a poller detached from its `LeanSelector` (closed)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


_DETACHED = _Detached()


class Poller:
    """One epoll for the connections of a listener, watched by the loop as one descriptor."""

    __slots__ = ("_batch", "_closing", "_epoll", "_live", "_loop", "_selector", "_transports")

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: Batch | None = None) -> None:
        self._loop = loop
        self._batch = batch
        #: Transports started and not lost yet (registered or not).
        self._live = 0
        self._closing = False
        selector = getattr(loop, "_selector", None)
        if isinstance(selector, LeanSelector) and selector.open:
            # The loop's own epoll: its `select` hands these sockets' readiness to them.
            self._selector: LeanSelector | None = selector
            self._epoll = selector.epoll
            #: fd -> transport, for the sockets registered now (reading or writing).
            self._transports: dict[int, SocketTransport] = selector.transports  # type: ignore[assignment]
            selector.attach(loop, batch)
            return
        self._selector = None
        self._epoll = select.epoll()
        self._transports = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def update(self, transport: SocketTransport) -> None:
        """Register `transport`'s socket for what it waits for now: reading, writing, both or
        neither (then it is not registered at all, so a hang-up cannot wake it)."""
        mask = (_IN if transport._state & _READING else 0) | (
            _OUT if transport._buffer is not None else 0
        )
        fd = transport._fd
        transports = self._transports
        if transports.get(fd) is transport:
            if mask:
                self._epoll.modify(fd, mask)
            else:
                del transports[fd]
                self._epoll.unregister(fd)
        elif mask:
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:  # a closed socket's leftover with the same number
                self._epoll.modify(fd, mask)
            transports[fd] = transport

    def forget(self, transport: SocketTransport) -> None:
        """`transport` is lost: unregister it (before its socket closes)."""
        fd = transport._fd
        if self._transports.get(fd) is transport:
            del self._transports[fd]
            with contextlib.suppress(OSError):  # closed meanwhile: the kernel dropped it
                self._epoll.unregister(fd)
        self._live -= 1
        if self._closing and not self._live:
            self._close()

    def _ready(self) -> None:
        try:
            events = self._epoll.poll(0, MAX_EVENTS)
        except InterruptedError:
            return
        batch = self._batch
        if batch is not None:
            batch.begin()
        try:
            transports = self._transports
            for fd, event in events:
                transport = transports.get(fd)
                if transport is None:
                    continue
                if event & _READ_EVENTS and transport._state & _READING:
                    transport.read_ready()
                if event & _WRITE_EVENTS and transport._buffer is not None:
                    transport.write_ready()
        finally:
            if batch is not None:
                batch.end()

    @property
    def closed(self) -> bool:
        """Closed: its epoll, or (on a `LeanSelector`) its place in the loop's."""
        if self._selector is not None:
            return self._batch is _DETACHED
        return self._epoll.closed

    def close_when_idle(self) -> None:
        """The listener closed: close this epoll once its last connection is gone."""
        self._closing = True
        if not self._live:
            self._close()

    def _close(self) -> None:
        selector = self._selector
        if selector is not None:  # the loop's epoll: not ours to close
            if self._batch is not _DETACHED:
                selector.detach(self._batch)
                self._batch = _DETACHED
            return
        if self._epoll.closed:
            return
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()


class SocketTransport(asyncio.Transport):
    """One accepted TCP socket. See the module docstring."""

    __slots__ = ("_buffer", "_fd", "_poller", "_protocol", "_sock", "_state")

    def __init__(self, poller: Poller, sock: socket.socket, protocol: asyncio.Protocol) -> None:
        self._poller = poller
        self._sock = sock
        #: The number the poller knows it by (one int object for both).
        self._fd = sock.fileno()
        self._protocol = protocol
        #: Bytes the kernel has not taken yet; None when nothing waits.
        self._buffer: bytearray | None = None
        self._state = 0

    def start(self) -> None:
        """Hand the connection to its protocol, then start reading."""
        self._poller._live += 1
        self._protocol.connection_made(self)
        if not self._state & _CLOSING:
            self._state |= _READING
            self._poller.update(self)

    def ready(self, event: int) -> None:
        """The socket is ready for `event` (epoll's mask): what `LeanSelector` calls."""
        if event & _READ_EVENTS and self._state & _READING and not self._state & _CLOSING:
            # `read_ready`, written out: this runs once per message at a low rate.
            try:
                data = self._sock.recv(MAX_READ)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self._fatal_error(exc, "read error")
                data = None
            if data is not None:
                if not data:
                    self._eof()
                else:
                    try:
                        self._protocol.data_received(data)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._fatal_error(exc, "protocol.data_received() failed")
        if event & _WRITE_EVENTS and self._buffer is not None:
            self.write_ready()

    # -- reading ----------------------------------------------------------------------------

    def read_ready(self) -> None:
        if self._state & _CLOSING:
            return
        try:
            data = self._sock.recv(MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "read error")
            return
        if not data:
            self._eof()
            return
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "protocol.data_received() failed")

    def _eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "protocol.eof_received() failed")
            return
        if keep_open:
            self._stop_reading()
        else:
            self.close()

    def _stop_reading(self) -> None:
        if self._state & _READING:
            self._state &= ~_READING
            self._poller.update(self)

    def pause_reading(self) -> None:
        if not self._state & _CLOSING:
            self._stop_reading()

    def resume_reading(self) -> None:
        if self._state & (_CLOSING | _READING):
            return
        self._state |= _READING
        self._poller.update(self)

    def is_reading(self) -> bool:
        return bool(self._state & _READING)

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state & (_CLOSING | _LOST) or not data:
            return  # asyncio also drops writes after close (it warns after a few)
        buffer = self._buffer
        if buffer is not None:
            buffer += data
        else:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal_error(exc, "write error")
                return
            if sent == len(data):
                return
            self._buffer = bytearray(memoryview(data)[sent:])
            self._poller.update(self)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_ready(self) -> None:
        buffer = self._buffer
        if buffer is None:
            return
        try:
            sent = self._sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "write error")
            return
        del buffer[:sent]
        if buffer:
            self._maybe_resume_protocol()
            return
        self._buffer = None
        self._poller.update(self)
        self._maybe_resume_protocol()
        if self._state & _CLOSING and not self._state & _LOST:
            self._state |= _LOST
            self._poller._loop.call_soon(self._connection_lost, None)

    def get_write_buffer_size(self) -> int:
        buffer = self._buffer
        return 0 if buffer is None else len(buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (LOW_WATER, HIGH_WATER)

    def can_write_eof(self) -> bool:
        return False

    def _maybe_pause_protocol(self) -> None:
        if self._state & _WRITE_PAUSED or self.get_write_buffer_size() <= HIGH_WATER:
            return
        self._state |= _WRITE_PAUSED
        self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._state & _WRITE_PAUSED and self.get_write_buffer_size() <= LOW_WATER:
            self._state &= ~_WRITE_PAUSED
            self._call_protocol("resume_writing")

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._poller._loop.call_exception_handler(
                {
                    "message": f"protocol.{name}() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    # -- closing ----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return bool(self._state & _CLOSING)

    def close(self) -> None:
        if self._state & _CLOSING:
            return
        self._stop_reading()
        self._state |= _CLOSING
        if self._buffer is None and not self._state & _LOST:
            self._state |= _LOST
            self._poller._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):  # a socket error is the peer's doing: no report
            self._poller._loop.call_exception_handler(
                {
                    "message": f"Fatal error on transport: {message}",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._state & _LOST:
            return
        self._buffer = None
        self._state = (self._state | _CLOSING | _LOST) & ~_READING
        self._poller.update(self)
        self._poller._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        finally:
            self._poller.forget(self)
            self._sock.close()

    # -- information ------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """`peername`, `sockname` and `socket`, asked of the socket when wanted (not stored)."""
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return TransportSocket(self._sock)
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]


class SocketServer(asyncio.AbstractServer):
    """Accepts connections on one listening socket into `SocketTransport`s."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Any,
        batch: Batch | None = None,
    ) -> None:
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._factory = protocol_factory
        self._poller = Poller(loop, batch)
        self._retry: asyncio.TimerHandle | None = None
        #: TCP_NODELAY for each accepted socket (asked once: `socket.family` builds an enum).
        self._nodelay = sock.family in (socket.AF_INET, socket.AF_INET6)
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[TransportSocket, ...]:
        return () if self._sock is None else (TransportSocket(self._sock),)

    def _accept(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(BACKLOG):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # the loop logs it, as it does for asyncio's own server
                self._loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": TransportSocket(sock),
                    }
                )
                self._loop.remove_reader(sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            if self._nodelay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = SocketTransport(self._poller, conn, self._factory())
        except OSError:  # the peer went away meanwhile
            conn.close()
            return
        try:
            transport.start()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # reported as asyncio reports a failed connection set-up
            self._loop.call_exception_handler(
                {"message": "connection set-up failed", "exception": exc, "transport": transport}
            )
            transport.abort()

    def _resume(self) -> None:
        self._retry = None
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections stay (as asyncio's), and
        their poller closes after the last of them."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        self._poller.close_when_idle()

    def is_serving(self) -> bool:
        return self._sock is not None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        return None  # serving since creation

    async def serve_forever(self) -> None:
        raise NotImplementedError("SocketServer serves from creation until close()")

    async def wait_closed(self) -> None:
        return None
