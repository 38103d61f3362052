"""A node of workers in a cluster of other nodes: `minibroker start --workers 2 --join` to a
plain node (real processes). Each worker is a cluster member `<node>/w<index>`; both nodes'
APIs show two nodes, the workers' one with its `workers`; a publish on the plain node reaches
subscribers on both workers. Only processes started here are signalled, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from rawclient import RawClient
from workers_support import (
    START_TIMEOUT,
    TIMEOUT,
    Rest,
    WorkersProc,
    clients_on_every_worker,
    start_workers,
)

from broker.protocol.packets import ConnAck, Publish, Subscribe, SubscriptionRequest

pytestmark = pytest.mark.cluster

PLAIN = "plain@127.0.0.1"
WORKERS = "workers@127.0.0.1"
TOPIC = "across/nodes"
SYS_CONNECTED = "$SYS/broker/clients/connected"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[WorkersProc, WorkersProc]]:
    cluster_port = _free_port()
    plain = start_workers(
        tmp_path / "plain",
        count=1,
        extra=("--node-name", PLAIN, "--cluster-port", str(cluster_port)),
    )
    try:
        workers = start_workers(
            tmp_path / "workers",
            count=2,
            config="sys_interval = 1\n",
            extra=("--node-name", WORKERS, "--cluster-port", "0",
                   "--join", f"127.0.0.1:{cluster_port}"),
        )  # fmt: skip
        try:
            yield plain, workers
        finally:
            workers.stop()
    finally:
        plain.stop()


async def _two_nodes(rest: Rest) -> list[dict[str, object]]:
    """`GET /nodes` once it lists both nodes Running, the workers' one with 2 workers."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        rows = await rest.get("/nodes/")
        by_name = {row["name"]: row for row in rows}
        workers = by_name.get(WORKERS, {}).get("workers", [])
        if (
            sorted(by_name) == [PLAIN, WORKERS]
            and all(row["node_status"] == "Running" for row in rows)
            and len(workers) == 2
            and all(w["node_status"] == "Running" for w in workers)
        ):
            return list(rows)
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.2)


async def test_plain_node_publish_reaches_both_workers_and_apis_show_two_nodes(
    nodes: tuple[WorkersProc, WorkersProc],
) -> None:
    plain, workers = nodes
    async with aiohttp.ClientSession() as session:
        on_plain = Rest(session, plain.ports["http"], PLAIN)
        on_workers = Rest(session, workers.ports["http"], WORKERS)
        for rest in (on_plain, on_workers):
            rows = await _two_nodes(rest)
            assert "workers" not in next(r for r in rows if r["name"] == PLAIN)
        subscribers, on = await clients_on_every_worker(
            workers.ports["mqtt"], on_workers, "wsub", 1
        )
        publisher, _ = await RawClient.connect(plain.ports["mqtt"], "plain-pub")
        try:
            for sub in subscribers:
                sub.send(Subscribe(1, [SubscriptionRequest(TOPIC, 0)]))
                await sub.recv()  # SUBACK
            # The plain node's API lists them too, each with its worker.
            deadline = time.monotonic() + TIMEOUT
            while True:
                listed = await on_plain.get("/subscriptions/")
                mine = {r["client_id"]: r for r in listed if r["topic"] == TOPIC}
                if len(mine) == len(subscribers):
                    break
                assert time.monotonic() < deadline, listed
                await asyncio.sleep(0.1)
            for worker, ids in on.items():
                for client_id in ids:
                    assert mine[client_id]["node"] == WORKERS
                    assert mine[client_id]["worker"] == worker
            # The routes reach the plain node through the cluster: publish until each got one.
            got: set[int] = set()
            for _ in range(40):
                publisher.send(Publish(TOPIC, b"from plain", qos=0))
                for n, sub in enumerate(subscribers):
                    if n in got:
                        continue
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        packet = await sub.recv(timeout=0.25)
                        assert isinstance(packet, Publish) and packet.payload == b"from plain"
                        got.add(n)
                if len(got) == len(subscribers):
                    break
            assert len(got) == len(subscribers), (got, on)
            routes = {(r["topic"], r["node"]) for r in await on_plain.get("/routes/")}
            assert (TOPIC, WORKERS) in routes  # by node, not by worker member
            # $SYS on each worker counts the node of workers (both workers' clients), not
            # its own worker's nor the cluster's (the publisher is on the other node).
            for sub in subscribers:
                sub.send(Subscribe(2, [SubscriptionRequest(SYS_CONNECTED, 0)]))
            expected = str(len(subscribers)).encode()
            for sub in subscribers:
                latest = None
                deadline = time.monotonic() + TIMEOUT
                while latest != expected:
                    assert time.monotonic() < deadline, (on, latest, expected)
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        packet = await sub.recv(timeout=1)
                        if isinstance(packet, Publish) and packet.topic == SYS_CONNECTED:
                            latest = packet.payload
            # MQTT-3.1.4-2: a client id is unique across the nodes and the workers: the same
            # id on the plain node closes its connection on a worker.
            moved = subscribers[0]
            again, connack = await RawClient.connect(plain.ports["mqtt"], "wsub-0")
            try:
                assert isinstance(connack, ConnAck) and connack.reason_code == 0
                assert await moved.closed(TIMEOUT)
            finally:
                await again.close()
        finally:
            await publisher.close()
            for sub in subscribers:
                await sub.close()
