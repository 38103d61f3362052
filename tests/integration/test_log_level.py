"""Logs: JSON lines with `--log-format json`, and the level set at run time through the API
(`PUT /api/v3/nodes/:node/log_level`, `PUT /api/v3/log_level`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.app import NodeApp
from broker.cli import build_parser
from broker.cluster_cli import node_commands
from broker.server.logs import JsonFormatter, configure
from broker.server.logs import set_level as set_log_level

NODE = "test@127.0.0.1"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:public").decode()}
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def keep_root_logger() -> Any:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture
async def http(app_factory: Callable[..., Any]) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    app: NodeApp = await app_factory()
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session, f"http://127.0.0.1:{app.http_port}/api/v3"


async def put(http: tuple[aiohttp.ClientSession, str], path: str, **kw: Any) -> tuple[int, Any]:
    session, base = http
    async with session.put(base + path, **kw) as resp:
        return resp.status, await resp.json()


async def test_node_log_level(http: tuple[aiohttp.ClientSession, str]) -> None:
    root = logging.getLogger()
    assert await put(http, f"/nodes/{NODE}/log_level", json={"level": "debug"}) == (200, "ok")
    assert root.level == logging.DEBUG
    assert await put(http, f"/nodes/{NODE}/log_level/", json={"level": "WARNING"}) == (200, "ok")
    assert root.level == logging.WARNING
    # the query string works too (and wins over the body)
    status, _ = await put(http, f"/nodes/{NODE}/log_level?level=error", json={"level": "info"})
    assert status == 200 and root.level == logging.ERROR


async def test_cluster_log_level(http: tuple[aiohttp.ClientSession, str]) -> None:
    assert await put(http, "/log_level", json={"level": "critical"}) == (200, "ok")
    assert logging.getLogger().level == logging.CRITICAL


@pytest.mark.parametrize("path", ["/log_level", f"/nodes/{NODE}/log_level"])
async def test_bad_or_missing_level_is_400(
    http: tuple[aiohttp.ClientSession, str], path: str
) -> None:
    before = logging.getLogger().level
    status, body = await put(http, path, json={"level": "loud"})
    assert status == 400 and body == {"message": "bad_level", "code": 108}
    status, body = await put(http, path, json={})
    assert status == 400 and body["message"].startswith("missing mandatory params")
    status, body = await put(http, path, json={"level": 3})
    assert status == 400
    assert logging.getLogger().level == before


async def test_unknown_node_is_404_and_auth_required(
    http: tuple[aiohttp.ClientSession, str],
) -> None:
    status, body = await put(http, "/nodes/x@y/log_level", json={"level": "info"})
    assert status == 404 and body == {"message": "not_found"}
    _session, base = http
    async with (
        aiohttp.ClientSession() as anon,
        anon.put(base + "/log_level", json={"level": "info"}) as resp,
    ):
        assert resp.status == 401


def test_json_formatter_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("minibroker.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("hello %s", "wörld")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "warning" and first["logger"] == "minibroker.test.json"
    assert first["message"] == "hello wörld" and first["time"].endswith("Z")
    assert "exc_info" not in first
    assert second["level"] == "error" and "ValueError: boom" in second["exc_info"]


def test_configure_and_set_level() -> None:
    configure(logging.INFO, "json")
    root = logging.getLogger()
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.INFO
    assert set_log_level("Debug") and root.level == logging.DEBUG
    assert not set_log_level("verbose") and root.level == logging.DEBUG
    configure(logging.WARNING, "text")
    assert not isinstance(root.handlers[0].formatter, JsonFormatter)


async def test_start_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from broker.cli import main; sys.exit(main())",
        "start", "--log-format", "json", "--mqtt-port", "0", "--ws-port", "0",
        "--http-port", "0", "--cluster-port", "0", "--host", "127.0.0.1",
        "--data-dir", str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = await proc.stderr.readline()
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TIMEOUT):
                await proc.communicate()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cluster_passes_the_log_format_to_every_node() -> None:
    args = build_parser().parse_args(["cluster", "--nodes", "2", "--log-format", "json"])
    for cmd in node_commands(args):
        assert cmd[cmd.index("--log-format") + 1] == "json"
    args = build_parser().parse_args(["start", "--log-format", "json", "-v"])
    assert args.log_format == "json"
    assert all(
        "--log-format" not in c for c in node_commands(build_parser().parse_args(["cluster"]))
    )
