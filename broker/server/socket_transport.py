"""A lean transport for plain TCP on asyncio's own (selector) event loop.

Why: on the standard loop an idle MQTT connection cost about 1,500 bytes in asyncio alone:
`_SelectorSocketTransport` with its instance dict, its `_extra` dict (a `TransportSocket`, the
peer and local addresses as tuples of fresh strings), a bound method kept for reading, an empty
write bytearray, and a weak reference in the loop's transport registry. This transport keeps
the socket, the protocol and a write buffer that exists only while bytes wait, in slots; the
addresses are asked of the socket when someone wants them. What is left per connection is the
loop's own reader registration (`loop.add_reader`: a Handle, its Context, a selector key).

Theory of operation
-------------------
`SocketServer` watches the listening socket with `loop.add_reader` and accepts up to `BACKLOG`
connections per readiness, as asyncio's server does; out of descriptors (EMFILE/ENFILE, ...) it
reports to the loop's exception handler with the listening socket in the context (what
`broker.server.node.AcceptErrors` counts), stops watching and retries after
`ACCEPT_RETRY_DELAY`, also as asyncio does. Each accepted socket gets a `SocketTransport`; the
protocol's `connection_made` runs at once, then reading starts (unless it closed already).

Reading: one `recv(MAX_READ)` per readiness, the bytes to `data_received`; an empty read is EOF
(`eof_received`, then close unless it returns true). Writing: `write` sends at once when nothing
waits; what the kernel does not take waits in a bytearray and is sent when the socket is
writable (`loop.add_writer`). Above `HIGH_WATER` buffered bytes the protocol's `pause_writing`
is called, at or below `LOW_WATER` `resume_writing` (asyncio's defaults). `close` stops reading
and closes once the buffer is sent; `abort` and any socket error close at once. Either way the
protocol's `connection_lost` is called once, in a later loop turn, and then the socket closes.

TLS and uvloop keep their own transports (`broker.server.node` chooses).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from asyncio.trsock import TransportSocket
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["HIGH_WATER", "LOW_WATER", "MAX_READ", "SocketServer", "SocketTransport"]

#: Bytes read per readiness, as asyncio's socket transport.
MAX_READ = 256 * 1024
#: Write-buffer limits for `pause_writing`/`resume_writing`: asyncio's defaults.
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
#: Connections accepted per readiness of the listening socket (asyncio's `backlog` default).
BACKLOG = 100
#: Seconds before accepting again after running out of descriptors (asyncio's constant).
ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# `SocketTransport._state` bits.
_READING = 1  # registered with the loop for reading
_CLOSING = 2  # close() or abort(): no more reading; the socket closes once the buffer is sent
_LOST = 4  # connection_lost is scheduled or done
_WRITE_PAUSED = 8  # the protocol was told to pause writing


def _read_ready(transport: SocketTransport) -> None:
    """The loop's reader callback: a plain function with the transport as its argument, so no
    bound method is kept per connection."""
    transport.read_ready()


def _write_ready(transport: SocketTransport) -> None:
    transport.write_ready()


class SocketTransport(asyncio.Transport):
    """One accepted TCP socket. See the module docstring."""

    __slots__ = ("_buffer", "_fd", "_loop", "_protocol", "_sock", "_state")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        #: Bytes the kernel has not taken yet; None when nothing waits.
        self._buffer: bytearray | None = None
        self._state = 0

    def start(self) -> None:
        """Hand the connection to its protocol, then start reading."""
        self._protocol.connection_made(self)
        if not self._state & _CLOSING:
            self._state |= _READING
            self._loop.add_reader(self._fd, _read_ready, self)

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
            self._loop.remove_reader(self._fd)

    def pause_reading(self) -> None:
        if not self._state & _CLOSING:
            self._stop_reading()

    def resume_reading(self) -> None:
        if self._state & (_CLOSING | _READING):
            return
        self._state |= _READING
        self._loop.add_reader(self._fd, _read_ready, self)

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
            self._loop.add_writer(self._fd, _write_ready, self)
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
        self._loop.remove_writer(self._fd)
        self._maybe_resume_protocol()
        if self._state & _CLOSING and not self._state & _LOST:
            self._state |= _LOST
            self._loop.call_soon(self._connection_lost, None)

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
            self._loop.call_exception_handler(
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
            self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):  # a socket error is the peer's doing: no report
            self._loop.call_exception_handler(
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
        if self._buffer is not None:
            self._buffer = None
            self._loop.remove_writer(self._fd)
        self._stop_reading()
        self._state |= _CLOSING | _LOST
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        finally:
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
    ) -> None:
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._factory = protocol_factory
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
            transport = SocketTransport(self._loop, conn, self._factory())
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
        """Stop accepting and close the listening socket; connections stay (as asyncio's)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._loop.remove_reader(sock.fileno())
        sock.close()

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
