"""The dashboard's static assets as served on the management listener (no browser needed)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from api_support import AppFactory

from broker.server.config import ManagementConfig, parse_config
from management.dashboard_app import ASSETS, CONTENT_TYPES

SCRIPTS = ("app.js", "api.js", "pages.js", "apps.js", "alarms.js", "ui.js", "charts.js",
           "mqtt.js", "workers.js")  # fmt: skip
URL = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}|https?://", re.I)


def _assets() -> list[Path]:
    return [p for p in ASSETS.iterdir() if p.is_file() and p.suffix in (".html", ".js", ".css")]


async def test_index_and_assets(app_factory: AppFactory) -> None:
    app = await app_factory()
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession(base) as http:
        async with http.get("/dashboard", allow_redirects=False) as reply:
            assert reply.status == 302
            assert reply.headers["Location"] == "/dashboard/"
        async with http.get("/dashboard/") as reply:
            assert reply.status == 200
            assert reply.content_type == "text/html"
            assert reply.charset == "utf-8"
            assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
            html = await reply.text()
        assert '<script type="module" src="app.js">' in html
        assert (await (await http.get("/dashboard/index.html")).text()) == html
        for name in SCRIPTS:
            async with http.get(f"/dashboard/{name}") as reply:
                assert reply.status == 200, name
                assert reply.content_type == "text/javascript", name
                assert reply.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get("/dashboard/style.css") as reply:
            assert reply.status == 200 and reply.content_type == "text/css"
        async with http.get("/dashboard/screenshots/overview.png") as reply:
            assert reply.status == 200 and reply.content_type == "image/png"
        # No credentials are needed for the page itself; the API still wants them.
        async with http.get("/api/v3/brokers/") as reply:
            assert reply.status == 401


async def test_missing_and_traversal_are_404(app_factory: AppFactory) -> None:
    app = await app_factory()
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession(base) as http:
        for path in (
            "/dashboard/nosuch.js",
            "/dashboard/%2e%2e/api.py",
            "/dashboard/..%2Fapi.py",
            "/dashboard/../dashboard_app.py",
            "/dashboard/.hidden.js",
            "/dashboard/screenshots/",
        ):
            async with http.get(path) as reply:
                assert reply.status == 404, path
                assert await reply.json() == {"message": "not_found"}


async def test_disabled_by_config(app_factory: AppFactory) -> None:
    app = await app_factory(management=ManagementConfig("127.0.0.1", 0, dashboard=False))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        for path in ("/dashboard", "/dashboard/", "/dashboard/app.js"):
            async with http.get(path, allow_redirects=False) as reply:
                assert reply.status == 404, path
        async with http.get("/status") as reply:
            assert reply.status == 200  # the rest of the listener is unaffected


def test_assets_reference_no_other_host() -> None:
    """The page must work with no internet: no CDN, no absolute URL to anywhere."""
    assets = _assets()
    assert {p.name for p in assets} >= {"index.html", "style.css", *SCRIPTS}
    for path in assets:
        text = path.read_text("utf-8")
        assert not URL.search(text), f"{path.name}: {URL.search(text)}"
        assert "@import" not in text and "url(" not in text.replace("data:", ""), path.name
    for path in ASSETS.rglob("*"):
        if path.is_file():
            assert path.suffix in CONTENT_TYPES, path


def test_config_key() -> None:
    assert parse_config("[management]\ndashboard = false\n").management.dashboard is False
    assert parse_config("").management.dashboard is True


MQTT_JS_CHECK = """
import * as m from '%s';
const out = {};
out.connect = [...m.encodeConnect({ clientId: 'c1', keepalive: 30, username: 'u', password: 'p' })];
out.subscribe = [...m.encodeSubscribe(7, 'a/#', 0)];
const big = m.encodePublish('t', 'x'.repeat(200));
out.bigHeader = [...big.slice(0, 3)];
out.ping = [...m.encodePingreq()];
// Split a stream anywhere: whole packets come out, the rest waits.
const stream = new Uint8Array([...big, 0x90, 3, 0, 7, 0, 0xd0, 0]);
const [first, rest] = m.decode(stream.slice(0, 100));
const [second, rest2] = m.decode(new Uint8Array([...rest, ...stream.slice(100)]));
out.first = first.length;
out.second = second.map((p) => p.type === 'publish'
  ? [p.type, p.topic, p.payload.length] : [p.type, p.packetId ?? null, p.codes ?? null]);
