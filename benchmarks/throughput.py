"""Baseline: QoS 0 one-to-one throughput (messages/s) through one broker.

Starts `minibroker` in its own process on free loopback ports (or targets `--host/--port`),
connects one subscriber and one publisher with a lean asyncio client built on our codec, sends
`--count` messages as fast as the socket takes them and reports the rate at which the subscriber
received them. Bounded by `--timeout`. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

from broker.protocol.codec import Decoder, encode, encode_publish
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def mqtt_connect(
    host: str, port: int, client_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Decoder]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode(Connect(client_id, keepalive=60), MQTT_3_1_1))
    decoder = Decoder(version=MQTT_3_1_1)
    packets: list[object] = []
    while not packets:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError("broker closed the connection")
        packets.extend(decoder.feed(data))
    if not isinstance(packets[0], ConnAck) or packets[0].reason_code != 0:
        raise ConnectionError(f"connect refused: {packets[0]!r}")
    return reader, writer, decoder


async def one_to_one(
    host: str, port: int, count: int, size: int, timeout: float
) -> dict[str, object]:
    topic = "bench/one"
    s_reader, s_writer, s_decoder = await mqtt_connect(host, port, "bench-sub")
    s_writer.write(encode(Subscribe(1, [SubscriptionRequest(topic, 0)]), MQTT_3_1_1))
    acked = False
    while not acked:
        for packet in s_decoder.feed(await s_reader.read(4096)):
            acked = acked or isinstance(packet, SubAck)
    _, p_writer, _ = await mqtt_connect(host, port, "bench-pub")
    frame = encode_publish(topic, b"x" * size, 0, False, False, None, None, MQTT_3_1_1)

    received = 0
    first = last = 0.0

    async def consume() -> None:
        nonlocal received, first, last
        while received < count:
            data = await s_reader.read(1 << 20)
            if not data:
                return
            n = sum(1 for p in s_decoder.feed(data) if isinstance(p, Publish))
            if n and not first:
                first = time.perf_counter()
            received += n
        last = time.perf_counter()

    consumer = asyncio.create_task(consume())
    cpu0 = time.process_time()
    start = time.perf_counter()
    batch = 500
    for i in range(0, count, batch):
        p_writer.write(frame * min(batch, count - i))
        await p_writer.drain()
    sent_at = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await consumer
    end = last or time.perf_counter()
    cpu = time.process_time() - cpu0
    consumer.cancel()
    for writer in (p_writer, s_writer):
        writer.close()
    elapsed = end - start
    return {
        "sent": count,
        "received": received,
        "publish_seconds": round(sent_at - start, 3),
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(received / elapsed) if elapsed > 0 else 0.0,
        "client_cpu_s": round(cpu, 3),
    }


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_broker() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [
        sys.executable, "-c", "import sys; from broker.cli import main; sys.exit(main())",
        "start", "--mqtt-port", str(port), "--ws-port", str(free_port()),
        "--http-port", str(free_port()), "--cluster-port", str(free_port()),
        "--data-dir", os.path.join("/tmp", f"minibroker-bench-{port}"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="target broker; 0 starts minibroker")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    proc = None
    port = args.port
    if not port:
        proc, port = start_broker()
    try:
        asyncio.run(wait_port(args.host, port))
        for run in range(args.runs):
            cpu_before = process_cpu(proc.pid) if proc is not None else None
            result = asyncio.run(one_to_one(args.host, port, args.count, args.size, args.timeout))
            if proc is not None and cpu_before is not None:
                result["broker_cpu_s"] = round(process_cpu(proc.pid) - cpu_before, 3)
            result.update(scenario="qos0-one-to-one", run=run + 1, payload=args.size)
            print(json.dumps(result), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    return 0
