"""`minibroker start --workers N`: the parent that runs N worker processes and watches them.

Theory of operation
-------------------
One Python process uses one core. With `--workers N` the parent starts N copies of the same
`minibroker start` command line, each told which worker it is through `WORKER_ENV` (index,
count, a private directory for the Unix sockets between them, the shared cluster cookie, and
the MQTT/WebSocket ports). Each worker:

* binds every MQTT/WebSocket listener on the same port with SO_REUSEPORT, so the kernel spreads
  new connections over the workers' accept queues (by a hash of the client's address);
* joins the other workers as a cluster over Unix sockets (`cluster.transport`, a `unix:` host):
  routes, forwarding, retained replication and client-id takeover work between workers exactly
  as between nodes, so a client id stays unique across the node and a publish reaches the
  subscribers of every worker;
* worker 0 alone serves the management API, and answers for all through the cluster RPC as one
  node (`management.workers_view`).

A node of workers that joins a cluster of other nodes (`--join`) links its workers over TCP
instead, each a member `<node>/w<index>` of that cluster (worker 0 on the node's cluster port,
the others on ephemeral ports, seeded with worker 0 and the node's peers): the same links,
routes and takeover between workers as between any members, and every node's API groups the
workers back into one node (`management.grouped_view`).

Port 0 (tests) would give each worker its own ephemeral port, so the parent first reserves a
concrete port per listener with a bound, never listening, SO_REUSEPORT socket that it holds
until the end (a port that is busy fails here, before any worker starts), and hands the ports on.

Supervision: SIGTERM or SIGINT to the parent is passed on to every worker (each stops
gracefully, as a single node does); a worker still running after `STOP_TIMEOUT` is killed. A
worker that dies on its own is reported in the parent's log with its exit status; the others keep
serving (its clients reconnect and land on the others). When no worker is left the parent exits
with status 1. A worker is started with PR_SET_PDEATHSIG (Linux), so it gets SIGTERM if the
parent itself is killed: no orphans.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from types import FrameType

from broker.server.config import BrokerConfig, ListenerConfig

__all__ = [
    "WORKER_ENV",
    "WorkerSpec",
    "apply_worker",
    "joins_cluster",
    "parse_workers",
    "supervise",
]

log = logging.getLogger(__name__)

#: The environment variable that makes a `minibroker start` process a worker (JSON WorkerSpec).
WORKER_ENV = "MINIBROKER_WORKER"
#: Seconds the workers have to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 15.0
_POLL = 0.1
#: MQTT listeners that every worker binds (the management one is worker 0's alone).
MQTT_KINDS = ("tcp", "ssl", "ws", "wss")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process is told by its parent."""

    index: int
    count: int
    #: Private directory (mode 0700) holding each worker's Unix socket `w<index>.sock`.
    run_dir: str
    cookie: str
    #: Listener kind (tcp, ssl, ws, wss) -> the port every worker binds.
    ports: dict[str, int] = field(default_factory=dict)
    #: The node joins a cluster of other nodes (`--join`): the TCP cluster port of worker 0,
    #: which the other workers dial first. 0: the workers link over Unix sockets only.
    cluster_port: int = 0

    def socket_path(self, index: int) -> str:
        return os.path.join(self.run_dir, f"w{index}.sock")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(
            int(data["index"]),
            int(data["count"]),
            str(data["run_dir"]),
            str(data["cookie"]),
            {str(k): int(v) for k, v in data["ports"].items()},
            int(data.get("cluster_port", 0)),
        )


def parse_workers(text: str) -> int:
    """`--workers`: a count >= 1, or `auto` = the machine's cores. Raises ValueError."""
    if text.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    count = int(text)
    if count < 1:
        raise ValueError(f"--workers must be at least 1, got {count}")
    return count


def joins_cluster(cfg: BrokerConfig) -> bool:
    """A node of workers takes part in a cluster of other nodes when it joins one."""
    return cfg.cluster.enabled and bool(cfg.cluster_join)


