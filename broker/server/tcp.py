"""MQTT over TCP (and TLS): an `asyncio.Protocol` per connection that drives a `Channel`.

A connection's first write in a read (or in the lean transport's batch of ready sockets) is sent
at once; its later writes there are batched into one transport write, sent when what caused them
is done (`WriteBatch`: the end of the read or batch), and writes made outside a read at the end of
the loop turn. A connection that
has read `READ_BUDGET` bytes sits out one loop turn, so a flooding client cannot starve the
others' writes. Backpressure: when the kernel buffer fills, asyncio calls `pause_writing`; we
then stop reading from that client too, so a client that does not read cannot make us buffer
its acks and replies without bound. Deliveries to such a client are capped by the channel
(`max_outgoing_buffer`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from broker.core.channel import Channel
from broker.core.lone_publish import publish_lone
from broker.core.states import CONNECTED
from broker.server.tls import cert_common_name

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.server.listeners import ListenerStats

log = logging.getLogger(__name__)

#: Bytes read from one connection before it yields to the others until the next loop turn.
#: uvloop (libuv) reads a readable socket up to 32 times in a row and runs queued writes only
#: after all reads of the turn, so without a budget ten flooding publishers starved the writes
#: to their subscriber (fan-in: the subscriber's kernel buffer sat empty while 100+ MB waited
#: in its transport). asyncio reads 256 KiB per socket per turn; this keeps uvloop close to that.
READ_BUDGET = 64 * 1024

# Why reading is paused (bits of `MqttConnection._paused`); it resumes when none is left.
_WRITE_FULL = 1  # the client does not read what we send (`pause_writing`)
_TURN = 2  # it used its `READ_BUDGET` for this loop turn
_HELD = 4  # flow control: where its messages go cannot take more yet (`Link.pause_reading`)


class WriteBatch:
    """The connections that have writes waiting, sent together when the work that made them
    is done: at the end of the outermost open batch (`begin`/`end`: one read, or the lean
    transport's batch of ready sockets), or, for writes made outside any batch (timers, other
    listeners, the cluster), in one `call_soon` at the end of the loop turn.

    Why: a lone message used to wait for the next loop turn (`call_soon` per connection) before
    its subscriber's send: one more pass through the loop and one more `epoll_wait` per message
    (about 5 us of the broker's 45 us at 1,000 msg/s). Sending at the end of the read keeps one
    write per connection per read (a run of messages to one subscriber is still one `send`).
    One per node, shared by its TCP listeners, so a write to a client of another listener is
    also sent at the end of the read.
    """

    __slots__ = ("_depth", "_dirty", "_loop", "_scheduled", "gen")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[MqttConnection] = []
        #: Open `begin`s: while above 0, writes wait for the last `end`.
        self._depth = 0
        self._scheduled = False
        #: Counts the outermost batches (one more at each last `end`): a connection that
        #: sent at once in this batch (`MqttConnection.write`) batches the rest of its writes.
        self.gen = 0

    def add(self, conn: MqttConnection) -> None:
        """`conn` has a write waiting (once until its `_flush`)."""
        self._dirty.append(conn)
        if not self._depth and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn_end)

    def begin(self) -> None:
        self._depth += 1

    def end(self) -> None:
        self._depth -= 1
        if not self._depth:
            self.gen += 1
            if self._dirty:
                self.flush()

    def _turn_end(self) -> None:
        self._scheduled = False
        if not self._depth:
            self.flush()

    def flush(self) -> None:
        """Send every waiting write now, in the order the connections first wrote."""
        dirty = self._dirty
        while dirty:  # a flush may cause writes (a failed send closes a session): sent too
            self._dirty = []
            for conn in dirty:
                try:
                    conn._flush()
                except Exception as exc:  # the others' writes still go out
                    self._loop.call_exception_handler(
                        {"message": "flushing a connection's writes failed", "exception": exc}
                    )
            dirty = self._dirty


class TcpListener:
    """What every connection of one listener shares: one object, not five slots in each."""

    __slots__ = ("batch", "broker", "identity_as_username", "kind", "loop", "stats")

    def __init__(
        self,
        broker: Broker,
        stats: ListenerStats,
        kind: str = "tcp",
        identity_as_username: bool = False,
        batch: WriteBatch | None = None,
    ) -> None:
        self.broker = broker
        self.stats = stats
        self.kind = kind
        #: TLS with `use_identity_as_username`: the client certificate's CN is the username.
        self.identity_as_username = identity_as_username
        self.loop = asyncio.get_running_loop()
        #: Shared by the node's listeners (`Node`); a listener of its own otherwise (tests).
        self.batch = batch if batch is not None else WriteBatch(self.loop)


class MqttConnection(asyncio.Protocol):
    """One accepted TCP connection; also the channel's `Link`."""

    __slots__ = (
        "_closing",
        "_flush_scheduled",
        "_paused",
        "_pending",
        "_pending_size",
        "_read_used",
        "_sent_in",
        "channel",
        "listener",
        "transport",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.channel: Channel | None = None
        #: Writes of this loop turn; None between turns (no empty list held per idle connection).
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self._flush_scheduled = False
        self._closing = False
        #: Bytes read since the last turn it sat out: counted up from 0, not down from the
        #: budget, so an idle connection holds a small cached int, not an int object of its own.
        self._read_used = 0
        self._paused = 0
        #: The `WriteBatch.gen` of the batch in which it last sent at once (`write`).
        self._sent_in = -1

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Typed as what it is; not an isinstance check: uvloop's transports are not
        # asyncio.Transport (and a `typing.cast` would be one more call per connect).
        self.transport = transport
        listener = self.listener
        if not listener.stats.admit(listener.broker):
            transport.abort()
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        listener.stats.opened()
        # Interned: the many connections from one address (NAT, a proxy) share one string.
        host = sys.intern(str(peer[0]))
        self.channel = Channel(listener.broker, self, host, int(peer[1]), listener.kind)
        if listener.identity_as_username:
            name = cert_common_name(transport.get_extra_info("peercert"))
            if name is None:  # verified, but without a CN: no identity to use
                self.channel.close(None, "no_certificate_identity")
                return
            self.channel.cert_username = name

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        if channel is not None:
            batch = self.listener.batch
            batch._depth += 1  # `batch.begin()`, inlined: this runs per read
            try:
                # `channel.data_received`, written out for a CONNECTED channel: a lone
                # message goes to `publish_lone` with one call less.
                if channel.state != CONNECTED:
                    channel.data_received(data)
                elif not publish_lone(channel, data):
                    channel.decode_read(data)
            finally:  # `batch.end()`, inlined too
                depth = batch._depth = batch._depth - 1
                if not depth:
                    batch.gen += 1
                    if batch._dirty:
                        batch.flush()
            self._read_used += len(data)
            if self._read_used >= READ_BUDGET and not self._paused & _TURN:
                self._pause(_TURN)  # sit out one loop turn: see `READ_BUDGET`
                self.listener.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._read_used = 0
        self._resume(_TURN)

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        channel = self.channel
        if channel is None:
            return
        self.channel = None
        if exc is not None and not channel.disconnect_reason:
            channel.disconnect_reason = "socket_error"
        channel.connection_lost()
        self.listener.stats.closed(channel.disconnect_reason or "closed")

    def pause_writing(self) -> None:
        self._pause(_WRITE_FULL)

    def resume_writing(self) -> None:
        self._resume(_WRITE_FULL)

    # -- Link -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        pending = self._pending
        if pending is None:
            # The first write in a read (or a batch of reads) goes out at once: a lone
            # message's delivery does not wait for the rest of the read's work (README
            # "Latency of a lone message"). Later ones in the batch wait for its end, so a
            # connection still gets at most two sends per batch of reads.
            batch = self.listener.batch
            if batch._depth and self._sent_in != batch.gen and self.transport is not None:
                self._sent_in = batch.gen
                try:
                    self.transport.write(data)
                except Exception as exc:  # the reader's work goes on, as after a flush
                    self.listener.loop.call_exception_handler(
                        {"message": "writing to a connection failed", "exception": exc}
                    )
                return
            self._pending = [data]
        else:
            pending.append(data)
        self._pending_size += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.listener.batch.add(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = self._pending
        if pending is None or self.transport is None:
            return
        self._pending = None
        self._pending_size = 0
        if len(pending) == 1:
            self.transport.write(pending[0])
        else:
            self.transport.write(b"".join(pending))

    def close(self) -> None:
        if self._closing:
            return
        self._flush()
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        self._pause(_HELD)

    def resume_reading(self) -> None:
        self._resume(_HELD)

    def buffered(self) -> int:
        transport = self.transport
        size = self._pending_size
        if transport is not None:
            size += transport.get_write_buffer_size()
        return size
