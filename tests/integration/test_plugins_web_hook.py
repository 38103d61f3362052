"""web_hook: events POSTed as JSON to a small aiohttp server started by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from plugin_support import app_config, client, running_app
from test_core_support import eventually

from broker.plugins.web_hook import WebHookPlugin


@dataclass
class HookServer:
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0  # answer that many requests with 500 first
    gate: asyncio.Event | None = None  # when set, requests wait for it
    requests: int = 0

    def actions(self, client_id: str) -> list[str]:
        return [
            e["action"]
            for e in self.events
            if client_id in (e.get("client_id"), e.get("from_client_id"))
        ]


@pytest.fixture
async def hook_server() -> AsyncIterator[HookServer]:
    state = HookServer()

    async def receive(request: web.Request) -> web.Response:
        state.requests += 1
        if state.gate is not None:
            await state.gate.wait()
        if state.fail_first > 0:
            state.fail_first -= 1
            return web.Response(status=500)
        state.events.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    if state.gate is not None:
        state.gate.set()
    await runner.cleanup()


def _plugin(app: Any) -> WebHookPlugin:
    plugin = app.plugins.get("web_hook")
    assert isinstance(plugin, WebHookPlugin)
    return plugin


def _config(tmp_path: Path, server: HookServer, **extra: Any) -> Any:
    table = {"enabled": True, "url": server.url, "retry_backoff": 0.01, **extra}
    return app_config(tmp_path, plugins={"web_hook": table})


async def test_events_posted_with_retry(tmp_path: Path, hook_server: HookServer) -> None:
    hook_server.fail_first = 2  # the first event needs two retries
    async with running_app(_config(tmp_path, hook_server)) as app:
        async with client(app, "c1", username="u1", keepalive=30) as c:
            await c.subscribe("t/#", qos=1)
            await c.publish("t/a", b"hello", qos=1, retain=True)
        await eventually(lambda: len(hook_server.actions("c1")) == 4)
        assert hook_server.actions("c1") == [
            "client_connected",
            "session_subscribed",
            "message_publish",
            "client_disconnected",
        ]
        connected, subscribed, published, disconnected = (
            e for e in hook_server.events if "c1" in (e.get("client_id"), e.get("from_client_id"))
        )
        assert connected["username"] == "u1" and connected["ipaddress"] == "127.0.0.1"
        assert connected["proto_ver"] == 4 and connected["keepalive"] == 30
        assert isinstance(connected["connected_at"], int)
        assert subscribed["topic"] == "t/#" and subscribed["opts"] == {"qos": 1}
        assert published["topic"] == "t/a" and published["payload"] == "hello"
        assert published["qos"] == 1 and published["retain"] is True
        assert published["from_username"] == "u1"
        assert disconnected["reason"] == "normal"
        assert {e["node"] for e in hook_server.events} == {app.config.node_name}
        plugin = _plugin(app)
        assert plugin.retried == 2 and plugin.failed == 0 and plugin.dropped == 0


async def test_queue_bounded_drops_counted(tmp_path: Path, hook_server: HookServer) -> None:
    hook_server.gate = asyncio.Event()  # the server hangs: the worker is stuck on one event
    cfg = _config(tmp_path, hook_server, queue_size=1, events=["message.publish"])
    async with running_app(cfg) as app:
        plugin = _plugin(app)
        async with client(app, "c2") as c:
            for i in range(6):
                await c.publish("t/x", str(i).encode(), qos=1)
        # one event in flight at most, one queued: the rest is dropped and counted
        assert plugin.dropped >= 4
        hook_server.gate.set()
        await eventually(lambda: plugin.queue.empty() and plugin.posted >= 1)
        assert plugin.posted + plugin.dropped == 6


async def test_nothing_posted_after_unload(tmp_path: Path, hook_server: HookServer) -> None:
    async with running_app(_config(tmp_path, hook_server)) as app:
        app.plugins.unload("web_hook")
        for hooks in (
            app.broker.hooks.client_connected,
            app.broker.hooks.client_disconnected,
            app.broker.hooks.session_subscribed,
            app.broker.hooks.message_publish,
        ):
            assert hooks == []
        async with client(app, "ghost") as c:
            await c.publish("t/x", b"unseen", qos=1)
        app.plugins.load("web_hook")
        async with client(app, "sentinel"):
            pass
        await eventually(lambda: "client_disconnected" in hook_server.actions("sentinel"))
        assert hook_server.actions("ghost") == []


async def test_gives_up_after_max_retries(tmp_path: Path, hook_server: HookServer) -> None:
    hook_server.fail_first = 100
    cfg = _config(tmp_path, hook_server, max_retries=2, events=["client.connected"])
    async with running_app(cfg) as app:
        async with client(app, "c3"):
            pass
        plugin = _plugin(app)
        await eventually(lambda: plugin.failed == 1)
        assert hook_server.requests == 3 and plugin.posted == 0
