"""The management HTTP server embedded in a node: aiohttp `AppRunner` + `SockSite`.

We bind the socket ourselves so that port 0 resolves to a known port (`port`), and count the
HTTP connections in a `ListenerStats` ("http:management") like the MQTT listeners' counts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web

from broker.server.config import ListenerConfig, ManagementConfig
from broker.server.listeners import ListenerStats
from management.api import make_app
from management.apps import DEFAULT_APP_ID, DEFAULT_APP_SECRET, AppStore
from management.common import ApiSettings
from management.dashboard_app import add_dashboard
from management.view import ClusterView

log = logging.getLogger(__name__)

DEFAULT_APP_WARNING = (
    f"the management API accepts the default app {DEFAULT_APP_ID}/{DEFAULT_APP_SECRET}; "
    "add your own with `minibroker apps add` or [[management.apps]] and set "
    "[management] default_app = false"
)


def management_config(listener: ListenerConfig) -> ManagementConfig:
    """The management settings, also from a plain ListenerConfig (defaults for the API keys)."""
    if isinstance(listener, ManagementConfig):
        return listener
    return ManagementConfig(listener.bind, listener.port, listener.enabled)


def _bind(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ManagementServer:
    """Serves `make_app(view, apps)` on the management listener."""

    def __init__(
        self,
        view: ClusterView,
        config: ListenerConfig,
        data_dir: str,
        apps: AppStore | None = None,
    ) -> None:
        self.config = management_config(config)
        self.view = view
        #: The node's apps (`broker.app` passes the store it replicates); else a private one.
        self.apps = apps or AppStore(data_dir, self.config.apps, self.config.default_app)
        self.stats = ListenerStats("http:management", self.config.bind, self.config.port)
        self.port = 0
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        """The aiohttp application this server serves (tests also drive it in-process)."""
        settings = ApiSettings(
            self.config.max_row_limit,
            self.config.metrics_auth,
            self.config.max_body_size,
            self.config.api_format,
        )
        app = make_app(self.view, self.apps, settings)
        if self.config.dashboard:
            add_dashboard(app)
        return app

    async def start(self) -> None:
        app = self.build_app()
        sock = _bind(self.config.bind, self.config.port)
        self.port = self.stats.port = sock.getsockname()[1]
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        try:
            await runner.setup()
            self._count_connections(runner)
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        if self.apps.default_in_use():
            log.warning(DEFAULT_APP_WARNING)

    def _count_connections(self, runner: web.AppRunner) -> None:
        """Keep `stats` current by wrapping the aiohttp server's connection callbacks."""
        server = runner.server
        assert server is not None
        made, lost = server.connection_made, server.connection_lost
        live: set[Any] = set()
        stats = self.stats

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            live.add(handler)
            stats.opened()
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            if handler in live:
                live.discard(handler)
                stats.closed("closed" if exc is None else "socket_error")
            lost(handler, exc)

        # aiohttp has no hook for this; instance attributes shadow the two methods.
        setattr(server, "connection_made", connection_made)  # noqa: B010
        setattr(server, "connection_lost", connection_lost)  # noqa: B010

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
