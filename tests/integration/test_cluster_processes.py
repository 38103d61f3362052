"""Three real node processes started with the CLI, clustered on loopback.

Every node binds port 0 everywhere and its banner tells the ports really bound (cluster port
included); nodes 2 and 3 join node 1. One set of processes serves the module, in file order:
delivery across nodes, retained, bans, REST aggregation, then node 3 killed with SIGKILL
(detected within `MembershipConfig.detection_bound(3)` plus a margin, its routes purged
`DEAD_HOLD` seconds later with what was held for it, the rest still working) and restarted
(it rejoins and receives again). Only processes this module started are signalled, by their
PIDs; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, basic

from cluster.membership_config import MembershipConfig

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from broker.cli import main; sys.exit(main())"
START_TIMEOUT = 20.0
TIMEOUT = 8.0
DETECTION_BOUND = MembershipConfig().detection_bound(3)  # 5 s on loopback
MARGIN = 3.0
NAMES = [f"node{i}@127.0.0.1" for i in (1, 2, 3)]
#: `[cluster] dead_hold` of this module's nodes: the grace of a dead node, kept short here.
DEAD_HOLD = 2.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class NodeProc:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    banner_done: threading.Event = field(default_factory=threading.Event)
    ports: dict[str, int] = field(default_factory=dict)

    def read_stdout(self) -> None:
        """Thread body: keep draining stdout (the pipe must never fill), note the banner."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            for kind, pattern in (("mqtt", r"mqtt://127\.0\.0\.1:(\d+)"),
                                  ("http", r"http://127\.0\.0\.1:(\d+)"),
                                  ("cluster", r"^\s*cluster\s+127\.0\.0\.1:(\d+)")):  # fmt: skip
                match = re.search(pattern, line)
                if match and kind not in self.ports:
                    self.ports[kind] = int(match.group(1))
            if line.lstrip().startswith("auth:"):
                self.banner_done.set()

    @property
    def mqtt(self) -> int:
        return self.ports["mqtt"]

    @property
    def http(self) -> int:
        return self.ports["http"]


def spawn(
    name: str, data_dir: Path, join: int | None, log: Path, extra: tuple[str, ...] = ()
) -> NodeProc:
    """Start a node process (`extra`: more `start` arguments, e.g. ("--config", path))."""
    argv = [
        sys.executable, "-c", ENTRY, "start",
        "--node-name", name, "--host", "127.0.0.1",
        "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0", "--cluster-port", "0",
        "--data-dir", str(data_dir), *extra,
    ]  # fmt: skip
    if join is not None:
        argv += ["--join", f"127.0.0.1:{join}"]
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=_env())
    node = NodeProc(name, argv, proc)
    threading.Thread(target=node.read_stdout, daemon=True).start()
    if not node.banner_done.wait(START_TIMEOUT):
        proc.kill()
        pytest.fail(f"{name} did not start: {log.read_text()[-2000:]}")
    assert {"mqtt", "http", "cluster"} <= set(node.ports), node.lines
    assert node.ports["cluster"] != 0  # the bound port, not the 0 asked for
    return node


def reap(started: list[NodeProc]) -> None:
    """Stop every process a test started (resumed first, in case a test froze it)."""
    for node in started:
        if node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGCONT)  # our own child, by its PID
        stop(node)


def stop(node: NodeProc) -> None:
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)  # our own child, by its PID
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


@dataclass
class Cluster:
    nodes: list[NodeProc]
    tmp: Path
    extra: tuple[str, ...] = ()

    def restart(self, index: int) -> NodeProc:
        seed = self.nodes[0].ports["cluster"]
        name = NAMES[index]
        node = spawn(
            name, self.tmp / name.split("@")[0], seed, self.tmp / f"{name}.log", self.extra
        )
        self.nodes[index] = node
        return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    config = tmp / "node.toml"
    config.write_text(f"[cluster]\ndead_hold = {DEAD_HOLD}\n", encoding="utf-8")
    extra = ("--config", str(config))
    nodes: list[NodeProc] = []
    try:
        for name in NAMES:
            seed = nodes[0].ports["cluster"] if nodes else None
            nodes.append(spawn(name, tmp / name.split("@")[0], seed, tmp / f"{name}.log", extra))
        yield Cluster(nodes, tmp, extra)
    finally:
        for node in nodes:
            stop(node)


