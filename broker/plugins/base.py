"""The plugin interface: a named bundle of hook callables that can be loaded and unloaded live.

A plugin class has a `name`, `version` and `description`, and is found through the
``minibroker.plugins`` entry-point group (see `broker.plugins.manager`). The manager creates one
instance per load and calls, in this order, on the event loop thread:

  ``load(ctx)``     synchronous: read the config, attach hook callables with `attach`;
                    raise `PluginLoadError` with a readable reason if it cannot work;
  ``start()``       async, optional: start tasks (a plugin that has none keeps the default);
  ``unload()``      synchronous: detach exactly the callables `attach` added, cancel timers;
  ``stop()``        async, optional: wait for tasks to finish, close sessions.

Hook callables run on the broker's hot path and must not block: see `broker.core.hooks` for
their signatures and the authenticate/authorize chain rule (the first non-None answer wins).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from broker import __version__
from broker.core.broker import Broker
from broker.server.config import BrokerConfig
from broker.server.delayed_store import DelayedStore

__all__ = ["Plugin", "PluginContext", "PluginLoadError"]

log = logging.getLogger(__name__)


class PluginLoadError(Exception):
    """A plugin cannot load (missing file, bad config...); the message says why."""


@dataclass(slots=True)
class PluginContext:
    """What a plugin is given when it loads."""

    broker: Broker
    #: the plugin's own ``[plugins.<name>]`` table (only the keys the file sets; `enabled` too)
    config: Mapping[str, Any]
    data_dir: str
    node_name: str
    #: the whole node configuration, for the top-level keys some plugins honour
    #: (``password_file``, ``acl_file``)
    node_config: BrokerConfig = field(default_factory=BrokerConfig)
    #: where `$delayed` messages are persisted (the node's persistence); None = not persisted
    delayed_store: DelayedStore | None = None


class Plugin:
    """Base class of every plugin. See the module docstring."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = __version__
    description: ClassVar[str] = ""
    #: the keys a ``[plugins.<name>]`` table may hold besides `enabled`; None = not checked.
    #: (The built-ins are checked by the config loader already, see PLUGIN_OPTIONS.)
    config_keys: ClassVar[frozenset[str] | None] = None

    def __init__(self) -> None:
        self._ctx: PluginContext | None = None
        self._attached: list[tuple[list[Any], Any]] = []

    @property
    def ctx(self) -> PluginContext:
        if self._ctx is None:
            raise RuntimeError(f"plugin {self.name} is not loaded")
        return self._ctx

    @property
    def broker(self) -> Broker:
        return self.ctx.broker

    def load(self, ctx: PluginContext) -> None:
        """Keep the context; subclasses call this first, then `attach` their hooks."""
        self._ctx = ctx

    def unload(self) -> None:
        """Detach every hook callable this plugin attached, and nothing else."""
        for hooks, callback in reversed(self._attached):
            for index, attached in enumerate(hooks):
                if attached is callback:  # identity: an equal callable of another plugin stays
                    del hooks[index]
                    break
        self._attached.clear()

    async def start(self) -> None:
        """Start background work, if any."""

    async def stop(self) -> None:
        """Finish background work started by `start` (called after `unload`)."""

    def attach(self, hooks: list[Any], callback: Any, *, first: bool = False) -> None:
        """Append `callback` to a hook list of `broker.hooks` (put it in front with `first`),
        remembering it for `unload`."""
        if first:
            hooks.insert(0, callback)
        else:
            hooks.append(callback)
        self._attached.append((hooks, callback))

    @property
    def attached(self) -> int:
        """How many hook callables this plugin has attached now."""
        return len(self._attached)
