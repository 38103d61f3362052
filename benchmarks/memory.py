"""What one idle MQTT connection costs our node: RSS per connection and where it goes.

`minibroker-bench memory` (or `python -m benchmarks.memory`) starts a node in this process
(`broker.embedded`, on uvloop when installed; `--loop asyncio` for the standard loop) and opens
idle connections to it from a client subprocess over loopback: CONNECT (3.1.1, clean session,
keepalive 60 s) and CONNACK, then nothing. It reports, for `--rounds` rounds (median printed):

1. RSS: the node's VmRSS growth over `-n` connections, divided by `-n` (tracemalloc off).
2. A breakdown of the same growth as seen by Python, for another `--traced` connections with
   `tracemalloc` on: bytes allocated per connection, grouped by the source file that allocated
   them (an object is counted where it is created: the `Channel` in broker/server/tcp.py which
   calls `Channel(...)`; what uvloop's C code allocates, in the frame that runs the loop), and
   the objects the garbage collector tracks, grouped by type (`sys.getsizeof` of each new one).
   A dict or set that grows (the broker's registries) is counted in full in the round where it
   is resized, so those rows are lumpy; RSS is the amortized truth.
3. The objects one connection holds, walked from its `MqttConnection`: each one's own size and
   the size of every container attribute (dicts, lists, sets, bytearrays, deques) it owns alone,
   i.e. that is not the same object in two connections.

RSS also counts what Python does not see (the kernel's socket buffers do not count, they are not
in the process; the allocator's free lists and fragmentation do), so the two totals differ.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import importlib.util
import json
import os
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from benchmarks.goals import goal_for
from benchmarks.procfs import rss_kb

#: Seconds the client subprocess may take to connect everything.
CONNECT_TIMEOUT = 120.0
#: Source lines shown (the largest allocators).
LINES = 12
#: Issue 15's goal for RSS per idle connection in bytes, from `benchmarks.goals` (declared
#: there once, in KiB as /proc reports it; mosquitto 2.0.11 needs about 730 B here).
_GOAL = goal_for("conn-scale", "broker_kb_per_conn")
GOAL_BYTES = round(_GOAL.bound * 1024) if _GOAL is not None else 2000
#: Source files are grouped under these names (first match wins); the rest by their file name.
GROUPS = (
    ("broker/server/", "broker/server/"),
    ("broker/core/", "broker/core/"),
    ("broker/protocol/", "broker/protocol/"),
    ("asyncio/", "the event loop (uvloop's C code is counted here)"),
    ("socket.py", "socket objects"),
    ("selectors.py", "selector registration"),
    ("weakref.py", "the event loop's transport registry (weakref)"),
)

# -- the client side (a subprocess) --------------------------------------------------------------


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


async def _hold_clients(port: int, count: int, prefix: str) -> None:
    """Open `count` idle connections, print "ready", hold them until stdin closes."""
    sem = asyncio.Semaphore(100)
    writers: list[asyncio.StreamWriter] = []

    async def one(i: int) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_connect_packet(f"{prefix}{i}"))
            ack = await reader.readexactly(4)
            if ack[0] != 0x20 or ack[3] != 0:
                raise RuntimeError(f"CONNACK refused: {ack!r}")
            writers.append(writer)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), CONNECT_TIMEOUT)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


@contextlib.contextmanager
def _clients(port: int, count: int, prefix: str) -> Iterator[None]:
    """A subprocess holding `count` connections to `port` while the block runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memory", "--clients", str(port), str(count), prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"client subprocess failed (exit {proc.poll()})")
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the node side ------------------------------------------------------------------------------


async def _wait_clients(broker: Any, count: int) -> None:
    """Until the node has `count` CONNECTED channels (the client saw each CONNACK already;
    this only makes sure the node's side is done too)."""
    deadline = time.monotonic() + 30
    while len(broker.sessions) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _in_thread_clients(port: int, count: int, prefix: str, broker: Any, base: int) -> Any:
    """Enter `_clients` without blocking the node's loop (it must accept meanwhile)."""
    loop = asyncio.get_running_loop()
    cm = _clients(port, count, prefix)
    await loop.run_in_executor(None, cm.__enter__)
    await _wait_clients(broker, base + count)
    return cm