# -- helpers ------------------------------------------------------------------------------------


async def api(node: NodeProc | int, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    """A management API call to a node (or to an HTTP port)."""
    port = node if isinstance(node, int) else node.http
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=basic(*ADMIN)) as http,
        http.request(method, path, **kw) as reply,
    ):
        body = await reply.json() if reply.content_type == "application/json" else None
        return reply.status, body


async def until(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> float:
    """Poll `check` until it holds; returns the time it took (AssertionError after timeout)."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout} s") from None
    return time.monotonic() - start


async def node_list(node: NodeProc | int) -> list[str]:
    """The running nodes (`/nodes` also lists dead and departed ones, as Stopped)."""
    status, body = await api(node, "GET", "/api/v3/nodes")
    return [n["name"] for n in body if n["node_status"] == "Running"] if status == 200 else []


async def route_set(node: NodeProc) -> set[tuple[str, str]]:
    status, body = await api(node, "GET", "/api/v3/routes")
    assert status == 200
    return {(r["topic"], r["node"]) for r in body["items"]}


async def routed(filt: str, owner: str, *nodes: NodeProc) -> None:
    async def check() -> bool:
        for node in nodes:
            if (filt, owner) not in await route_set(node):
                return False
        return True

    await until(check)


async def metric(node: NodeProc, name: str) -> int:
    status, body = await api(node, "GET", f"/api/v3/nodes/{node.name}/metrics")
    assert status == 200
    return int(body[name])


async def held_dropped(node: NodeProc) -> int:
    """QoS 1/2 forwards for a dead peer dropped and counted, from the Prometheus `/metrics`."""
    status, _ = await api(node, "GET", "/status")
    assert status == 200
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{node.http}") as http,
        http.get("/metrics") as reply,
    ):
        text = await reply.text()
    for line in text.splitlines():
        if line.startswith("minibroker_cluster_forward_held_dropped_total{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def _metric_above(node: NodeProc, name: str, value: int) -> bool:
    return await metric(node, name) > value


def mqtt(node: NodeProc, client_id: str, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", node.mqtt, identifier=client_id, timeout=TIMEOUT, **kw)


@contextlib.asynccontextmanager
async def doomed(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """A client whose node or connection goes away inside the block: leaving it never raises."""
    await client.__aenter__()
    try:
        yield client
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        return await anext(aiter(client.messages))


async def retained_arrives(client: aiomqtt.Client, topic: str, payload: bytes) -> None:
    """Subscribe until the retained message of `topic` arrives (it may still be replicating)."""

    async def arrived() -> bool:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                message = await anext(aiter(client.messages))
                return message.payload == payload and message.retain
        await client.unsubscribe(topic)
        return False

    await until(arrived)


# -- tests, in order ------------------------------------------------------------------------------


async def test_nodes_form_one_cluster(cluster: Cluster) -> None:
    for node in cluster.nodes:
        await until(lambda n=node: _names_are(n, NAMES))  # type: ignore[misc]


async def _names_are(node: NodeProc | int, names: list[str]) -> bool:
    return sorted(await node_list(node)) == sorted(names)


async def test_cross_node_delivery_qos_0_1_2(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    async with mqtt(n3, "sub3") as sub3, mqtt(n2, "sub2") as sub2, mqtt(n1, "pub1") as pub:
        await sub3.subscribe("p/#", qos=2)
        await sub2.subscribe("p/#", qos=1)
        await routed("p/#", NAMES[2], n1)
        await routed("p/#", NAMES[1], n1)
        for qos in (0, 1, 2):
            await pub.publish(f"p/{qos}", f"m{qos}".encode(), qos=qos)
            got3, got2 = await next_message(sub3), await next_message(sub2)
            assert (got3.payload, got3.qos) == (f"m{qos}".encode(), qos)
            assert (got2.payload, got2.qos) == (f"m{qos}".encode(), min(qos, 1))


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
async def test_mosquitto_pub_on_one_node_reaches_another(cluster: Cluster) -> None:
    n1, _, n3 = cluster.nodes
    async with mqtt(n3, "mosq-sub") as sub:
        await sub.subscribe("mosq/t", qos=1)
        await routed("mosq/t", NAMES[2], n1)
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-h", "127.0.0.1", "-p", str(n1.mqtt), "-q", "2",
            "-t", "mosq/t", "-m", "from-mosquitto",
        )  # fmt: skip
        assert await asyncio.wait_for(pub.wait(), TIMEOUT) == 0
        got = await next_message(sub)
        assert (got.payload, got.qos) == (b"from-mosquitto", 1)


async def test_retained_reaches_a_new_subscriber_on_another_node(cluster: Cluster) -> None:
    # A retained change made while a node is still joining can miss it (README, cluster): the
    # test starts once every node knows every other, as it did when run after the others.
    for node in cluster.nodes:
        await until(lambda n=node: _names_are(n, NAMES))  # type: ignore[misc]
    _, n2, n3 = cluster.nodes
    async with mqtt(n2, "ret-pub") as pub:
        await pub.publish("ret/x", b"stays", qos=1, retain=True)
    async with mqtt(n3, "ret-sub") as sub:
        await retained_arrives(sub, "ret/x", b"stays")


async def test_ban_from_any_node_applies_everywhere(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    async with doomed(mqtt(n1, "bad-actor")) as victim:
        status, _ = await api(
            n3, "POST", "/api/v3/banned", json={"who": "bad-actor", "as": "client_id"}
        )
        assert status == 201
        with pytest.raises(aiomqtt.MqttError):  # kicked on node 1
            async with asyncio.timeout(TIMEOUT):
                await anext(aiter(victim.messages))
    for node in (n1, n2):
        with pytest.raises(aiomqtt.MqttError):  # refused at CONNECT
            async with mqtt(node, "bad-actor"):
                pass
    status, page = await api(n2, "GET", "/api/v3/banned")
    assert status == 200 and page["meta"]["count"] == 1
    assert (await api(n1, "DELETE", "/api/v3/banned/bad-actor?as=client_id"))[0] == 200
    async with mqtt(n2, "bad-actor"):
        pass


async def test_rest_call_to_any_node_sees_the_cluster(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    async with mqtt(n2, "seen-on-2"), mqtt(n3, "seen-on-3"):
        status, page = await api(n1, "GET", "/api/v3/connections")
        assert status == 200
        rows = {(r["client_id"], r["node"]) for r in page["items"]}
        assert {("seen-on-2", NAMES[1]), ("seen-on-3", NAMES[2])} <= rows
        status, rows = await api(n1, "GET", f"/api/v3/nodes/{NAMES[1]}/connections")
        assert status == 200 and [r["client_id"] for r in rows["items"]] == ["seen-on-2"]
        status, stats = await api(n3, "GET", "/api/v3/stats")
        assert status == 200 and [s["node"] for s in stats] == [NAMES[2], NAMES[0], NAMES[1]]
        status, body = await api(n1, "GET", "/api/v3/nodes/ghost@127.0.0.1")
        assert (status, body) == (404, {"message": "not_found"})


async def test_killed_node_detected_purged_then_rejoins(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    async with doomed(mqtt(n3, "on-3")) as on3:
        await on3.subscribe("k/#", qos=1)
        await routed("k/#", NAMES[2], n1, n2)
        n3.proc.kill()  # SIGKILL, to our own child by its PID
        n3.proc.wait(5)
        killed_at = time.monotonic()
        # a QoS 1 message for its route is held for it (it may come back), not lost silently
        dropped = await metric(n1, "messages/dropped")
        await asyncio.sleep(0.3)  # (n1 has seen the link close)
        async with mqtt(n1, "pub-drop") as pub:
            await pub.publish("k/lost", b"x", qos=1)

        async def declared_dead() -> bool:
            return all([NAMES[2] not in await node_list(node) for node in (n1, n2)])

        await until(declared_dead, DETECTION_BOUND + MARGIN)
        elapsed = time.monotonic() - killed_at
        assert elapsed <= DETECTION_BOUND + MARGIN
        status, body = await api(n1, "GET", f"/api/v3/nodes/{NAMES[2]}")
        assert (status, body) == (200, {"name": NAMES[2], "node_status": "Stopped"})

        # The node list may drop node 3 when its links close, before the membership's dead
        # verdict starts the grace: the count is bounded from the kill, by detection + grace.
        async def counted() -> bool:  # after its grace: the held message dropped and counted
            return await _metric_above(n1, "messages/dropped", dropped)

        await until(counted, DETECTION_BOUND + DEAD_HOLD + MARGIN - (time.monotonic() - killed_at))
        assert await held_dropped(n1) == 1
        # Past the grace its routes stay, frozen (until it comes back or is forgotten), so a
        # QoS 1/2 message for it is dropped and counted too, not sent nowhere.
        for node in (n1, n2):
            assert ("k/#", NAMES[2]) in await route_set(node)
        async with mqtt(n1, "pub-drop") as pub:
            await pub.publish("k/late", b"x", qos=1)
        assert await held_dropped(n1) == 2
    # the rest keeps working
    async with mqtt(n2, "on-2") as on2, mqtt(n1, "pub-k") as pub:
        await on2.subscribe("k/#", qos=1)
        await routed("k/#", NAMES[1], n1)
        await pub.publish("k/1", b"still", qos=1)
        assert (await next_message(on2)).payload == b"still"
        # restarted: a new run of node 3 rejoins (new ports, new epoch) and receives again
        n3 = cluster.restart(2)
        for node in (n1, n2, n3):
            await until(lambda n=node: _names_are(n, NAMES))  # type: ignore[misc]
        async with mqtt(n3, "on-3-again") as again:
            await retained_arrives(again, "ret/x", b"stays")  # pulled from a peer
            await again.subscribe("k/#", qos=1)
            await routed("k/#", NAMES[2], n1)
            await pub.publish("k/2", b"back", qos=1)
            assert (await next_message(again)).payload == b"back"
            assert (await next_message(on2)).payload == b"back"


async def test_cluster_command_starts_and_stops_n_nodes(tmp_path: Path) -> None:
    """`minibroker cluster --nodes 2` (ephemeral ports): both banners, one cluster, SIGTERM
    stops all and exits 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, "cluster", "--nodes", "2",
        "--base-mqtt-port", "0", "--base-ws-port", "0", "--base-http-port", "0",
        "--base-cluster-port", "0", "--data-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not lines or "cluster of 2 nodes running" not in lines[-1]:
                line = await proc.stdout.readline()
                assert line, "\n".join(lines)
                lines.append(line.decode().rstrip("\n"))
        text = "\n".join(lines)
        assert "[node1] minibroker" in text and "node node2@127.0.0.1" in text
        http = re.search(r"\[node2\]\s+http\s+http://127\.0\.0\.1:(\d+)", text)
        assert http, text
        node2 = int(http.group(1))
        await until(lambda: _names_are(node2, ["node1@127.0.0.1", "node2@127.0.0.1"]))
        proc.send_signal(signal.SIGTERM)  # our own child, by its PID
        async with asyncio.timeout(START_TIMEOUT):
            await proc.stdout.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