out.rest = rest2.length;
console.log(JSON.stringify(out));
"""


def test_mqtt_js_codec(tmp_path: Path) -> None:
    """The WebSocket page's MQTT 3.1.1 encoder/decoder, run in node (skipped without it)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node")
    script = tmp_path / "codec_check.mjs"
    script.write_text(MQTT_JS_CHECK % (ASSETS / "mqtt.js").as_uri(), "utf-8")
    done = subprocess.run(
        [node, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    out = json.loads(done.stdout)
    assert out["connect"] == [
        0x10, 20, 0, 4, *b"MQTT", 4, 0xC2, 0, 30, 0, 2, *b"c1", 0, 1, *b"u", 0, 1, *b"p"
    ]  # fmt: skip
    assert out["subscribe"] == [0x82, 8, 0, 7, 0, 3, *b"a/#", 0]
    assert out["bigHeader"] == [0x30, 203 % 128 + 128, 1]  # remaining length 203 in 2 bytes
    assert out["ping"] == [0xC0, 0]
    assert out["first"] == 0
    assert out["second"] == [["publish", "t", 200], ["suback", 7, [0]], ["pingresp", None, None]]
    assert out["rest"] == 0


API_JS_CHECK = """
const base = %s;
globalThis.sessionStorage = { getItem: () => JSON.stringify({ app: 'admin', secret: 'public' }),
  setItem() {}, removeItem() {} };
const realFetch = globalThis.fetch;
globalThis.fetch = (url, init) => realFetch(base + url.replace(/^\\.\\./, ''), init);
const { api, get } = await import('%s');
const out = {};
const caught = async (fn) => { try { await fn(); return null; } catch (e) { return e.message; } };
out.page = await get('/connections/?_page=1&_limit=5');
out.nodes = (await get('/nodes/')).map((n) => n.node_status);
out.stats = typeof (await get('/nodes/test%%40127.0.0.1/stats/'))['connections/count'];
out.publish = await api('POST', '/mqtt/publish', { topic: 'js/t', payload: 'x' });
out.kick = await caught(() => api('DELETE', '/connections/ghost'));
out.load = await caught(() => api('PUT', '/nodes/test%%40127.0.0.1/plugins/auth_passwd/load'));
out.secret = (await api('POST', '/apps/', { app_id: 'js-app', secret: 'js-secret' })).secret;
out.again = await caught(() => api('POST', '/apps/', { app_id: 'js-app' }));
out.apps = (await get('/apps/')).map((a) => a.app_id);
out.history = await get('/alarms/history');
console.log(JSON.stringify(out));
"""


@pytest.mark.parametrize("api_format", ["seed", "emqx"])
async def test_dashboard_api_layer_reads_both_formats(
    app_factory: AppFactory, tmp_path: Path, api_format: str
) -> None:
    """api.js (the dashboard's only door to the API) run in node against a real node: pages,
    objects and errors come out in the seed shapes whichever format the node serves."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node")
    management = ManagementConfig(bind="127.0.0.1", port=0, api_format=api_format)
    app = await app_factory(management=management)
    script = tmp_path / "api_check.mjs"
    base = json.dumps(f"http://127.0.0.1:{app.http_port}")
    script.write_text(API_JS_CHECK % (base, (ASSETS / "api.js").as_uri()), "utf-8")
    proc = await asyncio.create_subprocess_exec(
        node, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["page"] == {"items": [], "meta": {"page": 1, "limit": 5, "count": 0}}
    assert out["nodes"] == ["Running"]
    assert out["stats"] == "number"
    assert out["publish"] == {"code": 0}
    assert out["kick"] == "not_found"
    assert out["load"] == "no password file: set password_file, or file in [plugins.auth_passwd]"
    # what the apps and alarms pages read
    assert out["secret"] == "js-secret"
    assert out["again"] == "already_existed"
    assert out["apps"] == ["admin", "js-app"]
    assert out["history"] == [{"node": "test@127.0.0.1", "alarms": []}]
