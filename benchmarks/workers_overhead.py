"""What `start --workers N` costs and gives: CPU per delivered message, 1 worker vs N.

`python -m benchmarks.workers_overhead [--workers 2] [--rounds 3]` starts `minibroker start
--workers 1` and then `--workers N` (fresh processes each run, unpinned: the same cores), runs
the same paced workload against each with `minibroker-bench`, and reads the CPU time of the
whole process tree (parent and workers) from /proc before and after:

- fan-in:  10 publishers at a fixed total rate -> 1 subscriber on '#'; with N workers the
  publishers spread over the workers and every message decoded on another worker than the
  subscriber's is forwarded to it over the Unix socket link (the split's cost);
- fan-out: 1 publisher -> 100 subscribers; each worker receives each message once (one
  forward per worker, not per subscriber) and writes to its own subscribers.

Paced (not as fast as possible) so both configurations deliver the same messages and the
CPU per delivered message compares like with like. Prints a Markdown table (medians); the load
of the machine (`os.getloadavg`) is printed with it, since other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

#: Workload -> (bench arguments, messages/s per publisher at --rate-factor 1): 20,000 delivered/s.
WORKLOADS: dict[str, tuple[list[str], float]] = {
    "fan-in": (["fan-in", "-P", "10", "-s", "64"], 2000.0),
    "fan-out": (["fan-out", "-S", "100", "-s", "64"], 200.0),
}
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of `pid` and of each of its descendants, by pid."""
    root = psutil.Process(pid)
    out: dict[int, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = times.user + times.system
    return out


def _start(workers: int, data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [sys.executable, "-m", "broker.cli", "start", "--workers", str(workers),
            "--host", "127.0.0.1", "--mqtt-port", str(port), "--ws-port", "0",
            "--http-port", "0", "--data-dir", data_dir]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if line.lstrip().startswith("auth:"):
            break
        if time.monotonic() > deadline:
            break
    time.sleep(2.0 if workers > 1 else 0.5)  # the workers find each other (membership join)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _bench(
    workload: str, port: int, duration: float, out: Path, pid: int, factor: float
) -> tuple[float, list[float], dict[str, float]]:
    """One bench run: (delivered messages, CPU seconds per process busiest first, metrics)."""
    before = _tree_cpu(pid)
    subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *WORKLOADS[workload][0], "-d", str(duration),
         "-r", str(WORKLOADS[workload][1] * factor),
         "--port", str(port), "--out", str(out), "--quiet"],
        check=True, timeout=duration + 120,
    )  # fmt: skip
    after = _tree_cpu(pid)
    metrics = json.loads(out.read_text().splitlines()[-1])["metrics"]
    per_proc = sorted((after[p] - before.get(p, 0.0) for p in after), reverse=True)
    return float(metrics["received"]), per_proc, metrics


