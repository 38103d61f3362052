"""delayed_publish: `$delayed/<seconds>/<topic>` held back, then published; bounded; unloadable."""

from __future__ import annotations

from pathlib import Path

import pytest
from plugin_support import app_config, client, running_app
from test_core_support import next_message, payloads, until_sentinel

from broker.plugins.delayed_publish import MAX_DELAY, DelayedPublishPlugin, parse_delayed


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$delayed/10/a/b", (10, "a/b")),
        ("$delayed/0/a", (0, "a")),
        (f"$delayed/{MAX_DELAY}/a", (MAX_DELAY, "a")),
        (f"$delayed/{MAX_DELAY + 1}/a", None),
        ("$delayed/-1/a", None),
        ("$delayed/1.5/a", None),
        ("$delayed/x/a", None),
        ("$delayed/10", None),
        ("$delayed/10/", None),
        ("$delayed/10/$SYS/x", None),
        ("$delayed/10/$delayed/1/a", None),
        ("a/b", None),
    ],
)
def test_parse_delayed(topic: str, expected: tuple[int, str] | None) -> None:
    assert parse_delayed(topic) == expected


def _plugin(app: object) -> DelayedPublishPlugin:
    plugin = app.plugins.get("delayed_publish")  # type: ignore[attr-defined]
    assert isinstance(plugin, DelayedPublishPlugin)
    return plugin


async def test_delayed_then_delivered(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, plugins={"delayed_publish": {"enabled": True}})
    async with (
        running_app(cfg) as app,
        client(app, "sub") as sub,
        client(app, "pub") as pub,
    ):
        plugin = _plugin(app)
        await sub.subscribe("t/#", qos=1)
        await pub.publish("$delayed/1/t/late", b"late", qos=1)
        # not delivered at once: a message published afterwards arrives first, alone
        assert await until_sentinel(sub, pub, "t/sentinel", qos=1) == []
        assert plugin.pending == 1 and plugin.scheduled == 1
        message = await next_message(sub)
        assert (message.topic.value, message.payload, message.qos) == ("t/late", b"late", 1)
        assert plugin.pending == 0 and plugin.published == 1


async def test_bounded_and_invalid_dropped(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, plugins={"delayed_publish": {"enabled": True, "max_pending": 2}})
    async with running_app(cfg) as app, client(app, "pub") as pub, client(app, "sub") as sub:
        plugin = _plugin(app)
        await sub.subscribe("#", qos=1)
        dropped_before = app.broker.metrics.counters["messages/dropped"]
        for i in range(4):
            await pub.publish(f"$delayed/1000/t/{i}", b"x", qos=1)
        await pub.publish("$delayed/soon/t/x", b"bad", qos=1)
        await pub.publish("$delayed/1000/$SYS/x", b"bad", qos=1)
        # nothing is published under $delayed/...: the hook swallowed all of them
        assert await until_sentinel(sub, pub, "sentinel", qos=1) == []
        assert (plugin.pending, plugin.dropped_full, plugin.dropped_invalid) == (2, 2, 2)
        assert app.broker.metrics.counters["messages/dropped"] - dropped_before >= 4
        app.plugins.unload("delayed_publish")
        assert plugin.pending == 0 and plugin.discarded == 2


async def test_after_unload_topic_is_literal(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, plugins={"delayed_publish": {"enabled": True}})
    async with running_app(cfg) as app, client(app, "pub") as pub, client(app, "sub") as sub:
        await sub.subscribe("$delayed/#", qos=1)
        await sub.subscribe("t/#", qos=1)
        app.plugins.unload("delayed_publish")
        assert app.broker.hooks.message_publish == []
        await pub.publish("$delayed/100/t/x", b"plain", qos=1)
        got = await until_sentinel(sub, pub, "t/sentinel", qos=1)
        assert [m.topic.value for m in got] == ["$delayed/100/t/x"]
        assert payloads(got) == [b"plain"]
