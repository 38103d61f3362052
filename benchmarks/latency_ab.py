"""Lone-message latency of several brokers, interleaved, for a machine shared with other jobs.

`python -m benchmarks.latency_ab --seconds 30 minibroker minibroker@../old mosquitto` starts each
broker (as `compare` does: `benchmarks.brokers.start_broker`, pinned to `--broker-core`), then
sends one 64 B QoS 0 PUBLISH at a time at `--rate` per second and times it until its subscriber
has it, switching broker every `--block` messages. A load swing on a shared machine then lands on
every broker alike, which `compare` (each broker for seconds in turn) cannot promise; what it
measures is the same path (publisher socket -> broker -> subscriber socket), with a client of a
few lines of blocking sockets that spins between messages (no wake-up of its own to measure).
Per broker it prints the p50/p90/p99/p99.9 round trip and the broker CPU time per message (from
/proc/PID/task/*/schedstat, in nanoseconds; wake-ups and timers included). `--loop asyncio`
runs our brokers on asyncio's loop. `floor-epoll` and `floor-asyncio` are not brokers but
`benchmarks.floor_relay`: what a Python process costs per message doing nothing else, the floor
under any Python broker's row.

Numbers are for comparing brokers within one run; the client's own cost is in every figure.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from benchmarks.brokers import RunningBroker, start_broker
from benchmarks.procfs import cpu_seconds, runtime_seconds
from benchmarks.stats import log_histogram, percentile, pooled_ratio_ci

TOPIC = b"bench/latency-ab"


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    length, n = bytearray(), len(body)
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def _connect(host: str, port: int, client_id: bytes) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Keep alive 0 (off: MQTT 3.1.1 section 3.1.2.10): the subscriber only reads, and a run
    # over 1.5 times a keep alive would otherwise end at the broker's deadline (MQTT-3.1.2-24).
    sock.sendall(_packet(0x10, _string(b"MQTT") + b"\x04\x02\x00\x00" + _string(client_id)))
    if _read(sock, 4)[0] != 0x20:
        raise RuntimeError("no CONNACK")
    return sock


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


@dataclass
class Subject:
    broker: RunningBroker
    pub: socket.socket
    sub: socket.socket
    rtt_ns: list[int] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_s: float = 0.0


def _subject(broker: RunningBroker) -> Subject:
    sub = _connect(broker.host, broker.port, b"ab-sub")
    sub.sendall(_packet(0x82, b"\x00\x01" + _string(TOPIC) + b"\x00"))
    if _read(sub, 5)[0] != 0x90:
        raise RuntimeError("no SUBACK")
    return Subject(broker, _connect(broker.host, broker.port, b"ab-pub"), sub)


def _cpu(pid: int) -> float:
    """CPU seconds of `pid` so far: the scheduler's nanoseconds, else clock ticks."""
    runtime = runtime_seconds(pid)
    if runtime is not None:
        return runtime
    return cpu_seconds(pid) or 0.0


def measure(subjects: list[Subject], seconds: float, rate: float, block: int, size: int) -> None:
    """Lone messages to each subject in turn, `block` at a time, for `seconds`."""
    frame = _packet(0x30, _string(TOPIC) + b"x" * size)
    period = 1.0 / rate
    for s in subjects:
        s.cpu_start = _cpu(s.broker.pid)
    clock = time.perf_counter
    due = clock()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in subjects:
            for _ in range(block):
                while clock() < due:  # spin: the client is awake when the message comes back
                    pass
                due += period
                t0 = time.perf_counter_ns()
                s.pub.sendall(frame)
                _read(s.sub, len(frame))
                s.rtt_ns.append(time.perf_counter_ns() - t0)
    for s in subjects:
        s.cpu_s = _cpu(s.broker.pid) - s.cpu_start


def report(subjects: list[Subject]) -> str:
    lines = [
        "| broker | messages | p50 us | p90 us | p99 us | p99.9 us | max us | broker CPU us/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in subjects:
        us = sorted(v / 1000 for v in s.rtt_ns)
        cpu = s.cpu_s / len(us) * 1e6 if us else 0.0
        lines.append(
            f"| {s.broker.label} | {len(us)} | {percentile(us, 50, presorted=True):.1f} | "
            f"{percentile(us, 90, presorted=True):.1f} | {percentile(us, 99, presorted=True):.1f} "
            f"| {percentile(us, 99.9, presorted=True):.1f} | {us[-1]:.0f} | {cpu:.1f} |"
        )
    return "\n".join(lines)


def ratios(subjects: list[Subject], base: Subject, round_messages: int) -> str:
    """Each subject's p50 and p99 over `base`'s, every sample pooled, with a 95% interval by
    bootstrap over rounds of `round_messages` (`benchmarks.stats.pooled_ratio_ci`). Round k
    of every subject ran in the same seconds (the blocks interleave), so rounds pair as in
    `compare`; a load swing moves both sides of a pair."""
    lines = [
        f"| broker / {base.broker.label} | rounds | p50 ratio (95% interval) "
        "| p99 ratio (95% interval) |",
        "|---|---:|---:|---:|",
    ]
    rounds = min(len(s.rtt_ns) for s in subjects) // round_messages
    if rounds < 2:
        return f"(ratios need at least 2 rounds of {round_messages} messages each)"

    def hists(s: Subject) -> list[dict[int, int]]:
        chunks = (s.rtt_ns[k * round_messages : (k + 1) * round_messages] for k in range(rounds))
        return [log_histogram(v / 1000 for v in chunk) for chunk in chunks]

    theirs = hists(base)
    for s in subjects:
        if s is base:
            continue
        mine = hists(s)
        cells = []
        for p in (50.0, 99.0):
            ratio, low, high = pooled_ratio_ci(mine, theirs, p)
            cells.append(f"{ratio:.3f} ({low:.3f}-{high:.3f})")
        lines.append(f"| {s.broker.label} | {rounds} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "brokers",
        nargs="+",
        help="minibroker, minibroker@DIR, mosquitto, floor-epoll, floor-asyncio",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="of measuring (30)")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s (1000)")
    parser.add_argument("--block", type=int, default=50, help="messages per turn (50)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (64)")
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=5.0,
        help="of each round the ratios' intervals resample (5)",
    )
    parser.add_argument("--loop", choices=("auto", "asyncio"), default="auto")
    parser.add_argument("--broker-core", type=int, default=0, help="core of the brokers (0)")
    parser.add_argument(
        "--load-core",
        type=int,
        default=None,
        help="pin this client to a core (default: not pinned; on a shared machine a pinned "
        "client waits for that core's other jobs and measures them)",
    )
    args = parser.parse_args(argv)
    started: list[RunningBroker] = []
    try:
        for name in args.brokers:
            started.append(start_broker(name, args.broker_core, args.loop == "auto"))
        subjects = [_subject(b) for b in started]
        if args.load_core is not None and args.load_core in os.sched_getaffinity(0):
            os.sched_setaffinity(0, {args.load_core})
        time.sleep(1.0)  # the brokers settle after the connects
        measure(subjects, args.seconds, args.rate, args.block, args.size)
        print(report(subjects))
        base = next((s for s in subjects if s.broker.name == "mosquitto"), subjects[-1])
        if len(subjects) > 1:
            # Each subject gets its share of the rate (the blocks take turns).
            round_messages = max(1, round(args.round_seconds * args.rate / len(subjects)))
            print()
            print(ratios(subjects, base, round_messages))
        load = os.getloadavg()[0]
        print(f"\n{args.seconds:.0f} s, {args.rate:.0f} msg/s, load average {load:.1f}")
    finally:
        for broker in started:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
