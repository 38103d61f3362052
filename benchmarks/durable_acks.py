"""What `durable_acks` costs: QoS 1 fan-in into a persistent session, with it off and on.

`python -m benchmarks.durable_acks [--rounds 3] [-d 5] [-P 4] [--window 16]` starts
`minibroker start` with `persistence = true` on a fresh data dir (`durable_acks` false, then
true, alternately, a fresh process each run), connects one persistent subscriber (clean
session 0, QoS 1, acknowledging every delivery) on `bench/durable/#` and `-P` publishers that
each keep `--window` QoS 1 PUBLISHes in flight for `-d` seconds, and measures:

- acked msg/s (PUBACKs received over the publishing time);
- the ack latency (PUBLISH written to PUBACK read, each message): p50 and p99;
- the broker's CPU time per acknowledged message (user + system from /proc, whole run), the
  number that depends least on how busy the shared machine's other cores are.

The clients are plain asyncio protocols on the broker's own codec (`broker.protocol.codec`),
as small as a generator can be. Medians of `--rounds` runs per setting are printed as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil

from broker.protocol.codec import Decoder, encode
from broker.protocol.packets import (
    ConnAck,
    Connect,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
)

START_TIMEOUT = 30.0
TOPIC = "bench/durable/x"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(durable: bool, data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    config = os.path.join(data_dir, "broker.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(f"persistence = true\ndurable_acks = {'true' if durable else 'false'}\n")
    argv = [sys.executable, "-m", "broker.cli", "start", "--config", config,
            "--host", "127.0.0.1", "--mqtt-port", str(port), "--ws-port", "0",
            "--http-port", "0", "--cluster-port", "0", "--data-dir", data_dir]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    for raw in proc.stdout:
        if raw.decode(errors="replace").lstrip().startswith("auth:") or (
            time.monotonic() > deadline
        ):
            break
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)  # our own child, by its PID
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class _Client(asyncio.Protocol):
    """One MQTT 3.1.1 connection: CONNACK, PUBACKs (latency) and deliveries (acknowledged)."""

    latencies: list[int] = field(default_factory=list)
    sent_at: dict[int, int] = field(default_factory=dict)
    received: int = 0
    transport: asyncio.Transport | None = None
    decoder: Decoder = field(default_factory=Decoder)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        assert self.transport is not None
        for packet in self.decoder.feed(data):
            if isinstance(packet, PubAck):
                sent = self.sent_at.pop(packet.packet_id, None)
                if sent is not None:
                    self.latencies.append(now - sent)
                    self.room.set()
            elif isinstance(packet, Publish):
                self.received += 1
                if packet.qos and packet.packet_id is not None:
                    self.transport.write(encode(PubAck(packet.packet_id)))
            elif isinstance(packet, ConnAck):
                self.connected.set()


async def _connect(port: int, client_id: str, clean: bool) -> _Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(_Client, "127.0.0.1", port)
    assert client.transport is not None
    client.transport.write(encode(Connect(client_id, clean_start=clean, keepalive=60)))
    await asyncio.wait_for(client.connected.wait(), 10)
    return client


async def _publisher(client: _Client, window: int, until: float, payload: bytes) -> None:
    transport = client.transport
    assert transport is not None
    next_id = 1
    while time.monotonic() < until:
        while len(client.sent_at) < window:
            client.sent_at[next_id] = time.monotonic_ns()
            transport.write(encode(Publish(TOPIC, payload, 1, packet_id=next_id)))
            next_id = next_id % 65535 + 1
        client.room.clear()
        try:
            await asyncio.wait_for(client.room.wait(), 5)
        except TimeoutError:
            return
    async with asyncio.timeout(10):  # the last window's acks
        while client.sent_at:
            client.room.clear()
            await client.room.wait()


async def _workload(port: int, publishers: int, window: int, duration: float) -> dict[str, float]:
    sub = await _connect(port, "durable-sub", clean=False)
    assert sub.transport is not None
    sub.transport.write(encode(Subscribe(1, [SubscriptionRequest("bench/durable/#", 1)])))
    await asyncio.sleep(0.3)
    pubs = [await _connect(port, f"durable-pub-{i}", clean=True) for i in range(publishers)]
    start = time.monotonic()
    await asyncio.gather(*(_publisher(p, window, start + duration, b"x" * 64) for p in pubs))
    elapsed = time.monotonic() - start
    latencies = sorted(ns for p in pubs for ns in p.latencies)
    for client in (*pubs, sub):
        assert client.transport is not None
        client.transport.close()
    count = len(latencies)
    return {
        "acked": count,
        "acked_per_s": count / elapsed,
        "p50_ms": latencies[count // 2] / 1e6 if count else 0.0,
        "p99_ms": latencies[min(count - 1, count * 99 // 100)] / 1e6 if count else 0.0,
        "received": sub.received,
    }


def run_once(durable: bool, publishers: int, window: int, duration: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start(durable, tmp)
        try:
            broker = psutil.Process(proc.pid)
            before = broker.cpu_times()
            result = asyncio.run(_workload(port, publishers, window, duration))
            after = broker.cpu_times()
        finally:
            _stop(proc)
    cpu = (after.user - before.user) + (after.system - before.system)
    result["cpu_us_per_msg"] = cpu / max(1.0, result["acked"]) * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable_acks")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-P", "--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=16, help="QoS 1 in flight per publisher")
    args = parser.parse_args(argv)
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for durable in runs:
            result = run_once(durable, args.publishers, args.window, args.duration)
            print(f"durable_acks={durable}: {result}", file=sys.stderr, flush=True)
            runs[durable].append(result)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nmachine: {os.cpu_count()} cores, load average {load}; medians of {args.rounds}; "
          f"{args.publishers} publishers x {args.window} in flight, QoS 1, 64 B, "
          "1 persistent subscriber")  # fmt: skip
    print("| durable_acks | acked msg/s | ack p50 ms | ack p99 ms | broker CPU us/msg |")
    print("|---|---|---|---|---|")
    for durable, results in runs.items():
        med = {key: statistics.median(r[key] for r in results) for key in results[0]}
        name = "true" if durable else "false"
        print(
            f"| {name} | {med['acked_per_s']:,.0f} | {med['p50_ms']:.2f} "
            f"| {med['p99_ms']:.2f} | {med['cpu_us_per_msg']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
