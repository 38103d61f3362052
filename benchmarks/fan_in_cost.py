"""Fan-in's cost per message at each node, and a fair "2 nodes against 1" throughput run.

Why: `cluster-scale` leaves the generator unpinned beside the nodes, and reads the first
node's CPU only, so it cannot tell what a forwarded message costs the subscriber's node
against a message from its own publishers, nor what forwarding costs the publishers' node.
Here the generator is as cheap as a generator can be (each publisher sends one pre-encoded
block of identical QoS 0 PUBLISH frames again and again; the subscriber counts bytes), and
every node's CPU time is read from /proc over a fixed number of messages.

`--mode cost` (the default) runs these placements, each on freshly started nodes:

- `local`:     1 node; P publishers and the subscriber on it;
- `forwarded`: 2 nodes; P publishers on node 2, the subscriber on node 1, so node 1 handles
  only forwarded messages and node 2 only forwards;
- `cluster-local`: 2 nodes; everything on node 1 (node 2 idle, a peer known).

and prints CPU microseconds per received message for each node (node 1 of `forwarded` against
`local`: the receiving side; node 2 of `forwarded` against `local`: the sending side).

`--mode scale` is fan-in with the subscriber's node pinned to core 0 in both cases and
everything else (the generator, and the second node) on core 1, so the subscriber's node is
the bottleneck of both: 1 node gets all P publishers, 2 nodes get P/2 each. It prints the
received msg/s of each and their ratio, and the same for the CPU-bound rate (`run_scale`).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from benchmarks.brokers import RunningBroker, start_minibroker, start_minibroker_cluster
from benchmarks.procfs import cpu_seconds

__all__ = ["main"]

TOPIC = "bench/fanin"
PAYLOAD = bytes(64)


def _connect_frame(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def _publish_frame(topic: str, payload: bytes) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


FRAME = _publish_frame(TOPIC, PAYLOAD)


def _subscribe_frame(topic: str) -> bytes:
    name = topic.encode()
    body = b"\x00\x01" + len(name).to_bytes(2, "big") + name + b"\x00"
    return bytes([0x82, len(body)]) + body


def _open(target: tuple[str, int], client_id: str) -> socket.socket:
    sock = socket.create_connection(target, timeout=10.0)
    sock.sendall(_connect_frame(client_id))
    ack = b""
    while len(ack) < 4:
        chunk = sock.recv(4 - len(ack))
        if not chunk:
            raise RuntimeError("disconnected before CONNACK")
        ack += chunk
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError(f"CONNECT refused: {ack!r}")
    return sock


@dataclass
class Outcome:
    sent: int
    received: int
    seconds: float  # first byte sent to last byte received
    cpu_s: list[float]  # each node's CPU seconds over the same window
    generator_cpu_s: float = 0.0  # this process's (publishers and subscriber), same window


def _route_ready(sub: socket.socket, pubs: list[socket.socket]) -> None:
    """Publish a probe (another topic under the filter) from each publisher until the
    subscriber has one from each, then drain: every node then routes the topic to it."""
    probe = _publish_frame(TOPIC + "/probe", b"p")
    sub.settimeout(0.2)
    deadline = time.monotonic() + 30.0
    seen = b""
    for pub in pubs:
        got = False
        while not got:
            if time.monotonic() > deadline:
                raise TimeoutError("the subscriber's route did not reach every node")
            pub.sendall(probe)
            try:
                seen += sub.recv(65536)
            except TimeoutError:
                continue
            got = probe in seen
            seen = b""
    time.sleep(0.3)
    try:
        while sub.recv(65536):
            pass
    except TimeoutError:
        pass


def fan_in(
    pub_targets: list[tuple[str, int]],
    sub_target: tuple[str, int],
    pids: list[int],
    per_publisher: int,
    block_frames: int = 20_000,
    idle: float = 2.0,
) -> Outcome:
    """Every publisher sends `per_publisher` frames (in blocks of `block_frames`) as fast as
    the broker takes them; returns when the subscriber has them all or got nothing for `idle`
    seconds."""
    sub = _open(sub_target, "fanin-sub")
    sub.sendall(_subscribe_frame(TOPIC + "/#"))
    pubs = [_open(t, f"fanin-pub{i}") for i, t in enumerate(pub_targets)]
    _route_ready(sub, pubs)
    blocks, rest = divmod(per_publisher, block_frames)
    block = FRAME * block_frames
    expected = per_publisher * len(pubs) * len(FRAME)
    go = threading.Event()

    def publish(sock: socket.socket) -> None:
        go.wait()
        for _ in range(blocks):
            sock.sendall(block)
        sock.sendall(FRAME * rest)

    threads = [threading.Thread(target=publish, args=(p,), daemon=True) for p in pubs]
    for t in threads:
        t.start()
    buffer = bytearray(1 << 20)
    got = 0
    sub.settimeout(idle)
    cpu0 = [cpu_seconds(pid) or 0.0 for pid in pids]
    gen0 = time.process_time()
    started = time.monotonic()
    last = started
    go.set()
    try:
        while got < expected:
            n = sub.recv_into(buffer)
            if not n:
                break
            got += n
            last = time.monotonic()
    except TimeoutError:
        pass
    cpu1 = [cpu_seconds(pid) or 0.0 for pid in pids]
    gen1 = time.process_time()
    for t in threads:
        t.join(timeout=10)
    for s in [sub, *pubs]:
        s.close()
    return Outcome(
        per_publisher * len(pubs),
        got // len(FRAME),
        last - started,
        [b - a for a, b in zip(cpu0, cpu1, strict=True)],
        gen1 - gen0,
    )


def _pin_self(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def _stop(nodes: list[RunningBroker]) -> None:
    for node in nodes:
        node.stop()


def _start(count: int, cores: list[int | None]) -> list[RunningBroker]:
    if count == 1:
        return [start_minibroker(cores[0])]
    return start_minibroker_cluster(cores[:count])


def run_cost(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    """`local`, `forwarded`, `cluster-local`: us of CPU per received message, per node."""
    results: dict[str, list[list[float]]] = {}
    cases = [("local", 1, [0], 0), ("forwarded", 2, [1], 0), ("cluster-local", 2, [0], 0)]
    cases = [c for c in cases if c[0] in args.cases.split(",")]
    for round_no in range(args.rounds):
        for name, count, pub_nodes, sub_node in cases:
            nodes = _start(count, [0, 1])
            try:
                targets = [nodes[pub_nodes[i % len(pub_nodes)]].target for i in range(args.P)]
                out = fan_in(targets, nodes[sub_node].target, [n.pid for n in nodes], args.n)
            finally:
                _stop(nodes)
            per = [c / max(out.received, 1) * 1e6 for c in out.cpu_s]
            results.setdefault(name, []).append(per)
            loss = 100.0 * (1 - out.received / out.sent)
            print(
                f"round {round_no + 1} {name:13s} received {out.received:,} of {out.sent:,}"
                f" ({loss:.1f}% lost) in {out.seconds:.2f} s; CPU us/msg: "
                + ", ".join(f"node{i + 1} {p:.3f}" for i, p in enumerate(per)),
                flush=True,
            )
    return results


def run_scale(args: argparse.Namespace) -> dict[str, list[float]]:
    """Fan-in, the subscriber's node on core 0, the generator (and node 2) on core 1: the
    received msg/s, and the CPU-bound rate, messages over the busiest core's CPU seconds
    (node 1's on core 0; the generator's plus node 2's on core 1): what the pair would
    deliver with each core to itself. On a machine shared with other jobs the wall-clock
    rate is mostly their share of the cores; the CPU-bound rate is not."""
    rates: dict[str, list[float]] = {}
    for round_no in range(args.rounds):
        order = [1, 2] if round_no % 2 == 0 else [2, 1]
        for count in order:
            nodes = _start(count, [0, 1])
            try:
                targets = [nodes[i % count].target for i in range(args.P)]
                out = fan_in(targets, nodes[0].target, [n.pid for n in nodes], args.n)
            finally:
                _stop(nodes)
            rate = out.received / out.seconds if out.seconds else 0.0
            core1 = out.generator_cpu_s + sum(out.cpu_s[1:])
            bound = out.received / max(out.cpu_s[0], core1, 1e-9)
            label = f"{count} node{'s' if count > 1 else ''}"
            rates.setdefault(label, []).append(rate)
            rates.setdefault(f"{label}, CPU-bound", []).append(bound)
            loss = 100.0 * (1 - out.received / out.sent)
            print(
                f"round {round_no + 1} {count} node(s): {rate:,.0f} msg/s received"
                f" ({loss:.1f}% lost, {out.seconds:.2f} s), CPU-bound {bound:,.0f} msg/s;"
                f" CPU s: generator {out.generator_cpu_s:.2f}, "
                + ", ".join(f"node{i + 1} {c:.2f}" for i, c in enumerate(out.cpu_s))
                + "; node1 us/msg "
                + f"{out.cpu_s[0] / max(out.received, 1) * 1e6:.3f}",
                flush=True,
            )
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["cost", "scale"], default="cost")
    parser.add_argument("-P", type=int, default=10, help="publishers (10)")
    parser.add_argument("-n", type=int, default=400_000, help="messages per publisher")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions (3)")
    parser.add_argument(
        "--cases", default="local,forwarded,cluster-local", help="cost mode: which placements"
    )
    parser.add_argument("--gen-core", type=int, default=1, help="the generator's core (1)")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("fan_in_cost: needs 2 cores", file=sys.stderr)
        return 2
    _pin_self(args.gen_core)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"commit {commit}, load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.mode == "cost":
        for name, rows in run_cost(args).items():
            columns = list(zip(*rows, strict=True))
            medians = ", ".join(
                f"node{i + 1} {statistics.median(c):.3f}" for i, c in enumerate(columns)
            )
            print(f"median {name:13s} CPU us per received message: {medians}")
    else:
        rates = run_scale(args)
        rate_medians = {k: statistics.median(v) for k, v in rates.items()}
        for k, v in rate_medians.items():
            print(f"median {k}: {v:,.0f} msg/s")
        for suffix in ("", ", CPU-bound"):
            one, two = rate_medians.get("1 node" + suffix), rate_medians.get("2 nodes" + suffix)
            if one and two:
                print(f"2 nodes / 1 node{suffix} = {two / one:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
