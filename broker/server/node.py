"""The node runtime: binds the listeners, runs the timers, shuts down gracefully.

`Node` is what tests embed (ports 0, then read `tcp_port`/`ws_port`); `broker.app` composes it
with the management API and the cluster and runs it under signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.core.broker import Broker
from broker.core.settings import CoreOptions, Settings
from broker.protocol.constants import ReasonCode
from broker.server.banner import broker_version
from broker.server.config import BrokerConfig, ListenerConfig
from broker.server.listeners import ListenerStats
from broker.server.persistence import Persistence
from broker.server.socket_transport import SocketServer, available
from broker.server.systopics import publish_sys
from broker.server.tcp import MqttConnection, TcpListener, WriteBatch
from broker.server.tls import make_ssl_context
from broker.server.websocket import make_websocket_app

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
#: Seconds a TLS client has to finish its handshake (before that, no CONNECT timeout runs).
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Seconds between two warnings that a listener is out of file descriptors.
FD_WARNING_INTERVAL = 5.0


def settings_from_config(cfg: BrokerConfig) -> Settings:
    """The core's settings: its options as the file set them, plus what only the whole
    configuration knows (each listener's own allow_anonymous)."""
    options = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(CoreOptions)}
    options["scram_credentials"] = dict(cfg.scram_credentials)
    return Settings(**options, listener_allow_anonymous=cfg.listener_allow_anonymous())


