"""The web dashboard in a real browser: Debian's headless Chromium driven by playwright-core
(`tests/browser/run.mjs`) against a real node, with real MQTT clients on the Python side.

Skipped (not failed) without /usr/bin/chromium, node, or `tests/browser/node_modules` (`npm ci`
in tests/browser). Screenshots go to the test's tmp dir; with MINIBROKER_UPDATE_SCREENSHOTS=1
the README's copies in management/dashboard/screenshots/ are refreshed from this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, NODE, AppFactory, basic
from rawclient import RawClient

from broker.protocol.packets import ConnAck
from broker.server.config import ManagementConfig

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
README_SHOTS = ROOT / "management" / "dashboard" / "screenshots"
NODE_BIN = shutil.which("node")
UPDATE_SHOTS = os.environ.get("MINIBROKER_UPDATE_SCREENSHOTS") == "1"
#: The screenshots the README shows, from this test.
README_SHOT_NAMES = (
    "login.png", "overview.png", "clients.png", "client-actions.png", "retained.png",
    "listeners.png", "websocket.png",
)  # fmt: skip

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(),
        reason="needs playwright-core (npm ci in tests/browser)",
    ),
    pytest.mark.skipif(NODE_BIN is None, reason="needs node"),
    pytest.mark.timeout(150),
]

SUB_TOPIC = "dash/sensors/+"
WS_TOPIC = "dash/ws/#"
WS_PAYLOAD = "hello from python"
FROM_BROWSER = "dash/from-browser"
FROM_UI = "dash/from-ui"  # published "as sensor-1" from the client page (REST /mqtt/publish)
UI_PAYLOAD = "published by the dashboard"
RETAINED = "dash/config/site"


async def _get(port: int, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=basic(*ADMIN)) as reply,
    ):
        assert reply.status == 200, await reply.text()
        return await reply.json()


async def _publish_load(client: aiomqtt.Client, stop: asyncio.Event) -> None:
    """Some traffic for the overview's message-rate chart."""
    n = 0
    while not stop.is_set():
        await client.publish("dash/sensors/temp", str(20 + n % 5))
        n += 1
        await asyncio.sleep(0.02 if (n // 100) % 3 else 0.1)  # a rate that changes over time


async def _next_on(client: aiomqtt.Client, topic: str) -> aiomqtt.Message:
    """The next message on `topic` (others, the load's, are skipped); bounded."""
    async with asyncio.timeout(15):
        async for message in client.messages:
            if message.topic.matches(topic):
                return message
    raise AssertionError(f"no message on {topic}")


async def test_dashboard_in_chromium(app_factory: AppFactory, tmp_path: Path) -> None:
    # $SYS every second: the retained page must hide those topics by default
    app = await app_factory(management=ManagementConfig(bind="127.0.0.1", port=0), sys_interval=1)
    port, tcp = app.http_port, app.node.tcp_port
    shots = tmp_path / "screenshots"
    shots.mkdir()
    config = {
        "url": f"http://127.0.0.1:{port}/dashboard/",
        "app": ADMIN[0],
        "secret": ADMIN[1],
        "node": NODE,
        "clientId": "sensor-1",
        "victimId": "victim-1",
        "subTopic": SUB_TOPIC,
        "plugin": "presence",
        "wsTopic": WS_TOPIC,
        "wsPayload": WS_PAYLOAD,
        "fromBrowserTopic": FROM_BROWSER,
        "retainedTopic": RETAINED,
        "uiTopic": "dash/ui/#",
        "uiPublishTopic": FROM_UI,
        "uiPayload": UI_PAYLOAD,
        "retainedPayload": "north-wing",
        "screenshots": str(shots),
        "chromium": str(CHROMIUM),
        # Long enough for a telling chart when refreshing the README's screenshots.
        "overviewSeconds": 40 if UPDATE_SHOTS else 3,
    }
    plugins = await _get(port, f"/api/v3/nodes/{NODE}/plugins/")
    assert {"name": "presence", "active": False}.items() <= next(
        p for p in plugins if p["name"] == "presence"
    ).items()

    victim, connack = await RawClient.connect(tcp, "victim-1", keepalive=0)
    assert isinstance(connack, ConnAck) and connack.reason_code == 0
    events: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with (
        aiomqtt.Client("127.0.0.1", tcp, identifier="sensor-1", timeout=5) as sensor,
        aiomqtt.Client("127.0.0.1", tcp, identifier="py-listener", timeout=5) as listener,
    ):
        await sensor.subscribe(SUB_TOPIC)
        await listener.subscribe(FROM_BROWSER)
        await listener.subscribe(FROM_UI)
        await listener.subscribe("dash/sensors/#")  # two deliveries per published message
        await sensor.publish(RETAINED, b"north-wing", qos=1, retain=True)
        load = asyncio.create_task(_publish_load(sensor, stop))
        proc = await asyncio.create_subprocess_exec(
            NODE_BIN or "node",
            str(BROWSER_DIR / "run.mjs"),
            json.dumps(config),
            cwd=BROWSER_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(120):
                async for raw in proc.stdout:
                    line = raw.decode().strip()
                    if not line.startswith("{"):
                        continue
                    event = json.loads(line)
                    events.append(event)
                    if event["event"] == "kicked":
                        # The kick went through the UI; the client's socket is closed.
                        assert await victim.closed(timeout=5)
                    elif event["event"] == "plugin-loaded":
                        plugins = await _get(port, f"/api/v3/nodes/{NODE}/plugins/")
                        assert next(p for p in plugins if p["name"] == "presence")["active"]
                    elif event["event"] == "banned":
                        banned = await _get(port, "/api/v3/banned/")
                        assert [b["who"] for b in banned["items"]] == ["evil-client"]
                    elif event["event"] == "client-published":
                        message = await _next_on(listener, FROM_UI)
                        assert message.payload == UI_PAYLOAD.encode()
                    elif event["event"] == "retained-deleted":
                        retained = await _get(port, "/api/v3/retained/")
                        assert RETAINED not in [r["topic"] for r in retained["items"]]
                    elif event["event"] == "ws-subscribed":
                        await sensor.publish("dash/ws/greeting", WS_PAYLOAD)
                        message = await _next_on(listener, FROM_BROWSER)
                        assert message.payload == b"hello from chromium"
                await proc.wait()
        finally:
            stop.set()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            stderr = (await proc.stderr.read()).decode()
            await proc.wait()
            await load
            await victim.close()
    assert proc.returncode == 0, f"{events[-1:]}\n{stderr}"
    steps = [e["step"] for e in events if e["event"] == "ok"]
    assert steps == [
        "login-page", "wrong-secret", "sign-in", "helpers", "overview", "clients",
        "client-actions", "kick", "sessions", "subscriptions", "routes", "retained",
        "retained-delete", "plugins", "alarms", "banned", "listeners", "websocket",
        "overview-live",
    ]  # fmt: skip
    assert events[-1]["event"] == "done"
    # After the browser left: the ban was lifted, the kicked client is gone.
    assert (await _get(port, "/api/v3/banned/"))["items"] == []
    assert await _get(port, "/api/v3/connections/victim-1") == []
    names = {p.name for p in shots.iterdir()}
    assert {"overview.png", "clients.png", "plugins.png", "websocket.png", "login.png"} <= names
    if UPDATE_SHOTS:
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        for name in README_SHOT_NAMES:
            shutil.copy(shots / name, README_SHOTS / name)
