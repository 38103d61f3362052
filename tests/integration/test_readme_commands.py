"""Every shell command of README.md and benchmarks/README.md, run as written (almost).

The commands are parsed from the files (tests/readme_support.py), never copied here, so the
READMEs cannot drift. What changes before a run, and nothing else:
- ports: 1883/1884 are the MQTT ports of a 2-node cluster this module starts, 8080 the HTTP
  port of a single node it starts, 7946 the first node's cluster port; a `minibroker start` or
  `minibroker cluster` without ports gets port 0 everywhere; addresses of other machines
  (10.0.0.x, 0.0.0.0) become 127.0.0.1. `$(pidof mosquitto)` is a mosquitto started here.
- length: bench scenarios run for about a second (`-d 1 --drain 1`, `-n` at most 100),
  `compare` and `cluster-scale` one round of one scenario (`compare` with the Python floor:
  one second of latency), `wildcard-goal` one round of 10 and
  20 filters, fuzzers 300 iterations.
Commands that cannot run here are in SKIPPED with the reason; a command that is neither run nor
skipped fails `test_every_readme_command_is_run_or_skipped`. The commands of one fenced block
run in order in one working directory (a block's later commands use what earlier ones made).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_tree import REPO, cli_env, closed_port, subcommands
from readme_support import ShellCommand, shell_commands

import benchmarks.cli
from benchmarks.brokers import RunningBroker, start_broker

READMES = ("README.md", "benchmarks/README.md")
START_TIMEOUT = 30.0
RUN_TIMEOUT = 180.0

try:
    import atheris  # noqa: F401

    HAVE_ATHERIS = True
except ImportError:
    HAVE_ATHERIS = False

#: Commands not run here: (regular expression on a command, why). Each must match a README line.
SKIPPED: list[tuple[str, str]] = [
    # installing changes the environment the suite runs in, and needs the network
    (r"^pip install\b", "installs packages into the suite's own environment (network)"),
    (r"^apt-get install\b", "installs system packages (root, network)"),
    (r"^python -m venv\b", "creates a virtualenv for amqtt from PyPI (network)"),
    (r"^/opt/amqtt-venv/bin/pip install\b", "installs amqtt from PyPI (network)"),
    # needs what a test machine does not have
    (r"^kubectl\b", "needs a Kubernetes cluster"),
    # the development checks: run by the developer before a commit, not inside the suite
    (r"^ruff\b", "a development check, run before committing"),
    (r"^mypy$", "a development check (a minute of CPU), run before committing"),
    (r"^python -m pytest\b", "runs the test suite itself: recursion (-m fuzz: minutes)"),
    # membership changes need the 3-node dev cluster the example talks to; they run between
    # real processes in test_cluster_cli_supervise.py and test_ctl_cluster_membership.py
    (
        r"^minibroker ctl\b.* cluster (join|leave|force-leave)\b",
        "changes the membership of a running 3-node dev cluster (tested between real processes)",
    ),
    # the REST examples belong to the REST format tests, which run them against a node
    (r"^curl\b", "the REST examples: run by the REST format tests (rest-format)"),
]
if not HAVE_ATHERIS:
    # coverage-guided mode; the same harnesses run below in their plain-loop mode
    SKIPPED.append((r"^python tests/fuzz/\S+ CORPUS_DIR -runs=", "needs atheris (not installed)"))


def _commands() -> list[tuple[str, ShellCommand]]:
    return [(readme, cmd) for readme in READMES for cmd in shell_commands(REPO / readme)]


COMMANDS = _commands()


def _parts(cmd: ShellCommand) -> list[tuple[str, bool]]:
    """The `&&`-separated parts of a command line, each with "runs in the background"."""
    parts = []
    for part in cmd.text.split(" && "):
        part = part.strip()
        background = part.endswith(" &")
        parts.append((part.removesuffix("&").strip(), background))
    return parts


def _skip_reason(part: str) -> str | None:
    for pattern, reason in SKIPPED:
        if re.search(pattern, part):
            return reason
    return None


RUNNERS = {
    "minibroker start": "start",
    "minibroker cluster": "cluster",
    "minibroker ctl": "ctl",
    "minibroker-bench": "bench",
    "python tests/fuzz/": "fuzz",
    "mosquitto_sub": "mosquitto_sub",
    "mosquitto_pub": "mosquitto_pub",
}


def _runner(part: str) -> str | None:
    for prefix, name in RUNNERS.items():
        if part.startswith(prefix):
            return name
    return None


def test_every_readme_command_is_run_or_skipped() -> None:
    assert len(COMMANDS) > 20  # the parser found the blocks
    unhandled = [
        f"{readme} line {cmd.line}: {part}"
        for readme, cmd in COMMANDS
        for part, _ in _parts(cmd)
        if _runner(part) is None and _skip_reason(part) is None
    ]
    assert not unhandled, "neither run nor in SKIPPED:\n" + "\n".join(unhandled)
    used = {
        p for p, _ in SKIPPED if any(re.search(p, x) for _, c in COMMANDS for x, _ in _parts(c))
    }
    assert used == {p for p, _ in SKIPPED}, "SKIPPED entries that match nothing any more"


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A background process of this module; stdout and stderr go to files we can poll."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.stdout(), re.M):
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in time:\n{self.stdout()}\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal our own child by its PID; a bounded wait, then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def spawn(argv: list[str], where: Path, name: str, cwd: Path | None = None) -> Proc:
    out, err = where / f"{name}.out", where / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        popen = subprocess.Popen(argv, cwd=cwd or where, env=cli_env(), stdout=o, stderr=e)
    return Proc(popen, out, err)


def program(word: str) -> list[str]:
    """How to run a README program from this checkout."""
    return {
        "minibroker": [sys.executable, "-m", "broker.cli"],
        "minibroker-bench": [sys.executable, "-m", "benchmarks"],
        "python": [sys.executable],
    }.get(word, [word])


@dataclass
class Nodes:
    """A single node (named like the README's, for the ctl transcript) and a 2-node cluster."""

    single: Proc
    single_mqtt: int
    single_http: int
    pair: Proc
    pair_mqtt: tuple[int, int]
    pair_http: int
    pair_cluster: int
    mosquitto: list[RunningBroker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.single_http}"


def _zero_ports(flags: tuple[str, ...]) -> list[str]:
    return [x for flag in flags for x in (flag, "0")]


START_PORTS = ("--mqtt-port", "--ws-port", "--http-port", "--cluster-port")
CLUSTER_PORTS = ("--base-mqtt-port", "--base-ws-port", "--base-http-port", "--base-cluster-port")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    where = tmp_path_factory.mktemp("readme-nodes")
    single = spawn(
        [
            *(*program("minibroker"), "start", "--node-name", "minibroker@127.0.0.1"),
            *(*_zero_ports(START_PORTS), "--data-dir", str(where / "single")),
        ],
        where,
        "single",
    )
    pair = spawn(
        [
            *(*program("minibroker"), "cluster", "--nodes", "2", *_zero_ports(CLUSTER_PORTS)),
            *("--data-dir", str(where / "pair")),
        ],
        where,
        "pair",
    )
    try:
        single.wait_for(r"auth:")
        banner = single.stdout()
        mqtt = re.findall(r"mqtt://127\.0\.0\.1:(\d+)", banner)
        http = re.findall(r"http://127\.0\.0\.1:(\d+)", banner)
        pair.wait_for(r"^cluster of 2 nodes running")
        text = pair.stdout()
        pair_mqtt = [
            int(p) for p in re.findall(r"^\[node\d\]\s+mqtt/tcp\s+mqtt://[\d.]+:(\d+)", text, re.M)
        ]
        pair_http = re.search(r"^\[node1\]\s+http\s+http://[\d.]+:(\d+)", text, re.M)
        pair_cluster = re.search(r"^\[node1\]\s+cluster\s+[\d.]+:(\d+)", text, re.M)
        assert mqtt and http and len(pair_mqtt) == 2 and pair_http and pair_cluster, text
        state = Nodes(
            single,
            int(mqtt[0]),
            int(http[0]),
            pair,
            (pair_mqtt[0], pair_mqtt[1]),
            int(pair_http.group(1)),
            int(pair_cluster.group(1)),
        )
        yield state
        for broker in state.mosquitto:
            broker.stop()
    finally:
        assert single.stop() == 0, single.stderr()
        assert pair.stop() == 0, pair.stderr()


def api(url: str, path: str) -> Any:
    req = urllib.request.Request(url + path)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"admin:public").decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------- one block


