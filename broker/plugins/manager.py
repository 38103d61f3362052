"""The plugin manager: discovery, load/unload at runtime, and the loaded set remembered on disk.

Discovery: the ``minibroker.plugins`` entry-point group (``importlib.metadata``), where the
built-ins are registered by pyproject.toml; the built-ins are also known by name here, so a
source tree whose installed metadata is stale still finds them.

Which plugins load at start:
  1. those named in ``<data_dir>/loaded_plugins.json``, when the file exists: it is rewritten
     (atomically) on every runtime `load`/`unload`, so an operator's choice survives a restart;
  2. otherwise those with ``enabled = true`` in their ``[plugins.<name>]`` table;
  3. in either case `auth_passwd` when ``password_file`` is set at the top level or in a
     ``[listener.*]`` section and `acl_file` when ``acl_file`` is: a configured security
     control is never left off by a stale file.
A plugin that fails to load at start stops the start (StartupError) rather than running
without it; a remembered name that is no longer installed is only logged.
"""

from __future__ import annotations

import asyncio
import builtins
import difflib
import json
import logging
import os
from collections.abc import Coroutine
from importlib import import_module, metadata
from typing import Any

from broker.core.broker import Broker
from broker.plugins.base import Plugin, PluginContext, PluginLoadError
from broker.server.config import BrokerConfig
from broker.server.datafiles import write_json_atomic
from broker.server.delayed_store import DelayedStore
from broker.server.errors import StartupError

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginAlreadyLoaded",
    "PluginError",
    "PluginLoadError",
    "PluginManager",
    "PluginNotFound",
    "PluginNotLoaded",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "minibroker.plugins"
STATE_FILE = "loaded_plugins.json"

#: name -> "module:Class", the same as pyproject.toml's entry points.
BUILTIN_PLUGINS: dict[str, str] = {
    "acl_file": "broker.plugins.acl_file:AclFilePlugin",
    "auth_clientid": "broker.plugins.auth_table:AuthClientidPlugin",
    "auth_passwd": "broker.plugins.auth_passwd:AuthPasswdPlugin",
    "auth_username": "broker.plugins.auth_table:AuthUsernamePlugin",
    "delayed_publish": "broker.plugins.delayed_publish:DelayedPublishPlugin",
    "presence": "broker.plugins.presence:PresencePlugin",
    "web_hook": "broker.plugins.web_hook:WebHookPlugin",
}

#: top-level config key -> the plugin it loads at start
_FORCED_BY = {"password_file": "auth_passwd", "acl_file": "acl_file"}


class PluginError(Exception):
    """Base of the manager's errors."""


class PluginNotFound(PluginError):
    """No plugin of that name is installed."""


class PluginAlreadyLoaded(PluginError):
    """`load` of a plugin that is loaded."""


class PluginNotLoaded(PluginError):
    """`unload` of a plugin that is not loaded."""


# A plugin's own failure is reported as PluginLoadError (defined in base, re-exported here).


