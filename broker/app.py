"""The composition root of a running node: broker listeners, management API, cluster.

`broker.server.node.Node` runs the MQTT side only (it may not import management or cluster);
this module wires the layers above it together, so the CLI and the tests start the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from broker.core.broker import Broker
from broker.server.banner import format_banner
from broker.server.config import BrokerConfig
from broker.server.node import Node, auth_mode

log = logging.getLogger(__name__)


class NodeApp:
    """A whole node: MQTT listeners plus the services that the config enables."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.node = Node(config)

    @property
    def broker(self) -> Broker:
        return self.node.broker

    async def start(self) -> None:
        await self.node.start()

    async def stop(self) -> None:
        await self.node.stop()

    def bound_listeners(self) -> list[tuple[str, str, int]]:
        return self.node.bound_listeners()


async def run(config: BrokerConfig) -> None:
    """Run a node until SIGINT or SIGTERM, then shut it down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    app = NodeApp(config)
    await app.start()
    print(format_banner(config, app.bound_listeners(), auth_mode(config)), flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop()
