"""A node that starts with seeds opens its MQTT listeners only once a peer's route table is
merged (`cluster.first_sync`, issue 14), so it never acknowledges a publish it cannot route.

Real node processes started with the CLI on loopback. Node B is restarted while its only peer
A is frozen (SIGSTOP: A's kernel still accepts B's cluster link, nothing answers): the same
state as a restarted node whose peers' routes have not arrived yet, made to last. A publisher
tries B's MQTT port all the while; every message B acknowledges must reach the subscriber on
A once A runs again. (Before this change B's listeners opened before its join was answered,
it acknowledged with no route to A, and those messages were lost.) A node whose seeds are all
down still starts, after `[cluster] sync_timeout`. Only processes started here are signalled,
by their PIDs; every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_tree import closed_port
from rawclient import RawClient
from test_cluster_processes import (
    ENTRY,
    REPO,
    START_TIMEOUT,
    TIMEOUT,
    NodeProc,
    _env,
    reap,
    routed,
)

from broker.protocol.packets import ConnAck, PubAck, Publish, SubAck, Subscribe, SubscriptionRequest

pytestmark = pytest.mark.cluster

A, B = "fa@127.0.0.1", "fb@127.0.0.1"
#: How long the publisher tries the restarted node while its peer is frozen.
FROZEN_FOR = 3.0


def launch(name: str, tmp: Path, config: Path, *extra: str) -> NodeProc:
    """Start a node process; do not wait for it (`banner` does)."""
    argv = [
        sys.executable, "-c", ENTRY, "start", "--node-name", name, "--host", "127.0.0.1",
        "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0", "--cluster-port", "0",
        "--data-dir", str(tmp / name.split("@")[0]), "--config", str(config), *extra,
    ]  # fmt: skip
    with open(tmp / f"{name}.log", "ab") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=_env())
    node = NodeProc(name, argv, proc)
    threading.Thread(target=node.read_stdout, daemon=True).start()
    return node


async def banner(node: NodeProc, tmp: Path) -> NodeProc:
    if not await asyncio.to_thread(node.banner_done.wait, START_TIMEOUT):
        pytest.fail(f"{node.name} did not start: {(tmp / f'{node.name}.log').read_text()[-2000:]}")
    return node


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    """Every process a test starts; stopped (and resumed first, if frozen) at the end."""
    started: list[NodeProc] = []
    yield started
    reap(started)


async def publish_once(port: int, n: int, topic: str = "fs/x") -> bool:
    """Connect, publish QoS 1 `topic` with payload n; True once the PUBACK came (a refused or
    dropped connection: False)."""
    try:
        client, ack = await RawClient.connect(port, f"fs-pub-{n}", clean_start=True)
    except OSError:
        return False
    try:
        if not (isinstance(ack, ConnAck) and ack.reason_code == 0):
            return False
        client.send(Publish(topic, str(n).encode(), 1, packet_id=1))
        reply = await client.recv(TIMEOUT)
        return isinstance(reply, PubAck) and reply.packet_id == 1
    except (OSError, EOFError, TimeoutError):
        return False
    finally:
        await client.close()


async def received(sub: RawClient, wanted: set[int]) -> set[int]:
    """The payloads `sub` receives until it has `wanted` (at most TIMEOUT seconds)."""
    got: set[int] = set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            while not wanted <= got:
                packet = await sub.recv(TIMEOUT)
                if isinstance(packet, Publish):
                    got.add(int(packet.payload))
                    if packet.qos:
                        sub.send(PubAck(packet.packet_id))
    return got


async def test_restarted_node_acks_nothing_it_cannot_route(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[cluster]\nsync_timeout = 60\n", encoding="utf-8")
    a = await banner(launch(A, tmp_path, config), tmp_path)
    nodes.append(a)
    join = ("--join", f"127.0.0.1:{a.ports['cluster']}")
    b_mqtt = closed_port()
    b = await banner(launch(B, tmp_path, config, *join, "--mqtt-port", str(b_mqtt)), tmp_path)
    nodes.append(b)
    sub, ack = await RawClient.connect(a.mqtt, "fs-sub", clean_start=True)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    sub.send(Subscribe(1, [SubscriptionRequest("fs/#", 1)]))
    assert isinstance(await sub.recv(TIMEOUT), SubAck)
    await routed("fs/#", A, b)  # (a route spreads by gossip: before, B has none to follow)
    n = 1
    assert await publish_once(b.mqtt, n)  # B routes to A, as it should before the fault
    assert await received(sub, {n}) == {n}
    acked: list[int] = []
    b.proc.kill()  # our own child, by its PID
    b.proc.wait(TIMEOUT)
    os.kill(a.proc.pid, signal.SIGSTOP)  # A freezes: B's join gets no answer
    b = launch(B, tmp_path, config, *join, "--mqtt-port", str(b_mqtt))
    nodes.append(b)
    accepted_frozen: list[int] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + FROZEN_FOR
    while loop.time() < end:
        n += 1
        if await publish_once(b_mqtt, n):
            accepted_frozen.append(n)
        await asyncio.sleep(0.05)
    os.kill(a.proc.pid, signal.SIGCONT)
    await banner(b, tmp_path)
    async with asyncio.timeout(TIMEOUT):
        while True:
            n += 1
            if await publish_once(b_mqtt, n):
                acked.append(n)
                break
            await asyncio.sleep(0.1)
    acked += accepted_frozen
    got = await received(sub, set(acked))
    await sub.close()
    assert set(acked) <= got, (
        f"acknowledged by B and never delivered: {sorted(set(acked) - got)} "
        f"({len(accepted_frozen)} accepted while A was frozen)"
    )
    log = (tmp_path / f"{B}.log").read_text()
    assert "a peer's routes merged" in log


async def test_lone_node_with_unreachable_seeds_starts(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[cluster]\nsync_timeout = 1\n", encoding="utf-8")
    node = launch(A, tmp_path, config, "--join", f"127.0.0.1:{closed_port()}")
    nodes.append(node)
    await banner(node, tmp_path)
    assert await publish_once(node.mqtt, 1)
    assert "no peer answered within sync_timeout" in (tmp_path / f"{A}.log").read_text()
