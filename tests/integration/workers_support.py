"""`minibroker start --workers N` as a real process tree, for the tests that need one: start it
(its banner gives the MQTT and HTTP ports), stop it by its PID, and read its REST API."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_support import ADMIN, basic
from rawclient import RawClient

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
TIMEOUT = 10.0
NODE = "minibroker@127.0.0.1"
#: Connections tried before concluding the kernel does not spread them (2**-19 by chance).
MAX_TRIES = 20


@dataclass
class WorkersProc:
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    banner_done: threading.Event = field(default_factory=threading.Event)
    #: The banner's last line starts so (after stripping): a node of workers, or a plain one.
    ready: str = "workers:"

    def read_output(self) -> None:
        """Thread body: drain stdout+stderr (the pipe must never fill), note the banner."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            for kind, pattern in (("mqtt", r"mqtt://127\.0\.0\.1:(\d+)"),
                                  ("http", r"http://127\.0\.0\.1:(\d+)")):  # fmt: skip
                match = re.search(pattern, line)
                if match and kind not in self.ports:
                    self.ports[kind] = int(match.group(1))
            if line.strip().startswith(self.ready):
                self.banner_done.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_workers(
    data_dir: Path, count: int = 2, config: str = "", extra: tuple[str, ...] = ()
) -> WorkersProc:
    """`minibroker start --workers <count> <extra>`; `config`: the text of a `-c` file, if
    any. With one worker this is a plain node (its banner ends with the auth line)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "broker.cli", "start", "--workers", str(count),
            "--host", "127.0.0.1", "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0",
            "--data-dir", str(data_dir)]  # fmt: skip
    if config:
        config_file = data_dir.parent / f"{data_dir.name}.toml"
        config_file.write_text(config, "utf-8")
        argv += ["-c", str(config_file)]
    argv += extra
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    node = WorkersProc(proc, ready="workers:" if count > 1 else "auth:")
    threading.Thread(target=node.read_output, daemon=True).start()
    if not node.banner_done.wait(START_TIMEOUT):
        node.stop()
        pytest.fail("no banner from the workers:\n" + "\n".join(node.lines[-30:]))
    return node


class Rest:
    def __init__(self, session: aiohttp.ClientSession, port: int, node_name: str = NODE) -> None:
        self.session = session
        #: The node whose clients `worker_of` looks for.
        self.node_name = node_name
        self.base = f"http://127.0.0.1:{port}/api/v3"

    async def get(self, path: str) -> Any:
        async with self.session.get(self.base + path, headers=basic(*ADMIN)) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        if isinstance(body, dict) and "items" in body:  # a page (the seed format)
            return body["items"]
        return body["data"] if isinstance(body, dict) and "data" in body else body

    async def node(self, name: str = NODE, alone: bool = True) -> dict[str, Any]:
        """`name`'s row of `GET /nodes` (`alone`: the only row, whatever the workers)."""
        nodes = await self.get("/nodes/")
        if alone:
            assert [n["name"] for n in nodes] == [name]
        node: dict[str, Any] = next((n for n in nodes if n["name"] == name), {})
        return node

    async def workers_running(
        self, count: int, name: str = NODE, alone: bool = True
    ) -> list[dict[str, Any]]:
        """The `workers` rows once all `count` are Running (the workers found each other)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            rows: list[dict[str, Any]] = (await self.node(name, alone)).get("workers", [])
            if len(rows) == count and all(r["node_status"] == "Running" for r in rows):
                return rows
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)

    async def worker_of(self, client_id: str) -> int:
        """The worker holding `client_id`'s one connection (waits until it is listed)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            listed = await self.get("/connections/?_limit=1000")
            rows = [r for r in listed if r["client_id"] == client_id]
            if len(rows) == 1 and rows[0].get("connected", True):
                assert rows[0]["node"] == self.node_name
                return int(rows[0]["worker"])
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.1)


async def clients_on_every_worker(
    port: int, rest: Rest, prefix: str, each: int, workers: int = 2
) -> tuple[list[RawClient], dict[int, list[str]]]:
    """Raw connections (client ids `<prefix>-<n>`) until every worker holds `each` of them
    (at most MAX_TRIES * each tries): the clients, and each worker's client ids."""
    clients: list[RawClient] = []
    on: dict[int, list[str]] = {index: [] for index in range(workers)}
    try:
        for i in range(MAX_TRIES * each):
            client_id = f"{prefix}-{i}"
            client, _ = await RawClient.connect(port, client_id)
            clients.append(client)
            on[await rest.worker_of(client_id)].append(client_id)
            if all(len(ids) >= each for ids in on.values()):
                return clients, on
    except BaseException:
        for client in clients:
            await client.close()
        raise
    for client in clients:
        await client.close()
    pytest.fail(f"the kernel did not spread {len(clients)} connections: {on}")
