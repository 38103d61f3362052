"""Real `minibroker` node processes, one per namespace, and the faults done to them.

Every node binds the fixed ports 1883 (MQTT), 8080 (HTTP) and 7946 (cluster) on its own address:
ports are per namespace, so fixed ports never clash. With `shaped=True` each node advertises
7947 instead, where a shaping `Relay` inside its namespace forwards to 7946: every frame a peer
sends to this node crosses the proxy, and partitions still cut it (the peer reaches the proxy
over the bridge). The test process reaches each node's MQTT and HTTP through a gateway on
127.0.0.1. Crash = SIGKILL, pause = SIGSTOP (until SIGCONT), restart = start again on the same
data dir (with `persistence = true` and `durable_acks = true`: persistent sessions and what was
acknowledged into them come back). Only PIDs this module started are signalled. Both output
streams are drained by threads (a full pipe would freeze the node) and kept with their arrival
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from faults_net import Net
from faults_proxy import Relay, gateway, link_proxy

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from broker.cli import main; sys.exit(main())"
MQTT, HTTP, CLUSTER, PROXIED = 1883, 8080, 7946, 7947
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (no node outlives a run)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Proc:
    """One node process and what it printed, each line with its arrival time (monotonic)."""

    proc: subprocess.Popen[bytes]
    log: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def drain(self, stream: IO[bytes], banner: bool) -> None:
        with open(self.log, "a", encoding="utf-8") as out:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append((time.monotonic(), line))
                out.write(line + "\n")
                out.flush()
                if banner and line.lstrip().startswith("auth:"):
                    self.ready.set()


class Cluster:
    """`n` nodes in namespaces; `start()`, faults, `close()` (always: it tears everything down)."""

    def __init__(
        self,
        n: int,
        tmp: Path,
        shaped: bool = False,
        config: str = "",
        env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        self.n = n
        self.tmp = tmp
        self.shaped = shaped
        self.config = config  # more TOML for every node (e.g. a short `[cluster] dead_hold`)
        self.env = env or {}  # more environment per node (e.g. libfaketime on one of them)
        self.net = Net(n)
        self.procs: list[Proc | None] = [None] * n
        self.lives: list[list[Proc]] = [[] for _ in range(n)]  # every process each node had
        self.paused: set[int] = set()
        self.mqtt: list[int] = []  # gateway ports on 127.0.0.1
        self.http: list[int] = []
        self.proxies: list[Relay] = []
        self._relays: list[Relay] = []
        self.names = [f"n{i}@{addr}" for i, addr in enumerate(self.net.addrs)]

    async def start(self) -> None:
        self.net.create()
        for i, addr in enumerate(self.net.addrs):
            via = self.net.thread(i)
            for port, ports in ((MQTT, self.mqtt), (HTTP, self.http)):
                relay = await gateway(via, addr, port)
                self._relays.append(relay)
                ports.append(relay.port)
            if self.shaped:
                proxy = await link_proxy(via, addr, PROXIED, CLUSTER, seed=i)
                self._relays.append(proxy)
                self.proxies.append(proxy)
        await asyncio.gather(*(self.spawn(i) for i in range(self.n)))

    def _argv(self, i: int) -> list[str]:
        addr = self.net.addrs[i]
        port = PROXIED if self.shaped else CLUSTER
        seeds = ",".join(f"{a}:{port}" for j, a in enumerate(self.net.addrs) if j != i)
        argv = [
            sys.executable, "-c", ENTRY, "start", "--node-name", self.names[i], "--host", addr,
            "--mqtt-port", str(MQTT), "--ws-port", "8083", "--http-port", str(HTTP),
            "--cluster-port", str(CLUSTER), "--data-dir", str(self.tmp / f"data{i}"),
            "--join", seeds, "--config", str(self._config()),
        ]  # fmt: skip
        if self.shaped:
            argv += ["--advertise", f"{addr}:{PROXIED}"]
        return self.net.exec_argv(i, argv)

    def _config(self) -> Path:
        """Persistent sessions survive a restart (`persistence`), as a deployment that
        restarts nodes would run them, and an ack means the state it acknowledges is on disk
        (`durable_acks`): the checker holds acknowledged messages to delivery across a
        SIGKILL."""
        path = self.tmp / "node.toml"
        if not path.exists():
            text = "persistence = true\ndurable_acks = true\n" + self.config
            path.write_text(text, encoding="utf-8")
        return path

    async def spawn(self, i: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(self.env.get(i, {}))
        popen = subprocess.Popen(
            self._argv(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        proc = Proc(popen, self.tmp / f"node{i}.log")
        self.procs[i] = proc
        self.lives[i].append(proc)
        assert popen.stdout is not None and popen.stderr is not None
        for stream, banner in ((popen.stdout, True), (popen.stderr, False)):
            threading.Thread(target=proc.drain, args=(stream, banner), daemon=True).start()
        ready = await asyncio.get_running_loop().run_in_executor(
            None, proc.ready.wait, START_TIMEOUT
        )
        if not ready:
            raise RuntimeError(f"node {i} did not start: {[line for _, line in proc.lines][-20:]}")

    def _pid(self, i: int) -> int:
        proc = self.procs[i]
        assert proc is not None and proc.proc.poll() is None, f"node {i} is not running"
        return proc.proc.pid

    def kill(self, i: int) -> None:
        """Crash: SIGKILL, then reap."""
        proc = self.procs[i]
        if proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGKILL)
            proc.proc.wait(10)
        self.paused.discard(i)

    def pause(self, i: int) -> None:
        os.kill(self._pid(i), signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        os.kill(self._pid(i), signal.SIGCONT)
        self.paused.discard(i)

    async def restart(self, i: int) -> None:
        """A crashed node comes back on its data dir."""
        self.kill(i)
        await self.spawn(i)

    def up(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.proc.poll() is None and i not in self.paused

    def log_lines(self, i: int, needle: str) -> list[tuple[float, str]]:
        return [(t, s) for proc in self.lives[i] for t, s in proc.lines if needle in s]

    async def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is None or proc.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                if i in self.paused:
                    proc.proc.send_signal(signal.SIGCONT)
                proc.proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.proc.kill()
                proc.proc.wait(5)
        for relay in self._relays:
            await relay.close()
        self.net.destroy()
