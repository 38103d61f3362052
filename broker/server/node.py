"""The node runtime: binds the listeners, runs the timers, shuts down gracefully.

`Node` is what tests embed (ports 0, then read `tcp_port`/`ws_port`); `broker.app` composes it
with the management API and the cluster and runs it under signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from aiohttp import web

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.core.settings import Settings
from broker.protocol.constants import ReasonCode
from broker.server.banner import broker_version
from broker.server.config import BrokerConfig, ListenerConfig
from broker.server.listeners import ListenerStats
from broker.server.systopics import publish_sys
from broker.server.tcp import MqttConnection
from broker.server.websocket import make_websocket_app

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0


def settings_from_config(cfg: BrokerConfig) -> Settings:
    return Settings(
        node_name=cfg.node_name,
        allow_anonymous=cfg.allow_anonymous,
        max_inflight_messages=cfg.max_inflight_messages,
        max_queued_messages=cfg.max_queued_messages,
        max_packet_size=cfg.max_packet_size,
        max_keepalive=cfg.max_keepalive,
        session_expiry_interval=cfg.session_expiry_interval,
        retain_available=cfg.retain_available,
        max_connections=cfg.max_connections,
        shared_subscription_strategy=cfg.shared_subscription_strategy,
        max_outgoing_buffer=cfg.max_outgoing_buffer,
        max_awaiting_rel=cfg.max_awaiting_rel,
        topic_alias_maximum=cfg.max_topic_alias,
        outgoing_topic_alias_maximum=cfg.outgoing_topic_alias_maximum,
        max_qos_allowed=cfg.max_qos_allowed,
        wildcard_subscription_available=cfg.wildcard_subscription_available,
        shared_subscription_available=cfg.shared_subscription_available,
        subscription_identifier_available=cfg.subscription_identifier_available,
        server_keepalive=cfg.server_keepalive,
        response_information=cfg.response_information,
        scram_credentials=dict(cfg.scram_credentials),
    )


def _bind_socket(listener: ListenerConfig) -> socket.socket:
    """A listening socket we create ourselves, so port 0 resolves to a known port."""
    family = socket.AF_INET6 if ":" in listener.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listener.bind, listener.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Node:
    """One broker node with its listeners and timers."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.version = broker_version()
        self.broker = Broker(settings_from_config(config), clock=time.time)
        self.listeners: list[ListenerStats] = []
        self._tcp_server: asyncio.Server | None = None
        self._ws_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.tcp_port = 0
        self.ws_port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.tcp.enabled:
            sock = _bind_socket(cfg.tcp)
            self.tcp_port = sock.getsockname()[1]
            tcp_stats = ListenerStats("mqtt:tcp", cfg.tcp.bind, self.tcp_port, cfg.max_connections)
            self.listeners.append(tcp_stats)
            # (a name of its own: the factory runs later, after `stats` below is rebound)
            self._tcp_server = await loop.create_server(
                lambda: MqttConnection(self.broker, tcp_stats, "tcp"), sock=sock
            )
        if cfg.ws.enabled:
            sock = _bind_socket(cfg.ws)
            self.ws_port = sock.getsockname()[1]
            stats = ListenerStats("mqtt:ws", cfg.ws.bind, self.ws_port, cfg.max_connections)
            self.listeners.append(stats)
            app = make_websocket_app(self.broker, stats, cfg.ws.path)
            self._ws_runner = web.AppRunner(
                app, access_log=None, handle_signals=False, shutdown_timeout=1.0
            )
            await self._ws_runner.setup()
            await web.SockSite(self._ws_runner, sock).start()
        self._tasks.append(loop.create_task(self._ticker()))
        if cfg.sys_interval > 0:
            self._tasks.append(loop.create_task(self._sys_publisher(cfg.sys_interval)))

    def bound_listeners(self) -> list[tuple[str, str, int]]:
        kinds = {"mqtt:tcp": "mqtt/tcp", "mqtt:ws": "mqtt/ws"}
        return [(kinds.get(s.protocol, s.protocol), s.bind, s.port) for s in self.listeners]

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                self.broker.tick()
            except Exception:  # a bug in housekeeping must not stop the node's timers
                log.exception("broker tick failed")

    async def _sys_publisher(self, interval: float) -> None:
        while True:
            try:
                publish_sys(self.broker, self.version, time.time())
            except Exception:
                log.exception("$SYS publish failed")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop accepting, tell every client the server is going away (0x8B), close."""
        if self._tcp_server is not None:
            self._tcp_server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        channels: list[Channel] = list(self.broker.channels)
        for channel in channels:
            channel.close(ReasonCode.SERVER_SHUTTING_DOWN, "shutdown")
        await asyncio.sleep(0)  # let the batched writes and closes go out
        if self._ws_runner is not None:
            await self._ws_runner.cleanup()
            self._ws_runner = None
        if self._tcp_server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tcp_server.wait_closed(), timeout=2)
            self._tcp_server = None


def auth_mode(cfg: BrokerConfig) -> str:
    if cfg.password_file:
        return f"password file {cfg.password_file}"
    return "anonymous allowed" if cfg.allow_anonymous else "anonymous refused"
