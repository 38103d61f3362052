"""`start_minibroker_cluster` forms a real 2-node cluster and `spread` measures across it:
what is published on one node reaches the subscribers on both (no loss)."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from benchmarks.brokers import start_minibroker_cluster
from benchmarks.scenarios import Settings, make_params, run_scenario
from cluster.wire import FrameDecoder, MessageType, encode_frame, hello_body

pytestmark = pytest.mark.cluster


def speaks_plain_hello(log: Path) -> bool:
    """Does the node's cluster port (from its banner) answer a plain-TCP HELLO? A TLS link
    refuses it: it closes, at most with a TLS alert, never with a HELLO_ACK."""
    match = re.search(r"^\s*cluster\s+127\.0\.0\.1:(\d+)", log.read_text(), re.M)
    assert match, log.read_text()
    hello = hello_body("minibroker", "probe@127.0.0.1", 1, ("127.0.0.1", 1))
    with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5) as sock:
        sock.sendall(encode_frame(MessageType.HELLO, hello))
        data = sock.recv(65536)
    if not data or data[0] == 0x15:  # closed, or a TLS alert record
        return False
    return [t for _, t, _ in FrameDecoder().feed(data)] == [MessageType.HELLO_ACK]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_spread_across_a_two_node_cluster(tls: bool) -> None:
    nodes = await asyncio.to_thread(start_minibroker_cluster, [None, None], False, 30.0, tls)
    try:
        assert all(n.proc.poll() is None for n in nodes)
        assert speaks_plain_hello(nodes[0].log) is not tls
        settings = Settings(targets=[n.target for n in nodes], procs=0, progress=False)
        params = make_params(
            "spread", publishers=1, subscribers=4, pubs_on="first", subs_on="all", count=200,
            duration=5.0, drain=5.0,
        )  # fmt: skip
        async with asyncio.timeout(20):
            result = await run_scenario("spread", settings, params)
        assert result.errors == []
        assert result.metrics["sent"] == 200
        assert result.metrics["received"] == 800, "each of 4 subscribers, 2 per node, got all"
    finally:
        for node in nodes:
            node.stop()