def run_once(workload: str, workers: int, duration: float, factor: float = 1.0) -> dict[str, float]:
    """Marginal CPU per delivered message: the same broker runs the workload for `duration`
    and for 3 x `duration`; the difference of the two runs' CPU over the difference of their
    deliveries leaves out what does not grow with the messages (connects, subscriptions and
    their takeover RPCs between workers, settling, timers)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start(workers, tmp)
        try:
            short = _bench(workload, port, duration, Path(tmp) / "short.jsonl", proc.pid, factor)
            long = _bench(workload, port, 3 * duration, Path(tmp) / "long.jsonl", proc.pid, factor)
        finally:
            _stop(proc)
    messages = long[0] - short[0]
    if messages <= 0:
        raise RuntimeError(f"{workload}: the long run delivered no more than the short one")

    def marginal(i: int) -> float:
        if i >= len(long[1]) or (i > 0 and workers == 1):
            return 0.0
        return (long[1][i] - short[1][i]) / messages * 1e6

    metrics = long[2]
    return {
        # The busiest worker: the subscriber's in fan-in, the publisher's in fan-out (the
        # parent of N > 1 workers only waits and is the least busy).
        "busiest_us_per_msg": marginal(0),
        "second_us_per_msg": marginal(1),
        "received_per_s": float(metrics.get("received_per_s", metrics.get("deliveries_per_s", 0))),
        "loss_pct": float(metrics.get("loss_pct", 0.0)),
        "cpu_us_per_msg": (sum(long[1]) - sum(short[1])) / messages * 1e6,
    }


#: Subscribers of the fan-out workload (its deliveries per published message).
FAN_OUT_SUBS = 100


def predict(workload: str, one: dict[str, float], two: dict[str, float], n: int) -> float:
    """Delivered msg/s that `n` workers on `n` free cores would reach, from the CPU costs
    measured with 1 and 2 workers (us per delivered message). The model (see README,
    "Workers"), per message:

    fan-in: the publisher's worker decodes (d), forwards to the subscriber's worker unless it
    is that worker (send s, receive r), and the subscriber's worker writes (w). With n workers
    the subscriber's worker does d/n + r(n-1)/n + w: the limit, whatever n, is 1/(r+w).
    From 1 worker c1 = d + w; from 2, the busiest (the subscriber's) a2 = (d+r)/2 + w, so
    r + w = 2 a2 - c1 and d - r = 2 (c1 - a2); the total T2 = c1 + (s+r)/2.

    fan-out (S subscribers): the publisher's worker decodes (d), sends one forward per other
    worker (s each) and writes its share of the S deliveries (S w / n); each other worker
    receives once (r) and writes its share. From 1 worker c1 = d + S w; from 2 the total is
    T2 = c1 + s + r; taking s = r = d (each is one frame or packet decoded or encoded),
    the publisher's worker at n does d + (n-1) s + S w / n: its forwards are the limit.
    """
    c1 = one["cpu_us_per_msg"]
    if workload == "fan-in":
        a2 = two["busiest_us_per_msg"]
        t2 = two["cpu_us_per_msg"]
        sub_worker = max(1e-9, (2 * a2 - c1) + 2 * (c1 - a2) / n)
        total = c1 + (n - 1) / n * 2 * max(0.0, t2 - c1)
        return 1e6 * min(1 / sub_worker, n / total)
    subs = FAN_OUT_SUBS
    c1p, t2p = c1 * subs, two["cpu_us_per_msg"] * subs  # per published message
    forward = max(0.0, t2p - c1p)  # s + r: the one forward that 2 workers add
    send = decode = forward / 2  # s = r = d (the busiest/next split is skewed by how the
    writes = max(1e-9, c1p - decode)  # kernel spread the subscribers, so it is not used)
    pub_worker = decode + (n - 1) * send + writes / n
    total = c1p + (n - 1) * forward
    return 1e6 * subs * min(1 / pub_worker, n / total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers_overhead")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument(
        "--rate-factor", type=float, default=1.0,
        help="multiply the publish rates (1 = 20,000 delivered msg/s in each workload)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    rows = []
    for workload in args.workload or list(WORKLOADS):
        runs: dict[int, list[dict[str, float]]] = {1: [], args.workers: []}
        for _ in range(args.rounds):
            for count in runs:
                result = run_once(workload, count, args.duration, args.rate_factor)
                print(f"{workload} workers={count}: {result}", file=sys.stderr, flush=True)
                runs[count].append(result)
        med = {
            count: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for count, results in runs.items()
        }
        one, many = med[1], med[args.workers]
        at1 = 1e6 / one["cpu_us_per_msg"]
        rows.append(
            f"| {workload} | {one['received_per_s']:,.0f} | {many['received_per_s']:,.0f} "
            f"| {one['cpu_us_per_msg']:.1f} | {many['cpu_us_per_msg']:.1f} "
            f"| {many['cpu_us_per_msg'] / one['cpu_us_per_msg']:.2f} "
            f"| {many['busiest_us_per_msg']:.1f} / {many['second_us_per_msg']:.1f} "
            f"| {at1:,.0f} | {predict(workload, one, many, 16):,.0f} |"
        )
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    n = args.workers
    rate = 20_000 * args.rate_factor
    print(f"\nmachine: {os.cpu_count()} cores, load average {load}; medians of {args.rounds}; "
          f"{rate:,.0f} delivered msg/s offered")  # fmt: skip
    print(f"| workload | delivered/s, 1 worker | delivered/s, {n} workers | broker CPU us/msg, 1 "
          f"| broker CPU us/msg, {n} | CPU ratio {n}/1 | busiest / next worker us/msg "
          f"| 1 core saturated, msg/s | 16 workers predicted, msg/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