def apply_worker(cfg: BrokerConfig, spec: WorkerSpec) -> None:
    """Turn the node's configuration into worker `spec.index`'s: the reserved ports; the
    management API in worker 0 only; persistent files in a directory of its own (worker 0
    keeps the node's, so going from one worker to N keeps the data). The TCP cluster
    listener: none when the node joins no cluster (the workers link over Unix sockets);
    else worker 0 takes the node's cluster port and the others an ephemeral one each, with
    the advertised host kept and its port left to the bound one."""
    for kind, port in spec.ports.items():
        listener: ListenerConfig = getattr(cfg, kind)
        listener.port = port
    if not spec.cluster_port:
        cfg.cluster.enabled = False
    elif spec.index == 0:
        cfg.cluster.port = spec.cluster_port
    else:
        cfg.cluster.port = 0
        cfg.cluster_advertise = _host_only(cfg.cluster_advertise)
    if spec.index > 0:
        cfg.management.enabled = False
        cfg.data_dir = os.path.join(cfg.data_dir, f"worker-{spec.index}")
        os.makedirs(cfg.data_dir, exist_ok=True)


def _host_only(advertise: str) -> str:
    """`[cluster] advertise` without its port ("host", "host:port", "[v6]:port"): a bare IPv6
    address is written without brackets (`broker.app.parse_advertise` reads it so)."""
    text = advertise.strip()
    if text.startswith("[") and "]" in text:
        return text[1 : text.index("]")]
    return text.split(":")[0] if text.count(":") == 1 else text


def _cluster_port(cfg: BrokerConfig) -> int:
    """Worker 0's TCP cluster port when the node joins a cluster (0 when it does not): the
    configured one, or for port 0 one the kernel picks now (freed again for worker 0)."""
    if not joins_cluster(cfg):
        return 0
    if cfg.cluster.port:
        return cfg.cluster.port
    family = socket.AF_INET6 if ":" in cfg.cluster.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((cfg.cluster.bind, 0))
        return int(sock.getsockname()[1])


def _reserve_ports(cfg: BrokerConfig) -> tuple[dict[str, int], list[socket.socket]]:
    """A concrete port per enabled MQTT listener, held by a bound SO_REUSEPORT socket that
    never listens (so it takes no connections). Raises OSError for a busy port."""
    ports: dict[str, int] = {}
    held: list[socket.socket] = []
    try:
        for kind in MQTT_KINDS:
            listener: ListenerConfig = getattr(cfg, kind)
            if not listener.enabled:
                continue
            family = socket.AF_INET6 if ":" in listener.bind else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((listener.bind, listener.port))
            except OSError as exc:
                where = f"{listener.bind}:{listener.port}"
                raise OSError(exc.errno, f"{exc.strerror} ({where})") from exc
            ports[kind] = int(sock.getsockname()[1])
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return ports, held


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


class _Stop:
    """The parent's SIGTERM/SIGINT: remembered, acted on by the supervision loop."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def supervise(cfg: BrokerConfig, count: int, argv: list[str]) -> int:
    """Run `count` workers of `minibroker start <argv>` until a signal or until none is left.
    Returns the exit status: 0 after a requested stop, 1 when every worker died by itself."""
    ports, held = _reserve_ports(cfg)
    cluster_port = _cluster_port(cfg)
    run_dir = tempfile.mkdtemp(prefix="minibroker-workers-")
    os.chmod(run_dir, 0o700)
    cookie = secrets.token_hex(16)
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for index in range(count):
            spec = WorkerSpec(index, count, run_dir, cookie, ports, cluster_port)
            env = {**os.environ, WORKER_ENV: spec.to_env()}
            children[index] = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", *argv],
                env=env,
                preexec_fn=_die_with_parent,  # (safe: the parent runs one thread)
            )
        pids = ", ".join(str(p.pid) for p in children.values())
        log.info("workers: %d started (pids %s), parent pid %d", count, pids, os.getpid())
        return _watch(children, stop)
    finally:
        _stop_all(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in held:
            sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _watch(children: dict[int, subprocess.Popen[bytes]], stop: _Stop) -> int:
    running = dict(children)
    while not stop.requested:
        for index, child in list(running.items()):
            status = child.poll()
            if status is None:
                continue
            del running[index]
            log.error(
                "workers: worker %d (pid %d) exited with status %d; %d worker(s) still running",
                index, child.pid, status, len(running),
            )  # fmt: skip
        if not running:
            log.error("workers: no worker left; stopping")
            return 1
        time.sleep(_POLL)
    log.info("workers: stopping %d worker(s)", len(running))
    return 0


def _stop_all(children: dict[int, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live worker, wait (bounded), SIGKILL what is left; reap them all."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for index, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("workers: worker %d (pid %d) did not stop; killing it", index, child.pid)
            child.kill()
            child.wait()
