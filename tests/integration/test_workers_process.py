"""`minibroker start --workers 2`: real processes sharing one MQTT port (SO_REUSEPORT).

One node of two workers serves the module's first tests (the kernel spreads connections over
the workers; each client's worker is read from the REST connection rows, `worker`, and the
workers' pids from `GET /nodes`' `workers`). The last test starts its own node to kill a worker
and then stop the parent. Only processes these tests started are signalled, by PID; every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import psutil
import pytest
from api_support import ADMIN, basic
from rawclient import RawClient

from broker.protocol.packets import ConnAck, Publish, Subscribe, SubscriptionRequest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
TIMEOUT = 10.0
NODE = "minibroker@127.0.0.1"
#: Connections tried before concluding the kernel does not spread them (2**-19 by chance).
MAX_TRIES = 20
#: The module's node publishes `$SYS` every second.
SYS_INTERVAL = 1
SYS_CONNECTED = "$SYS/broker/clients/connected"


@dataclass
class WorkersProc:
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    banner_done: threading.Event = field(default_factory=threading.Event)

    def read_output(self) -> None:
        """Thread body: drain stdout+stderr (the pipe must never fill), note the banner."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            for kind, pattern in (("mqtt", r"mqtt://127\.0\.0\.1:(\d+)"),
                                  ("http", r"http://127\.0\.0\.1:(\d+)")):  # fmt: skip
                match = re.search(pattern, line)
                if match and kind not in self.ports:
                    self.ports[kind] = int(match.group(1))
            if line.startswith("workers:"):
                self.banner_done.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_workers(data_dir: Path, count: int = 2, config: str = "") -> WorkersProc:
    """`minibroker start --workers <count>`; `config`: the text of a `-c` file, if any."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "broker.cli", "start", "--workers", str(count),
            "--host", "127.0.0.1", "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0",
            "--data-dir", str(data_dir)]  # fmt: skip
    if config:
        config_file = data_dir.parent / f"{data_dir.name}.toml"
        config_file.write_text(config, "utf-8")
        argv += ["-c", str(config_file)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    node = WorkersProc(proc)
    threading.Thread(target=node.read_output, daemon=True).start()
    if not node.banner_done.wait(START_TIMEOUT):
        node.stop()
        pytest.fail("no banner from the workers:\n" + "\n".join(node.lines[-30:]))
    return node


class Rest:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}/api/v3"

    async def get(self, path: str) -> Any:
        async with self.session.get(self.base + path, headers=basic(*ADMIN)) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        if isinstance(body, dict) and "items" in body:  # a page (the seed format)
            return body["items"]
        return body["data"] if isinstance(body, dict) and "data" in body else body

    async def node(self) -> dict[str, Any]:
        nodes = await self.get("/nodes/")
        assert [n["name"] for n in nodes] == [NODE]  # one node, whatever the workers
        node: dict[str, Any] = nodes[0]
        return node

    async def workers_running(self, count: int) -> list[dict[str, Any]]:
        """The `workers` rows once all `count` are Running (the workers found each other)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            rows: list[dict[str, Any]] = (await self.node())["workers"]
            if len(rows) == count and all(r["node_status"] == "Running" for r in rows):
                return rows
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)

    async def worker_of(self, client_id: str) -> int:
        """The worker holding `client_id`'s one connection (waits until it is listed)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            listed = await self.get("/connections/?_limit=1000")
            rows = [r for r in listed if r["client_id"] == client_id]
            if len(rows) == 1 and rows[0].get("connected", True):
                assert rows[0]["node"] == NODE
                return int(rows[0]["worker"])
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkersProc]:
    node = start_workers(
        tmp_path_factory.mktemp("workers"), config=f"sys_interval = {SYS_INTERVAL}\n"
    )
    yield node
    node.stop()


@pytest.fixture
async def rest(workers: WorkersProc) -> AsyncIterator[Rest]:
    async with aiohttp.ClientSession() as session:
        api = Rest(session, workers.ports["http"])
        await api.workers_running(2)
        yield api


async def test_clients_spread_over_workers_and_rest_lists_one_node(
    workers: WorkersProc, rest: Rest
) -> None:
    rows = await rest.workers_running(2)
    children = {c.pid for c in psutil.Process(workers.proc.pid).children()}
    assert {r["pid"] for r in rows} == children and len(children) == 2
    seen: dict[int, list[str]] = {0: [], 1: []}
    clients: list[RawClient] = []
    try:
        for i in range(MAX_TRIES):
            client, connack = await RawClient.connect(workers.ports["mqtt"], f"spread-{i}")
            clients.append(client)
            assert isinstance(connack, ConnAck) and connack.reason_code == 0
            seen[await rest.worker_of(f"spread-{i}")].append(f"spread-{i}")
            if seen[0] and seen[1] and i >= 3:
                break
        assert seen[0] and seen[1], seen  # SO_REUSEPORT spread them over both workers
        listed = {r["client_id"]: r for r in await rest.get("/connections/")}
        for worker, ids in seen.items():
            for client_id in ids:
                assert listed[client_id]["worker"] == worker
                assert listed[client_id]["node"] == NODE
        node = await rest.node()
        by_worker = {r["worker"]: r["connections"] for r in node["workers"]}
        assert by_worker[0] >= len(seen[0]) and by_worker[1] >= len(seen[1])
        assert node["connections"] == sum(by_worker.values())
    finally:
        for client in clients:
            await client.close()


async def _client_on(workers: WorkersProc, rest: Rest, prefix: str, worker: int) -> RawClient:
    """A raw connection (client id `<prefix>-<n>`) that the kernel gave to `worker`."""
    for i in range(MAX_TRIES):
        client_id = f"{prefix}-{i}"
        client, _ = await RawClient.connect(workers.ports["mqtt"], client_id)
        if await rest.worker_of(client_id) == worker:
            client.client_id = client_id  # type: ignore[attr-defined]
            return client
        await client.close()
    pytest.fail(f"no connection landed on worker {worker} in {MAX_TRIES} tries")


async def test_publish_reaches_a_subscriber_on_the_other_worker(
    workers: WorkersProc, rest: Rest
) -> None:
    sub = await _client_on(workers, rest, "sub", 0)
    pub = await _client_on(workers, rest, "pub", 1)
    try:
        sub.send(Subscribe(1, [SubscriptionRequest("workers/t", 0)]))
        await sub.recv()  # SUBACK
        # The route reaches worker 1 through the workers' cluster: publish until it arrives.
        got = None
        for _ in range(MAX_TRIES):
            pub.send(Publish("workers/t", b"across", qos=0))
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                got = await sub.recv(timeout=0.5)
                break
        assert isinstance(got, Publish) and got.payload == b"across"
    finally:
        await sub.close()
        await pub.close()


async def test_client_id_taken_over_across_workers_leaves_one_connection(
    workers: WorkersProc, rest: Rest
) -> None:
    """MQTT-3.1.4-2: a second CONNECT with the same client id closes the first connection,
    also when the kernel gives it to another worker (the cluster's takeover between workers)."""
    port = workers.ports["mqtt"]
    first, _ = await RawClient.connect(port, "same-id")
    first_worker = await rest.worker_of("same-id")
    try:
        for _ in range(MAX_TRIES):
            second, connack = await RawClient.connect(port, "same-id")
            assert isinstance(connack, ConnAck) and connack.reason_code == 0
            assert await first.closed(TIMEOUT)
            worker = await rest.worker_of("same-id")  # exactly one row, asserted there
            await first.close()
            first = second
            if worker != first_worker:
                break
        else:
            pytest.fail("no CONNECT landed on the other worker")
        rows = [r for r in await rest.get("/connections/") if r["client_id"] == "same-id"]
        assert len(rows) == 1 and rows[0]["worker"] == worker
    finally:
        await first.close()


async def test_sys_topics_describe_the_whole_node_on_every_worker(
    workers: WorkersProc, rest: Rest
) -> None:
    """`$SYS` describes the one node: subscribers on either worker read the node-wide count of
    connected clients (every worker's), the same figure on both, not their own worker's."""
    clients: list[RawClient] = []
    on: dict[int, list[RawClient]] = {0: [], 1: []}
    try:
        for i in range(MAX_TRIES):
            client, _ = await RawClient.connect(workers.ports["mqtt"], f"sys-{i}")
            clients.append(client)
            on[await rest.worker_of(f"sys-{i}")].append(client)
            if len(on[0]) >= 2 and len(on[1]) >= 2:
                break
        assert len(on[0]) >= 2 and len(on[1]) >= 2, {w: len(c) for w, c in on.items()}
        for client in clients:
            client.send(Subscribe(1, [SubscriptionRequest(SYS_CONNECTED, 0)]))
        expected = str(len(clients)).encode()
        for worker, subscribers in on.items():
            for client in subscribers:
                # retained at once, then every SYS_INTERVAL: wait for the figure with them all
                latest = None
                deadline = time.monotonic() + TIMEOUT + 5 * SYS_INTERVAL
                while latest != expected:
                    assert time.monotonic() < deadline, (worker, latest, expected)
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        packet = await client.recv(timeout=SYS_INTERVAL)
                        if isinstance(packet, Publish) and packet.topic == SYS_CONNECTED:
                            latest = packet.payload
    finally:
        for client in clients:
            await client.close()


async def test_dead_worker_reported_then_sigterm_stops_all(tmp_path: Path) -> None:
    node = start_workers(tmp_path / "data")
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, node.ports["http"])
            rows = await rest.workers_running(2)
            pids = {r["worker"]: r["pid"] for r in rows}
            os.kill(pids[1], signal.SIGKILL)
            deadline = time.monotonic() + START_TIMEOUT
            while not any("worker 1 (pid" in line and "exited" in line for line in node.lines):
                assert time.monotonic() < deadline, node.lines[-20:]
                await asyncio.sleep(0.1)
            while (await rest.node())["workers"][1]["node_status"] != "Stopped":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            # Worker 0 still serves MQTT.
            async with aiomqtt.Client("127.0.0.1", node.ports["mqtt"], identifier="alive"):
                pass
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=30) == 0
        for pid in pids.values():
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        node.stop()
