"""A node out of file descriptors keeps its clients, refuses newcomers, then recovers by itself.

The real CLI runs as a subprocess started with a small RLIMIT_NOFILE (soft `SOFT`, hard `HARD`),
so the test reaches the limit with a few dozen clients. Only the process the test started is
ever killed, through its own PID. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rawclient import RawClient

from broker.protocol.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.node import AcceptErrors, Node

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE and /proc are Linux here"
)

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from broker.cli import main; sys.exit(main())"
#: The node starts with soft < hard: it must raise the soft limit to the hard one itself.
SOFT = 40
HARD = 80
START_TIMEOUT = 15.0
#: How long a CONNECT may wait for its CONNACK before the node counts as not accepting. asyncio
#: retries accept() every second, so a node with free descriptors answers well within this.
CONNACK_TIMEOUT = 2.5
TIMEOUT = 10.0
LIMIT_TOPIC = "$SYS/broker/limits/max_open_files"

CONFIG = """\
sys_interval = 1

[node]
name = "fd-test@127.0.0.1"
data_dir = "{data_dir}"

[listener.tcp]
bind = "127.0.0.1"
port = 0

[listener.ws]
bind = "127.0.0.1"
port = 0

[management]
enabled = false

[cluster]
enabled = false
"""


def _low_fd_limit() -> None:
    """Runs in the child between fork and exec."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


@dataclass
class LowFdNode:
    proc: asyncio.subprocess.Process
    mqtt_port: int
    stderr_path: Path


@pytest.fixture
async def low_fd_node(tmp_path: Path) -> AsyncIterator[LowFdNode]:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ENTRY, "start", "-c", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=REPO,
            preexec_fn=_low_fd_limit,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(START_TIMEOUT):
            while not lines or not lines[-1].lstrip().startswith("auth:"):
                line = await proc.stdout.readline()
                if not line:
                    pytest.fail(f"node exited early: {stderr_path.read_text()}")
                lines.append(line.decode().rstrip("\n"))
        mqtt = re.search(r"mqtt://127\.0\.0\.1:(\d+)", "\n".join(lines))
        assert mqtt, lines
        yield LowFdNode(proc, int(mqtt.group(1)), stderr_path)
    finally:
        if proc.returncode is None:
            proc.kill()  # our own child, by its PID
            await proc.wait()


