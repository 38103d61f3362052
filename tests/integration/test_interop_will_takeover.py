"""A will on takeover (MQTT-3.1.4-3; 5.0 3.1.2.5, 3.1.3.2.2), as mosquitto 2.0 handles it: the
old connection's will is published only when its session ends with the takeover (either
connection clean / Clean Start, or the old session's expiry 0); a reconnect that continues the
session publishes no will. Raw sockets; a watcher subscribed to the will topic tells.
"""

from __future__ import annotations

import pytest
from test_core_support import expect, ping_barrier, raw_connect, raw_subscribe

from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId
from broker.protocol.packets import Publish, Will
from broker.server.node import Node


@pytest.mark.parametrize(
    ("version", "old_clean", "old_expiry", "new_clean", "will_published"),
    [
        # 3.1.1: the clean session flag of either connection ends the session.
        (MQTT_3_1_1, False, None, False, False),
        (MQTT_3_1_1, False, None, True, True),
        (MQTT_3_1_1, True, None, False, True),
        (MQTT_3_1_1, True, None, True, True),
        # 5.0: Session Expiry Interval 0 ends the session with the connection; Clean Start too.
        (MQTT_5, False, 60, False, False),
        (MQTT_5, False, 60, True, True),
        (MQTT_5, False, 0, False, True),
        (MQTT_5, True, 60, False, False),  # Clean Start only cleared what was before it
    ],
)
async def test_will_on_takeover_only_when_the_session_ends_MQTT_3_1_4_3(
    node: Node,
    version: int,
    old_clean: bool,
    old_expiry: int | None,
    new_clean: bool,
    will_published: bool,
) -> None:
    watcher, _ = await raw_connect(node, "watcher")
    assert await raw_subscribe(watcher, ("will/#", 0)) == [0]
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: old_expiry} if old_expiry is not None else {}
    will = Will("will/dev", b"gone", 0)
    old, _ = await raw_connect(node, "dev", clean=old_clean, version=version, will=will,
                               properties=props)  # fmt: skip
    new_props = {PropertyId.SESSION_EXPIRY_INTERVAL: 60} if version == MQTT_5 else {}
    new, ack = await raw_connect(node, "dev", clean=new_clean, version=version,
                                 properties=new_props)  # fmt: skip
    assert ack.reason_code == 0
    assert await old.closed()  # taken over (5.0: DISCONNECT 0x8E first)
    # The will, if any, was published while the new CONNECT was handled, before its CONNACK.
    got = await ping_barrier(watcher)
    if will_published:
        assert [(p.topic, p.payload) for p in got if isinstance(p, Publish)] == [
            ("will/dev", b"gone")
        ]
    else:
        assert got == []
    # Whatever happened on takeover, the new connection's own end still follows its own will.
    await new.close()
    await old.close()
    await watcher.close()


async def test_will_still_published_when_a_continued_session_later_dies(node: Node) -> None:
    """The takeover dropped the old connection's will; the new connection's own will is
    published when it dies without DISCONNECT (MQTT-3.1.2-8 / 3.1.1 MQTT-3.1.2-8)."""
    watcher, _ = await raw_connect(node, "watcher2")
    await raw_subscribe(watcher, ("will2/#", 0))
    old, _ = await raw_connect(node, "dev2", clean=False, will=Will("will2/a", b"old", 0))
    new, _ = await raw_connect(node, "dev2", clean=False, will=Will("will2/b", b"new", 0))
    assert await old.closed()
    await new.close()  # no DISCONNECT: the will is due
    message = await expect(watcher, Publish)
    assert (message.topic, message.payload) == ("will2/b", b"new")
    assert await ping_barrier(watcher) == []
    await watcher.close()
