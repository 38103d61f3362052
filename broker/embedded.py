"""Run minibroker inside your own process: for tests of MQTT code and local development.

This is a public, stable API. A node started here is the same `broker.app.NodeApp` that
`minibroker start` runs (MQTT over TCP and WebSocket, optionally TLS, the management REST API,
plugins, and the cluster when asked for), bound to free loopback ports::

    from broker.embedded import embedded_node

    async with embedded_node() as node:
        async with aiomqtt.Client(node.host, node.mqtt_port) as client:
            ...

`embedded_cluster(3)` starts three such nodes joined in one cluster. `threaded_node()` and
`threaded_cluster()` run the same in a background thread with its own event loop, for code and
test suites that are not async (paho-mqtt, plain pytest). The pytest fixtures built on this are
in `broker.pytest_plugin`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import difflib
import json
import secrets
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from broker.app import NodeApp
from broker.plugins.passwd_file import hash_password
from broker.server.config import (
    AlarmsConfig,
    BrokerConfig,
    ListenerConfig,
    ManagementApp,
    ManagementConfig,
)

__all__ = [
    "EmbeddedCluster",
    "EmbeddedNode",
    "RestClient",
    "RestError",
    "SyncRestClient",
    "TlsFiles",
    "embedded_cluster",
    "embedded_node",
    "threaded_cluster",
    "threaded_node",
]

T = TypeVar("T")

#: Seconds a cluster has to converge (every node sees every other) before start() fails.
CLUSTER_READY_TIMEOUT = 10.0
#: Seconds between two looks at a condition that is awaited (cluster membership, routes).
POLL_INTERVAL = 0.002
#: The REST API's base path.
API_PREFIX = "/api/v3"


@dataclasses.dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for the MQTT/TLS and WebSocket/TLS listeners (both are started when given)."""

    certfile: str
    keyfile: str
    #: CA that checks client certificates; with `require_certificate`, mutual TLS.
    cafile: str = ""
    require_certificate: bool = False