@dataclass
class Block:
    """The shell state of one fenced block: its directory and background jobs."""

    where: Path
    done: set[int] = field(default_factory=set)
    background: list[tuple[str, Proc]] = field(default_factory=list)

    def close(self) -> None:
        for _, proc in self.background:
            proc.stop()


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, int], Block]]:
    made: dict[tuple[str, int], Block] = {}
    yield made
    for block in made.values():
        block.close()


class Runner:
    def __init__(self, nodes: Nodes, block: Block) -> None:
        self.nodes = nodes
        self.block = block

    def run(self, cmd: ShellCommand) -> None:
        for part, background in _parts(cmd):
            if _skip_reason(part) is not None:
                continue
            kind = _runner(part)
            assert kind is not None, part
            getattr(self, f"run_{kind}")(part, background, cmd)

    # -- helpers

    def _tokens(self, part: str) -> list[str]:
        words = shlex.split(part)
        return [*program(words[0]), *words[1:]]

    def _finish(self, argv: list[str], cwd: Path | None = None, **env: str) -> str:
        proc = subprocess.run(
            argv,
            cwd=cwd or self.block.where,
            env=cli_env(**env),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout

    # -- minibroker start / cluster

    def run_start(self, part: str, background: bool, cmd: ShellCommand) -> None:
        argv = self._tokens(part.replace("0.0.0.0", "127.0.0.1"))
        argv = [re.sub(r"10\.0\.0\.\d+", "127.0.0.1", a) for a in argv]
        joins = "--join" in argv
        if joins:  # the machine it joins is the first node of this module's cluster
            i = argv.index("--join") + 1
            argv[i] = re.sub(r":7946\b", f":{self.nodes.pair_cluster}", argv[i])
        if "-c" in argv:
            config = self.block.where / argv[argv.index("-c") + 1]
            if not config.exists():  # the same cookie as the cluster it joins (the default)
                config.write_text('[node]\ncookie = "minibroker"\n')
        argv += [*_zero_ports(START_PORTS), "--data-dir", str(self.block.where / "data")]
        proc = spawn(argv, self.block.where, f"start-{len(self.block.done)}")
        try:
            proc.wait_for(r"auth:")
            if joins:  # it really joined: the cluster now has three running nodes
                url = f"http://127.0.0.1:{self.nodes.pair_http}"
                deadline = time.monotonic() + START_TIMEOUT
                while len(api(url, "/api/v3/nodes/")) != 3:
                    assert time.monotonic() < deadline, api(url, "/api/v3/nodes/")
                    time.sleep(0.2)
        finally:
            code = proc.stop()
        assert code == 0, proc.stderr()
        assert "Traceback" not in proc.stderr(), proc.stderr()

    def run_cluster(self, part: str, background: bool, cmd: ShellCommand) -> None:
        argv = self._tokens(part)
        argv += [*_zero_ports(CLUSTER_PORTS), "--data-dir", str(self.block.where / "data")]
        proc = spawn(argv, self.block.where, f"cluster-{len(self.block.done)}")
        try:
            match = proc.wait_for(r"^cluster of (\d+) nodes running")
            assert f"--nodes {match.group(1)}" in part
        finally:
            code = proc.stop()
        assert code == 0, proc.stderr()
        assert "Traceback" not in proc.stderr(), proc.stderr()

    # -- ctl

    def run_ctl(self, part: str, background: bool, cmd: ShellCommand) -> None:
        expected = [line.replace("http://127.0.0.1:8080", "{url}") for line in cmd.output]
        want_code = 0
        if expected and re.fullmatch(r"exit \d+", expected[-1]):
            want_code = int(expected.pop()[5:])
        url = self.nodes.url
        if any("cannot reach" in line for line in expected):  # the node is stopped: a closed port
            url = f"http://127.0.0.1:{closed_port()}"
        proc = subprocess.run(
            self._tokens(part),
            cwd=self.block.where,
            env=cli_env(MINIBROKER_URL=url),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert proc.returncode == want_code, (part, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        if not expected:
            return
        got = (proc.stdout or proc.stderr).splitlines()
        first = expected[0].replace("{url}", url)
        if first == "[":  # --json: the same keys as the README shows
            shown = json.loads("\n".join(expected))
            answer = json.loads(proc.stdout)
            assert [sorted(o) for o in answer] == [sorted(o) for o in shown]
        elif first.startswith(("ok:", "minibroker ctl: error:")):
            assert got[0] == first
        else:  # a table's header or a status line; the cells depend on the moment
            assert got[0].split() == first.split(), (got, first)

    # -- mosquitto clients

    def run_mosquitto_sub(self, part: str, background: bool, cmd: ShellCommand) -> None:
        assert background, "a foreground mosquitto_sub would wait forever"
        argv = [*self._tokens(part), "-h", "127.0.0.1", "-p", str(self.nodes.single_mqtt)]
        argv += ["-C", "1", "-W", "100"]  # ends after one message: its stdout is then complete
        before = len(api(self.nodes.url, "/api/v3/subscriptions/")["items"])
        proc = spawn(argv, self.block.where, f"sub-{len(self.block.background)}")
        self.block.background.append((part, proc))
        deadline = time.monotonic() + START_TIMEOUT
        while len(api(self.nodes.url, "/api/v3/subscriptions/")["items"]) <= before:
            assert proc.popen.poll() is None, proc.stderr()
            assert time.monotonic() < deadline, "mosquitto_sub did not connect"
            time.sleep(0.05)

    def run_mosquitto_pub(self, part: str, background: bool, cmd: ShellCommand) -> None:
        argv = [*self._tokens(part), "-h", "127.0.0.1", "-p", str(self.nodes.single_mqtt)]
        self._finish(argv)
        if not cmd.output:
            return
        # the transcript's output is the background subscriber's
        assert self.block.background, "output expected from a background mosquitto_sub"
        sub = self.block.background[-1][1]
        with contextlib.suppress(subprocess.TimeoutExpired):
            sub.popen.wait(10)
        assert sub.popen.returncode == 0, sub.stderr()
        assert sub.stdout().splitlines() == list(cmd.output)

    # -- fuzzers

    def run_fuzz(self, part: str, background: bool, cmd: ShellCommand) -> None:
        part = re.sub(r"--iterations \d+", "--iterations 300", part)
        part = re.sub(r"-runs=\d+", "-runs=300", part)
        argv = self._tokens(part)
        if "CORPUS_DIR" in argv:
            corpus = self.block.where / "corpus"
            corpus.mkdir(exist_ok=True)
            argv[argv.index("CORPUS_DIR")] = str(corpus)
        self._finish(argv, cwd=REPO)

    # -- minibroker-bench

    def run_bench(self, part: str, background: bool, cmd: ShellCommand) -> None:
        if "$(pidof mosquitto)" in part:  # a mosquitto of our own, on the port the line names
            broker = start_broker("mosquitto")
            self.nodes.mosquitto.append(broker)
            part = part.replace("$(pidof mosquitto)", str(broker.pid))
            ports = {"1883": str(broker.target[1])}
        else:
            ports = {"1883": str(self.nodes.pair_mqtt[0]), "1884": str(self.nodes.pair_mqtt[1])}
        words = shlex.split(part)
        command = words[1]
        parser = subcommands(benchmarks.cli.build_parser())[command]
        options = parser._option_string_actions
        argv = [re.sub(r"(?<=:)(1883|1884)$", lambda m: ports[m.group(1)], w) for w in words[1:]]
        for flag in ("-p", "--port"):
            if flag in argv:
                i = argv.index(flag) + 1
                argv[i] = ports.get(argv[i], argv[i])
        if "--target" in options:  # a scenario: about a second
            argv = _set(argv, ("-d", "--duration"), "1")
            if "--drain" in options:
                argv = _set(argv, ("--drain",), "1")
            if "-n" in argv:
                i = argv.index("-n") + 1
                argv[i] = str(min(int(argv[i]), 100))
            argv.append("--quiet")
        elif command == "compare":
            argv = _set(argv, ("--rounds",), "1")
            if any(w.startswith("floor-") for b in argv for w in b.split(",")):
                # the Python floor runs the latency scenario only: one second of it
                argv = _set(argv, ("--scenarios",), "latency")
                argv = _set(argv, ("--latency-duration",), "1")
            else:
                argv = _set(argv, ("--scenarios",), "fan-in-q0")
            argv = _set(argv, ("-d", "--duration"), "1")
            argv = _set(argv, ("--drain",), "1")
            argv = _set(argv, ("--out",), "compare.jsonl")
        elif command == "wildcard-goal":
            argv = _set(argv, ("--rounds",), "1")
            argv = _set(argv, ("--filters",), "10,20")
            argv = _set(argv, ("--topics",), "5")
            argv = _set(argv, ("-d", "--duration"), "1")
            argv = _set(argv, ("--drain",), "1")
        elif command == "cluster-scale":
            argv = _set(argv, ("--rounds",), "1")
            argv = _set(argv, ("--workloads",), "fan-in")
            argv = _set(argv, ("-d", "--duration"), "1")
            argv = _set(argv, ("--drain",), "1")
            argv = _set(argv, ("-P",), "2")
            argv = _set(argv, ("--out",), "cluster-scale.jsonl")
            argv.append("--quiet")
        if "--charts" in argv and importlib.util.find_spec("matplotlib") is None:
            # the bench extra is not installed (CI installs only the test extra): the command
            # runs without its charts; test_bench_results checks the charts where it is
            i = argv.index("--charts")
            argv = [*argv[:i], *argv[i + 2 :]]
        out = self._finish([*program("minibroker-bench"), *argv])
        if "-o" not in argv:
            assert out.strip(), "no result printed"
        for flag in ("--out", "-o", "--markdown", "--charts"):  # everything it says it wrote
            if flag in argv and argv[argv.index(flag) + 1] != "-":
                path = self.block.where / argv[argv.index(flag) + 1]
                assert path.exists() and (path.is_file() or any(path.iterdir())), flag


def _set(argv: list[str], flags: tuple[str, ...], value: str) -> list[str]:
    """`argv` with the option's value replaced, or the option added."""
    for flag in flags:
        if flag in argv:
            i = argv.index(flag) + 1
            return [*argv[:i], value, *argv[i + 1 :]]
    return [*argv, flags[-1], value]


def _runnable(readme: str, cmd: ShellCommand) -> bool:
    return any(_skip_reason(part) is None for part, _ in _parts(cmd))


RUNNABLE = [(readme, cmd) for readme, cmd in COMMANDS if _runnable(readme, cmd)]


@pytest.mark.timeout(RUN_TIMEOUT * 2)
@pytest.mark.parametrize(
    ("readme", "cmd"), RUNNABLE, ids=[f"{r}:{c.line} {c.text[:50]}" for r, c in RUNNABLE]
)
def test_readme_command(
    readme: str,
    cmd: ShellCommand,
    nodes: Nodes,
    blocks: dict[tuple[str, int], Block],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    key = (readme, cmd.block)
    if key not in blocks:
        blocks[key] = Block(tmp_path_factory.mktemp("readme-block"))
    block = blocks[key]
    runner = Runner(nodes, block)
    for earlier_readme, earlier in RUNNABLE:  # what the block did before this line, once
        same_block = (earlier_readme, earlier.block) == key
        if same_block and earlier.line < cmd.line and earlier.line not in block.done:
            runner.run(earlier)
            block.done.add(earlier.line)
    if cmd.line not in block.done:
        runner.run(cmd)
        block.done.add(cmd.line)
