"""Every `curl` example of README.md, run with the real `curl` against a node this test starts.

The commands are read from the README (`readme_support`), not copied here: an example edited or
added there is checked the next run. Each is rewritten to the test node (its free port, an app
of the test's own instead of admin/public) and run in a subprocess; it must answer 2xx and a
sensible body: JSON for `/api/v3` (no error; in the EMQX format `code` 0), the status text for
`/status`, the Prometheus text for `/metrics`. State an example needs is set up first: the
client ids it names are connected with a persistent session, a plugin it loads is unloaded (and
one it unloads loaded). Run in both API formats: the README shows the seed one, and the same
calls must work against a node serving the released EMQX 3.x envelope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import urllib.parse
from typing import Any

import pytest
from api_support import AppFactory
from rawclient import RawClient
from readme_support import ShellCommand as Command
from readme_support import curl_commands

from broker.app import NodeApp
from broker.protocol.packets import ConnAck
from broker.server.config import ManagementApp, ManagementConfig

NODE = "minibroker@127.0.0.1"  # the node name the README's examples use
APP = ("readme-test", "s3cret-for-readme")
TIMEOUT = 10.0
COMMANDS = curl_commands()

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def test_the_readme_has_curl_examples() -> None:
    """The extraction itself: the API section's examples are found, continuations joined."""
    assert len(COMMANDS) >= 10
    publish = [c for c in COMMANDS if "/mqtt/publish" in c.text]
    assert publish and "-d" in publish[0].argv  # the body on the continuation line is joined
    assert all("#" not in c.argv[-1] or "'" in c.text for c in COMMANDS)  # comments stripped


def rewrite(command: Command, port: int) -> list[str]:
    """The command aimed at the test node: host and port, credentials; silent but for errors."""
    argv: list[str] = []
    for arg in command.argv[1:]:
        if arg.startswith(("localhost:8080", "http://localhost:8080", "127.0.0.1:8080")):
            arg = re.sub(
                r"^(http://)?(localhost|127\.0\.0\.1):8080", f"http://127.0.0.1:{port}", arg
            )
        elif arg == "admin:public":
            arg = ":".join(APP)
        argv.append(arg)
    return ["curl", "-sS", "--max-time", str(TIMEOUT), "-w", "\n%{http_code}", *argv]


def url_path(command: Command) -> str:
    for arg in command.argv:
        if ":8080" in arg:
            return urllib.parse.urlsplit("http://" + arg.split("://")[-1]).path
    raise AssertionError(f"no URL in {command}")


def body_of(command: Command) -> dict[str, Any]:
    argv = command.argv
    for flag in ("-d", "--data", "--data-raw"):
        if flag in argv:
            value = json.loads(argv[argv.index(flag) + 1])
            return value if isinstance(value, dict) else {}
    return {}


class State:
    """What the examples need to exist before they run."""

    def __init__(self, app: NodeApp) -> None:
        self.app = app
        self.clients: dict[str, RawClient] = {}

    def client_ids(self, command: Command) -> set[str]:
        path = url_path(command)
        ids = set()
        match = re.search(r"/(?:connections|sessions|subscriptions)/([^/?]+)$", path)
        if match:
            ids.add(urllib.parse.unquote(match.group(1)))
        body = body_of(command)
        if isinstance(body.get("client_id"), str) and not path.endswith("/publish"):
            ids.add(body["client_id"])
        return ids

    async def connect(self, client_id: str) -> None:
        """A live connection with a persistent session (kick leaves the session behind)."""
        if client_id in self.app.broker.connected:
            return
        await self.drop(client_id)
        port = self.app.node.tcp_port
        client, connack = await RawClient.connect(port, client_id, clean_start=False)
        assert isinstance(connack, ConnAck) and connack.reason_code == 0, connack
        self.clients[client_id] = client

    async def drop(self, client_id: str) -> None:
        client = self.clients.pop(client_id, None)
        if client is not None:
            await client.close()

    async def plugin(self, command: Command) -> None:
        match = re.search(r"/plugins/([^/]+)/(load|unload)$", url_path(command))
        if match is None:
            return
        name, action = urllib.parse.unquote(match.group(1)), match.group(2)
        active = {p["name"]: p["active"] for p in self.app.plugins.list()}
        assert name in active, f"{command}: no plugin {name!r}"
        if action == "load" and active[name]:
            await _maybe_await(self.app.plugins.unload(name))
        if action == "unload" and not active[name]:
            await _maybe_await(self.app.plugins.load(name))

    async def before(self, command: Command) -> None:
        for client_id in sorted(self.client_ids(command)):
            await self.connect(client_id)
        await self.plugin(command)

    async def close(self) -> None:
        for client_id in list(self.clients):
            await self.drop(client_id)


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value


def check_answer(command: Command, status: int, text: str, api_format: str) -> None:
    assert 200 <= status < 300, f"{command}: HTTP {status}: {text}"
    path = url_path(command)
    if path == "/status":
        assert f"Node {NODE} is started" in text, f"{command}: {text}"
        return
    if path == "/metrics":
        assert "minibroker_messages_received_total" in text, f"{command}: {text[:200]}"
        return
    body = json.loads(text)  # every /api/v3 answer is JSON
    if api_format == "emqx":
        assert isinstance(body, dict) and body.get("code") == 0, f"{command}: {text}"
        if "-X" not in command.argv:  # a GET has data
            assert "data" in body, f"{command}: {text}"
        return
    if isinstance(body, dict):
        assert "message" not in body, f"{command}: an error: {text}"
        if "code" in body:
            assert body["code"] == 0, f"{command}: {text}"
    if "-X" not in command.argv:
        assert body not in ([], {}), f"{command}: an empty answer; the test set up no state"


@pytest.mark.parametrize("api_format", ["seed", "emqx"])
async def test_every_readme_curl_example_works(app_factory: AppFactory, api_format: str) -> None:
    level = logging.getLogger().level  # the README sets the log level: restore it after
    management = ManagementConfig(
        bind="127.0.0.1",
        port=0,
        default_app=False,
        apps=[ManagementApp(id=APP[0], secret=APP[1])],
        api_format=api_format,
    )
    app: NodeApp = await app_factory(node_name=NODE, management=management)
    state = State(app)
    try:
        for command in COMMANDS:
            await state.before(command)
            proc = await asyncio.create_subprocess_exec(
                *rewrite(command, app.http_port),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(TIMEOUT + 5):
                out, err = await proc.communicate()
            assert proc.returncode == 0, f"{command}: curl failed: {err.decode()}"
            text, _, code = out.decode().rpartition("\n")
            check_answer(command, int(code), text, api_format)
    finally:
        await state.close()
        logging.getLogger().setLevel(level)
