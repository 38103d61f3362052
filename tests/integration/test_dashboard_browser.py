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
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, NODE, AppFactory, basic
from rawclient import RawClient

from broker.protocol.packets import ConnAck
from broker.server.config import AlarmsConfig, ManagementConfig

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
README_SHOTS = ROOT / "management" / "dashboard" / "screenshots"
NODE_BIN = shutil.which("node")
UPDATE_SHOTS = os.environ.get("MINIBROKER_UPDATE_SCREENSHOTS") == "1"
#: The screenshots the README shows, from this test.
README_SHOT_NAMES = (
    "login.png", "overview.png", "clients.png", "client-actions.png", "retained.png",
    "listeners.png", "websocket.png", "apps.png", "alarms.png",
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
ALARM = "connections_high_watermark"
GIVEN_SECRET = "given-secret-42"
#: No alarm timer and no mark in reach but the connections one, which the test moves itself.
QUIET_ALARMS = AlarmsConfig(
    sysmem_high_watermark=1.0,
    procmem_high_watermark=1.0,
    cpu_high_watermark=1e9,
    connections_high_watermark=0,
    check_interval=0,
)


async def _get(port: int, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=basic(*ADMIN)) as reply,
    ):
        assert reply.status == 200, await reply.text()
        return await reply.json()


async def _status(port: int, path: str, auth: tuple[str, str]) -> int:
    """The HTTP status of a GET with these credentials."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=basic(*auth)) as reply,
    ):
        return reply.status


async def _app_event(port: int, event: dict[str, Any], secrets: dict[str, str]) -> None:
    """Check over REST what the apps page just did: the app signs in, or is refused."""
    app_id = event["appId"]
    if event["event"] == "app-created":
        secrets[app_id] = event["secret"]
    auth = (app_id, secrets[app_id])
    accepted = await _status(port, "/api/v3/brokers/", auth)
    if event["event"] == "app-deleted":
        assert accepted == 401
        assert await _status(port, f"/api/v3/apps/{app_id}", ADMIN) == 404
        return
    row = await _get(port, f"/api/v3/apps/{app_id}")
    now = time.time()
    if event["event"] == "app-created" and app_id == "ci-generated":
        assert accepted == 200
        assert row == {"app_id": app_id, "name": "CI pipeline", "desc": "deploys the site",
                       "status": True, "expired": None}  # fmt: skip
    elif event["event"] == "app-created":
        assert accepted == 200 and event["secret"] == GIVEN_SECRET
        assert row["name"] == "Monitoring" and row["expired"] > now + 365 * 86400
    elif event["event"] == "app-disabled":
        assert accepted == 401
        assert row["status"] is False and row["name"] == "CI pipeline (paused)"
        assert row["desc"] == "paused for the migration"
    elif event["event"] == "app-expired":
        assert accepted == 401
        assert row["status"] is True and row["expired"] < now
    else:
        assert event["event"] == "app-enabled"
        assert accepted == 200 and row["status"] is True


def _alarm_event(app: Any, event: str) -> None:
    """Raise the connections alarm (two clients are connected: above a mark of 1), or clear it
    (mark 0 switches the monitor off), through the alarm manager's own check."""
    raise_it = event in ("alarms-open", "alarm-again")
    app.alarms.config.connections_high_watermark = 1 if raise_it else 0
    app.alarms.check()
    assert [a["id"] for a in app.alarms.list()] == ([ALARM] if raise_it else [])
    assert [a["id"] for a in app.alarms.history()] == ([] if event == "alarms-open" else [ALARM])


ACKED = {"alarms-open", "alarm-seen", "alarm-again", "app-created", "app-disabled", "app-expired",
         "app-enabled", "app-deleted"}  # fmt: skip


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
    app = await app_factory(
        management=ManagementConfig(bind="127.0.0.1", port=0), sys_interval=1, alarms=QUIET_ALARMS
    )
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
        "alarmId": ALARM,
        "givenSecret": GIVEN_SECRET,
    }
    app_secrets: dict[str, str] = {}
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
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
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
                    elif event["event"] in ("alarms-open", "alarm-seen", "alarm-again"):
                        _alarm_event(app, event["event"])
                    elif event["event"].startswith("app-"):
                        await _app_event(port, event, app_secrets)
                    if event["event"] in ACKED:
                        proc.stdin.write(json.dumps({"ack": event["event"]}).encode() + b"\n")
                        await proc.stdin.drain()
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
        "retained-delete", "plugins", "alarms", "banned", "apps-create", "apps-edit",
        "apps-delete", "listeners", "websocket", "overview-live",
    ]  # fmt: skip
    assert events[-1]["event"] == "done"
    # After the browser left: the ban was lifted, the kicked client is gone.
    assert (await _get(port, "/api/v3/banned/"))["items"] == []
    assert await _get(port, "/api/v3/connections/victim-1") == []
    # the app deleted in the UI is gone; the expired one stays, listed
    assert [a["app_id"] for a in await _get(port, "/api/v3/apps/")] == ["admin", "ci-given"]
    names = {p.name for p in shots.iterdir()}
    assert set(README_SHOT_NAMES) | {"plugins.png"} <= names
    if UPDATE_SHOTS:
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        for name in README_SHOT_NAMES:
            shutil.copy(shots / name, README_SHOTS / name)
