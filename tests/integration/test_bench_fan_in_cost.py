"""`benchmarks.fan_in_cost.fan_in` against a real node and a real 2-node cluster: its
pre-encoded frames are what the broker's decoder reads as plain QoS 0 PUBLISHes, and every
message published on either node reaches the subscriber, counted exactly, with each node's
CPU read over the run."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.brokers import start_minibroker, start_minibroker_cluster
from benchmarks.fan_in_cost import FRAME, PAYLOAD, TOPIC, fan_in
from broker.protocol.codec import Decoder
from broker.protocol.packets import Publish

pytestmark = pytest.mark.cluster


def test_the_generator_frames_are_plain_qos0_publishes() -> None:
    (packet,) = Decoder().feed(FRAME * 1)
    assert isinstance(packet, Publish)
    assert (packet.topic, packet.payload, packet.qos, packet.retain) == (TOPIC, PAYLOAD, 0, False)


@pytest.mark.parametrize("nodes", [1, 2])
async def test_fan_in_counts_every_message_from_every_node(nodes: int) -> None:
    if nodes == 1:
        started = [await asyncio.to_thread(start_minibroker, None, False)]
    else:
        started = await asyncio.to_thread(start_minibroker_cluster, [None, None], False)
    try:
        targets = [started[i % nodes].target for i in range(4)]
        pids = [n.pid for n in started]
        async with asyncio.timeout(60):
            out = await asyncio.to_thread(fan_in, targets, started[0].target, pids, 5_000, 1_000)
        assert (out.sent, out.received) == (20_000, 20_000)
        assert len(out.cpu_s) == nodes and all(c >= 0 for c in out.cpu_s)
    finally:
        for node in started:
            node.stop()
