"""`start_minibroker_cluster` forms a real 2-node cluster and `spread` measures across it:
what is published on one node reaches the subscribers on both (no loss)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.brokers import start_minibroker_cluster
from benchmarks.scenarios import Settings, make_params, run_scenario

pytestmark = pytest.mark.cluster


async def test_spread_across_a_two_node_cluster() -> None:
    nodes = await asyncio.to_thread(start_minibroker_cluster, [None, None], False, 30.0)
    try:
        assert all(n.proc.poll() is None for n in nodes)
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