class RestError(Exception):
    """A REST call answered with an HTTP error status; `status` and `body` say which."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def basic_auth(user: str, password: str) -> str:
    """The HTTP Basic `Authorization` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class RestClient:
    """The node's REST API (`/api/v3`) from async code, authenticated with the node's own app.

    Methods return the decoded JSON answer; an HTTP error status raises `RestError`.
    Use it as `async with node.rest() as api:` so that its HTTP session is closed.
    """

    def __init__(self, base_url: str, app_id: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/") + API_PREFIX
        self._headers = {"Authorization": basic_auth(app_id, secret)}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """`method` on `path` (relative to /api/v3, e.g. "/clients"), JSON body and result."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        query = {k: str(v) for k, v in params.items()}
        async with self._session.request(
            method, self.base_url + path, json=body, params=query
        ) as resp:
            text = await resp.text()
            data = json.loads(text) if text else None
            if resp.status >= 400:
                raise RestError(resp.status, data)
            return data

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, **params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, body)

    async def put(self, path: str, body: Any = None) -> Any:
        return await self.request("PUT", path, body)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)


class SyncRestClient:
    """The same REST API for synchronous code (standard library only, one request per call)."""

    def __init__(self, base_url: str, app_id: str, secret: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/") + API_PREFIX
        self._headers = {
            "Authorization": basic_auth(app_id, secret),
            "Content-Type": "application/json",
        }
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=self._headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            raise RestError(exc.code, json.loads(text) if text else None) from None
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def build_config(
    data_dir: str,
    *,
    host: str = "127.0.0.1",
    name: str = "embedded@127.0.0.1",
    users: Mapping[str, str] | None = None,
    acl: str | None = None,
    tls: TlsFiles | None = None,
    websocket: bool = True,
    management: bool = True,
    app_secret: str = "",
    **settings: Any,
) -> BrokerConfig:
    """The `BrokerConfig` of an embedded node: every listener on `host` port 0, no $SYS timer,
    a private API app instead of EMQX's default one. `settings` are `BrokerConfig` fields
    (e.g. `allow_anonymous=False`, `max_packet_size=1024`, `max_qos_allowed=1`)."""
    known = {f.name for f in dataclasses.fields(BrokerConfig)}
    for option in settings:
        if option not in known:
            close = difflib.get_close_matches(option, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown embedded node option {option!r}{hint}")
    files = Path(data_dir)
    files.mkdir(parents=True, exist_ok=True)
    if users is not None:
        lines = [f"{user}:{hash_password(password)}\n" for user, password in users.items()]
        (files / "passwd").write_text("".join(lines))
        settings.setdefault("password_file", str(files / "passwd"))
    if acl is not None:
        (files / "acl").write_text(acl)
        settings.setdefault("acl_file", str(files / "acl"))

    def listener(enabled: bool = True, path: str = "/mqtt") -> ListenerConfig:
        return ListenerConfig(bind=host, port=0, enabled=enabled, path=path)

    def tls_listener() -> ListenerConfig:
        if tls is None:
            return listener(enabled=False)
        return dataclasses.replace(
            listener(),
            certfile=tls.certfile,
            keyfile=tls.keyfile,
            cafile=tls.cafile,
            require_certificate=tls.require_certificate,
        )

    app = ManagementApp(id="embedded", secret=app_secret or "-", name="embedded node")
    base: dict[str, Any] = {
        "node_name": name,
        "data_dir": str(files),
        "sys_interval": 0,
        "tcp": listener(),
        "ws": listener(enabled=websocket),
        "ssl": tls_listener(),
        "wss": tls_listener(),
        "management": ManagementConfig(
            bind=host, port=0, enabled=management, default_app=False, apps=[app]
        ),
        "cluster": listener(enabled=False),
        # No CPU/memory alarms from the machine a test suite runs on (set `alarms` to have them).
        "alarms": AlarmsConfig(check_interval=0),
    }
    base.update(settings)
    return BrokerConfig(**base)


class EmbeddedNode:
    """One node in this process. Create it with `embedded_node(...)`; read its ports and URLs
    once started (`async with` or `await node.start()`)."""

    def __init__(self, *, data_dir: str | None = None, **options: Any) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="minibroker-")
        self.host: str = options.get("host", "127.0.0.1")
        self._secret = secrets.token_urlsafe(16)
        self.config = build_config(self.data_dir, app_secret=self._secret, **options)
        #: The running node (`broker.app.NodeApp`): its broker, plugins, cluster, management.
        self.app: NodeApp | None = None
        self.mqtt_port = self.ws_port = self.tls_port = self.wss_port = self.http_port = 0
        self.cluster_port = 0
        #: The CA file that signed the TLS listeners' certificate, when the starter knows it
        #: (the pytest plugin's `tls=True` sets it): what clients verify the server with.
        self.tls_ca_file: str | None = None

    @property
    def name(self) -> str:
        return self.config.node_name

    @property
    def mqtt_url(self) -> str:
        """`mqtt://host:port` of the MQTT/TCP listener."""
        return f"mqtt://{self._netloc(self.mqtt_port)}"

    @property
    def ws_url(self) -> str:
        """`ws://host:port/mqtt` of the MQTT/WebSocket listener ("" when it is off)."""
        return f"ws://{self._netloc(self.ws_port)}{self.config.ws.path}" if self.ws_port else ""

    @property
    def mqtts_url(self) -> str:
        """`mqtts://host:port` of the MQTT/TLS listener ("" without `tls`)."""
        return f"mqtts://{self._netloc(self.tls_port)}" if self.tls_port else ""

    @property
    def http_url(self) -> str:
        """`http://host:port` of the management listener: the REST API under /api/v3 and the
        dashboard under /dashboard/ ("" when it is off)."""
        return f"http://{self._netloc(self.http_port)}" if self.http_port else ""

    @property
    def api_credentials(self) -> tuple[str, str]:
        """HTTP Basic user and password of this node's API app."""
        return ("embedded", self._secret)

    def rest(self) -> RestClient:
        """An async client of this node's REST API (close it, or use `async with`)."""
        return RestClient(self.http_url, *self.api_credentials)

    def rest_sync(self) -> SyncRestClient:
        """A synchronous client of this node's REST API."""
        return SyncRestClient(self.http_url, *self.api_credentials)

    def _netloc(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    async def start(self) -> EmbeddedNode:
        """Bind every listener and start serving; returns self once clients can connect."""
        if self.app is not None:
            raise RuntimeError("this node is already started")
        app = NodeApp(self.config)
        try:
            await app.start()
        except BaseException:
            self._remove_dir()
            raise
        self.app = app
        node = app.node
        self.mqtt_port, self.ws_port = node.tcp_port, node.ws_port
        self.tls_port, self.wss_port = node.ssl_port, node.wss_port
        self.http_port, self.cluster_port = app.http_port, app.cluster_port
        return self

    async def stop(self) -> None:
        """Disconnect every client (server shutting down), close the listeners, and remove the
        data directory if this node made it. Stopping twice is harmless."""
        app, self.app = self.app, None
        try:
            if app is not None:
                await app.stop()
        finally:
            self._remove_dir()

    def _remove_dir(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def __aenter__(self) -> EmbeddedNode:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def embedded_node(**options: Any) -> EmbeddedNode:
    """A node to start in the running event loop: `async with embedded_node() as node:`.

    Options: `host` (default 127.0.0.1), `name`, `users` ({username: password}, written to a
    password file), `acl` (the text of a mosquitto ACL file), `tls` (`TlsFiles`), `websocket`
    and `management` (False: not started), `data_dir` (default: a temporary directory removed
    at stop), and any `BrokerConfig` field, e.g. `allow_anonymous=False`,
    `max_packet_size=2048`, `max_qos_allowed=1`, `retain_available=False`.
    """
    return EmbeddedNode(**options)


class EmbeddedCluster:
    """N nodes in this process joined in one cluster; create it with `embedded_cluster(n)`."""

    def __init__(self, size: int, **options: Any) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.size = size
        self._options = options
        self._dir = tempfile.mkdtemp(prefix="minibroker-cluster-")
        self.nodes: list[EmbeddedNode] = []

    def __getitem__(self, index: int) -> EmbeddedNode:
        return self.nodes[index]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[EmbeddedNode]:
        return iter(self.nodes)

    async def start(self, timeout: float = CLUSTER_READY_TIMEOUT) -> EmbeddedCluster:
        """Start node 1, then the others joining it; returns once every node sees all."""
        host = self._options.get("host", "127.0.0.1")
        cookie = self._options.pop("cookie", secrets.token_hex(8))
        try:
            for index in range(self.size):
                join = [f"{host}:{self.nodes[0].cluster_port}"] if self.nodes else []
                node = EmbeddedNode(
                    data_dir=str(Path(self._dir) / f"node{index + 1}"),
                    name=f"node{index + 1}@{host}",
                    cluster=ListenerConfig(bind=host, port=0),
                    cluster_join=join,
                    cookie=cookie,
                    **self._options,
                )
                await node.start()
                self.nodes.append(node)
            await self.wait_until(self._converged, timeout, "the cluster did not converge")
        except BaseException:
            await self.stop()
            raise
        return self

    def _converged(self) -> bool:
        names = sorted(node.name for node in self.nodes)
        for node in self.nodes:
            cluster = node.app.cluster if node.app is not None else None
            if cluster is None or sorted(cluster.live_nodes()) != names:
                return False
        return True

    async def routed(self, topic_filter: str, timeout: float = 5.0) -> None:
        """Wait until every node routes `topic_filter` to each node that has a subscriber
        matching exactly that filter. Subscriptions reach the other nodes asynchronously: a
        test that subscribes on one node and publishes on another awaits this in between."""

        def done() -> bool:
            tables = [
                node.app.cluster.table for node in self.nodes if node.app and node.app.cluster
            ]
            if len(tables) != len(self.nodes):
                return False
            holders = {
                node.name
                for node, table in zip(self.nodes, tables, strict=True)
                if topic_filter in table.local_routes()
            }
            return bool(holders) and all(
                holders - {node.name} <= table.nodes_for(topic_filter)
                for node, table in zip(self.nodes, tables, strict=True)
            )

        await self.wait_until(done, timeout, f"{topic_filter!r} is not routed on every node")

    @staticmethod
    async def wait_until(condition: Callable[[], bool], timeout: float, error: str) -> None:
        """Poll `condition` until it holds; TimeoutError(`error`) after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise TimeoutError(error)
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self) -> None:
        """Stop every node (last joined first) and remove their data directories."""
        nodes, self.nodes = self.nodes, []
        try:
            for node in reversed(nodes):
                await node.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> EmbeddedCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def embedded_cluster(size: int = 3, **options: Any) -> EmbeddedCluster:
    """An in-process cluster of `size` nodes: `async with embedded_cluster(3) as cluster:`,
    then `cluster[0].mqtt_url`, ... Options as for `embedded_node` (each node gets them)."""
    return EmbeddedCluster(size, **options)


class BackgroundLoop:
    """An event loop running in a daemon thread; `run(coro)` runs a coroutine there and
    waits for its result from the calling thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="minibroker-embedded", daemon=True
        )
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = 30.0) -> T:
        async def wrapper() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@contextlib.contextmanager
def threaded_node(**options: Any) -> Iterator[EmbeddedNode]:
    """`embedded_node(**options)` started in a background thread, for synchronous code::

        with threaded_node() as node:
            client = paho.mqtt.client.Client(...); client.connect(node.host, node.mqtt_port)

    The node's attributes and URLs are plain values; call its async methods through
    `node_loop(node).run(...)` if ever needed. Stopped when the block ends."""
    background = BackgroundLoop()
    node = embedded_node(**options)
    _LOOPS[id(node)] = background
    try:
        background.run(node.start())
        yield node
    finally:
        try:
            background.run(node.stop())
        finally:
            _LOOPS.pop(id(node), None)
            background.close()


@contextlib.contextmanager
def threaded_cluster(size: int = 3, **options: Any) -> Iterator[EmbeddedCluster]:
    """`embedded_cluster(size, **options)` started in a background thread; see
    `threaded_node`. Wait for a subscription's routes with `wait_routed(cluster, filter)`."""
    background = BackgroundLoop()
    cluster = embedded_cluster(size, **options)
    _LOOPS[id(cluster)] = background
    try:
        background.run(cluster.start())
        yield cluster
    finally:
        try:
            background.run(cluster.stop())
        finally:
            _LOOPS.pop(id(cluster), None)
            background.close()


#: id(node or cluster) -> the background loop it runs on (threaded_* only).
_LOOPS: dict[int, BackgroundLoop] = {}


def node_loop(started: EmbeddedNode | EmbeddedCluster) -> BackgroundLoop:
    """The background loop of a node or cluster from `threaded_node`/`threaded_cluster`."""
    try:
        return _LOOPS[id(started)]
    except KeyError:
        raise RuntimeError("not started by threaded_node() or threaded_cluster()") from None


def wait_routed(cluster: EmbeddedCluster, topic_filter: str, timeout: float = 5.0) -> None:
    """`await cluster.routed(topic_filter)` for a cluster from `threaded_cluster`."""
    node_loop(cluster).run(cluster.routed(topic_filter, timeout), timeout + 5.0)
