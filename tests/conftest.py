"""Shared fixtures: an in-process broker node on ephemeral loopback ports, and the event loop
every test runs on: asyncio's on the `LeanSelector`, as `minibroker start` makes it (the lean
transport's modules also run on asyncio's default loop and on uvloop: tests/loops.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from loops import LeanSelectorPolicy

from broker.app import NodeApp
from broker.server.config import BrokerConfig, ListenerConfig, ManagementConfig
from broker.server.node import Node


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """The loop `minibroker start --loop asyncio` runs (`broker.server.lean_selector`)."""
    return LeanSelectorPolicy()


def make_config(tmp_path: Path, **overrides: Any) -> BrokerConfig:
    """A config that binds every listener to 127.0.0.1 port 0 and keeps $SYS quiet."""
    cfg = BrokerConfig(
        node_name="test@127.0.0.1",
        data_dir=str(tmp_path / "data"),
        sys_interval=0,
        tcp=ListenerConfig(bind="127.0.0.1", port=0),
        ws=ListenerConfig(bind="127.0.0.1", port=0, path="/mqtt"),
        management=ManagementConfig(bind="127.0.0.1", port=0),
        cluster=ListenerConfig(bind="127.0.0.1", port=0, enabled=False),
    )
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture
async def node_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start nodes with config overrides; every node started is stopped at teardown."""
    nodes: list[Node] = []

    async def start(**overrides: Any) -> Node:
        node = Node(make_config(tmp_path, **overrides))
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
async def node(node_factory: Callable[..., Any]) -> Node:
    started: Node = await node_factory()
    return started


@pytest.fixture
async def app_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start whole nodes (`NodeApp`: MQTT, plugins, alarms and the management API on port 0)
    with config overrides; `management=` may be a ManagementConfig with API settings. Every app
    started is stopped at teardown. Read `app.http_port` / `app.node.tcp_port`."""
    apps: list[NodeApp] = []

    async def start(**overrides: Any) -> NodeApp:
        app = NodeApp(make_config(tmp_path, **overrides))
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in reversed(apps):
        await app.stop()
