"""Starting brokers to measure: our `minibroker` and, when installed, mosquitto and amqtt.

All listen on free loopback ports, with a temporary data directory or generated config, and
are pinned to one core with `taskset -c CORE` when taskset exists and the core is given. The
pid is the broker's own (taskset execs it), so /proc readings are the broker's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.floor_relay import LABEL as FLOOR_LABEL

__all__ = [
    "BROKERS",
    "RunningBroker",
    "amqtt_config",
    "find_amqtt",
    "find_mosquitto",
    "free_port",
    "start_amqtt",
    "start_broker",
    "start_floor",
    "start_minibroker",
    "start_minibroker_cluster",
    "start_mosquitto",
    "tree_of",
    "wait_port",
]

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
#: Where amqtt is looked for after `$AMQTT_BIN` and PATH: its own virtualenv, so that its
#: pinned dependencies stay out of ours (`python -m venv /opt/amqtt-venv &&
#: /opt/amqtt-venv/bin/pip install amqtt`).
AMQTT_PATHS = ("/opt/amqtt-venv/bin/amqtt",)
AMQTT_INSTALL = "python -m venv /opt/amqtt-venv && /opt/amqtt-venv/bin/pip install amqtt"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(
    host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until `host:port` accepts a TCP connection (or raise after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


@dataclass
class RunningBroker:
    name: str
    label: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    cleanup: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> tuple[str, int]:
        return (self.host, self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pin(cmd: list[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(core), *cmd]


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )


def minibroker_version() -> str:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version("minibroker")
    return "dev"


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def mqtt_probe(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when `host:port` answers a CONNECT with a successful CONNACK (blocking)."""
    from broker.protocol.codec import encode
    from broker.protocol.packets import Connect

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(encode(Connect("bench-probe")))
            reply = sock.recv(4)
    except OSError:
        return False
    return len(reply) == 4 and reply[0] == 0x20 and reply[3] == 0


#: Set once our broker failed to serve MQTT on uvloop, so later starts go straight to asyncio.
_UVLOOP_BROKEN: list[str] = []


def tree_of(name: str) -> Path | None:
    """The source tree of a broker named `minibroker@DIR` (another checkout of minibroker, e.g.
    `git worktree add /tmp/old <rev>`), so one run compares two versions; None for other names.
    Raises ValueError when DIR holds no minibroker."""
    if not name.startswith("minibroker@"):
        return None
    tree = Path(name.split("@", 1)[1]).expanduser().resolve()
    if not (tree / "broker" / "cli.py").is_file():
        raise ValueError(f"{tree} is not a minibroker source tree (no broker/cli.py)")
    return tree


