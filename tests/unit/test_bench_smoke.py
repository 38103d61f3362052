"""Smoke test: the pub/sub path of the load tool against an in-process broker node.

Runs the fan-in scenario in this event loop (`procs=0`): 2 QoS 1 publishers x 100 messages
to one subscriber. No timing asserts; every wait inside the tool is bounded.
"""

from __future__ import annotations

import asyncio

from benchmarks.results import make_record, summary_line
from benchmarks.scenarios import Settings, make_params, run_scenario
from broker.server.node import Node


async def test_pub_sub_path_delivers_every_message(node: Node) -> None:
    settings = Settings(targets=[("127.0.0.1", node.tcp_port)], procs=0, progress=False)
    params = make_params(
        "fan-in", publishers=2, subscribers=1, qos=1, count=100, duration=4.0, inflight=16
    )
    async with asyncio.timeout(4.5):
        result = await run_scenario("fan-in", settings, params)
    assert result.errors == []
    assert result.metrics["sent"] == 200
    assert result.metrics["received"] == 200
    assert result.metrics["loss_pct"] == 0.0
    assert result.metrics["acked_per_s"] > 0
    assert result.generator["workers"] == 1
    record = make_record(result, "in-process", settings.targets)
    assert "fan-in" in summary_line(record)


async def test_wildcards_scenario_cycles_topics_through_wildcard_routes(node: Node) -> None:
    """The `wildcards` scenario: publishers cycle through their topics (QoS 1 builds each frame,
    QoS 0 slices the joined frames), every message reaches the `bench/wc/+/+` subscriber and
    none reaches the holders of the path filters."""
    settings = Settings(targets=[("127.0.0.1", node.tcp_port)], procs=0, progress=False)
    for qos in (1, 0):
        params = make_params(
            "wildcards",
            publishers=2,
            topics=5,
            filters=30,
            filter_clients=3,
            qos=qos,
            count=23,
            duration=4.0,
            inflight=8,
        )
        async with asyncio.timeout(8):
            result = await run_scenario("wildcards", settings, params)
        assert result.errors == []
        assert result.metrics["sent"] == 46
        assert result.metrics["received"] == 46  # holders receive nothing: it would be more
        assert result.metrics["distinct_topics"] == 10
    topics = {t for t in node.broker.router._seen} | set(node.broker.router._cache)
    assert {f"bench/wc/{p}/{k}" for p in range(2) for k in range(5)} <= topics
