"""The session move is two-phase (`cluster.takeover_park`, issue 14): the old node keeps the
surrendered session parked until the new node has committed it, and reinstates it when the
new node dies first, so the session and its queue survive a SIGKILL of the new node between
the surrender and its commit.

Real node processes started with the CLI on loopback, persistence on with `durable_acks` and
`persistence_interval` an hour (only commits that hold acks write anything). Node B runs with
`MINIBROKER_TEST_COMMIT_DELAY` (a test hook, off unless set: every commit waits that long
first), so the session moved to B stays uncommitted there for seconds. The session is made on
A with messages queued into it offline; the client CONNECTs on B (A surrenders: its log says
so), more messages are published on A while B holds the moved session uncommitted, then B is
SIGKILLed. Once A has declared B dead the client CONNECTs on A: its session is present, with
every message. (Before this change A had let the session go at the surrender and B had never
committed it: the CONNECT on A found no session.) Then B is started again, without the hook,
and the client moves to B: the session goes with it, and A drops its parked copy at B's
commit. Only processes started here are signalled, by their PIDs; every wait is bounded;
nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rawclient import RawClient
from test_cluster_first_sync import banner, launch, publish_once
from test_cluster_processes import ENTRY, REPO, TIMEOUT, NodeProc, _env, reap, until

from broker.protocol.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.persistence import COMMIT_DELAY_ENV

pytestmark = pytest.mark.cluster

A, B = "pa@127.0.0.1", "pb@127.0.0.1"
CLIENT = "tp-roam"
QUEUED = 5  # queued on A before the move
PARKED = 3  # published on A after the surrender, before B is killed


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    reap(started)


def launch_delayed(name: str, tmp: Path, config: Path, delay: float, *extra: str) -> NodeProc:
    """`launch` with the commit-delay test hook set for this process only."""
    argv = [
        sys.executable, "-c", ENTRY, "start", "--node-name", name, "--host", "127.0.0.1",
        "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0", "--cluster-port", "0",
        "--data-dir", str(tmp / name.split("@")[0]), "--config", str(config), *extra,
    ]  # fmt: skip
    env = {**_env(), COMMIT_DELAY_ENV: str(delay)}
    with open(tmp / f"{name}.log", "ab") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=env)
    node = NodeProc(name, argv, proc)
    threading.Thread(target=node.read_stdout, daemon=True).start()
    return node


def logged(tmp: Path, name: str, text: str) -> bool:
    return text in (tmp / f"{name}.log").read_text(errors="replace")


async def receive_all(client: RawClient, wanted: int) -> Counter[int]:
    """How often each payload arrived (acked: PUBACK, or PUBREC then PUBCOMP) until `wanted`
    distinct ones came and one more second passed without a new one (a second copy), or
    TIMEOUT passed."""
    got: Counter[int] = Counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            while True:
                packet = await client.recv(1.0 if len(got) >= wanted else TIMEOUT)
                if isinstance(packet, Publish):
                    got[int(packet.payload)] += 1
                    if packet.qos == 1 and packet.packet_id is not None:
                        client.send(PubAck(packet.packet_id))
                    elif packet.qos == 2 and packet.packet_id is not None:
                        client.send(PubRec(packet.packet_id))
                elif isinstance(packet, PubRel):
                    client.send(PubComp(packet.packet_id))
    return got


async def publish_qos2(port: int, n: int, topic: str) -> bool:
    """Publish QoS 2 `topic` with payload n through to PUBCOMP; True once it came."""
    client, ack = await RawClient.connect(port, f"tp-pub-{n}", clean_start=True)
    try:
        if not (isinstance(ack, ConnAck) and ack.reason_code == 0):
            return False
        client.send(Publish(topic, str(n).encode(), 2, packet_id=1))
        if not isinstance(await client.recv(TIMEOUT), PubRec):
            return False
        client.send(PubRel(1))
        return isinstance(await client.recv(TIMEOUT), PubComp)
    finally:
        await client.close()


async def publish(port: int, n: int, qos: int) -> bool:
    return await (publish_qos2(port, n, "tp/x") if qos == 2 else publish_once(port, n, "tp/x"))


@pytest.mark.parametrize("qos", [1, 2])
async def test_new_node_killed_before_its_commit_the_old_one_reinstates(
    tmp_path: Path, nodes: list[NodeProc], qos: int
) -> None:
    """QoS 2: each message once (MQTT-4.3.3: exactly once), also across the reinstatement."""
    config = tmp_path / "node.toml"
    config.write_text(
        "persistence = true\ndurable_acks = true\npersistence_interval = 3600000\n",
        encoding="utf-8",
    )
    a = await banner(launch(A, tmp_path, config), tmp_path)
    nodes.append(a)
    join = ("--join", f"127.0.0.1:{a.ports['cluster']}")
    b = await banner(launch_delayed(B, tmp_path, config, 30.0, *join), tmp_path)
    nodes.append(b)
    # The persistent session on A, offline, with QUEUED messages queued into it.
    client, ack = await RawClient.connect(a.mqtt, CLIENT, clean_start=False)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    client.send(Subscribe(1, [SubscriptionRequest("tp/#", qos)]))
    assert isinstance(await client.recv(TIMEOUT), SubAck)
    client.send(Disconnect())
    await client.close()
    for n in range(QUEUED):
        assert await publish(a.mqtt, n, qos)  # acked: committed on A (durable_acks)
    # The client CONNECTs on B: A surrenders; B's commit (and so its CONNACK) waits.
    mover = await RawClient.open(b.mqtt)
    mover.send(Connect(CLIENT, clean_start=False))
    await until(lambda: _true(logged(tmp_path, A, f"client {CLIENT} moves to {B}")), TIMEOUT)
    for n in range(QUEUED, QUEUED + PARKED):  # on A, after the surrender: A forwards them
        assert await publish(a.mqtt, n, qos)
    b.proc.kill()  # our own child, by its PID, before its commit
    b.proc.wait(TIMEOUT)
    await mover.close()
    await until(lambda: _true(logged(tmp_path, A, f"node {B} is dead")), 3 * TIMEOUT)
    # Reconnecting on A: the session is back, with every message.
    client, ack = await RawClient.connect(a.mqtt, CLIENT, clean_start=False)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert ack.session_present, "the session moved to the killed node was lost"
    got = await receive_all(client, QUEUED + PARKED)
    assert got == dict.fromkeys(range(QUEUED + PARKED), 1)
    client.send(Disconnect())
    await client.close()
    # B again (no hook): the session moves there and stays (A's parked copy is confirmed).
    b = await banner(launch(B, tmp_path, config, *join), tmp_path)
    nodes.append(b)
    assert await publish(a.mqtt, 100, qos)
    client, ack = await RawClient.connect(b.mqtt, CLIENT, clean_start=False)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0 and ack.session_present
    assert await receive_all(client, 1) == {100: 1}
    await client.close()


async def _true(value: bool) -> bool:
    return value
