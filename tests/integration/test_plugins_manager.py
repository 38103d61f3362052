"""The plugin manager: discovery, list, load/unload errors, the remembered set, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_support import app_config, running_app

from broker.plugins.base import Plugin, PluginContext
from broker.plugins.manager import (
    BUILTIN_PLUGINS,
    PluginAlreadyLoaded,
    PluginLoadError,
    PluginManager,
    PluginNotFound,
    PluginNotLoaded,
)
from broker.server.config import ConfigError, parse_config
from broker.server.errors import StartupError

BUILTINS = sorted(BUILTIN_PLUGINS)


def _state(tmp_path: Path) -> object:
    return json.loads((tmp_path / "data" / "loaded_plugins.json").read_text())


async def test_list_and_entry_points(tmp_path: Path) -> None:
    async with running_app(app_config(tmp_path)) as app:
        assert app.plugins.discover() == BUILTINS
        listed = app.plugins.list()
        assert [p["name"] for p in listed] == BUILTINS
        for plugin in listed:
            assert set(plugin) == {"name", "version", "description", "active"}
            assert isinstance(plugin["version"], str) and plugin["version"]
            assert isinstance(plugin["description"], str) and plugin["description"]
            assert plugin["active"] is False
    # the built-ins are registered as entry points too (pyproject.toml)
    from importlib.metadata import entry_points

    names = {e.name: e.value for e in entry_points(group="minibroker.plugins")}
    assert names == BUILTIN_PLUGINS


async def test_load_unload_errors_and_remembered(tmp_path: Path) -> None:
    async with running_app(app_config(tmp_path)) as app:
        with pytest.raises(PluginNotFound):
            app.plugins.load("nope")
        with pytest.raises(PluginNotFound):
            app.plugins.unload("nope")
        with pytest.raises(PluginNotLoaded):
            app.plugins.unload("presence")
        app.plugins.load("presence")
        with pytest.raises(PluginAlreadyLoaded):
            app.plugins.load("presence")
        app.plugins.load("delayed_publish")
        active = {p["name"] for p in app.plugins.list() if p["active"]}
        assert active == {"presence", "delayed_publish"}
        assert _state(tmp_path) == {"loaded": ["delayed_publish", "presence"]}
        app.plugins.unload("delayed_publish")
        assert _state(tmp_path) == {"loaded": ["presence"]}
        # a plugin that cannot work says why, and attaches nothing
        with pytest.raises(PluginLoadError, match="password"):
            app.plugins.load("auth_passwd")
        assert app.broker.hooks.authenticate == []
        assert _state(tmp_path) == {"loaded": ["presence"]}
    assert not list((tmp_path / "data").glob(".loaded_plugins.json.*"))  # no temp files left

    # the remembered set wins over the config on the next start
    cfg = app_config(tmp_path, plugins={"delayed_publish": {"enabled": True}})
    async with running_app(cfg) as app:
        assert {p["name"] for p in app.plugins.list() if p["active"]} == {"presence"}


async def test_config_enabled_without_remembered_file(tmp_path: Path) -> None:
    cfg = app_config(
        tmp_path,
        plugins={"presence": {"enabled": True}, "delayed_publish": {"enabled": False}},
    )
    async with running_app(cfg) as app:
        assert {p["name"] for p in app.plugins.list() if p["active"]} == {"presence"}
    assert not (tmp_path / "data" / "loaded_plugins.json").exists()


async def test_password_file_forces_auth_even_if_remembered_unloaded(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    data = tmp_path / "data"
    data.mkdir()
    (data / "loaded_plugins.json").write_text('{"loaded": []}')
    cfg = app_config(tmp_path, password_file=str(passwd))
    async with running_app(cfg) as app:
        assert app.plugins.get("auth_passwd") is not None


async def test_corrupt_remembered_file_refuses_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "loaded_plugins.json").write_text("{not json")
    with pytest.raises(StartupError, match=r"loaded_plugins\.json: corrupt"):
        async with running_app(app_config(tmp_path)):
            pass


async def test_unknown_plugin_section_refuses_start(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, plugins={"presense": {"enabled": True}})
    with pytest.raises(StartupError, match=r"\[plugins\.presense\].*did you mean"):
        async with running_app(cfg):
            pass


def test_plugin_config_validated_by_the_loader() -> None:
    cfg = parse_config(
        '[plugins.web_hook]\nenabled = true\nurl = "http://127.0.0.1:1/x"\nqueue_size = 5\n'
        "[plugins.presence]\nenabled = false\n"
        "[plugins.thirdparty]\nenabled = true\ncolour = 'blue'\n"
    )
    assert cfg.plugins["web_hook"] == {
        "enabled": True,
        "url": "http://127.0.0.1:1/x",
        "queue_size": 5,
    }
    assert cfg.plugins["thirdparty"] == {"enabled": True, "colour": "blue"}
    for text, expected in [
        ("[plugins.presence]\nqso = 1", "unknown key 'qso' in [plugins.presence]"),
        ("[plugins.presence]\nenabled = 1", "'enabled' in [plugins.presence] must be true"),
        ("[plugins.web_hook]\nenabled = true", "'url' in [plugins.web_hook] is required"),
        ("[plugins.web_hook]\nurl = 'ftp://x'", "'url' in [plugins.web_hook] must be an http"),
        ("[plugins.web_hook]\nevents = ['x']", "'events' in [plugins.web_hook] entries"),
        ("[plugins.delayed_publish]\nmax_pending = 0", "'max_pending' in [plugins.delayed_"),
        ("[plugins.other]\nenabled = 'yes'", "'enabled' in [plugins.other] must be true"),
        ("[plugins]\npresence = 1", "'presence' in [plugins] must be a table"),
        (
            "password_file = 'a'\n[plugins.auth_passwd]\nfile = 'b'",
            "'password_file' at the top level and 'file' in [plugins.auth_passwd]",
        ),
        ("[alarms]\nsysmem_high_watermark = 70", "'sysmem_high_watermark' in [alarms] must be"),
        ("[alarms]\ncheck_intervall = 1", "unknown key 'check_intervall' in [alarms] (did you"),
        ("[alarm]\ncheck_interval = 1", "unknown section [alarm] (did you mean [alarms]?)"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config(text, "c.toml")
        assert str(info.value).startswith(f"c.toml: {expected}"), str(info.value)


class _Counter(Plugin):
    """A third-party style plugin: checks its own keys, counts connections."""

    name = "counter"
    description = "counts connections"
    config_keys = frozenset({"step"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        step = int(ctx.config.get("step", 1))

        def connected(client: object) -> None:
            self.count += step

        self.attach(ctx.broker.hooks.client_connected, connected)


async def test_third_party_plugin_keys_checked_and_unload_exact(tmp_path: Path) -> None:
    async with running_app(app_config(tmp_path)) as app:
        foreign = app.broker.hooks.client_connected
        other = [lambda client: None]
        foreign.extend(other)  # someone else's callable stays through our unload
        manager = PluginManager(app.broker, app.config, str(tmp_path / "d2"))
        manager.discover()
        manager.available["counter"] = _Counter
        manager.config = app_config(tmp_path, plugins={"counter": {"colour": 1}})
        with pytest.raises(PluginLoadError, match=r"unknown key 'colour' in \[plugins.counter\]"):
            manager.load("counter")
        manager.config = app_config(tmp_path, plugins={"counter": {"step": 2}})
        manager.load("counter")
        assert len(foreign) == 2
        manager.unload("counter")
        assert foreign == other
        await manager.stop()
