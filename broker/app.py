"""The composition root of a running node: broker listeners, management API, cluster.

`broker.server.node.Node` runs the MQTT side only (it may not import management or cluster);
this module wires the layers above it together, so the CLI and the tests start the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from typing import Any

from broker.core.broker import Broker
from broker.plugins.manager import PluginManager
from broker.server.alarms import AlarmManager
from broker.server.banned_store import BannedStore
from broker.server.banner import format_banner
from broker.server.config import BrokerConfig, validate_host_port
from broker.server.errors import StartupError
from broker.server.node import Node, auth_mode
from broker.server.replicated_store import ReplicatedStore
from broker.server.workers import WorkerSpec
from cluster.runtime import ClusterConfig, ClusterNode
from cluster.tls import make_link_tls
from cluster.transport import unix_address
from cluster.wire import Address
from management.apps import AppStore, import_legacy
from management.grouped_view import GroupedClusterView
from management.queries import NodeContext
from management.server import ManagementServer, management_config
from management.view import ClusterView, LocalView, run_query
from management.workers_sys import WorkersSys
from management.workers_view import WorkersView, worker_member_name

log = logging.getLogger(__name__)


class NodeApp:
    """A whole node: MQTT listeners plus the services that the config enables."""

    def __init__(
        self,
        config: BrokerConfig,
        view: ClusterView | None = None,
        cluster_config: ClusterConfig | None = None,
        worker: WorkerSpec | None = None,
    ) -> None:
        self.config = config
        #: One of the processes of `start --workers N` (broker.server.workers), or None.
        self.worker = worker
        self.node = Node(config, reuse_port=worker is not None)
        broker = self.node.broker
        self.banned_store = BannedStore(broker.banned, config.data_dir)
        self.tables_store = ReplicatedStore(broker.replicated, config.data_dir)
        persistence = self.node.persistence
        self.plugins = PluginManager(
            broker,
            config,
            config.data_dir,
            config.node_name,
            delayed_store=persistence.delayed if persistence is not None else None,
        )
        self.alarms = AlarmManager(broker, config.alarms, config.node_name)
        # The API apps: held by every node (management listener or not), so that a change made
        # through any node's API is in force on all of them (replicated like the bans).
        mgmt = management_config(config.management)
        self.apps = AppStore(config.data_dir, mgmt.apps, mgmt.default_app, self.tables_store)
        # What the management queries see of this node. The cluster may replace `view` (before
        # start()) with one that reaches the other nodes and serves `context` to them.
        self.context = NodeContext(
            broker=broker,
            node=self.node,
            config=config,
            version=self.node.version,
            started_at=broker.started_at,
            plugins=self.plugins,
            alarms=self.alarms,
            apps=self.apps,
        )
        self.view: ClusterView = view if view is not None else LocalView(self.context)
        # With [cluster] enabled (and no view given), the node joins the cluster and the API
        # sees every node through it; peers' RPCs run this node's management queries.
        self.cluster: ClusterNode | None = None
        if worker is not None and worker.cluster_port:
            # the workers are members of a cluster of other nodes; every API groups them
            self.cluster = make_cluster_node(
                self.broker, config, self._rpc, cluster_config, worker_member(config, worker)
            )
            self.view = GroupedClusterView(self.context, self.cluster)
            workers_view = WorkersView(self.context, self.cluster, worker.index, worker.count)
            self.node.sys_publisher = WorkersSys(workers_view).publish_round
        elif worker is not None:  # the workers are a cluster, shown to the API as one node
            self.cluster = make_worker_cluster(self.broker, config, worker, self._rpc)
            workers_view = WorkersView(self.context, self.cluster, worker.index, worker.count)
            self.view = workers_view
            # $SYS describes the node: one worker gathers every worker's figures for all
            self.node.sys_publisher = WorkersSys(workers_view).publish_round
        elif config.cluster.enabled and view is None:
            self.cluster = make_cluster_node(self.broker, config, self._rpc, cluster_config)
            # (grouped: a node of workers that joined shows as one node here too)
            self.view = GroupedClusterView(self.context, self.cluster)
        self.management: ManagementServer | None = None
        self.http_port = 0

    @property
    def broker(self) -> Broker:
        return self.node.broker

    @property
    def cluster_port(self) -> int:
        """The bound cluster port (0 without a cluster)."""
        return self.cluster.port if self.cluster is not None else 0

    async def _rpc(self, method: str, args: dict[str, Any]) -> Any:
        """What another node's RPC runs here: the management query of that name."""
        return await run_query(self.context, method, args)

    async def start(self) -> None:
        # Bans and plugins (authentication, ACL) are in place before the first client can
        # connect; a corrupt banned.json or tables/*.json, or a plugin that cannot load, is a
        # StartupError.
        self.banned_store.open()
        try:
            self.tables_store.open()
            # the clock goes on from the stamps stored (retained ones: `Persistence.open`)
            for stamp in [*self.broker.replicated.stamps(), *self.broker.banned.stamps()]:
                self.broker.hlc.restore(stamp)
            import_legacy(self.config.data_dir, self.apps.table)  # development builds' apps.json
            await self.plugins.start()
            try:
                # The cluster first: the MQTT listeners open once it has its peers' routes.
                await self.node.start(self._join_cluster if self.cluster is not None else None)
            except BaseException:
                if self.cluster is not None:
                    await self.cluster.stop()  # (nothing if it did not start)
                await self.plugins.stop()
                raise
        except BaseException:
            self.tables_store.close()
            self.banned_store.close()
            raise
        await self.alarms.start()
        if self.config.management.enabled:
            self.management = ManagementServer(
                self.view, self.config.management, self.config.data_dir, self.apps
            )
            self.context.extra_listeners = [self.management.stats]
            try:
                await self.management.start()
            except BaseException:
                await self.stop()
                raise
            self.http_port = self.management.port

    async def _join_cluster(self) -> None:
        """Start the cluster; with seeds, wait (at most `[cluster] sync_timeout` s) for a
        peer's route table before the MQTT listeners open (`cluster.first_sync`): a node must
        not acknowledge its clients' publishes before it can route them to other nodes."""
        cluster = self.cluster
        assert cluster is not None
        await cluster.start()
        if cluster.seeds or cluster.dns_seeds:
            await cluster.first_sync.wait(self.config.cluster_sync_timeout)

    async def stop(self) -> None:
        if self.management is not None:
            await self.management.stop()
        if self.cluster is not None:
            await self.cluster.stop()  # a graceful leave: the others purge our routes at once
        await self.alarms.stop()
        await self.node.stop()  # clients leave while presence/web_hook still see them go
        await self.plugins.stop()
        self.tables_store.close()
        self.banned_store.close()

    def reload(self) -> dict[str, bool]:
        """SIGHUP: re-read the password and ACL files (each atomically; a bad file is logged
        and the old one kept). Returns plugin name -> whether its new file was taken."""
        log.info("SIGHUP: reloading the password and ACL files")
        return self.plugins.reload()

    def bound_listeners(self) -> list[tuple[str, str, int]]:
        bound = self.node.bound_listeners()
        if self.management is not None and self.http_port:
            bound.append(("http", self.management.config.bind, self.http_port))
        joined = self.worker is None or self.worker.cluster_port
        if self.cluster is not None and self.cluster.port and joined:
            bound.append(("cluster", self.config.cluster.bind, self.cluster.port))
        return bound


