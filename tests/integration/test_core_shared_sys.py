"""Shared subscriptions (`$share/<group>/<filter>`, MQTT 5.0 section 4.8.2, also offered to 3.1.1
clients as mosquitto and EMQX do) and the broker's `$SYS/broker/...` topics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from test_core_support import (
    aio,
    collect,
    eventually,
    expect,
    ping_barrier,
    raw_connect,
    raw_publish_qos1,
    raw_subscribe,
)

from broker.protocol.packets import PubAck, Publish, UnsubAck, Unsubscribe
from broker.server.node import Node


async def test_shared_group_round_robin_each_message_to_one_member(node: Node) -> None:
    """10 messages, 2 members of one group: each message to exactly one member, 5 each."""
    m1, _ = await raw_connect(node, "member-1")
    m2, _ = await raw_connect(node, "member-2")
    pub, _ = await raw_connect(node, "share-pub")
    try:
        assert await raw_subscribe(m1, ("$share/g/jobs/+", 1)) == [1]
        assert await raw_subscribe(m2, ("$share/g/jobs/+", 1)) == [1]
        for i in range(10):
            await raw_publish_qos1(pub, f"jobs/{i}", str(i).encode(), i + 1)
        got1 = [p for p in await ping_barrier(m1) if isinstance(p, Publish)]
        got2 = [p for p in await ping_barrier(m2) if isinstance(p, Publish)]
        for member, got in ((m1, got1), (m2, got2)):
            for packet in got:
                member.send(PubAck(packet.packet_id or 0))
        assert (len(got1), len(got2)) == (5, 5)
        all_payloads = sorted(int(p.payload) for p in got1 + got2)
        assert all_payloads == list(range(10))  # none lost, none duplicated
        assert all(p.qos == 1 and p.topic.startswith("jobs/") for p in got1 + got2)
    finally:
        await m1.close()
        await m2.close()
        await pub.close()


async def test_two_groups_and_a_normal_subscriber_each_get_a_copy(node: Node) -> None:
    a1, _ = await raw_connect(node, "a1")
    a2, _ = await raw_connect(node, "a2")
    b1, _ = await raw_connect(node, "b1")
    plain, _ = await raw_connect(node, "plain")
    pub, _ = await raw_connect(node, "groups-pub")
    clients = [a1, a2, b1, plain, pub]
    try:
        await raw_subscribe(a1, ("$share/A/grp/t", 0))
        await raw_subscribe(a2, ("$share/A/grp/t", 0))
        await raw_subscribe(b1, ("$share/B/grp/#", 0))
        await raw_subscribe(plain, ("grp/t", 0))
        for i in range(6):
            await raw_publish_qos1(pub, "grp/t", str(i).encode(), i + 1)

        async def received(client: Any) -> list[bytes]:
            return [p.payload for p in await ping_barrier(client) if isinstance(p, Publish)]

        from_a = await received(a1) + await received(a2)
        from_b = await received(b1)
        from_plain = await received(plain)
        expected = [str(i).encode() for i in range(6)]
        assert sorted(from_a) == expected  # group A: one copy in all
        assert from_b == expected  # group B (one member): every message, in order
        assert from_plain == expected  # the normal subscription is independent of groups
    finally:
        for client in clients:
            await client.close()


async def test_shared_subscription_gets_no_retained_messages(node: Node) -> None:
    """MQTT 5.0 section 4.8.2: retained messages are not sent when a session first subscribes
    to a shared subscription (they would go to one arbitrary member)."""
    pub, _ = await raw_connect(node, "sr-pub")
    pub.send(Publish("sr/t", b"retained", qos=0, retain=True))
    await ping_barrier(pub)
    member, _ = await raw_connect(node, "sr-member")
    try:
        await raw_subscribe(member, ("$share/g/sr/t", 1))
        assert await ping_barrier(member) == []
    finally:
        await member.close()
        await pub.close()


async def test_unsubscribed_member_leaves_the_group(node: Node) -> None:
    m1, _ = await raw_connect(node, "leave-1")
    m2, _ = await raw_connect(node, "leave-2")
    pub, _ = await raw_connect(node, "leave-pub")
    try:
        await raw_subscribe(m1, ("$share/g/lv", 0))
        await raw_subscribe(m2, ("$share/g/lv", 0))
        m1.send(Unsubscribe(2, ["$share/g/lv"]))
        await expect(m1, UnsubAck)
        for i in range(4):
            await raw_publish_qos1(pub, "lv", str(i).encode(), i + 1)
        assert await ping_barrier(m1) == []
        assert len(await ping_barrier(m2)) == 4
    finally:
        await m1.close()
        await m2.close()
        await pub.close()


# -- $SYS -------------------------------------------------------------------------------------


async def test_sys_topics_published(node_factory: Callable[..., Any]) -> None:
    """sys_interval=1: `$SYS/broker/#` delivers version, uptime and client figures, and
    clients/connected follows the number of connected clients."""
    node: Node = await node_factory(sys_interval=1)
    async with aio(node, "sys-watch") as watch:
        await watch.subscribe("$SYS/broker/#", qos=0)
        seen: dict[str, bytes] = {}
        wanted = {
            "$SYS/broker/version",
            "$SYS/broker/uptime",
            "$SYS/broker/clients/connected",
            "$SYS/broker/clients/total",
            "$SYS/broker/messages/received",
            "$SYS/broker/subscriptions/count",
        }
        while not wanted <= seen.keys():
            for message in await collect(watch, 1):
                seen[message.topic.value] = bytes(message.payload)  # type: ignore[arg-type]
        assert seen["$SYS/broker/version"].startswith(b"minibroker version ")
        assert seen["$SYS/broker/uptime"].endswith(b" seconds")
        int(seen["$SYS/broker/uptime"].split()[0])

        async def connected_becomes(value: bytes) -> None:
            # Figures are republished every second; wait for one with `value`.
            try:
                async with asyncio.timeout(4.0):
                    async for message in watch.messages:
                        topic = message.topic.value
                        if topic == "$SYS/broker/clients/connected" and message.payload == value:
                            return
            except TimeoutError:
                raise AssertionError(f"clients/connected never became {value!r}") from None

        extra = [(await raw_connect(node, f"sys-extra-{i}"))[0] for i in range(2)]
        try:
            await connected_becomes(b"3")
        finally:
            for client in extra:
                await client.close()
        await eventually(lambda: len(node.broker.connected) == 1)
        await connected_becomes(b"1")


async def test_sys_topics_not_matched_by_hash_MQTT_4_7_2_1(
    node_factory: Callable[..., Any],
) -> None:
    """`#`, `+/broker/#` and `$share/g/#` get none of the broker's `$SYS` messages (retained or
    live); `$SYS/...` gets them."""
    node: Node = await node_factory(sys_interval=1)
    everything, _ = await raw_connect(node, "hash-sub")
    sys_sub, _ = await raw_connect(node, "sys-sub")
    try:
        await raw_subscribe(everything, ("#", 0), ("+/broker/#", 0), ("$share/g/#", 0))
        await raw_subscribe(sys_sub, ("$SYS/broker/uptime", 0))
        retained = await expect(sys_sub, Publish)
        assert retained.retain is True
        live = await expect(sys_sub, Publish, timeout=3.0)  # the next periodic publication
        assert live.topic == "$SYS/broker/uptime"
        received = await ping_barrier(everything)
        assert [p.topic for p in received if isinstance(p, Publish)] == []
    finally:
        await everything.close()
        await sys_sub.close()
