"""Counting publishers and subscribers for the no-loss tests, and CLI node processes.

Payloads are `b"<stream>:<n>"`; the subscriber counts deliveries per payload. It implements the
receiver side of QoS 2 as a real client must (MQTT 4.3.3, method B): a message is delivered
when its PUBLISH first arrives, its packet id is remembered until PUBREL, and a PUBLISH with an
id still remembered is acknowledged but not delivered again. That memory is the client's
session state and survives the client's reconnects. QoS 1 may be delivered more than once.

Only processes started here are signalled, by their PIDs; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rawclient import RawClient

from broker.protocol.packets import (
    ConnAck,
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

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from broker.cli import main; sys.exit(main())"
START_TIMEOUT = 20.0
TIMEOUT = 10.0
WINDOW = 20  # publisher: unacknowledged PUBLISH at once (below the default Receive Maximum)


def payload(stream: str, n: int) -> bytes:
    return f"{stream}:{n}".encode()


# -- clients -------------------------------------------------------------------------------------


async def publish_stream(
    port: int, client_id: str, topic: str, qos: int, stream: str, ids: range
) -> set[int]:
    """Publish `ids` at `qos` (a window of WINDOW in flight); returns the ids acknowledged
    (PUBACK, or PUBCOMP for QoS 2). Stops early, without raising, if the connection dies."""
    client, ack = await RawClient.connect(port, client_id, clean_start=True)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
    acked: set[int] = set()
    by_pid: dict[int, int] = {}
    todo = list(ids)
    next_pid = 1
    try:
        while todo or by_pid:
            while todo and len(by_pid) < WINDOW:
                n = todo.pop(0)
                pid = next_pid
                next_pid = next_pid % 65535 + 1
                by_pid[pid] = n
                client.send(Publish(topic, payload(stream, n), qos, packet_id=pid))
            packet = await client.recv(TIMEOUT)
            if isinstance(packet, PubAck) and qos == 1:
                acked.add(by_pid.pop(packet.packet_id))
            elif isinstance(packet, PubRec) and qos == 2:
                client.send(PubRel(packet.packet_id))
            elif isinstance(packet, PubComp) and qos == 2:
                acked.add(by_pid.pop(packet.packet_id))
    except (EOFError, ConnectionError, TimeoutError):
        pass  # the broker went away: what was acknowledged so far is the promise
    finally:
        await client.close()
    return acked


@dataclass
class Subscriber:
    """A persistent-session subscriber (3.1.1, clean session 0) that counts what it gets."""

    port: int
    client_id: str
    counts: Counter[bytes] = field(default_factory=Counter)
    awaiting_rel: set[int] = field(default_factory=set)  # client session state (QoS 2)
    client: RawClient | None = None
    session_present: bool = False

    async def connect(self, port: int | None = None) -> None:
        if port is not None:
            self.port = port
        client, ack = await RawClient.connect(self.port, self.client_id, clean_start=False)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
        self.client, self.session_present = client, ack.session_present

    async def subscribe(self, topic_filter: str, qos: int) -> None:
        assert self.client is not None
        self.client.send(Subscribe(1, [SubscriptionRequest(topic_filter, qos)]))
        while True:
            packet = await self.client.recv(TIMEOUT)
            if isinstance(packet, SubAck):
                assert packet.reason_codes == [qos], packet
                return
            self._handle(packet)

    def _handle(self, packet: object) -> None:
        client = self.client
        assert client is not None
        if isinstance(packet, Publish):
            if packet.qos == 0:
                self.counts[packet.payload] += 1
            elif packet.qos == 1:
                self.counts[packet.payload] += 1
                assert packet.packet_id is not None
                client.send(PubAck(packet.packet_id))
            else:
                assert packet.packet_id is not None
                if packet.packet_id not in self.awaiting_rel:
                    self.awaiting_rel.add(packet.packet_id)
                    self.counts[packet.payload] += 1
                client.send(PubRec(packet.packet_id))
        elif isinstance(packet, PubRel):
            self.awaiting_rel.discard(packet.packet_id)
            client.send(PubComp(packet.packet_id))

    async def receive(self, count: int | None = None, until: set[bytes] | None = None) -> None:
        """Handle packets until `count` more deliveries arrived, or every payload of `until`
        has been delivered at least once (TimeoutError after TIMEOUT without progress)."""
        assert self.client is not None
        start = sum(self.counts.values())
        while True:
            if count is not None and sum(self.counts.values()) - start >= count:
                return
            if until is not None and all(self.counts[p] for p in until):
                return
            self._handle(await self.client.recv(TIMEOUT))

    async def settle(self, quiet: float = 0.3) -> None:
        """Handle packets until none arrives for `quiet` seconds (the flows are complete)."""
        assert self.client is not None
        with contextlib.suppress(TimeoutError):
            while True:
                self._handle(await self.client.recv(quiet))

    async def drop(self) -> None:
        """Vanish without DISCONNECT (the session stays, with whatever is in flight)."""
        if self.client is not None:
            self.client.writer.transport.abort()
            self.client = None

    async def disconnect(self) -> None:
        if self.client is not None:
            self.client.send(Disconnect())
            await self.client.close()
            self.client = None


def check_no_loss(
    sub: Subscriber, stream: str, acked: set[int], qos: int, sent: int | None = None
) -> None:
    """Every acknowledged message arrived; QoS 2 exactly once; nothing unknown arrived."""
    missing = sorted(n for n in acked if not sub.counts[payload(stream, n)])
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:10]}"
    ours = {p: c for p, c in sub.counts.items() if p.startswith(f"{stream}:".encode())}
    if qos == 2:
        dups = {p: c for p, c in ours.items() if c > 1}
        assert not dups, f"QoS 2 delivered more than once: {list(dups.items())[:10]}"
    if sent is not None:
        assert all(int(p.split(b":")[1]) < sent for p in ours)


# -- CLI node processes --------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class CliProc:
    proc: asyncio.subprocess.Process
    mqtt_port: int
    stderr_path: Path

    async def kill(self) -> None:
        """SIGKILL our own child, by its PID."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def terminate(self) -> int:
        """SIGTERM (graceful stop), bounded; our own child by its PID."""
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        except TimeoutError:
            await self.kill()
            raise


async def start_cli(
    config: Path, data_dir: Path, stderr_path: Path, name: str, cluster_port: int = 0
) -> CliProc:
    """The CLI with `config`, port 0 everywhere (but `cluster_port` when given: a test that
    dials the node's cluster port chooses it); the banner tells the MQTT port bound."""
    with open(stderr_path, "ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ENTRY, "start", "--config", str(config),
            "--node-name", name, "--host", "127.0.0.1",
            "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0",
            "--cluster-port", str(cluster_port),
            "--data-dir", str(data_dir),
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=REPO, env=cli_env(),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = 0
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"CLI exited early: {stderr_path.read_text()[-2000:]}")
                match = re.search(r"mqtt://127\.0\.0\.1:(\d+)", line)
                if match:
                    port = int(match.group(1))
                if line.lstrip().startswith("auth:"):
                    break
        assert port, "no MQTT port in the banner"
    except BaseException:
        if proc.returncode is None:
            proc.kill()  # our own child, by its PID
        await proc.wait()
        raise
    # Keep draining stdout so that the pipe never fills.
    asyncio.get_running_loop().create_task(_drain(proc))
    return CliProc(proc, port, stderr_path)


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    with contextlib.suppress(Exception):
        while await proc.stdout.readline():
            pass
