"""`minibroker start --test-config`: everything `start` checks before it binds a port.

The configuration file is validated by its loader; what remains is what only reading other
files tells: the TLS certificate, key and CA of each enabled TLS listener, the password and ACL
files (by loading the plugins of the startup set exactly as `start` does, without starting
them), the remembered plugin list and the banned list in the data directory. Every problem is
reported, not the first; nothing is written and no port is bound.
"""

from __future__ import annotations

import time

from broker.core.broker import Broker
from broker.plugins.manager import PluginManager
from broker.server.banned_store import BannedStore, BannedStoreError
from broker.server.config import BrokerConfig
from broker.server.errors import StartupError
from broker.server.node import settings_from_config
from broker.server.tls import make_ssl_context

__all__ = ["preflight"]


def _tls_problems(config: BrokerConfig) -> list[str]:
    problems = []
    for attr in ("ssl", "wss"):
        listener = getattr(config, attr)
        if listener.enabled:
            try:
                make_ssl_context(listener, f"listener.{attr}")
            except StartupError as exc:
                problems.append(str(exc))
    return problems


def preflight(config: BrokerConfig) -> list[str]:
    """Every reason `start` would refuse `config` before binding (empty: it would start)."""
    problems = _tls_problems(config)
    broker = Broker(settings_from_config(config), clock=time.time)
    problems.extend(PluginManager(broker, config, config.data_dir, config.node_name).check())
    try:
        BannedStore(broker.banned, config.data_dir).read()
    except BannedStoreError as exc:
        problems.append(str(exc))
    return problems