def parse_advertise(text: str) -> Address | None:
    """`[cluster] advertise`: "host", "host:port" or "[v6]:port"; port 0 = the bound port."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("[") or text.count(":") == 1:
        return validate_host_port(text)
    return (text, 0)


def worker_member(config: BrokerConfig, worker: WorkerSpec) -> tuple[str, list[Address]]:
    """A worker of a node that joins a cluster: its member name, and its own seeds (the other
    workers find worker 0 on the node's cluster port first, then the rest through it)."""
    name = worker_member_name(config.node_name, worker.index)
    if worker.index == 0:
        return name, []
    return name, [(config.cluster.bind, worker.cluster_port)]


def make_cluster_node(
    broker: Broker,
    config: BrokerConfig,
    rpc_handler: Any,
    cluster_config: ClusterConfig | None = None,
    member: tuple[str, list[Address]] | None = None,
) -> ClusterNode:
    """The ClusterNode that `config` asks for: [cluster] bind/port/join/advertise, [node]
    name and cookie. `member`: another member name and more seeds (a worker's)."""
    seeds = [validate_host_port(s) for s in config.cluster_join if not s.startswith("dns:")]
    if member is not None:
        seeds = [*member[1], *seeds]
    dns_seeds = [validate_host_port(s[4:]) for s in config.cluster_join if s.startswith("dns:")]
    cluster_config = dataclasses.replace(
        cluster_config or ClusterConfig(),
        dns_refresh_interval=config.cluster_dns_refresh_interval,
        forward_buffer=config.cluster_forward_buffer,
        forward_buffer_bytes=config.cluster_forward_buffer_bytes,
        dead_hold=config.cluster_dead_hold,
    )
    if config.cluster_tls_enable:
        try:
            tls = make_link_tls(
                config.cluster_tls_certfile,
                config.cluster_tls_keyfile,
                config.cluster_tls_cafile,
                config.cluster_tls_verify_hostname,
            )
        except ValueError as exc:
            raise StartupError(f"[cluster]: {exc}") from None
        transport = dataclasses.replace(cluster_config.transport, tls=tls)
        cluster_config = dataclasses.replace(cluster_config, transport=transport)
    return ClusterNode(
        broker,
        config.node_name if member is None else member[0],
        (config.cluster.bind, config.cluster.port),
        parse_advertise(config.cluster_advertise),
        seeds,
        config.cookie,
        rpc_handler,
        cluster_config,
        dns_seeds,
    )


def make_worker_cluster(
    broker: Broker, config: BrokerConfig, worker: WorkerSpec, rpc_handler: Any
) -> ClusterNode:
    """The cluster of the workers of one node: each listens on its Unix socket in the
    parent's private directory and has the others as seeds (whichever starts first, they find
    each other); member names are `<node>/w<index>`, the broker's node name stays the node's."""
    seeds = [unix_address(worker.socket_path(i)) for i in range(worker.count) if i != worker.index]
    return ClusterNode(
        broker,
        worker_member_name(config.node_name, worker.index),
        unix_address(worker.socket_path(worker.index)),
        None,
        seeds,
        worker.cookie,
        rpc_handler,
    )


#: Container allocations between young-generation collections (Python's default is 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect garbage less often, and never walk what the started node holds for good.

    Every routed message allocates a few short-lived containers (packet, message, dicts) that
    reference counting frees; with the default threshold the cycle collector still ran every
    few hundred messages and took 10% of QoS 0 fan-in (measured: 181k msg/s with it, 194k with
    this, 200k with the collector off). `gc.freeze` moves the objects alive after start-up
    (modules, settings, the node's own structures) out of every later collection.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def run(config: BrokerConfig, worker: WorkerSpec | None = None) -> None:
    """Run a node (or one worker of it) until SIGINT or SIGTERM, then shut it down
    gracefully. Of the workers, the first prints the banner."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    app = NodeApp(config, worker=worker)
    await app.start()
    tune_gc()
    with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP on Windows
        loop.add_signal_handler(signal.SIGHUP, app.reload)
    # (The default-app warning is logged by the management server as it starts: once.)
    if worker is None:
        print(format_banner(config, app.bound_listeners(), auth_mode(config)), flush=True)
    elif worker.index == 0:
        banner = format_banner(config, app.bound_listeners(), auth_mode(config))
        print(f"{banner}\nworkers: {worker.count} processes share the MQTT ports", flush=True)
    else:
        log.info("worker %d of %d started", worker.index, worker.count)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop()
