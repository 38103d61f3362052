"""delayed_publish with persistence, in process: unloading keeps the pending messages in the
store for the next load, a restart gives them back (rescheduled, not fired early), and the
restored ones count against `max_pending`."""

from __future__ import annotations

from pathlib import Path

from plugin_support import app_config, client, running_app

from broker.app import NodeApp
from broker.plugins.delayed_publish import DelayedPublishPlugin
from broker.server.persistence import Persistence


def _plugin(app: NodeApp) -> DelayedPublishPlugin:
    plugin = app.plugins.get("delayed_publish")
    assert isinstance(plugin, DelayedPublishPlugin)
    return plugin


def _store(app: NodeApp) -> Persistence:
    assert app.node.persistence is not None
    return app.node.persistence


async def test_unload_keeps_them_for_the_next_load(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, persistence=True, plugins={"delayed_publish": {"enabled": True}})
    async with running_app(cfg) as app, client(app, "pub") as pub:
        plugin = _plugin(app)
        for i in range(2):
            await pub.publish(f"$delayed/1000/t/{i}", b"x", qos=1)
        assert plugin.pending == 2 and len(_store(app).delayed) == 2
        app.plugins.unload("delayed_publish")
        assert plugin.pending == 0 and plugin.discarded == 0
        assert len(_store(app).delayed) == 2  # still saved, for the next load
        app.plugins.load("delayed_publish")
        again = _plugin(app)
        assert again.pending == 2 and again.restored == 2


async def test_restart_reschedules_and_max_pending_counts_them(tmp_path: Path) -> None:
    plugins = {"delayed_publish": {"enabled": True, "max_pending": 2}}
    cfg = app_config(tmp_path, persistence=True, plugins=plugins)
    async with running_app(cfg) as app, client(app, "pub") as pub:
        for i in range(2):
            await pub.publish(f"$delayed/1000/t/{i}", b"x", qos=1)
        assert _plugin(app).pending == 2
        due = sorted(due for due, _ in _store(app).delayed.pending.values())
    async with running_app(cfg) as app, client(app, "pub") as pub:
        plugin = _plugin(app)
        assert (plugin.pending, plugin.restored, plugin.published) == (2, 2, 0)
        assert sorted(d for d, _ in _store(app).delayed.pending.values()) == due  # same due
        await pub.publish("$delayed/1000/t/full", b"x", qos=1)
        assert plugin.pending == 2 and plugin.dropped_full == 1
