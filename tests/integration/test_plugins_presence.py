"""presence: $SYS/brokers/<node>/clients/<clientid>/connected|disconnected while loaded only."""

from __future__ import annotations

from pathlib import Path

from plugin_support import app_config, client, json_payload, running_app
from test_core_support import next_message, until_sentinel

NODE = "test@127.0.0.1"
PREFIX = f"$SYS/brokers/{NODE}/clients"


async def test_connected_and_disconnected(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, plugins={"presence": {"enabled": True}})
    async with running_app(cfg) as app, client(app, "watcher") as watcher:
        await watcher.subscribe(f"{PREFIX}/+/connected")
        await watcher.subscribe(f"{PREFIX}/+/disconnected")
        async with client(app, "dev-1", username="alice", keepalive=42):
            message = await next_message(watcher)
            assert message.topic.value == f"{PREFIX}/dev-1/connected"
            assert message.retain is False
            data = json_payload(message)
            assert data["clientid"] == "dev-1" and data["username"] == "alice"
            assert data["ipaddress"] == "127.0.0.1"
            assert data["proto_ver"] == 4 and data["keepalive"] == 42
            assert data["proto_name"] == "MQTT" and data["clean_start"] is True
            assert isinstance(data["connected_at"], int) and isinstance(data["ts"], int)
        message = await next_message(watcher)
        assert message.topic.value == f"{PREFIX}/dev-1/disconnected"
        data = json_payload(message)
        assert data["clientid"] == "dev-1" and data["username"] == "alice"
        assert data["reason"] == "normal" and isinstance(data["ts"], int)

        async with client(app, "anon"):
            message = await next_message(watcher)
            assert json_payload(message)["username"] == "undefined"


async def test_silent_after_unload(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, plugins={"presence": {"enabled": True}})
    async with running_app(cfg) as app, client(app, "watcher") as watcher:
        await watcher.subscribe(f"{PREFIX}/#", qos=1)
        await watcher.subscribe("sentinel", qos=1)
        app.plugins.unload("presence")
        assert app.broker.hooks.client_connected == []
        assert app.broker.hooks.client_disconnected == []
        async with client(app, "quiet"):
            pass
        # the broker handles the CONNECT/DISCONNECT before the sentinel PUBLISH that follows
        assert await until_sentinel(watcher, watcher, "sentinel", qos=1) == []
        app.plugins.load("presence")
        async with client(app, "loud"):
            pass
        got = await until_sentinel(watcher, watcher, "sentinel", qos=1)
        assert [m.topic.value for m in got] == [
            f"{PREFIX}/loud/connected",
            f"{PREFIX}/loud/disconnected",
        ]
