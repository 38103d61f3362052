"""MQTT over TCP (and TLS): an `asyncio.Protocol` per connection that drives a `Channel`.

Writes made during one event-loop turn are batched into one `writelines` call. Backpressure:
when the kernel buffer fills, asyncio calls `pause_writing`; we then stop reading from that
client too, so a client that does not read cannot make us buffer its acks and replies without
bound. Deliveries to such a client are capped by the channel (`max_outgoing_buffer`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from broker.core.channel import Channel
from broker.server.tls import cert_common_name

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.server.listeners import ListenerStats

log = logging.getLogger(__name__)


class MqttConnection(asyncio.Protocol):
    """One accepted TCP connection; also the channel's `Link`."""

    __slots__ = (
        "_closing",
        "_flush_scheduled",
        "_loop",
        "_pending",
        "_pending_size",
        "broker",
        "channel",
        "identity_as_username",
        "kind",
        "stats",
        "transport",
    )

    def __init__(
        self,
        broker: Broker,
        stats: ListenerStats,
        kind: str = "tcp",
        identity_as_username: bool = False,
    ) -> None:
        self.broker = broker
        self.stats = stats
        self.kind = kind
        #: TLS with `use_identity_as_username`: the client certificate's CN is the username.
        self.identity_as_username = identity_as_username
        self.transport: asyncio.Transport | None = None
        self.channel: Channel | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_scheduled = False
        self._closing = False
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if not self.stats.admit(self.broker):
            transport.abort()
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        self.stats.opened()
        self.channel = Channel(self.broker, self, str(peer[0]), int(peer[1]), self.kind)
        if self.identity_as_username:
            name = cert_common_name(transport.get_extra_info("peercert"))
            if name is None:  # verified, but without a CN: no identity to use
                self.channel.close(None, "no_certificate_identity")
                return
            self.channel.cert_username = name

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        if channel is not None:
            channel.data_received(data)

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
        self.stats.closed(channel.disconnect_reason or "closed")

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    # -- Link -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = self._pending
        if not pending or self.transport is None:
            return
        self._pending = []
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

    def buffered(self) -> int:
        transport = self.transport
        size = self._pending_size
        if transport is not None:
            size += transport.get_write_buffer_size()
        return size
