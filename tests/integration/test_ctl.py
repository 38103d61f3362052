"""`minibroker ctl`: every verb against a real node's REST API (tables, --json, errors).

The ctl is blocking (urllib) and the node runs on the test's event loop, so each command runs in
a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from rawclient import RawClient

from broker.app import NodeApp
from broker.cli import main
from broker.server.banner import broker_version
from broker.server.config import ManagementConfig
from management.ctl import format_table

NODE = "test@127.0.0.1"
#: An action's answer with --json: "ok" in the seed format, {"code": 0} in the emqx one.
OK = ("ok", {"code": 0})
TIMEOUT = 5.0


class Ctl:
    def __init__(self, app: NodeApp, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = f"http://127.0.0.1:{app.http_port}"
        self.capsys = capsys

    async def run(self, *argv: str, url: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, ["ctl", "--url", url or self.url, *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def ok(self, *argv: str) -> str:
        code, out, err = await self.run(*argv)
        assert code == 0, (argv, out, err)
        return out

    async def json(self, *argv: str) -> Any:
        return json.loads(await self.ok("--json", *argv))


@pytest.fixture(params=["seed", "emqx"])
async def ctl(
    request: pytest.FixtureRequest,
    app_factory: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> Ctl:
    """ctl against a node in each API format: every verb must read both (the emqx envelope is
    unwrapped once, in `Client.request`)."""
    management = ManagementConfig(bind="127.0.0.1", port=0, api_format=request.param)
    app: NodeApp = await app_factory(management=management)
    c = Ctl(app, capsys)
    c.tcp_port = app.node.tcp_port  # type: ignore[attr-defined]
    return c


def mqtt(ctl: Ctl, client_id: str) -> aiomqtt.Client:
    port = ctl.tcp_port  # type: ignore[attr-defined]
    return aiomqtt.Client("127.0.0.1", port, identifier=client_id, timeout=TIMEOUT)


def assert_aligned(text: str) -> list[list[str]]:
    """Every column of the table starts at the same offset on every line; returns the cells."""
    lines = text.rstrip("\n").splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:(?<=  )|^)\S", header)]
    rows = []
    for line in lines[1:]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  ", (header, line)
        rows.append([line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)])
    return rows


def test_format_table_pads_columns() -> None:
    text = format_table([{"a": "x", "b": 1}, {"a": "longer", "b": True}], ["a", "b"])
    assert text.splitlines() == ["a       b", "x       1", "longer  true"]


async def test_status_and_cluster_status(ctl: Ctl) -> None:
    out = await ctl.ok("status")
    assert out == f"Node {NODE} is started\nminibroker is running\n"
    assert (await ctl.json("status"))["node"] == NODE
    out = await ctl.ok("cluster", "status")
    assert out.startswith("Cluster status: 1 running node(s)\n")
    rows = assert_aligned(out.split("\n", 1)[1])
    assert rows[0][:2] == [NODE, "Running"]
    nodes = await ctl.json("cluster", "status")
    assert [n["node"] for n in nodes] == [NODE]


async def test_nodes_and_version(ctl: Ctl) -> None:
    out = await ctl.ok("nodes")
    assert out.split()[:3] == ["node", "node_status", "version"]
    rows = assert_aligned(out)
    assert [row[:3] for row in rows] == [[NODE, "Running", broker_version()]]
    assert [n["node"] for n in await ctl.json("nodes")] == [NODE]
    out = await ctl.ok("version")
    assert out.splitlines() == [
        f"minibroker ctl {broker_version()}",
        f"{NODE}: minibroker {broker_version()}",
    ]
    assert await ctl.json("version") == {
        "ctl": broker_version(),
        "nodes": {NODE: broker_version()},
    }


async def test_clients_sessions_subscriptions_routes(ctl: Ctl) -> None:
    async with mqtt(ctl, "c/1") as client:
        await client.subscribe("t/#", qos=1)
        rows = assert_aligned(await ctl.ok("clients", "list"))
        assert [r[0] for r in rows] == ["c/1"]
        listed = await ctl.json("clients", "list")
        assert [c["client_id"] for c in listed] == ["c/1"]
        shown = await ctl.json("clients", "show", "c/1")  # percent-encoded path parameter
        assert shown[0]["client_id"] == "c/1" and shown[0]["node"] == NODE
        assert "client_id     c/1" in await ctl.ok("clients", "show", "c/1")

        assert [s["client_id"] for s in await ctl.json("sessions", "list")] == ["c/1"]
        assert assert_aligned(await ctl.ok("sessions", "list"))[0][0] == "c/1"
        assert (await ctl.json("sessions", "show", "c/1"))[0]["subscriptions_count"] == 1

        subs = await ctl.json("subscriptions", "list")
        assert [(s["client_id"], s["topic"], s["qos"]) for s in subs] == [("c/1", "t/#", 1)]
        assert assert_aligned(await ctl.ok("subscriptions", "show", "c/1")) == [
            ["c/1", "t/#", "1", NODE]
        ]
        assert (await ctl.json("routes", "list")) == [{"topic": "t/#", "node": NODE}]
        assert assert_aligned(await ctl.ok("routes", "show", "t/#")) == [["t/#", NODE]]

        out = await ctl.ok("subscriptions", "add", "c/1", "x/+", "--qos", "2")
        assert out.startswith("ok")
        subs = await ctl.json("subscriptions", "show", "c/1")
        assert ("x/+", 2) in [(s["topic"], s["qos"]) for s in subs]
        assert (await ctl.json("subscriptions", "del", "c/1", "x/+")) == {"code": 0}
        subs = await ctl.json("subscriptions", "show", "c/1")
        assert [s["topic"] for s in subs] == ["t/#"]

    victim, _connack = await RawClient.connect(ctl.tcp_port, "victim")  # type: ignore[attr-defined]
    assert (await ctl.ok("clients", "kick", "victim")) == "ok: client 'victim' kicked\n"
    assert await victim.closed()
    assert (await ctl.json("clients", "list")) == []


async def test_not_found_paths_exit_1(ctl: Ctl) -> None:
    for argv, needle in [
        (("clients", "show", "nobody"), "not found: client 'nobody'"),
        (("clients", "kick", "nobody"), "not found: client 'nobody'"),
        (("sessions", "show", "nobody"), "not found: session 'nobody'"),
        (("routes", "show", "no/route"), "not found: route 'no/route'"),
        (("subscriptions", "add", "nobody", "a/b"), "not found: session 'nobody'"),
        (("plugins", "load", "nosuch"), "not found: plugin 'nosuch'"),
        (("plugins", "load", "presence", "--node", "x@y"), "not found: plugin 'presence'"),
        (("log", "set-level", "info", "--node", "x@y"), "not found: node 'x@y'"),
    ]:
        code, out, err = await ctl.run(*argv)
        assert code == 1 and out == "", argv
        assert needle in err and err.startswith("minibroker ctl: error:"), (argv, err)


async def test_plugins_load_unload_list(ctl: Ctl) -> None:
    rows = assert_aligned(await ctl.ok("plugins", "list"))
    assert ["test@127.0.0.1", "presence"] in [r[:2] for r in rows]
    assert (await ctl.ok("plugins", "load", "presence")).startswith("ok")
    plugins = await ctl.json("plugins", "list")
    active = {p["name"]: p["active"] for p in plugins[0]["plugins"]}
    assert active["presence"] is True
    code, _, err = await ctl.run("plugins", "load", "presence", "--node", NODE)
    assert code == 1 and "already loaded" in err
    assert (await ctl.json("plugins", "unload", "presence", "--node", NODE)) in OK
    code, _, err = await ctl.run("plugins", "unload", "presence")
    assert code == 1 and "is not loaded" in err


async def test_plugin_that_cannot_load_says_why(ctl: Ctl) -> None:
    code, _out, err = await ctl.run("plugins", "load", "auth_passwd")
    assert code == 1
    assert f"cannot load plugin 'auth_passwd' on {NODE}: no password file: set password_file" in err


async def test_banned_add_list_del(ctl: Ctl) -> None:
    entry = await ctl.json("banned", "add", "--as", "username", "mallory", "--reason", "spam",
                           "--until", "1h")  # fmt: skip
    assert entry["who"] == "mallory" and entry["as"] == "username" and entry["until"] > 0
    await ctl.ok("banned", "add", "--as", "ip_address", "10.0.0.9")
    rows = assert_aligned(await ctl.ok("banned", "list"))
    assert ["username", "mallory", "spam"] in [r[:3] for r in rows]
    assert ["ip_address", "10.0.0.9", "", "admin"] in [r[:4] for r in rows]
    assert "forever" in [r[-1] for r in rows]
    assert len(await ctl.json("banned", "list")) == 2
    assert (await ctl.ok("banned", "del", "--as", "username", "mallory")).startswith("ok")
    assert [b["who"] for b in await ctl.json("banned", "list")] == ["10.0.0.9"]
    code, _, err = await ctl.run("banned", "add", "--as", "ip_address", "not-an-ip")
    assert code == 1 and re.search(r"bad_ip_address \((HTTP 400|code 108)\)", err)


async def test_listeners_metrics_stats(ctl: Ctl) -> None:
    rows = assert_aligned(await ctl.ok("listeners"))
    assert {"mqtt:tcp", "http:management"} <= {r[1] for r in rows}
    listeners = await ctl.json("listeners")
    assert listeners[0]["node"] == NODE and listeners[0]["listeners"]
    rows = assert_aligned(await ctl.ok("metrics"))
    assert "packets/connect" in [r[0] for r in rows]
    assert (await ctl.json("metrics"))[0]["metrics"]["bytes/received"] >= 0
    out = await ctl.ok("stats")
    assert out.splitlines()[0].split() == ["name", NODE]
    assert "connections/count" in [r[0] for r in assert_aligned(out)]
    assert "connections/count" in (await ctl.json("stats"))[0]


async def test_log_set_level(ctl: Ctl) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        assert (await ctl.json("log", "set-level", "error")) in OK
        assert root.level == logging.ERROR
        out = await ctl.ok("log", "set-level", "debug", "--node", NODE)
        assert out == f"ok: log level of {NODE} set to debug\n"
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)
    code, _, _ = await ctl.run("log", "set-level", "loud")
    assert code == 2  # usage error: not a level


async def test_errors_and_exit_codes(ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = await ctl.run("clients", "list", "--secret", "wrong")
    assert code == 1 and out == ""
    assert "authentication failed" in err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = await ctl.run("status", url=dead)
    assert code == 1 and f"cannot reach {dead}" in err
    code, _, _ = await ctl.run("clients")  # missing action
    assert code == 2
    code, _, _ = await ctl.run("nosuchverb")
    assert code == 2


async def test_settings_from_env_and_config_file(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the environment: a wrong secret there fails; the flag wins over it
    monkeypatch.setenv("MINIBROKER_SECRET", "wrong")
    code, _, err = await ctl.run("stats")
    assert code == 1 and "authentication failed" in err
    assert (await ctl.run("stats", "--secret", "public"))[0] == 0
    monkeypatch.delenv("MINIBROKER_SECRET")
    # a config file with the URL and credentials (no --url)
    conf = tmp_path / "ctl.toml"
    conf.write_text(f'[ctl]\nurl = "{ctl.url}"\napp = "admin"\nsecret = "public"\n')
    ctl.capsys.readouterr()
    code = await asyncio.to_thread(main, ["ctl", "--config", str(conf), "--json", "stats"])
    out, _ = ctl.capsys.readouterr()
    assert code == 0 and json.loads(out)[0]["node"] == NODE
    monkeypatch.setenv("MINIBROKER_URL", ctl.url)
    code = await asyncio.to_thread(main, ["ctl", "status"])
    assert code == 0 and NODE in ctl.capsys.readouterr()[0]
    conf.write_text("url = [")
    code = await asyncio.to_thread(main, ["ctl", "--config", str(conf), "status"])
    assert code == 1 and "invalid TOML" in ctl.capsys.readouterr()[1]
