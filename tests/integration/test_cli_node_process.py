"""The real CLI as a subprocess: banner, mosquitto_pub/sub through it, SIGTERM, --test-config.

Only the process each test starts is ever signalled, through its own PID. Every wait is bounded;
nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from rawclient import RawClient

from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_5, ReasonCode
from broker.protocol.packets import ConnAck, Connect, Disconnect

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from broker.cli import main; sys.exit(main())"
START_TIMEOUT = 15.0
TIMEOUT = 10.0
NODE_NAME = "cli-test@127.0.0.1"

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients not installed",
)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI to completion (bounded); return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=cli_env(),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class CliNode:
    proc: asyncio.subprocess.Process
    mqtt_port: int
    ws_port: int
    banner: str
    stderr_path: Path


async def _wait_accepting(port: int) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return


@pytest.fixture
async def cli_node(tmp_path: Path) -> AsyncIterator[CliNode]:
    """The CLI on port 0 everywhere: the banner tells the ports really bound (no port race)."""
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ENTRY, "start",
            "--node-name", NODE_NAME,
            "--host", "127.0.0.1",
            "--mqtt-port", "0",
            "--ws-port", "0",
            "--http-port", "0",
            "--cluster-port", "0",
            "--data-dir", str(tmp_path / "data"),
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=REPO, env=cli_env(),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(START_TIMEOUT):
            # The banner ends with the auth line (warnings, if any, come after it; none here).
            while not lines or not lines[-1].lstrip().startswith("auth:"):
                line = await proc.stdout.readline()
                if not line:
                    pytest.fail(f"CLI exited early: {stderr_path.read_text()}")
                lines.append(line.decode().rstrip("\n"))
        banner = "\n".join(lines)
        mqtt = re.search(r"mqtt://127\.0\.0\.1:(\d+)", banner)
        ws = re.search(r"ws://127\.0\.0\.1:(\d+)/mqtt", banner)
        assert mqtt and ws, banner
        mqtt_port, ws_port = int(mqtt.group(1)), int(ws.group(1))
        assert mqtt_port and ws_port, banner  # resolved ports, not the 0 we asked for
        await _wait_accepting(mqtt_port)
        yield CliNode(proc, mqtt_port, ws_port, banner, stderr_path)
    finally:
        if proc.returncode is None:
            proc.kill()  # our own child, by its PID
            await proc.wait()


# --------------------------------------------------------------------------- running node


async def test_cli_banner_names_node_and_listeners(cli_node: CliNode) -> None:
    banner = cli_node.banner
    assert f"node {NODE_NAME}" in banner.splitlines()[0]
    assert f"mqtt://127.0.0.1:{cli_node.mqtt_port}" in banner
    assert f"ws://127.0.0.1:{cli_node.ws_port}/mqtt" in banner
    assert "auth: anonymous allowed" in banner
    assert "WARNING" not in banner  # loopback only: no open-broker warning
    http = re.search(r"http://127\.0\.0\.1:(\d+)\n", banner + "\n")
    assert http, banner
    assert f"  dashboard  http://127.0.0.1:{http.group(1)}/dashboard/" in banner.splitlines()
    assert "  mqtt/tcp   mqtt://" in banner  # the addresses line up with the dashboard's
    dashboard = f"http://127.0.0.1:{http.group(1)}/dashboard/"
    async with aiohttp.ClientSession() as session, session.get(dashboard) as resp:
        assert resp.status == 200 and "text/html" in resp.content_type  # the URL printed works
    # Both addresses are real: MQTT answers on each.
    client, ack = await RawClient.connect(cli_node.mqtt_port, "banner-tcp", version=MQTT_5)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    await client.close()
    url = f"http://127.0.0.1:{cli_node.ws_port}/mqtt"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("mqtt",)) as ws:
        await ws.send_bytes(encode(Connect("banner-ws")))
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.BINARY
        assert msg.data == b"\x20\x02\x00\x00"  # CONNACK, accepted


async def _mosquitto_roundtrip(port: int, version: str, payload: str) -> str:
    """mosquitto_sub waits for one message; mosquitto_pub sends until it has arrived.

    (mosquitto_sub's stdout is block-buffered into a pipe, so "SUBACK seen" cannot be read in
    time; publishing again until the subscriber exits needs no such signal.)
    """
    topic = f"cli/{version}"
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", version,
        "-t", topic, "-q", "1", "-C", "1", "-W", str(int(TIMEOUT)), "-F", "%t|%q|%p|%P",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        extra = ["-D", "publish", "user-property", "trace", "abc"] if version == "mqttv5" else []
        async with asyncio.timeout(TIMEOUT):
            while sub.returncode is None:
                pub = await asyncio.create_subprocess_exec(
                    "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", version,
                    "-t", topic, "-q", "1", "-m", payload, *extra,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                pub_out, _ = await pub.communicate()
                assert pub.returncode == 0, pub_out
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.wait(), 0.2)
        out, _ = await asyncio.wait_for(sub.communicate(), TIMEOUT)
        assert sub.returncode == 0, out
        return out.decode()
    finally:
        if sub.returncode is None:
            sub.kill()  # our own child, by its PID
            await sub.wait()


@needs_mosquitto
async def test_cli_mosquitto_pub_sub_v311(cli_node: CliNode) -> None:
    out = await _mosquitto_roundtrip(cli_node.mqtt_port, "mqttv311", "hello-311")
    assert out.splitlines() == ["cli/mqttv311|1|hello-311|"]


@needs_mosquitto
async def test_cli_mosquitto_pub_sub_v5_user_property(cli_node: CliNode) -> None:
    out = await _mosquitto_roundtrip(cli_node.mqtt_port, "mqttv5", "hello-5")
    assert out.splitlines() == ["cli/mqttv5|1|hello-5|trace:abc"]


async def test_cli_sigterm_exits_0_and_disconnects_0x8B(cli_node: CliNode) -> None:
    client, ack = await RawClient.connect(cli_node.mqtt_port, "cli-watcher", version=MQTT_5)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    cli_node.proc.send_signal(signal.SIGTERM)  # our child, by its PID
    packet = await client.recv(TIMEOUT)
    assert packet == Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
    assert await client.closed(TIMEOUT)
    assert await asyncio.wait_for(cli_node.proc.wait(), TIMEOUT) == 0
    stderr = cli_node.stderr_path.read_text()
    assert "shutting down" in stderr
    # The default app admin/public is in use (no config): warned about once, not twice.
    assert cli_node.proc.stdout is not None
    stdout = cli_node.banner + (await cli_node.proc.stdout.read()).decode()
    assert (stdout + stderr).count("the management API accepts the default app") == 1


async def test_cli_port_in_use_exits_nonzero(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _out, err = await run_cli(
            "start", "--host", "127.0.0.1", "--mqtt-port", str(port), "--ws-port", "0",
            "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip
    assert code != 0
    assert "error" in err.lower()


# --------------------------------------------------------------------------- --test-config


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max_inflight_mesages = 10\n", "max_inflight_mesages"),  # unknown key (typo)
        ("max_packet_size = 0\n", "max_packet_size"),  # out of range
        ("allow_anonymous = \n", "invalid TOML"),  # not TOML
        ("[listener.tcp]\nport = 70000\n", "port"),
    ],
)
async def test_cli_test_config_bad_file_exits_1(tmp_path: Path, text: str, fragment: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    code, out, err = await run_cli("start", "--test-config", "-c", str(bad))
    assert code == 1, (out, err)
    assert str(bad) in err and fragment in err


async def test_cli_test_config_missing_file_exits_1(tmp_path: Path) -> None:
    code, _, err = await run_cli("start", "--test-config", "-c", str(tmp_path / "nope.toml"))
    assert code == 1
    assert "nope.toml" in err


async def test_cli_test_config_good_file_exits_0(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('allow_anonymous = true\nmax_packet_size = 4096\n[node]\nname = "n@h"\n')
    code, out, _ = await run_cli("start", "--test-config", "-c", str(good))
    assert code == 0
    assert "configuration OK" in out