def _group(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    for needle, name in GROUPS:
        if needle in path:
            return name
    return os.path.basename(path) or "<unknown>"


def _short(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    for root in ("/broker/", "/asyncio/", "/benchmarks/"):
        if root in path:
            return root[1:] + path.split(root, 1)[1]
    return os.path.basename(path)


def _type_sizes() -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    objects = gc.get_objects()
    for obj in objects:
        if obj is objects:
            continue  # this list itself grows with everything else
        entry = counts[type(obj).__name__]
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    return {name: (n, size) for name, (n, size) in counts.items()}


_CONTAINERS = (dict, list, set, bytearray, collections.deque, bytes, str)


def _instance_dict(obj: object) -> dict[str, Any] | None:
    """`obj`'s __dict__, or None for a class that lists "__dict__" in its slots: there the
    dict is made on the first attribute set outside the slots
    (`broker.core.connection.Connection`), and asking for it would make it, so it is not
    asked (what such fields hold is in the tracemalloc totals)."""
    for cls in type(obj).__mro__:
        if "__dict__" in getattr(cls, "__slots__", ()):
            return None
    return vars(obj) if hasattr(obj, "__dict__") else None


def _attrs(obj: object) -> Iterator[tuple[str, object]]:
    names: list[str] = []
    for cls in type(obj).__mro__:
        names.extend(n for n in getattr(cls, "__slots__", ()) if n != "__dict__")
    names.extend(_instance_dict(obj) or ())
    for name in dict.fromkeys(names):
        with contextlib.suppress(AttributeError):
            yield name, getattr(obj, name)


def _owned(a: object, b: object) -> list[tuple[str, str, int]]:
    """Container attributes of `a` that are not the very same object in `b` (same kind)."""
    other = dict(_attrs(b))
    rows = []
    for name, value in _attrs(a):
        if not isinstance(value, _CONTAINERS) or value is other.get(name):
            continue
        if isinstance(value, str | bytes) and sys.getsizeof(value) < 80:
            continue  # short strings (ids, names): interned or tiny, counted in the totals
        rows.append((name, type(value).__name__, sys.getsizeof(value)))
    return rows


def walk_connection(broker: Any) -> list[dict[str, Any]]:
    """The per-connection objects of two connected channels, with their own containers."""
    channels = [c for c in broker.channels if c.session is not None][:2]
    if len(channels) < 2:
        return []
    pairs: list[tuple[str, object, object]] = []
    for attr, label in (("link", "transport protocol (MqttConnection)"), (None, "channel")):
        a = channels[0] if attr is None else getattr(channels[0], attr)
        b = channels[1] if attr is None else getattr(channels[1], attr)
        pairs.append((label, a, b))
    link_a, link_b = channels[0].link, channels[1].link
    if getattr(link_a, "transport", None) is not None:
        pairs.append(("transport", link_a.transport, link_b.transport))
    for attr in ("decoder", "session", "info"):
        a, b = getattr(channels[0], attr, None), getattr(channels[1], attr, None)
        if a is not None:
            pairs.append((attr, a, b))
    rows = []
    for label, a, b in pairs:
        owned = _owned(a, b)
        own = _instance_dict(a)
        own_dict = 0 if own is None else sys.getsizeof(own)
        rows.append(
            {
                "object": f"{label}: {type(a).__name__}",
                "size": sys.getsizeof(a) + own_dict,
                "owned": owned,
            }
        )
    return rows


async def measure(count: int, traced: int, settle: float) -> dict[str, Any]:
    """One round: a fresh node, `count` connections for RSS, `traced` more for the breakdown."""
    from broker.embedded import embedded_node

    node = await embedded_node().start()
    try:
        assert node.app is not None
        broker = node.app.node.broker
        gc.collect()
        await asyncio.sleep(settle)
        before = rss_kb(os.getpid()) or 0
        started = time.perf_counter()
        cm = await _in_thread_clients(node.mqtt_port, count, "rss-", broker, 0)
        connect_s = time.perf_counter() - started
        try:
            await asyncio.sleep(settle)
            gc.collect()
            after = rss_kb(os.getpid()) or 0
            rows = walk_connection(broker)
            tracemalloc.start(1)
            gc.collect()
            types0 = _type_sizes()
            snap0 = tracemalloc.take_snapshot()
            cm2 = await _in_thread_clients(node.mqtt_port, traced, "traced-", broker, count)
            try:
                await asyncio.sleep(settle)
                gc.collect()
                snap1 = tracemalloc.take_snapshot()
                types1 = _type_sizes()
            finally:
                tracemalloc.stop()
                cm2.__exit__(None, None, None)
        finally:
            cm.__exit__(None, None, None)
    finally:
        await node.stop()
    by_group: dict[str, int] = collections.Counter()
    for stat in snap1.compare_to(snap0, "filename"):
        by_group[_group(stat.traceback[0].filename)] += stat.size_diff
    by_line = {
        f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}": s.size_diff / traced
        for s in snap1.compare_to(snap0, "lineno")[:LINES]
    }
    by_type = {
        name: ((n - types0.get(name, (0, 0))[0]), (size - types0.get(name, (0, 0))[1]))
        for name, (n, size) in types1.items()
    }
    return {
        "connections": count,
        "rss_per_conn": (after - before) * 1024 / count,
        "connects_per_s": count / connect_s,
        "traced": traced,
        "by_group": {k: v / traced for k, v in by_group.items()},
        "by_line": by_line,
        "by_type": {k: (n / traced, s / traced) for k, (n, s) in by_type.items()},
        "objects": rows,
    }


def _median_map(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rounds for k in r}
    return {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in keys}


def render(results: list[dict[str, Any]], loop_name: str) -> str:
    """Markdown: the medians of the rounds."""
    rss = statistics.median(r["rss_per_conn"] for r in results)
    groups = _median_map([r["by_group"] for r in results])
    types = _median_map([{k: v[1] for k, v in r["by_type"].items()} for r in results])
    counts = _median_map([{k: v[0] for k, v in r["by_type"].items()} for r in results])
    lines = [
        f"RSS per idle connection: {rss:,.0f} B (median of {len(results)} rounds, "
        f"{results[0]['connections']:,} connections, {loop_name})",
        "",
        f"Goal (issue 15): <= {GOAL_BYTES:,} B per idle connection: "
        f"{'met' if rss <= GOAL_BYTES else 'NOT met'} on {loop_name} "
        f"({rss - GOAL_BYTES:+,.0f} B)",
        "",
        f"Python allocations per connection by source (tracemalloc, {results[0]['traced']:,} "
        "connections):",
        "",
        "| allocated in | bytes/connection |",
        "|---|---:|",
    ]
    shown = sorted((v, k) for k, v in groups.items() if abs(v) >= 8)
    for value, name in reversed(shown):
        lines.append(f"| {name} | {value:,.0f} |")
    lines.append(f"| **total** | **{sum(groups.values()):,.0f}** |")
    lines += ["", "The largest allocating lines (last round):", ""]
    lines += ["| line | bytes/connection |", "|---|---:|"]
    for name, value in results[-1]["by_line"].items():
        lines.append(f"| {name} | {value:,.0f} |")
    lines += ["", "GC-tracked objects per connection by type (sys.getsizeof):", ""]
    lines += ["| type | objects/connection | bytes/connection |", "|---|---:|---:|"]
    for value, name in sorted(((v, k) for k, v in types.items() if v >= 8), reverse=True):
        lines.append(f"| {name} | {counts.get(name, 0):.2f} | {value:,.0f} |")
    lines += ["", "One connection's objects (own size; containers it owns alone):", ""]
    lines += ["| object | bytes | owned containers |", "|---|---:|---|"]
    for row in results[-1]["objects"]:
        owned = ", ".join(f"{n} ({t}) {s}" for n, t, s in row["owned"]) or "-"
        lines.append(f"| {row['object']} | {row['size']} | {owned} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minibroker-bench memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--connections", type=int, default=5000, help="for RSS (5000)")
    parser.add_argument("--traced", type=int, default=1000, help="for tracemalloc (1000)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh node each (3)")
    parser.add_argument("--settle", type=float, default=0.5, help="idle seconds (0.5)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--json", metavar="FILE", help="also write the raw rounds here")


def run(args: argparse.Namespace) -> int:
    """Run `--rounds` rounds and print the Markdown report; returns the exit code."""
    if args.connections < 2 or args.traced < 1 or args.rounds < 1:
        print("minibroker-bench memory: error: need -n >= 2, --traced >= 1", file=sys.stderr)
        return 2
    use_uvloop = args.loop == "uvloop"
    if args.loop == "auto":
        use_uvloop = importlib.util.find_spec("uvloop") is not None
    results = []
    for _ in range(args.rounds):  # a fresh process each: freed memory is not given back
        cmd = [sys.executable, "-m", "benchmarks.memory", "--round"]
        cmd += [str(args.connections), str(args.traced), str(args.settle), str(use_uvloop)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out))
        print(f"round: {results[-1]['rss_per_conn']:,.0f} B/connection", file=sys.stderr)
    sys.stdout.write(render(results, "uvloop" if use_uvloop else "asyncio"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--clients"]:
        asyncio.run(_hold_clients(int(argv[1]), int(argv[2]), argv[3]))
        return 0
    if argv[:1] == ["--round"]:
        coro = measure(int(argv[1]), int(argv[2]), float(argv[3]))
        if argv[4] == "True":
            import uvloop

            result = uvloop.run(coro)
        else:  # asyncio's loop as `minibroker start --loop asyncio` makes it
            from broker.server.lean_selector import new_event_loop

            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                result = runner.run(coro)
        print(json.dumps(result))
        return 0
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
