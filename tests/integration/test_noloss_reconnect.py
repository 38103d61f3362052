"""No loss across subscriber reconnects: QoS 1 and QoS 2 streams of 300 counted messages to a
persistent session whose connection is cut without DISCONNECT several times mid-stream (and
reconnected with clean session 0). Every acknowledged message arrives; QoS 2 exactly once."""

from __future__ import annotations

import asyncio

import pytest
from noloss_support import Subscriber, check_no_loss, payload, publish_stream

from broker.server.node import Node

COUNT = 300
CUTS = 4


@pytest.mark.parametrize("qos", [1, 2])
async def test_stream_survives_subscriber_reconnects(node: Node, qos: int) -> None:
    stream = f"rc{qos}"
    sub = Subscriber(node.tcp_port, f"noloss-sub-{qos}")
    await sub.connect()
    await sub.subscribe("noloss/#", qos)
    publisher = asyncio.create_task(
        publish_stream(node.tcp_port, f"noloss-pub-{qos}", "noloss/x", qos, stream, range(COUNT))
    )
    for _ in range(CUTS):
        await sub.receive(count=COUNT // (CUTS + 2))
        await sub.drop()  # vanish mid-flow: unacknowledged PUBLISH/PUBREL left in flight
        await sub.connect()
        assert sub.session_present
    acked = await publisher
    assert len(acked) == COUNT  # the broker stayed up: everything was acknowledged
    await sub.receive(until={payload(stream, n) for n in acked})
    await sub.settle()
    check_no_loss(sub, stream, acked, qos, sent=COUNT)
    await sub.disconnect()
