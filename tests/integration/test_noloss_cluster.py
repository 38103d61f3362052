"""No loss when a cluster node is killed: three CLI node processes; a publisher on node 1 and a
persistent subscriber on node 2 exchange QoS 1 and QoS 2 streams (300 counted messages each);
node 3, which has a subscriber of its own on the same topics, is killed with SIGKILL after the
first half, while the second half is being published. Every message acknowledged to the
publisher reaches the subscriber on node 2, QoS 2 exactly once. Only processes started here
are signalled, by their PIDs; waits are bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from noloss_support import Subscriber, check_no_loss, payload, publish_stream
from test_cluster_processes import NAMES, routed, spawn, stop

pytestmark = pytest.mark.cluster

COUNT = 300


async def test_node_killed_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    nodes = []
    try:
        for name in NAMES:
            seed = nodes[0].ports["cluster"] if nodes else None
            short = name.split("@")[0]
            nodes.append(spawn(name, tmp_path / short, seed, tmp_path / f"{short}.log"))
        n1, n2, n3 = nodes
        sub = Subscriber(n2.mqtt, "noloss-cluster-sub")
        await sub.connect()
        await sub.subscribe("ncl/#", 2)
        bystander = Subscriber(n3.mqtt, "noloss-cluster-on-3")
        await bystander.connect()
        await bystander.subscribe("ncl/#", 1)
        await routed("ncl/#", NAMES[1], n1)
        await routed("ncl/#", NAMES[2], n1)
        half = COUNT // 2
        acked: dict[int, set[int]] = {}
        for qos in (1, 2):  # the first half with all three nodes up
            acked[qos] = await publish_stream(
                n1.mqtt, f"ncl-pub-{qos}", f"ncl/{qos}", qos, f"cl{qos}", range(half)
            )
        second = {  # the second half is flowing when node 3 dies
            qos: asyncio.create_task(
                publish_stream(
                    n1.mqtt, f"ncl-pub-{qos}", f"ncl/{qos}", qos, f"cl{qos}", range(half, COUNT)
                )
            )
            for qos in (1, 2)
        }
        n3.proc.kill()  # SIGKILL node 3, our own child by its PID
        await asyncio.to_thread(n3.proc.wait, 5)
        await bystander.drop()
        for qos, task in second.items():
            acked[qos] |= await task
        for qos in (1, 2):
            assert len(acked[qos]) == COUNT  # node 1 stayed up: everything was acknowledged
        await sub.receive(until={payload(f"cl{q}", n) for q, ids in acked.items() for n in ids})
        await sub.settle()
        for qos, ids in acked.items():
            check_no_loss(sub, f"cl{qos}", ids, qos, sent=COUNT)
        await sub.disconnect()
    finally:
        for node in nodes:
            stop(node)