def _tree_label(tree: Path) -> str:
    """`minibroker@<commit>` for a git checkout, else `minibroker@<dir>`."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if rev:
            return f"minibroker@{rev}"
    return f"minibroker@{tree}"


def start_minibroker(
    core: int | None = None, use_uvloop: bool = True, tree: Path | None = None
) -> RunningBroker:
    """`minibroker start` on free ports with a temporary data directory, `core`-pinned.

    On uvloop when asked for and installed; if the broker then fails a CONNECT probe, it is
    restarted on asyncio (and stays there for this process) with a warning on stderr. With
    `tree`, the broker runs from that source tree instead of the installed one.
    """
    if use_uvloop and uvloop_available() and not _UVLOOP_BROKEN:
        broker = _start_minibroker(core, "uvloop", tree=tree)
        if mqtt_probe(broker.host, broker.port):
            return broker
        broker.stop()
        _UVLOOP_BROKEN.append(broker.log.name)
        print(
            "warning: minibroker refused MQTT on uvloop (see its log); using asyncio instead",
            file=sys.stderr,
        )
    return _start_minibroker(core, "asyncio", tree=tree)


def _start_minibroker(
    core: int | None,
    loop: str,
    extra: list[str] | None = None,
    name: str = "minibroker",
    tree: Path | None = None,
) -> RunningBroker:
    workdir = Path(tempfile.mkdtemp(prefix="minibroker-bench-"))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "broker.cli",  # `minibroker start`: the benchmark uses the public CLI only
        "start",
        "--loop",
        "auto" if loop == "uvloop" else "asyncio",  # auto: uvloop (installed, as checked)
        "--host",
        "127.0.0.1",
        "--mqtt-port",
        str(port),
        "--ws-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        "--data-dir",
        str(workdir / "data"),
        *(extra or ["--cluster-port", str(free_port())]),
    ]
    log = workdir / "broker.log"
    env = None
    label = f"minibroker {minibroker_version()} ({loop})"
    if tree is not None:
        # That tree's `broker` package wins over the installed one. It is also the working
        # directory: `python -m` puts the working directory first on sys.path, so a run started
        # from inside another checkout would otherwise measure that checkout instead.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
        }
        label = f"{_tree_label(tree)} ({loop})"
        name = f"minibroker@{tree}"
    proc = _spawn(_pin(cmd, core), log, env, cwd=tree)
    broker = RunningBroker(
        name,
        label,
        "127.0.0.1",
        port,
        proc,
        workdir,
        log,
    )
    try:
        wait_port("127.0.0.1", port, proc=proc)
    except BaseException:
        broker.stop()
        raise
    return broker


def cluster_tls_configs(directory: Path, nodes: int) -> list[Path]:
    """One TOML file per node with `[cluster] tls_*`: a fresh cluster CA (`trustme`, a dev
    dependency) and a certificate per node, all under `directory`."""
    try:
        import trustme
    except ImportError:
        raise RuntimeError("a TLS cluster needs trustme (pip install trustme)") from None
    ca = trustme.CA()
    ca_file = directory / "cluster-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out = []
    for i in range(1, nodes + 1):
        chain = directory / f"node{i}.pem"
        ca.issue_cert(
            "127.0.0.1", common_name=f"bench{i}"
        ).private_key_and_cert_chain_pem.write_to_path(str(chain))
        config = directory / f"node{i}.toml"
        config.write_text(
            f'[cluster]\ntls_enable = true\ntls_certfile = "{chain}"\ntls_cafile = "{ca_file}"\n'
        )
        out.append(config)
    return out


def start_minibroker_cluster(
    cores: list[int | None], use_uvloop: bool = True, timeout: float = 30.0, tls: bool = False
) -> list[RunningBroker]:
    """One `minibroker` node per entry of `cores` (pinned there), joined into one cluster (over
    mutual TLS with `tls`); returns once a message published on the first node reaches a
    subscriber on the last.

    Raises (after stopping what it started) if the nodes do not form a cluster in `timeout`.
    """
    loop = "uvloop" if use_uvloop and uvloop_available() and not _UVLOOP_BROKEN else "asyncio"
    cluster_ports = [free_port() for _ in cores]
    configs: list[Path] = []
    if tls:
        configs = cluster_tls_configs(Path(tempfile.mkdtemp(prefix="minibroker-tls-")), len(cores))
    nodes: list[RunningBroker] = []
    try:
        for i, core in enumerate(cores):
            extra = ["--node-name", f"bench{i + 1}@127.0.0.1", "--cluster-port"]
            extra.append(str(cluster_ports[i]))
            if configs:
                extra += ["--config", str(configs[i])]
            if i:
                extra += ["--join", f"127.0.0.1:{cluster_ports[0]}"]
            nodes.append(_start_minibroker(core, loop, extra, name=f"minibroker-node{i + 1}"))
        if len(nodes) > 1:
            wait_routed(nodes[0].target, nodes[-1].target, timeout)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def wait_routed(
    publish_to: tuple[str, int], subscribe_at: tuple[str, int], timeout: float = 30.0
) -> None:
    """Block until a QoS 0 PUBLISH on `publish_to` reaches a subscriber on `subscribe_at`
    (two cluster nodes route to each other), or raise TimeoutError."""
    from broker.protocol.codec import Decoder, encode
    from broker.protocol.packets import Connect, Publish, Subscribe, SubscriptionRequest

    deadline = time.monotonic() + timeout
    topic = "bench/cluster-probe"
    with (
        socket.create_connection(subscribe_at, timeout=5.0) as sub,
        socket.create_connection(publish_to, timeout=5.0) as pub,
    ):
        sub.sendall(
            encode(Connect("bench-probe-sub")) + encode(Subscribe(1, [SubscriptionRequest(topic)]))
        )
        pub.sendall(encode(Connect("bench-probe-pub")))
        decoder = Decoder()
        sub.settimeout(0.2)
        while time.monotonic() < deadline:
            pub.sendall(encode(Publish(topic, b"probe", qos=0)))
            try:
                data = sub.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise RuntimeError("the probe subscriber was disconnected")
            if any(isinstance(p, Publish) for p in decoder.feed(data)):
                return
    raise TimeoutError(f"the nodes did not route to each other within {timeout} s")


def find_mosquitto() -> str | None:
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


def mosquitto_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-h"], capture_output=True, timeout=5).stdout.decode()
        for word in out.split():
            if word[:1].isdigit() and "." in word:
                return word
    return "?"


def mosquitto_config(port: int) -> str:
    return f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"


def start_mosquitto(core: int | None = None, binary: str | None = None) -> RunningBroker:
    """mosquitto with a generated config (`listener PORT 127.0.0.1`, anonymous), pinned."""
    binary = binary or find_mosquitto()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install -y mosquitto)")
    workdir = Path(tempfile.mkdtemp(prefix="mosquitto-bench-"))
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(port))
    log = workdir / "broker.log"
    proc = _spawn(_pin([binary, "-c", str(conf)], core), log)
    broker = RunningBroker(
        "mosquitto", f"mosquitto {mosquitto_version(binary)}", "127.0.0.1", port, proc, workdir, log
    )
    try:
        wait_port("127.0.0.1", port, proc=proc)
    except BaseException:
        broker.stop()
        raise
    return broker


def start_floor(kind: str, core: int | None = None) -> RunningBroker:
    """`benchmarks.floor_relay` of `kind` (epoll, asyncio) on a free port, `core`-pinned: the
    least a Python process does per lone message, for `latency_ab` and `compare`'s latency
    scenario only (not a broker)."""
    workdir = Path(tempfile.mkdtemp(prefix="floor-bench-"))
    port = free_port()
    log = workdir / "relay.log"
    cmd = [sys.executable, "-m", "benchmarks.floor_relay", kind, str(port)]
    proc = _spawn(_pin(cmd, core), log, cwd=Path(__file__).resolve().parent.parent)
    relay = RunningBroker(
        f"floor-{kind}", f"{FLOOR_LABEL} ({kind})", "127.0.0.1", port, proc, workdir, log
    )
    try:
        wait_port("127.0.0.1", port, proc=proc)
    except BaseException:
        relay.stop()
        raise
    return relay


def find_amqtt() -> str | None:
    """The `amqtt` broker script: `$AMQTT_BIN` when set (None if that is not an executable),
    else `amqtt` on PATH, else the virtualenv of `AMQTT_PATHS`."""
    configured = os.environ.get("AMQTT_BIN")
    if configured:
        return shutil.which(configured)
    found = shutil.which("amqtt")
    if found is not None:
        return found
    return next((path for path in AMQTT_PATHS if os.access(path, os.X_OK)), None)


def amqtt_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=30).stdout
        words = out.decode(errors="replace").split()
        if words and words[-1][:1].isdigit():
            return words[-1]
    return "?"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def amqtt_config(port: int, version: str = "0.12") -> str:
    """amqtt's broker YAML: one TCP listener on 127.0.0.1:`port`, anonymous clients, no $SYS
    topics, no packet/event logging plugins, nothing persisted.

    amqtt 0.12 configures plugins by class path (`plugins:`, only the ones listed are loaded);
    0.11 and older (and an unknown version) use the `auth:` section and `sys_interval: 0`,
    which 0.12 still reads, with a deprecation warning.
    """
    head = f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
    if _version_tuple(version) >= (0, 12):
        return head + (
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
    return head + (
        "sys_interval: 0\n"
        "auth:\n"
        "  allow-anonymous: true\n"
        "  plugins:\n"
        "    - auth_anonymous\n"
        "topic-check:\n"
        "  enabled: false\n"
    )


def _log_tail(log: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        return "\n".join(text)
    return ""


def start_amqtt(core: int | None = None, binary: str | None = None) -> RunningBroker:
    """amqtt (`amqtt -c` with the config of `amqtt_config`), pinned; raises RuntimeError if it
    does not answer an MQTT CONNECT once it listens."""
    binary = binary or find_amqtt()
    if binary is None:
        raise FileNotFoundError(f"amqtt is not installed ({AMQTT_INSTALL}, or set AMQTT_BIN)")
    version = amqtt_version(binary)
    workdir = Path(tempfile.mkdtemp(prefix="amqtt-bench-"))
    port = free_port()
    conf = workdir / "amqtt.yaml"
    conf.write_text(amqtt_config(port, version))
    log = workdir / "broker.log"
    proc = _spawn(_pin([binary, "-c", str(conf)], core), log)
    broker = RunningBroker("amqtt", f"amqtt {version}", "127.0.0.1", port, proc, workdir, log)
    try:
        wait_port("127.0.0.1", port, timeout=30.0, proc=proc)
        answered = mqtt_probe("127.0.0.1", port, timeout=10.0)
    except (RuntimeError, TimeoutError) as exc:
        tail = _log_tail(log)
        broker.stop()
        raise RuntimeError(f"{broker.label} did not start: {exc}; its log ends:\n{tail}") from exc
    except BaseException:
        broker.stop()
        raise
    if not answered:
        tail = _log_tail(log)
        broker.stop()
        raise RuntimeError(
            f"{broker.label} listens on 127.0.0.1:{port} but did not answer an MQTT CONNECT "
            f"with a CONNACK; its log ends:\n{tail}"
        )
    return broker


#: The brokers `start_broker` knows, for `--start` and `compare --brokers`.
BROKERS = ("minibroker", "mosquitto", "amqtt")


def start_broker(name: str, core: int | None = None, use_uvloop: bool = True) -> RunningBroker:
    if name.startswith("floor-"):
        return start_floor(name.removeprefix("floor-"), core)
    if name == "minibroker":
        return start_minibroker(core, use_uvloop)
    tree = tree_of(name)
    if tree is not None:
        return start_minibroker(core, use_uvloop, tree)
    if name == "mosquitto":
        return start_mosquitto(core)
    if name == "amqtt":
        return start_amqtt(core)
    raise ValueError(f"unknown broker {name!r} ({', '.join(BROKERS)})")
