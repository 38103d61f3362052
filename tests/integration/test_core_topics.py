"""Topic rules with real clients over real sockets (MQTT 3.1.1 sections 3.8-3.11, 4.7); the
rules that need no socket run on the in-memory harness: tests/unit/test_rules_topics.py."""

from __future__ import annotations

import pytest
from test_core_support import (
    aio,
    next_message,
    raw_connect,
    until_sentinel,
)

from broker.protocol.packets import Publish
from broker.server.node import Node


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+"])
async def test_wildcard_in_publish_topic_closes_connection_MQTT_3_3_2_2(
    node: Node, topic: str
) -> None:
    async with aio(node, "healthy") as healthy:
        await healthy.subscribe("#", qos=1)
        bad, _ = await raw_connect(node, "wild-pub")
        try:
            bad.send(Publish(topic, b"x", qos=1, packet_id=1))
            assert await bad.closed()
            assert [p for p in bad.pending if not isinstance(p, Publish)] == []  # no PUBACK
        finally:
            await bad.close()
        assert "wild-pub" not in node.broker.connected
        async with aio(node, "pub") as pub:
            assert await until_sentinel(healthy, pub, "after/bad") == []


async def test_unsubscribe_filter_compared_literally_MQTT_3_10_4_1(node: Node) -> None:
    """`a/+` does not remove `a/b`: filters are compared character by character."""
    async with aio(node, "lit") as sub, aio(node, "lit-pub") as pub:
        await sub.subscribe("lit/b", qos=0)
        await sub.unsubscribe("lit/+")
        await pub.publish("lit/b", b"still", qos=0)
        message = await next_message(sub)
    assert message.payload == b"still"
