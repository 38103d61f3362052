"""``minibroker cluster --nodes N``: a local N-node cluster for development, one process per node.

Node i (1-based) is ``node{i}@127.0.0.1`` (the ``--host`` if it is not a wildcard) on the base
ports + i - 1, with its data in ``<data-dir>/node{i}``; nodes 2..N join node 1. Each node is a
``minibroker start`` child process; their output is relayed line by line, prefixed with the node
name (the banners show the addresses). With a base port of 0 every node takes ephemeral ports and
the others join node 1 at the cluster port its banner shows.

Ctrl-C or SIGTERM stops them all: SIGTERM to each child, a bounded wait (then SIGKILL), exit 0.
A node that does not start (a port in use, say) stops the others, and the exit code is 1.

Once all are up, the cluster is supervised, not torn down: a node that exits or is killed is
reported (``[node2] exited: killed by SIGKILL; 2 of 3 nodes running``) and the others keep
running, so failure detection, takeover and partitions can be watched from one terminal. With
``--restart`` a dead node is started again after ``--restart-delay`` seconds with the same
name, ports (a node on ephemeral ports keeps its cluster port) and data dir, joining the nodes
still running; a node that does not come back up is not retried. When no node is left running
(and none is being restarted), the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
from typing import Any

__all__ = ["add_cluster_parser", "cluster_main", "node_commands"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_CLUSTER_PORT = re.compile(r"^\s*cluster\s+\S*?:(\d+)\s*$")
_WILDCARDS = ("0.0.0.0", "::", "")


def add_cluster_parser(sub: Any, port_type: Any) -> None:
    """Add the ``cluster`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("cluster", help="run a local N-node cluster (one process per node)")
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="number of nodes (3)")
    p.add_argument(
        "--base-mqtt-port", type=port_type, default=1883, metavar="N",
        help="MQTT/TCP port of node 1, +1 per node (1883; 0: ephemeral)",
    )  # fmt: skip
    p.add_argument(
        "--base-ws-port", type=port_type, default=8083, metavar="N",
        help="MQTT/WebSocket port of node 1, +1 per node (8083; 0: ephemeral)",
    )  # fmt: skip
    p.add_argument(
        "--base-http-port", type=port_type, default=8080, metavar="N",
        help="management API port of node 1, +1 per node (8080; 0: ephemeral)",
    )  # fmt: skip
    p.add_argument(
        "--base-cluster-port", type=port_type, default=7946, metavar="N",
        help="cluster port of node 1, +1 per node (7946; 0: ephemeral)",
    )  # fmt: skip
    p.add_argument("--data-dir", default="./data", metavar="DIR", help="node i uses DIR/node{i}")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR", help="bind address (127.0.0.1)")
    p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration for every node")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="log lines of every node: text (default) or JSON lines",
    )  # fmt: skip
    p.add_argument(
        "--restart", action="store_true",
        help="start a node that exits or is killed again, with its data dir",
    )  # fmt: skip
    p.add_argument(
        "--restart-delay", type=float, default=1.0, metavar="SECONDS",
        help="wait before a restart, so the others can notice the death (1)",
    )  # fmt: skip


def _port(base: int, i: int) -> int:
    return base + i - 1 if base else 0


def node_commands(args: argparse.Namespace, seed_port: int | None = None) -> list[list[str]]:
    """The ``minibroker start`` argument lists of nodes 1..N (node 1's cluster port for the
    others to join defaults to its base port)."""
    host = args.host
    name_host = "127.0.0.1" if host in _WILDCARDS else host
    join_host = "127.0.0.1" if host in _WILDCARDS else host
    if ":" in join_host:
        join_host = f"[{join_host}]"
    seed = seed_port if seed_port is not None else args.base_cluster_port
    commands = []
    for i in range(1, args.nodes + 1):
        cmd = [
            "start",
            "--node-name", f"node{i}@{name_host}",
            "--host", host,
            "--mqtt-port", str(_port(args.base_mqtt_port, i)),
            "--ws-port", str(_port(args.base_ws_port, i)),
            "--http-port", str(_port(args.base_http_port, i)),
            "--cluster-port", str(_port(args.base_cluster_port, i)),
            "--data-dir", os.path.join(args.data_dir, f"node{i}"),
        ]  # fmt: skip
        if args.config:
            cmd += ["--config", args.config]
        if args.verbose:
            cmd.append("--verbose")
        if getattr(args, "log_format", "text") != "text":
            cmd += ["--log-format", args.log_format]
        if i > 1:
            cmd += ["--join", f"{join_host}:{seed}"]
        commands.append(cmd)
    return commands


class _Child:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.restarts = 0
        self.banner_done = asyncio.Event()
        self.cluster_port: int | None = None
        self.relays: list[asyncio.Task[None]] = []

    async def relay(self, stream: asyncio.StreamReader | None, out: Any, banner: bool) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if banner and not self.banner_done.is_set():
                match = _CLUSTER_PORT.match(text)
                if match:
                    self.cluster_port = int(match.group(1))
                if text.lstrip().startswith("auth:"):
                    self.banner_done.set()
            print(f"[{self.name}] {text}", file=out, flush=True)


async def _spawn(name: str, argv: list[str]) -> _Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    child = _Child(name, proc)
    loop = asyncio.get_running_loop()
    child.relays = [
        loop.create_task(child.relay(proc.stdout, sys.stdout, True)),
        loop.create_task(child.relay(proc.stderr, sys.stderr, False)),
    ]
    return child


async def _wait_banner(child: _Child) -> bool:
    """True once the child printed its banner; False if it exited or took too long."""
    exited = asyncio.ensure_future(child.proc.wait())
    banner = asyncio.ensure_future(child.banner_done.wait())
    done, _ = await asyncio.wait(
        {exited, banner}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
    )
    for task in (exited, banner):
        if task not in done:
            task.cancel()
    return banner in done and child.proc.returncode is None


async def _stop_all(children: list[_Child]) -> None:
    for child in children:
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await child.proc.wait()
        except TimeoutError:
            print(f"[{child.name}] did not stop in {STOP_TIMEOUT:g} s: killed", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
        for relay in child.relays:
            with contextlib.suppress(asyncio.CancelledError):
                await relay


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _flag_value(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with `flag`'s value replaced (or the flag appended)."""
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


class _Supervisor:
    """Keeps the started nodes running: reports deaths, restarts with `--restart`."""

    def __init__(self, args: argparse.Namespace, children: list[_Child]) -> None:
        self.args = args
        self.children = children
        self.commands = node_commands(args, children[0].cluster_port)
        self.restarting: set[int] = set()
        self.given_up: set[int] = set()

    def running(self) -> int:
        return sum(1 for c in self.children if c.proc.returncode is None)

    def _restart_argv(self, index: int) -> list[str]:
        """Same name, ports and data dir; the cluster port it had; joins the nodes still up."""
        child = self.children[index]
        argv = list(self.commands[index])
        if child.cluster_port is not None:
            argv = _flag_value(argv, "--cluster-port", str(child.cluster_port))
        host = argv[argv.index("--join") + 1].rpartition(":")[0] if "--join" in argv else None
        if host is None:
            name_host = self.args.host if self.args.host not in _WILDCARDS else "127.0.0.1"
            host = f"[{name_host}]" if ":" in name_host else name_host
        peers = [
            f"{host}:{c.cluster_port}"
            for j, c in enumerate(self.children)
            if j != index and c.proc.returncode is None and c.cluster_port is not None
        ]
        while "--join" in argv:
            at = argv.index("--join")
            del argv[at : at + 2]
        if peers:
            argv += ["--join", ",".join(peers)]
        return argv

    async def restart(self, index: int, stop: asyncio.Event) -> None:
        old = self.children[index]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.args.restart_delay):
                    await stop.wait()
            if stop.is_set():
                return
            for relay in old.relays:
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            argv = self._restart_argv(index)
            data_dir = argv[argv.index("--data-dir") + 1]
            print(f"[{old.name}] restarting (data dir {data_dir})", file=sys.stderr, flush=True)
            child = await _spawn(old.name, argv)
            child.restarts = old.restarts + 1
            self.children[index] = child
            if await _wait_banner(child):
                print(
                    f"[{old.name}] is back ({self.running()} of {len(self.children)} nodes "
                    "running)", flush=True,
                )  # fmt: skip
            else:
                self.given_up.add(index)
                print(f"[{old.name}] did not start again; not retried", file=sys.stderr, flush=True)
        finally:
            self.restarting.discard(index)

    async def run(self, stop: asyncio.Event) -> int:
        """Until `stop` (0) or until no node is left (1)."""
        tasks: set[asyncio.Task[None]] = set()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                waiters = {
                    asyncio.ensure_future(c.proc.wait()): i
                    for i, c in enumerate(self.children)
                    if c.proc.returncode is None and i not in self.restarting
                }
                pending = {stopper, *waiters, *tasks}
                done, _ = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                for waiter in waiters:
                    waiter.cancel()
                tasks -= done
                if stopper in done:
                    return 0
                for waiter, i in waiters.items():
                    child = self.children[i]
                    if waiter not in done or child.proc.returncode is None:
                        continue
                    print(
                        f"[{child.name}] exited: {_how(child.proc.returncode)}; "
                        f"{self.running()} of {len(self.children)} nodes running",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
                    if self.args.restart and i not in self.given_up:
                        self.restarting.add(i)
                        task = asyncio.ensure_future(self.restart(i, stop))
                        tasks.add(task)
                if not self.running() and not self.restarting:
                    print("minibroker: error: no node is running", file=sys.stderr, flush=True)
                    return 1
        finally:
            stopper.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def run_cluster(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    children: list[_Child] = []
    code = 0
    try:
        first = await _spawn("node1", node_commands(args)[0])
        children.append(first)
        if not await _wait_banner(first):
            print("minibroker: error: node1 did not start", file=sys.stderr)
            return 1
        commands = node_commands(args, first.cluster_port)
        for i, argv in enumerate(commands[1:], start=2):
            child = await _spawn(f"node{i}", argv)
            children.append(child)
            if not await _wait_banner(child):
                print(f"minibroker: error: node{i} did not start", file=sys.stderr)
                return 1
        then = "restarted" if args.restart else "reported; the others keep running"
        print(
            f"cluster of {args.nodes} nodes running; a node that exits is {then}; "
            "Ctrl-C stops them all", flush=True,
        )  # fmt: skip
        code = await _Supervisor(args, children).run(stop)
    finally:
        await _stop_all(children)
    return code


def cluster_main(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        print("minibroker: error: --nodes must be at least 1", file=sys.stderr)
        return 2
    for kind in ("mqtt", "ws", "http", "cluster"):
        base = getattr(args, f"base_{kind}_port")
        if base and base + args.nodes - 1 > 65535:
            print(
                f"minibroker: error: --base-{kind}-port {base}: node {args.nodes} would need "
                f"port {base + args.nodes - 1}, above 65535",
                file=sys.stderr,
            )
            return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_cluster(args))
    return 0
