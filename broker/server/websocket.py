"""MQTT over WebSocket through aiohttp: binary frames carry the MQTT byte stream.

The same `Channel` as TCP does the MQTT work. aiohttp's send is a coroutine, so writes from the
synchronous core go to a pending list that one writer task per connection drains; `buffered()`
reports that list's size so the channel can drop QoS 0 to a client that does not read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from broker.core.channel import CLOSED, Channel
from broker.server.tls import cert_common_name

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.server.listeners import ListenerStats

log = logging.getLogger(__name__)

#: Subprotocols we speak: "mqtt" (3.1.1/5.0) and "mqttv3.1" (old clients).
SUBPROTOCOLS = ("mqtt", "mqttv3.1")


class WebSocketLink:
    """The channel's `Link` over one aiohttp WebSocket."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._pending: list[bytes] = []
        self._size = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        #: Cleared while flow control holds this client's input (`pause_reading`).
        self.readable = asyncio.Event()
        self.readable.set()
        self._task = asyncio.get_running_loop().create_task(self._writer())

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._pending.append(data)
        self._size += len(data)
        self._wakeup.set()

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    def buffered(self) -> int:
        return self._size

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    async def _writer(self) -> None:
        ws = self.ws
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._pending:
                    chunk = b"".join(self._pending)
                    self._pending.clear()
                    self._size = 0
                    await ws.send_bytes(chunk)
                if self._closing:
                    await ws.close()
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self._pending.clear()
            self._size = 0
            if not ws.closed:
                await ws.close()

    async def finished(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(self._task, timeout=5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()


def make_websocket_app(
    broker: Broker,
    stats: ListenerStats,
    path: str,
    kind: str = "ws",
    identity_as_username: bool = False,
) -> web.Application:
    """An aiohttp app answering MQTT-over-WebSocket upgrades on `path` (`kind` "wss" when the
    site runs TLS; `identity_as_username`: the client certificate's CN is the username)."""
    max_msg = max(broker.settings.max_packet_size * 2, 65536)

    async def handle(request: web.Request) -> web.StreamResponse:
        if not stats.admit(broker):
            raise web.HTTPServiceUnavailable(text="too many connections")
        cert_username = None
        if identity_as_username:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport else None
            cert_username = cert_common_name(peercert)
            if cert_username is None:
                raise web.HTTPForbidden(text="no identity in the client certificate")
        ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, max_msg_size=max_msg, autoping=True)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        link = WebSocketLink(ws)
        stats.opened()
        channel = Channel(broker, link, host, port, kind)
        if cert_username is not None:  # else the class default: no __dict__ for it
            channel.cert_username = cert_username
        try:
            while True:
                if not link.readable.is_set():
                    await link.readable.wait()
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                if msg.type == WSMsgType.BINARY:
                    channel.data_received(msg.data)
                else:
                    # MQTT over WebSocket is binary only ([MQTT-6.0.0-1]).
                    channel.protocol_violation(0x81, "non-binary WebSocket frame")
                    break
                if channel.state == CLOSED:
                    break
        finally:
            if not channel.disconnect_reason and ws.exception() is not None:
                channel.disconnect_reason = "socket_error"
            channel.connection_lost()
            stats.closed(channel.disconnect_reason or "closed")
            await link.finished()
        return ws

    app = web.Application()
    app.router.add_get(path, handle)
    return app
