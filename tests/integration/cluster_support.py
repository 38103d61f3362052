"""Clustered nodes for integration tests: whole `NodeApp`s joined over their cluster port.

Every listener (MQTT, management, cluster) binds 127.0.0.1 port 0; each node keeps its data in
`tmp_path/<name>`, so one started again under the same name finds its files (a restart).
`converged` waits, bounded, until every node given sees exactly those nodes alive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api_support import eventually
from conftest import make_config

from broker.app import NodeApp
from broker.server.config import ListenerConfig
from cluster.runtime import ClusterConfig

__all__ = ["ClusterNodes", "converged", "live"]


class ClusterNodes:
    """Start clustered NodeApps and stop them; `stop_all` (the fixture's teardown) stops what
    still runs. `defaults` are config overrides for every node (a test's plugins, say)."""

    def __init__(self, tmp_path: Path, **defaults: Any) -> None:
        self.tmp_path = tmp_path
        self.defaults = defaults
        self.running: list[NodeApp] = []

    async def start(
        self,
        name: str,
        *join: NodeApp,
        cluster_config: ClusterConfig | None = None,
        **overrides: Any,
    ) -> NodeApp:
        """Start node `name` joining through `join` (none: it starts alone); `overrides`
        replace fields of its BrokerConfig (`cluster_join` too: seeds other than nodes)."""
        seeds = [f"127.0.0.1:{app.cluster_port}" for app in join]
        cfg = make_config(
            self.tmp_path,
            node_name=name,
            data_dir=str(self.tmp_path / name),
            cluster=ListenerConfig(bind="127.0.0.1", port=0, enabled=True),
            **{"cluster_join": seeds, **self.defaults, **overrides},
        )
        app = NodeApp(cfg, cluster_config=cluster_config)
        await app.start()
        self.running.append(app)
        return app

    async def stop(self, app: NodeApp) -> None:
        self.running.remove(app)
        await app.stop()

    async def stop_all(self) -> None:
        while self.running:
            await self.stop(self.running[-1])


def live(app: NodeApp) -> list[str]:
    """The nodes `app` sees alive, sorted."""
    assert app.cluster is not None
    return sorted(app.cluster.live_nodes())


async def converged(*apps: NodeApp, timeout: float = 10.0) -> None:
    names = sorted(app.config.node_name for app in apps)
    await eventually(lambda: all(live(app) == names for app in apps), timeout=timeout)