def raise_open_files_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as most servers do: every connection is
    a file descriptor, and the soft default (often 1024) would cap the node far below what the
    system allows. Returns the soft limit in force (None where there is no such limit); a
    limit that cannot be raised is logged and kept, never a reason not to start."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY
            log.info("open files limit %d (could not raise it to %d: %s)", soft, hard, exc)
            return soft
        soft = hard
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    log.info("open files limit (RLIMIT_NOFILE): %s", shown)
    return soft


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrors:
    """The loop exception handler that turns "out of file descriptors" on our listeners into a
    counter and a rate-limited warning.

    On EMFILE/ENFILE asyncio's own accept loop (`selector_events._accept_connection`) already
    does what a server should: it stops watching the listening socket, retries after
    `ACCEPT_RETRY_DELAY` (1 s) by itself, and leaves every accepted connection alone;
    connections made meanwhile wait in the kernel's backlog. We keep that. What it lacks is
    visibility with restraint: each failed accept() goes to the loop's exception handler, whose
    default logs an ERROR with a traceback, up to `backlog` times per pause (Python 3.11 keeps
    calling accept() after the first failure). So for this node's listening sockets only, each
    pause is counted once (`ListenerStats.accept_paused`, `max_open_files`) and a warning is
    logged at most every `FD_WARNING_INTERVAL` seconds; any other report goes to the handler that
    was installed before. Plain TCP goes through our `SocketServer` on uvloop as well, which
    reports the same way; uvloop's own servers (TLS there) handle EMFILE inside libuv.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, broker: Broker) -> None:
        self.loop = loop
        self.broker = broker
        self.previous: ExceptionHandler | None = loop.get_exception_handler()
        #: Listening socket fd -> its listener; emptied at stop.
        self.sockets: dict[int, ListenerStats] = {}
        self._in_burst: set[int] = set()
        self._last_warning: float | None = None
        self._since_warning = 0

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def uninstall(self) -> None:
        """Forget our sockets; give the loop its old handler back if ours is still the one."""
        self.sockets.clear()
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        sock = context.get("socket")
        stats = None
        fd = -1
        out_of_fds = isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
        if out_of_fds and sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                fd = sock.fileno()
            stats = self.sockets.get(fd)
        if stats is None:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if fd in self._in_burst:  # the same pause: asyncio tried accept() again at once
            return
        self._in_burst.add(fd)
        loop.call_soon(self._in_burst.discard, fd)
        stats.accept_paused(self.broker)
        self._since_warning += 1
        now = loop.time()
        if self._last_warning is None or now - self._last_warning >= FD_WARNING_INTERVAL:
            log.warning(
                "listener %s %s: out of file descriptors (%s); new connections wait until some "
                "close, connected clients are not affected (%d pause(s) since the last warning; "
                "counted in $SYS/broker/limits/max_open_files)",
                stats.protocol, stats.listen_on, exc, self._since_warning,
            )  # fmt: skip
            self._last_warning = now
            self._since_warning = 0


def _bind_socket(listener: ListenerConfig, reuse_port: bool = False) -> socket.socket:
    """A listening socket we create ourselves, so port 0 resolves to a known port.

    `reuse_port`: SO_REUSEPORT, so the workers of `start --workers N` each bind the same port
    and the kernel spreads the incoming connections over their accept queues."""
    family = socket.AF_INET6 if ":" in listener.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((listener.bind, listener.port))
    except OSError as exc:  # name the address: "Address already in use" alone says not which
        sock.close()
        raise OSError(exc.errno, f"{exc.strerror} ({listener.bind}:{listener.port})") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Node:
    """One broker node with its listeners and timers."""

    def __init__(self, config: BrokerConfig, reuse_port: bool = False) -> None:
        self.config = config
        #: One of several worker processes sharing the MQTT/WS ports (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.version = broker_version()
        self.broker = Broker(settings_from_config(config), clock=time.time)
        self.listeners: list[ListenerStats] = []
        #: `persistence = true`: retained messages and persistent sessions in <data_dir>/broker.db
        self.persistence: Persistence | None = None
        if config.persistence:
            self.persistence = Persistence(
                self.broker, config.data_dir, config.persistence_interval, config.durable_acks
            )
        self._tcp_server: asyncio.AbstractServer | None = None
        self._servers: list[asyncio.AbstractServer] = []  # every MQTT server: TCP and TLS
        self._ws_runner: web.AppRunner | None = None
        self._runners: list[web.AppRunner] = []  # every WebSocket runner: ws and wss
        self._ssl_contexts: dict[str, ssl.SSLContext] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._accept_errors: AcceptErrors | None = None
        #: The TCP listeners' shared `WriteBatch` (made with the first, on the running loop).
        self._write_batch: WriteBatch | None = None
        #: What publishes `$SYS` every `sys_interval` instead of `publish_sys` (the workers of
        #: `start --workers N` publish node-wide figures: `management.workers_sys`).
        self.sys_publisher: Callable[[], Awaitable[None]] | None = None
        self.tcp_port = 0
        self.ws_port = 0
        self.ssl_port = 0
        self.wss_port = 0

    async def start(self, before_listeners: Callable[[], Awaitable[None]] | None = None) -> None:
        """Open the stored state, then the listeners. `before_listeners` runs in between,
        with the flusher running (commits made meanwhile are durable): a clustered node
        waits there for its peers' routes (`cluster.first_sync`)."""
        raise_open_files_limit()
        persistence = self.persistence
        if persistence is None:
            if before_listeners is not None:
                await before_listeners()
            await self._start_listeners()
            return
        persistence.open()  # before any client: a corrupt file is a StartupError
        if before_listeners is not None:
            persistence.start()
        try:
            if before_listeners is not None:
                await before_listeners()
            await self._start_listeners()
        except BaseException:
            if before_listeners is not None:
                await persistence.stop()  # the flusher ran: what it took is saved, then closed
            else:
                persistence.close()
            raise
        persistence.start()

    async def _start_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self._accept_errors = AcceptErrors(loop, self.broker)  # `_watch` fills it
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
        self._accept_errors.install()  # once every listener is up: a failed start leaves none
        self._tasks.append(loop.create_task(self._ticker()))
        if cfg.sys_interval > 0:
            self._tasks.append(loop.create_task(self._sys_publisher(cfg.sys_interval)))

    def _stats(self, listener: ListenerConfig, protocol: str, port: int) -> ListenerStats:
        limit = listener.max_connections or self.config.max_connections
        stats = ListenerStats(protocol, listener.bind, port, limit, listener.max_connection_rate)
        self.listeners.append(stats)
        return stats

    def _watch(self, sock: socket.socket, stats: ListenerStats) -> None:
        """Out of file descriptors on `sock`: counted on `stats` (see `AcceptErrors`)."""
        if self._accept_errors is not None:
            self._accept_errors.sockets[sock.fileno()] = stats

    async def _start_mqtt(self, listener: ListenerConfig, kind: str) -> asyncio.AbstractServer:
        """MQTT over TCP (`kind` "tcp") or TLS ("tls"): the same protocol class."""
        loop = asyncio.get_running_loop()
        ctx = self._ssl_contexts["ssl"] if kind == "tls" else None
        sock = _bind_socket(listener, self.reuse_port)
        protocol = "mqtt:ssl" if kind == "tls" else "mqtt:tcp"
        stats = self._stats(listener, protocol, sock.getsockname()[1])
        self._watch(sock, stats)
        identity = ctx is not None and listener.use_identity_as_username
        if self._write_batch is None:
            self._write_batch = WriteBatch(loop)
        shared = TcpListener(self.broker, stats, kind, identity, self._write_batch)
        server: asyncio.AbstractServer
        if ctx is None and available(loop):
            # asyncio's loop or uvloop: the lean transport (about 0.9-1.3 KB less per connection)
            server = SocketServer(loop, sock, lambda: MqttConnection(shared), self._write_batch)
        else:
            server = await loop.create_server(
                lambda: MqttConnection(shared),
                sock=sock,
                ssl=ctx,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ctx is not None else None,
            )
        self._servers.append(server)
        return server

    async def _start_ws(self, listener: ListenerConfig, kind: str) -> web.AppRunner:
        """MQTT over WebSocket (`kind` "ws") or over TLS ("wss")."""
        ctx = self._ssl_contexts["wss"] if kind == "wss" else None
        sock = _bind_socket(listener, self.reuse_port)
        stats = self._stats(listener, f"mqtt:{kind}", sock.getsockname()[1])
        self._watch(sock, stats)
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
                if self.sys_publisher is not None:
                    await self.sys_publisher()
                else:
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
        for channel in list(self.broker.channels):
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
        if self._accept_errors is not None:
            self._accept_errors.uninstall()
            self._accept_errors = None
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
