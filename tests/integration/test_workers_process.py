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
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import aiomqtt
import psutil
import pytest
from rawclient import RawClient
from workers_support import (
    MAX_TRIES,
    NODE,
    START_TIMEOUT,
    TIMEOUT,
    Rest,
    WorkersProc,
    clients_on_every_worker,
    start_workers,
)

from broker.protocol.packets import ConnAck, Publish, Subscribe, SubscriptionRequest

pytestmark = pytest.mark.cluster

#: The module's node publishes `$SYS` every second.
SYS_INTERVAL = 1
SYS_CONNECTED = "$SYS/broker/clients/connected"


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
    clients, on = await clients_on_every_worker(workers.ports["mqtt"], rest, "sys", 2)
    try:
        for client in clients:
            client.send(Subscribe(1, [SubscriptionRequest(SYS_CONNECTED, 0)]))
        expected = str(len(clients)).encode()
        for client in clients:
            # retained at once, then every SYS_INTERVAL: wait for the figure with them all
            latest = None
            deadline = time.monotonic() + TIMEOUT + 5 * SYS_INTERVAL
            while latest != expected:
                assert time.monotonic() < deadline, (on, latest, expected)
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
