"""The harness itself: namespaces, partitions, bridge nodes, heal, teardown, the relays.

Reachability is tested with real TCP connections made from inside one namespace to a listener
inside another, in every pair, after each layout change.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from faults_net import PREFIX, Net, NsThread, _namespaces, sweep_stale
from faults_proxy import Shape, gateway, link_proxy

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("netns")]
PORT = 5000


@pytest.fixture
def net() -> Iterator[Net]:
    made = Net(3)
    made.create()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
async def echo(net: Net) -> AsyncIterator[None]:
    """An echo server on every node address, port PORT, in each node's namespace."""
    servers = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    for i, addr in enumerate(net.addrs):
        sock = await asyncio.get_running_loop().run_in_executor(
            None, net.thread(i).listener, addr, PORT
        )
        servers.append(await asyncio.start_server(handle, sock=sock))
    yield
    for server in servers:
        server.close()


async def reaches(net: Net, a: int, b: int) -> bool:
    """Whether a TCP connection from node a's namespace to node b's echo server gets an echo."""
    try:
        async with asyncio.timeout(1.5):
            sock = await net.thread(a).connect(net.addrs[b], PORT)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"ping")
            ok = await reader.readexactly(4) == b"ping"
            writer.close()
            return ok
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def matrix(net: Net) -> set[tuple[int, int]]:
    pairs = [(a, b) for a in range(net.n) for b in range(net.n) if a != b]
    results = await asyncio.gather(*(reaches(net, a, b) for a, b in pairs))
    return {pair for pair, ok in zip(pairs, results, strict=True) if ok}


ALL = {(a, b) for a in range(3) for b in range(3) if a != b}


@pytest.mark.usefixtures("echo")
async def test_partition_bridge_node_and_heal(net: Net) -> None:
    assert await matrix(net) == ALL
    net.partition([[0], [1, 2]])
    assert await matrix(net) == {(1, 2), (2, 1)}
    assert not net.connected(0, 1) and net.connected(1, 2)
    net.heal()
    assert await matrix(net) == ALL
    net.bridge_node(1)  # 1 sees both sides; 0 and 2 do not see each other
    assert await matrix(net) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert net.connected(0, 1) and not net.connected(0, 2)
    net.heal()
    assert await matrix(net) == ALL


def test_teardown_removes_every_namespace() -> None:
    made = Net(2)
    made.create()
    names = {made.switch, *made.node_ns}
    assert names <= set(_namespaces())
    made.destroy()
    assert not names & set(_namespaces())


def test_root_namespace_gets_no_address() -> None:
    """The private subnet is configured only inside the namespaces."""
    made = Net(2)
    made.create()
    try:
        hostname_addrs = socket.getaddrinfo(socket.gethostname(), None)
        assert not any(a[4][0].startswith("10.213.14.") for a in hostname_addrs)
        with open("/proc/net/fib_trie") as trie:
            assert "10.213.14." not in trie.read()
    finally:
        made.destroy()


@pytest.mark.usefixtures("echo")
async def test_relays_keep_bytes_in_order_under_shaping_and_cut(net: Net) -> None:
    """A gateway from 127.0.0.1 and a shaping proxy in node 1's namespace (to its echo server,
    dialled from node 0): random delay, jitter and "loss" (held chunks) never reorder or corrupt."""
    proxy = await link_proxy(net.thread(1), net.addrs[1], PORT + 1, PORT, seed=7)
    proxy.shape = Shape(delay=0.005, jitter=0.01, loss=0.3, rto=0.02)
    gw = await gateway(net.thread(0), net.addrs[1], PORT + 1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        rng = random.Random(3)
        sent = b"".join(rng.randbytes(rng.randint(1, 3000)) for _ in range(60))
        got = bytearray()
        for start in range(0, len(sent), 5000):
            writer.write(sent[start : start + 5000])
        async with asyncio.timeout(20):
            while len(got) < len(sent):
                got += await reader.read(65536)
        assert bytes(got) == sent
        assert proxy.connections == 1 and gw.connections == 1
        assert proxy.cut() >= 2  # both sides of the relayed connection
        async with asyncio.timeout(5):
            assert await reader.read(10) == b""  # the relay ended the client's connection too
        writer.close()
    finally:
        for relay in (gw, proxy):
            await relay.close()


def test_shape_holds_at_least_the_delay() -> None:
    rng = random.Random(1)
    shape = Shape(delay=0.05, jitter=0.01, loss=0.5, rto=0.2)
    holds = [shape.hold(rng) for _ in range(200)]
    assert all(0.05 <= h <= 0.26 for h in holds)
    assert any(h >= 0.25 for h in holds) and any(h < 0.07 for h in holds)


async def test_ns_thread_sockets_live_in_the_namespace(net: Net) -> None:
    """A socket made by node 0's thread can bind node 0's address (absent from the root ns)."""
    thread: NsThread = net.thread(0)
    listener = await asyncio.get_running_loop().run_in_executor(
        None, thread.listener, net.addrs[0], 0
    )
    assert listener.getsockname()[0] == net.addrs[0]
    listener.close()
    root = socket.socket()
    with pytest.raises(OSError):
        root.bind((net.addrs[0], 0))
    root.close()


def test_sweep_removes_only_namespaces_of_dead_runs() -> None:
    dead = f"{PREFIX}4194305x0sw"  # a PID above Linux's largest pid_max: never alive
    live = f"{PREFIX}{os.getpid()}x999sw"
    for name in (dead, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        swept = sweep_stale()
        assert dead in swept and live not in swept
        assert live in _namespaces() and dead not in _namespaces()
    finally:
        for name in (dead, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