class PluginManager:
    """One node's plugins. Every method runs on the event loop thread."""

    def __init__(
        self,
        broker: Broker,
        config: BrokerConfig,
        data_dir: str,
        node_name: str | None = None,
        delayed_store: DelayedStore | None = None,
    ) -> None:
        self.broker = broker
        #: handed to plugins (`PluginContext.delayed_store`): the node's persistence, if any
        self.delayed_store = delayed_store
        self.config = config
        self.data_dir = data_dir
        self.node_name = node_name or broker.node_name
        self.state_path = os.path.join(data_dir, STATE_FILE)
        self.available: dict[str, type[Plugin]] = {}
        self.loaded: dict[str, Plugin] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._discovered = False

    # -- discovery ------------------------------------------------------------------------

    def discover(self) -> list[str]:
        """Find every installed plugin; returns their names, sorted."""
        found: dict[str, type[Plugin]] = {}
        for name, target in BUILTIN_PLUGINS.items():
            module_name, _, attr = target.partition(":")
            found[name] = getattr(import_module(module_name), attr)
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in BUILTIN_PLUGINS and entry.value == BUILTIN_PLUGINS[entry.name]:
                continue
            try:
                cls = entry.load()
            except Exception as exc:  # one log line; the traceback only at debug level (-v)
                log.error(
                    "cannot import plugin %s (%s): %s: %s",
                    *(entry.name, entry.value, type(exc).__name__, exc),
                )
                log.debug("traceback of the failed plugin import", exc_info=True)
                continue
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                log.error("plugin %s (%s) is not a Plugin subclass", entry.name, entry.value)
                continue
            found[entry.name] = cls
        self.available = dict(sorted(found.items()))
        self._discovered = True
        return list(self.available)

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self.discover()

    # -- queries --------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every installed plugin: name, version, description, active."""
        self._ensure_discovered()
        return [
            {
                "name": name,
                "version": str(cls.version),
                "description": str(cls.description),
                "active": name in self.loaded,
            }
            for name, cls in self.available.items()
        ]

    def get(self, name: str) -> Plugin | None:
        """The loaded instance of a plugin (for tests and diagnostics)."""
        return self.loaded.get(name)

    # -- runtime load / unload (the management API calls these) ----------------------------

    def load(self, name: str) -> None:
        """Load a plugin now and remember it. Raises PluginNotFound, PluginAlreadyLoaded,
        or PluginLoadError (the plugin could not start: bad file, missing setting...)."""
        self._load(name)
        self._remember()

    def unload(self, name: str) -> None:
        """Unload a plugin now and remember it. Raises PluginNotFound or PluginNotLoaded."""
        self._ensure_discovered()
        if name not in self.available and name not in self.loaded:
            raise PluginNotFound(name)
        plugin = self.loaded.pop(name, None)
        if plugin is None:
            raise PluginNotLoaded(name)
        plugin.unload()
        self._spawn(plugin.stop(), f"stop {name}")
        log.info("plugin %s unloaded", name)
        self._remember()

    def _load(self, name: str, *, spawn_start: bool = True) -> Plugin:
        self._ensure_discovered()
        cls = self.available.get(name)
        if cls is None:
            raise PluginNotFound(name)
        if name in self.loaded:
            raise PluginAlreadyLoaded(name)
        table = self.config.plugins.get(name, {})
        if cls.config_keys is not None:
            unknown = sorted(set(table) - set(cls.config_keys) - {"enabled"})
            if unknown:
                hint = difflib.get_close_matches(unknown[0], list(cls.config_keys), n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise PluginLoadError(f"unknown key '{unknown[0]}' in [plugins.{name}]{suggestion}")
        plugin = cls()
        context = PluginContext(
            broker=self.broker,
            config=table,
            data_dir=self.data_dir,
            node_name=self.node_name,
            node_config=self.config,
            delayed_store=self.delayed_store,
        )
        try:
            plugin.load(context)
        except Exception as exc:
            plugin.unload()  # whatever it attached before failing
            if isinstance(exc, PluginLoadError):
                raise
            log.exception("plugin %s failed to load", name)
            raise PluginLoadError(f"{type(exc).__name__}: {exc}") from exc
        self.loaded[name] = plugin
        if spawn_start:
            self._spawn(plugin.start(), f"start {name}")
        log.info("plugin %s loaded", name)
        return plugin

    def reload(self) -> dict[str, bool]:
        """SIGHUP: every loaded plugin with a `reload()` (auth_passwd, acl_file) re-reads its
        file; name -> whether the new file was taken (False: the old one is kept, logged)."""
        results: dict[str, bool] = {}
        for name, plugin in self.loaded.items():
            reload = getattr(plugin, "reload", None)
            if callable(reload):
                try:
                    results[name] = bool(reload())
                except Exception:
                    log.exception("plugin %s failed to reload; keeping its old state", name)
                    results[name] = False
        return results

    # -- the remembered set -----------------------------------------------------------------

    def remembered(self) -> builtins.list[str] | None:
        """The names in loaded_plugins.json; None when there is no file yet."""
        try:
            with open(self.state_path, "rb") as fh:
                doc = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StartupError(
                f"{self.state_path}: corrupt list of loaded plugins ({exc}); "
                "fix the file or remove it to load the plugins enabled in the config"
            ) from None
        names = doc.get("loaded") if isinstance(doc, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise StartupError(
                f'{self.state_path}: corrupt list of loaded plugins (expected {{"loaded": '
                "[names]}); fix the file or remove it to load the plugins enabled in the config"
            )
        return names

    def _remember(self) -> None:
        try:
            write_json_atomic(self.state_path, {"loaded": sorted(self.loaded)})
        except OSError as exc:
            log.error("cannot remember the loaded plugins in %s: %s", self.state_path, exc)

    # -- lifecycle --------------------------------------------------------------------------

    def not_installed(self) -> builtins.list[str]:
        """A message for each [plugins.<name>] table whose plugin is not installed."""
        self._ensure_discovered()
        messages = []
        for name in self.config.plugins:
            if name not in self.available:
                hint = difflib.get_close_matches(name, list(self.available), n=1)
                suggestion = f" (did you mean [plugins.{hint[0]}]?)" if hint else ""
                messages.append(
                    f"[plugins.{name}] configures a plugin that is not installed{suggestion}"
                )
        return messages

    def startup_set(self, *, strict: bool = True) -> builtins.list[str]:
        """The plugins `start` loads, in order (see the module docstring). `strict`: a
        [plugins.<name>] table of a plugin that is not installed is a StartupError."""
        self._ensure_discovered()
        missing = self.not_installed()
        if missing and strict:
            raise StartupError(missing[0])
        remembered = self.remembered()
        if remembered is not None:
            names: builtins.list[str] = []
            for name in remembered:
                if name in self.available:
                    names.append(name)
                else:
                    log.warning("remembered plugin %s is not installed; skipped", name)
        else:
            names = [n for n, table in self.config.plugins.items() if table.get("enabled")]
        for key, name in _FORCED_BY.items():
            if getattr(self.config, key) and name not in names:
                names.append(name)
        if self.config.listener_password_files() and "auth_passwd" not in names:
            names.append("auth_passwd")  # a listener's own password_file
        return names

    def check(self) -> builtins.list[str]:
        """What `start` would refuse, every problem (`--test-config`): each plugin of the
        startup set is loaded (its files read and parsed, its table checked), never started,
        and unloaded again."""
        problems = self.not_installed()
        try:
            names = self.startup_set(strict=False)
        except StartupError as exc:  # a corrupt loaded_plugins.json
            return [*problems, str(exc)]
        for name in names:
            try:
                plugin = self._load(name, spawn_start=False)
            except Exception as exc:
                problems.append(f"plugin {name} cannot load: {exc}")
            else:
                plugin.unload()
                del self.loaded[name]
        return problems

    async def start(self) -> None:
        """Load the startup set; StartupError (with every loaded plugin unloaded) on failure."""
        names = self.startup_set()
        for name in names:
            try:
                plugin = self._load(name, spawn_start=False)
                await plugin.start()
            except Exception as exc:
                await self.stop()
                raise StartupError(f"plugin {name} cannot load: {exc}") from exc
        if names:
            log.info("plugins loaded: %s", ", ".join(names))

    async def stop(self) -> None:
        """Unload every plugin (the remembered set is kept for the next start)."""
        for name in reversed(list(self.loaded)):
            plugin = self.loaded.pop(name)
            plugin.unload()
            try:
                await plugin.stop()
            except Exception:
                log.exception("plugin %s failed to stop", name)
        await self._settle()

    async def _settle(self) -> None:
        """Wait for the start/stop tasks spawned so far."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller without a loop: nothing can run
            coro.close()
            log.warning("plugin %s skipped: no running event loop", what)
            return
        task = loop.create_task(self._guard(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("plugin %s failed", what)
