"""Acknowledged QoS 1/2 messages survive a cut cluster link and a killed, restarted node
(reliable forwards, `cluster.outbox`), with real nodes and real MQTT clients.

* A link cut shorter than the detection bound (a relay in front of the subscriber node's
  cluster port resets its connections and refuses new ones for a while): every acknowledged
  message arrives, and no QoS 2 message arrives twice.
* A node killed with SIGKILL in the middle of a stream of QoS 1 forwards to it and started
  again on its data dir (persistence on): its persistent subscriber gets every message the
  publisher's node acknowledged.
Every wait is bounded; only processes this module started are signalled, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from api_support import eventually
from cluster_support import ClusterNodes, converged
from test_cluster_processes import NodeProc, routed, spawn, stop

pytestmark = pytest.mark.cluster

TIMEOUT = 20.0


class Relay:
    """A TCP relay on 127.0.0.1 to `upstream` that holds each chunk `delay` seconds (so a cut
    loses what is in flight), can reset its connections and refuse new ones."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.upstream = 0
        self.port = 0
        self.refusing = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or not self.upstream:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()

    def cut(self) -> None:
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


class Subscriber:
    """A persistent session (clean_session false) on `t/#`, reconnecting until stopped; every
    payload received is counted (reads are never cancelled mid-way: see faults_workload)."""

    def __init__(self, port: int, qos: int) -> None:
        self.port = port
        self.qos = qos
        self.got: Counter[str] = Counter()
        self.subscribed = asyncio.Event()
        self.running = True

    async def run(self) -> None:
        while self.running:
            client = aiomqtt.Client(
                "127.0.0.1", self.port, identifier="keeper", clean_session=False, timeout=5
            )
            try:
                async with client:
                    await client.subscribe("t/#", qos=self.qos)
                    self.subscribed.set()
                    messages = aiter(client.messages)
                    pending: asyncio.Future[aiomqtt.Message] | None = None
                    while self.running:
                        if pending is None:
                            pending = asyncio.ensure_future(anext(messages))
                        done, _ = await asyncio.wait({pending}, timeout=0.2)
                        if done:
                            message, pending = pending.result(), None
                            self.got[bytes(message.payload).decode()] += 1  # type: ignore[arg-type]
                    pending.cancel() if pending is not None else None
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)


async def publish(
    port: int, count: int, acked: list[tuple[str, int]], qos_cycle: tuple[int, ...]
) -> None:
    """Publish `count` messages (QoS from `qos_cycle`), recording each acknowledged one."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="pub", timeout=5) as pub:
        for i in range(count):
            qos = qos_cycle[i % len(qos_cycle)]
            payload = f"m{i}"
            await pub.publish("t/x", payload.encode(), qos=qos)  # returns on PUBACK/PUBCOMP
            acked.append((payload, qos))
            await asyncio.sleep(0.005)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[ClusterNodes]:
    cluster = ClusterNodes(tmp_path)
    yield cluster
    await cluster.stop_all()


async def test_a_cut_link_loses_nothing_and_duplicates_no_qos2(nodes: ClusterNodes) -> None:
    relay = Relay()
    await relay.start()
    b = await nodes.start("b@127.0.0.1", cluster_advertise=f"127.0.0.1:{relay.port}")
    assert b.cluster is not None
    relay.upstream = b.cluster.port  # every frame a peer sends b crosses the relay
    a = await nodes.start("a@127.0.0.1", b)
    assert a.cluster is not None
    sub = Subscriber(b.node.tcp_port, qos=2)
    task = asyncio.create_task(sub.run())
    try:
        await converged(a, b)
        await asyncio.wait_for(sub.subscribed.wait(), TIMEOUT)
        await eventually(
            lambda: a.cluster is not None and bool(a.cluster.table.remote_match("t/x"))
        )
        acked: list[tuple[str, int]] = []

        async def faults() -> None:
            for _ in range(3):  # each blackout far shorter than the detection bound
                await asyncio.sleep(0.3)
                relay.refusing = True
                relay.cut()
                await asyncio.sleep(0.6)
                relay.refusing = False

        await asyncio.gather(publish(a.node.tcp_port, 400, acked, (1, 2)), faults())
        want = {payload for payload, _ in acked}
        await eventually(lambda: want <= set(sub.got), timeout=TIMEOUT)
        await asyncio.sleep(0.5)  # a late duplicate would arrive now
        twice = [p for p, qos in acked if qos == 2 and sub.got[p] > 1]
        assert twice == []  # MQTT-4.3.3: QoS 2 is delivered exactly once
        stats = a.cluster.stats
        assert relay.cuts == 3 and stats["forward/parked"] + stats["forward/resent"] > 0
        assert stats["forward/held_dropped"] == 0
        assert a.cluster.is_live("b@127.0.0.1")  # never declared dead
    finally:
        sub.running = False
        await asyncio.wait_for(task, 10)
        await relay.close()


async def test_a_killed_and_restarted_node_gets_every_acknowledged_message(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("persistence = true\n", encoding="utf-8")
    extra = ("--config", str(config))
    a = spawn("a@127.0.0.1", tmp_path / "a", None, tmp_path / "a.log", extra)
    procs: list[NodeProc] = [a]
    try:
        b = spawn("b@127.0.0.1", tmp_path / "b", a.ports["cluster"], tmp_path / "b.log", extra)
        procs.append(b)
        sub = Subscriber(b.mqtt, qos=1)
        task = asyncio.create_task(sub.run())
        try:
            await asyncio.wait_for(sub.subscribed.wait(), TIMEOUT)
            await routed("t/#", b.name, a)
            # The session must be on disk before the crash: persistence flushes what changed
            # every `persistence_interval` (1 s); a session younger than that dies with b.
            await asyncio.sleep(1.5)
            acked: list[tuple[str, int]] = []

            async def crash() -> None:
                await eventually(lambda: len(acked) >= 100, timeout=TIMEOUT)
                b.proc.send_signal(signal.SIGKILL)  # our own child, by its PID
                b.proc.wait(10)
                started = time.monotonic()
                fixed = ("--cluster-port", str(b.ports["cluster"]), "--mqtt-port", str(b.mqtt))
                again = await asyncio.get_running_loop().run_in_executor(
                    None, spawn, b.name, tmp_path / "b", a.ports["cluster"], tmp_path / "b.log",
                    (*extra, *fixed),
                )  # fmt: skip
                procs.append(again)
                print(f"b was down {time.monotonic() - started:.1f} s")

            await asyncio.gather(publish(a.mqtt, 400, acked, (1,)), crash())
            want = {payload for payload, _ in acked}
            with contextlib.suppress(AssertionError):
                await eventually(lambda: want <= set(sub.got), timeout=TIMEOUT)
            missing = sorted(want - set(sub.got), key=lambda p: int(p[1:]))
            assert missing == [], f"{len(missing)} of {len(want)} lost"
            assert "dead" not in (tmp_path / "a.log").read_text()  # held, not given up
        finally:
            sub.running = False
            await asyncio.wait_for(task, 10)
    finally:
        for proc in procs:
            stop(proc)
