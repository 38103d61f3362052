"""The node runtime: binds the listeners, runs the timers, shuts down gracefully.

`Node` is what tests embed (ports 0, then read `tcp_port`/`ws_port`); `broker.app` composes it
with the management API and the cluster and runs it under signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time

from aiohttp import web

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.core.settings import Settings
from broker.protocol.constants import ReasonCode
from broker.server.banner import broker_version
from broker.server.config import BrokerConfig, ListenerConfig, parse_publish_limit
from broker.server.listeners import ListenerStats
from broker.server.persistence import Persistence
from broker.server.systopics import publish_sys
from broker.server.tcp import MqttConnection
from broker.server.tls import make_ssl_context
from broker.server.websocket import make_websocket_app

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
#: Seconds a TLS client has to finish its handshake (before that, no CONNECT timeout runs).
TLS_HANDSHAKE_TIMEOUT = 10.0


def settings_from_config(cfg: BrokerConfig) -> Settings:
    return Settings(
        node_name=cfg.node_name,
        allow_anonymous=cfg.allow_anonymous,
        listener_allow_anonymous=cfg.listener_allow_anonymous(),
        max_inflight_messages=cfg.max_inflight_messages,
        max_queued_messages=cfg.max_queued_messages,
        max_packet_size=cfg.max_packet_size,
        max_keepalive=cfg.max_keepalive,
        session_expiry_interval=cfg.session_expiry_interval,
        retain_available=cfg.retain_available,
        max_connections=cfg.max_connections,
        shared_subscription_strategy=cfg.shared_subscription_strategy,
        max_outgoing_buffer=cfg.max_outgoing_buffer,
        max_queued_bytes=cfg.max_queued_bytes,
        max_topic_levels=cfg.max_topic_levels,
        max_topic_length=cfg.max_topic_length,
        max_subscriptions=cfg.max_subscriptions,
        publish_limit=parse_publish_limit(cfg.publish_limit),
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
        #: `persistence = true`: retained messages and persistent sessions in <data_dir>/broker.db
        self.persistence: Persistence | None = None
        if config.persistence:
            self.persistence = Persistence(
                self.broker, config.data_dir, config.persistence_interval
            )
        self._tcp_server: asyncio.Server | None = None
        self._servers: list[asyncio.Server] = []  # every MQTT server: TCP and TLS
        self._ws_runner: web.AppRunner | None = None
        self._runners: list[web.AppRunner] = []  # every WebSocket runner: ws and wss
        self._ssl_contexts: dict[str, ssl.SSLContext] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.tcp_port = 0
        self.ws_port = 0
        self.ssl_port = 0
        self.wss_port = 0

    async def start(self) -> None:
        persistence = self.persistence
        if persistence is None:
            await self._start_listeners()
            return
        persistence.open()  # before any client: a corrupt file is a StartupError
        try:
            await self._start_listeners()
        except BaseException:
            persistence.close()
            raise
        persistence.start()

    async def _start_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        # TLS contexts first: a bad certificate is a StartupError before anything is bound.
        self._ssl_contexts = {
            kind: make_ssl_context(listener, f"listener.{kind}")
            for kind, listener in (("ssl", cfg.ssl), ("wss", cfg.wss))
            if listener.enabled
        }
        if cfg.tcp.enabled:
            self._tcp_server = await self._start_mqtt(cfg.tcp, "tcp")
            self.tcp_port = self.listeners[-1].port
        if cfg.ssl.enabled:
            await self._start_mqtt(cfg.ssl, "tls")
            self.ssl_port = self.listeners[-1].port
        if cfg.ws.enabled:
            self._ws_runner = await self._start_ws(cfg.ws, "ws")
            self.ws_port = self.listeners[-1].port
        if cfg.wss.enabled:
            await self._start_ws(cfg.wss, "wss")
            self.wss_port = self.listeners[-1].port
        self._tasks.append(loop.create_task(self._ticker()))
        if cfg.sys_interval > 0:
            self._tasks.append(loop.create_task(self._sys_publisher(cfg.sys_interval)))

    def _stats(self, listener: ListenerConfig, protocol: str, port: int) -> ListenerStats:
        limit = listener.max_connections or self.config.max_connections
        stats = ListenerStats(protocol, listener.bind, port, limit, listener.max_connection_rate)
        self.listeners.append(stats)
        return stats

    async def _start_mqtt(self, listener: ListenerConfig, kind: str) -> asyncio.Server:
        """MQTT over TCP (`kind` "tcp") or TLS ("tls"): the same protocol class."""
        loop = asyncio.get_running_loop()
        ctx = self._ssl_contexts["ssl"] if kind == "tls" else None
        sock = _bind_socket(listener)
        protocol = "mqtt:ssl" if kind == "tls" else "mqtt:tcp"
        stats = self._stats(listener, protocol, sock.getsockname()[1])
        identity = ctx is not None and listener.use_identity_as_username
        server = await loop.create_server(
            lambda: MqttConnection(self.broker, stats, kind, identity),
            sock=sock,
            ssl=ctx,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ctx is not None else None,
        )
        self._servers.append(server)
        return server

    async def _start_ws(self, listener: ListenerConfig, kind: str) -> web.AppRunner:
        """MQTT over WebSocket (`kind` "ws") or over TLS ("wss")."""
        ctx = self._ssl_contexts["wss"] if kind == "wss" else None
        sock = _bind_socket(listener)
        stats = self._stats(listener, f"mqtt:{kind}", sock.getsockname()[1])
        identity = ctx is not None and listener.use_identity_as_username
        app = make_websocket_app(self.broker, stats, listener.path, kind, identity)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ctx).start()
        self._runners.append(runner)
        return runner

    def bound_listeners(self) -> list[tuple[str, str, int]]:
        kinds = {
            "mqtt:tcp": "mqtt/tcp",
            "mqtt:ws": "mqtt/ws",
            "mqtt:ssl": "mqtt/tls",
            "mqtt:wss": "mqtt/wss",
        }
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
        for server in self._servers:
            server.close()
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
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        self._ws_runner = None
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=2)
        self._servers.clear()
        self._tcp_server = None
        if self.persistence is not None:
            await self.persistence.stop()  # the full save, once every client is gone


def _auth_mode(password_file: str, allow_anonymous: bool) -> str:
    if password_file:
        return f"password file {password_file}"
    return "anonymous allowed" if allow_anonymous else "anonymous refused"


def auth_mode(cfg: BrokerConfig) -> str:
    """The banner's auth line: the global mode, then each listener that overrides it."""
    mode = _auth_mode(cfg.password_file, cfg.allow_anonymous)
    overrides = []
    for name, listener in cfg.mqtt_listeners().items():
        if listener.allow_anonymous is None and not listener.password_file:
            continue
        allow = cfg.listener_allow_anonymous().get(name, cfg.allow_anonymous)
        file = listener.password_file or cfg.password_file
        overrides.append(f"{name}: {_auth_mode(file, allow)}")
    return f"{mode} (per listener: {'; '.join(overrides)})" if overrides else mode
