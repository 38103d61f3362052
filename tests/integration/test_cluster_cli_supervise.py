"""`minibroker cluster --nodes N` supervises its nodes: a node killed is reported and the others
keep running; with `--restart` it comes back with its data dir and rejoins.

Real processes: the test starts the `minibroker cluster` command (ephemeral ports), finds the
node processes that command started (its children, by name, from /proc) and SIGKILLs one by
PID. Every wait is bounded; the command is stopped with SIGTERM (then killed) at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from api_support import ADMIN, basic

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from broker.cli import main; sys.exit(main())"
START_TIMEOUT = 30.0
TIMEOUT = 15.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class ClusterCommand:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The next output line (from where we are) matching `pattern`."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[self._seen :]:
                    self._seen += 1
                    match = re.search(pattern, line)
                    if match:
                        return match
                raw = await self.proc.stdout.readline()
                assert raw, "the command ended:\n" + "\n".join(self.lines)
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    _seen: int = 0

    def http_port(self, node: str) -> int:
        """The management port in `node`'s last banner."""
        ports = [
            int(m.group(1))
            for line in self.lines
            if (m := re.search(rf"\[{node}\]\s+http\s+http://127\.0\.0\.1:(\d+)", line))
        ]
        assert ports, "\n".join(self.lines)
        return ports[-1]

    def node_pid(self, node: str) -> int:
        """The PID of this command's child running `node` (scanned in /proc)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rpartition(")")[2].split()[1])
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if ppid == self.proc.pid and f"{node}@127.0.0.1".encode() in argv:
                    return int(entry)
        raise AssertionError(f"no process for {node}")


async def start(tmp_path: Path, *extra: str) -> ClusterCommand:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, "cluster", "--nodes", "3",
        "--base-mqtt-port", "0", "--base-ws-port", "0", "--base-http-port", "0",
        "--base-cluster-port", "0", "--data-dir", str(tmp_path), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO, env=_env(),
    )  # fmt: skip
    command = ClusterCommand(proc)
    await command.expect(r"cluster of 3 nodes running", START_TIMEOUT)
    return command


@pytest.fixture
async def cluster_command(tmp_path: Path) -> AsyncIterator[list[ClusterCommand]]:
    started: list[ClusterCommand] = []
    yield started
    for command in started:
        if command.proc.returncode is None:
            command.proc.send_signal(signal.SIGTERM)  # our own child, by its PID
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    assert command.proc.stdout is not None
                    await command.proc.stdout.read()
                    await command.proc.wait()
            except TimeoutError:
                command.proc.kill()
                await command.proc.wait()


async def live_nodes(http_port: int) -> list[str]:
    url = f"http://127.0.0.1:{http_port}/api/v3/nodes"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(url, headers=basic(*ADMIN)) as response,
        ):
            body = await response.json() if response.status == 200 else []
    except (aiohttp.ClientError, TimeoutError):
        return []
    return sorted(n["name"] for n in body if n.get("node_status", "Running") == "Running")


async def until_nodes(http_port: int, names: list[str]) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            while await live_nodes(http_port) != sorted(f"{n}@127.0.0.1" for n in names):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"nodes are not {names}: {await live_nodes(http_port)}") from None


async def test_a_killed_node_is_reported_and_the_others_keep_running(
    tmp_path: Path, cluster_command: list[ClusterCommand]
) -> None:
    command = await start(tmp_path)
    cluster_command.append(command)
    node1 = command.http_port("node1")
    await until_nodes(node1, ["node1", "node2", "node3"])
    os.kill(command.node_pid("node2"), signal.SIGKILL)
    await command.expect(r"\[node2\] exited: killed by SIGKILL; 2 of 3 nodes running")
    await until_nodes(node1, ["node1", "node3"])  # declared dead by the survivors
    await until_nodes(command.http_port("node3"), ["node1", "node3"])
    assert command.proc.returncode is None  # the command and the others are still up
    assert not any("restarting" in line for line in command.lines)


async def test_restart_brings_a_killed_node_back_with_its_data_dir(
    tmp_path: Path, cluster_command: list[ClusterCommand]
) -> None:
    command = await start(tmp_path, "--restart", "--restart-delay", "0.2")
    cluster_command.append(command)
    node1 = command.http_port("node1")
    await until_nodes(node1, ["node1", "node2", "node3"])
    for victim in ("node3", "node1"):  # a joiner, then the seed itself
        pid = command.node_pid(victim)
        os.kill(pid, signal.SIGKILL)
        await command.expect(rf"\[{victim}\] exited: killed by SIGKILL; 2 of 3 nodes running")
        restarted = await command.expect(rf"\[{victim}\] restarting \(data dir (\S+)\)")
        assert restarted.group(1) == str(tmp_path / victim)
        await command.expect(rf"\[{victim}\] is back \(3 of 3 nodes running\)", START_TIMEOUT)
        assert command.node_pid(victim) != pid
        for node in ("node1", "node2", "node3"):
            await until_nodes(command.http_port(node), ["node1", "node2", "node3"])
    assert command.proc.returncode is None


async def run_ctl(http_port: int, *argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, "ctl", "--url", f"http://127.0.0.1:{http_port}", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO, env=_env(),
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_ctl_leave_and_join_between_processes(
    tmp_path: Path, cluster_command: list[ClusterCommand]
) -> None:
    """emqx_ctl's verbs against the processes of the dev cluster, the ctl a process too."""
    command = await start(tmp_path)
    cluster_command.append(command)
    node1, node2 = command.http_port("node1"), command.http_port("node2")
    await until_nodes(node1, ["node1", "node2", "node3"])
    code, out = await run_ctl(node2, "cluster", "leave")
    assert code == 0 and "ok: node2@127.0.0.1 left the cluster" in out, out
    await until_nodes(node1, ["node1", "node3"])
    await until_nodes(node2, ["node2"])
    seed = re.search(r"\[node1\]\s+cluster\s+(127\.0\.0\.1:\d+)", "\n".join(command.lines))
    assert seed, command.lines
    code, out = await run_ctl(node2, "cluster", "join", seed.group(1))
    assert code == 0, out
    for port in (node1, node2):
        await until_nodes(port, ["node1", "node2", "node3"])
    code, out = await run_ctl(node1, "cluster", "force-leave", "node3@127.0.0.1")
    assert code == 0 and "node3@127.0.0.1 was asked to leave and left" in out, out
    await until_nodes(node1, ["node1", "node2"])
    assert command.proc.returncode is None  # node3 left the cluster; its process runs on
    assert command.node_pid("node3")