async def _try_connect(port: int, client_id: str) -> RawClient | None:
    """A connected client, or None if no CONNACK came in time (the socket is then closed)."""
    try:
        client = await asyncio.wait_for(RawClient.open(port), CONNACK_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    client.send(Connect(client_id, keepalive=0))
    try:
        ack = await client.recv(CONNACK_TIMEOUT)
    except (TimeoutError, EOFError, ConnectionError):
        await _close(client)
        return None
    assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
    return client


async def _close(client: RawClient) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(client.close(), 2.0)


async def _next_publish(client: RawClient, topic: str, timeout: float = TIMEOUT) -> Publish:
    async with asyncio.timeout(timeout):
        while True:
            packet = await client.recv(timeout)
            if isinstance(packet, Publish) and packet.topic == topic:
                return packet


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/<pid>/limits")


async def test_out_of_fds_keeps_clients_and_recovers(low_fd_node: LowFdNode) -> None:
    node = low_fd_node
    pid = node.proc.pid
    # 1. The node raised its soft limit to the hard one, and said so.
    assert _open_files_limit(pid) == (HARD, HARD)
    assert f"open files limit (RLIMIT_NOFILE): {HARD}" in node.stderr_path.read_text()

    # A watcher, connected first: it must keep working through the exhaustion.
    watcher = await _try_connect(node.mqtt_port, "watcher")
    assert watcher is not None
    watcher.send(Subscribe(1, [SubscriptionRequest(LIMIT_TOPIC), SubscriptionRequest("fd/t")]))
    suback = await watcher.recv(TIMEOUT)
    assert isinstance(suback, SubAck) and suback.reason_codes == [0, 0]

    # 2. Connect until the node stops accepting (bounded: it cannot take HARD clients).
    clients: list[RawClient] = []
    started = time.monotonic()
    try:
        for i in range(2 * HARD):
            client = await _try_connect(node.mqtt_port, f"c{i}")
            if client is not None:
                clients.append(client)
            elif _open_fds(pid) >= HARD:  # not merely slow: every descriptor is in use
                break
        else:
            pytest.fail(f"{2 * HARD} clients connected under a limit of {HARD} descriptors")
        # More than the soft limit we started it with: raising it counted.
        assert SOFT < len(clients) + 1 < HARD, len(clients)
        assert node.proc.returncode is None, node.stderr_path.read_text()

        # 3. Clients connected before still work: PINGRESP, and a publish reaches the watcher.
        watcher.send(PingReq())
        assert isinstance(await _next_packet_of(watcher, PingResp), PingResp)
        clients[0].send(Publish("fd/t", b"still-here"))
        assert (await _next_publish(watcher, "fd/t")).payload == b"still-here"

        # 4. The refusals are counted where operators look: $SYS/broker/limits/max_open_files.
        async with asyncio.timeout(TIMEOUT):
            while int((await _next_publish(watcher, LIMIT_TOPIC)).payload) < 1:
                pass

        # 5. Free some descriptors: a new client gets in, without anyone restarting anything.
        for client in clients[-5:]:
            await _close(client)
        del clients[-5:]
        newcomer = None
        async with asyncio.timeout(TIMEOUT):
            while newcomer is None:
                newcomer = await _try_connect(node.mqtt_port, "newcomer")
        clients.append(newcomer)
        newcomer.send(Publish("fd/t", b"newcomer"))
        assert (await _next_publish(watcher, "fd/t")).payload == b"newcomer"
        assert node.proc.returncode is None
    finally:
        for client in clients:
            await _close(client)
        await _close(watcher)

    # 6. The log: a few rate-limited warnings, not asyncio's ERROR per failed accept().
    elapsed = time.monotonic() - started
    log = node.stderr_path.read_text()
    warnings = log.count("out of file descriptors")
    assert 1 <= warnings <= 2 + elapsed / 5.0, log
    assert "socket.accept() out of system resource" not in log


async def _next_packet_of(client: RawClient, kind: type) -> object:
    """The next packet of type `kind`, skipping $SYS updates that arrive meanwhile."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            packet = await client.recv(TIMEOUT)
            if isinstance(packet, kind):
                return packet


# -------------------------------------------------------------------- in process, every listener


class _Sock:
    """What asyncio puts in the context: something with the listening socket's fileno()."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


async def test_accept_errors_counted_once_per_pause_on_each_listener(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler asyncio reports to: the TCP and the WebSocket listener are both covered; the
    burst of reports of one pause counts once; the warning is rate-limited; other reports go on
    to the handler that was there before."""
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    assert isinstance(handler, AcceptErrors)
    by_protocol = {stats.protocol: fd for fd, stats in handler.sockets.items()}
    assert set(by_protocol) == {"mqtt:tcp", "mqtt:ws"}
    seen: list[dict[str, Any]] = []
    handler.previous = lambda _loop, context: seen.append(context)

    def report(fd: int, code: int = errno.EMFILE) -> None:
        handler(loop, {
            "message": "socket.accept() out of system resource",
            "exception": OSError(code, "Too many open files"),
            "socket": _Sock(fd),
        })  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="broker.server.node"):
        for _ in range(100):  # Python 3.11 tries accept() `backlog` times per pause
            report(by_protocol["mqtt:ws"])
        await asyncio.sleep(0)
        report(by_protocol["mqtt:tcp"], errno.ENFILE)
        await asyncio.sleep(0)
    assert node.broker.limits["max_open_files"] == 2
    assert [s.refused for s in node.listeners] == [1, 1]
    assert caplog.text.count("out of file descriptors") == 1  # the second one is too soon
    assert seen == []
    report(by_protocol["mqtt:tcp"], errno.ECONNRESET)  # not ours to handle
    report(99_999)  # not our socket
    assert len(seen) == 2
    assert node.broker.limits["max_open_files"] == 2
