"""PUBLISH/SUBSCRIBE end to end over real sockets (MQTT 3.1.1 sections 3.3, 3.8, 4.3, 4.6)."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest
from rawclient import RawClient
from test_core_support import (
    TIMEOUT,
    aio,
    collect,
    eventually,
    expect,
    mosquitto,
    needs_mosquitto_clients,
    next_message,
    paho_client,
    payloads,
    ping_barrier,
    raw_connect,
    raw_publish_qos1,
    raw_subscribe,
    until_sentinel,
)

from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.node import Node


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_subscribe_round_trip_at_each_qos_MQTT_4_3(node: Node, qos: int) -> None:
    """A QoS 0/1/2 message reaches a QoS 2 subscriber at the publisher's QoS, payload intact."""
    async with aio(node, "sub") as sub, aio(node, "pub") as pub:
        await sub.subscribe("rt/topic", qos=2)
        await pub.publish("rt/topic", b"hello \x00\xff", qos=qos)
        message = await next_message(sub)
    assert message.topic.value == "rt/topic"
    assert message.payload == b"hello \x00\xff"
    assert message.qos == qos
    assert message.retain is False


@pytest.mark.parametrize("qos", [1, 2])
async def test_paho_qos_round_trip_MQTT_4_3_2_and_4_3_3(node: Node, qos: int) -> None:
    """paho-mqtt (threaded) publishes and receives at QoS 1 and 2; its flows complete."""
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    subscribed = loop.create_future()

    def on_message(_c: object, _u: object, msg: object) -> None:
        item = (msg.topic, msg.payload, msg.qos)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(received.put_nowait, item)

    def on_subscribe(_c: object, _u: object, _mid: int, codes: list[object], _p: object) -> None:
        loop.call_soon_threadsafe(subscribed.set_result, [int(c.value) for c in codes])  # type: ignore[attr-defined]

    client = paho_client(f"paho-qos{qos}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    await asyncio.to_thread(client.connect, "127.0.0.1", node.tcp_port, 30)
    client.loop_start()
    try:
        client.subscribe("paho/qos", qos=qos)
        async with asyncio.timeout(TIMEOUT):
            assert await subscribed == [qos]
        info = client.publish("paho/qos", b"via paho", qos=qos)
        await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
        assert info.is_published()  # PUBACK / PUBCOMP came back
        async with asyncio.timeout(TIMEOUT):
            topic, payload, got_qos = await received.get()
        assert (topic, payload, got_qos) == ("paho/qos", b"via paho", qos)
    finally:
        await asyncio.to_thread(client.disconnect)
        await asyncio.to_thread(client.loop_stop)


@pytest.mark.parametrize(("sub_qos", "pub_qos"), [(0, 1), (0, 2), (1, 2), (2, 1), (1, 0)])
async def test_delivered_at_min_of_published_and_granted_qos_MQTT_3_8_4_6(
    node: Node, sub_qos: int, pub_qos: int
) -> None:
    async with aio(node, "sub") as sub, aio(node, "pub") as pub:
        await sub.subscribe("down/grade", qos=sub_qos)
        await pub.publish("down/grade", b"x", qos=pub_qos)
        message = await next_message(sub)
    assert message.qos == min(sub_qos, pub_qos)


async def test_overlapping_subscriptions_deliver_one_copy_at_highest_qos_MQTT_3_3_5_1(
    node: Node,
) -> None:
    sub, _ = await raw_connect(node, "overlap")
    pub, _ = await raw_connect(node, "overlap-pub")
    try:
        assert await raw_subscribe(sub, ("ov/+", 0), ("ov/#", 1), ("ov/a", 0)) == [0, 1, 0]
        pub.send(Publish("ov/a", b"once", qos=2, packet_id=7))
        assert (await expect(pub, PubRec)).packet_id == 7
        got = await expect(sub, Publish)
        assert (got.topic, got.payload, got.qos) == ("ov/a", b"once", 1)
        sub.send(PubAck(got.packet_id or 0))
        assert await ping_barrier(sub) == []  # no second copy
    finally:
        await sub.close()
        await pub.close()


async def test_qos1_publisher_gets_puback_with_its_packet_id_MQTT_3_3_4_1(node: Node) -> None:
    pub, _ = await raw_connect(node, "q1pub")
    try:
        for packet_id in (1, 300, 65535):
            pub.send(Publish("q1/t", b"m", qos=1, packet_id=packet_id))
            ack = await expect(pub, PubAck)
            assert ack.packet_id == packet_id
    finally:
        await pub.close()


async def test_qos2_publisher_flow_pubrec_pubrel_pubcomp_MQTT_4_3_3_2(node: Node) -> None:
    pub, _ = await raw_connect(node, "q2pub")
    try:
        pub.send(Publish("q2/t", b"m", qos=2, packet_id=42))
        assert (await expect(pub, PubRec)).packet_id == 42
        pub.send(PubRel(42))
        assert (await expect(pub, PubComp)).packet_id == 42
    finally:
        await pub.close()


async def test_qos2_subscriber_flow_pubrec_then_pubrel_MQTT_4_3_3_1(node: Node) -> None:
    """The broker as QoS 2 sender: PUBLISH (DUP=0, fresh id) -> PUBREC -> PUBREL -> PUBCOMP."""
    sub, _ = await raw_connect(node, "q2sub")
    pub, _ = await raw_connect(node, "q2sub-pub")
    try:
        await raw_subscribe(sub, ("q2s/t", 2))
        await raw_publish_qos1(pub, "q2s/t", b"a", 1)
        pub.send(Publish("q2s/t", b"b", qos=2, packet_id=2))
        await expect(pub, PubRec)
        first = await expect(sub, Publish)
        second = await expect(sub, Publish)
        assert (first.payload, first.qos, first.dup) == (b"a", 1, False)
        assert (second.payload, second.qos, second.dup) == (b"b", 2, False)
        assert first.packet_id and second.packet_id and first.packet_id != second.packet_id
        sub.send(PubAck(first.packet_id))
        sub.send(PubRec(second.packet_id))
        assert (await expect(sub, PubRel)).packet_id == second.packet_id
        sub.send(PubComp(second.packet_id))
        assert await ping_barrier(sub) == []
        assert node.broker.sessions["q2sub"].inflight == {}
    finally:
        await sub.close()
        await pub.close()


async def test_qos2_resent_publish_with_dup_is_delivered_once_MQTT_4_3_3_2(node: Node) -> None:
    """Until PUBREL, a PUBLISH with the same packet id is acknowledged but not routed again;
    after PUBCOMP the same id starts a new message."""
    async with aio(node, "once-sub") as sub:
        await sub.subscribe("exactly/once", qos=2)
        pub, _ = await raw_connect(node, "once-pub")
        try:
            pub.send(Publish("exactly/once", b"first", qos=2, packet_id=9))
            assert (await expect(pub, PubRec)).packet_id == 9
            pub.send(Publish("exactly/once", b"first", qos=2, packet_id=9, dup=True))
            assert (await expect(pub, PubRec)).packet_id == 9
            pub.send(PubRel(9))
            assert (await expect(pub, PubComp)).packet_id == 9
            # Same id again after PUBCOMP: a new publication (MQTT-4.3.3-2, last bullet).
            pub.send(Publish("exactly/once", b"second", qos=2, packet_id=9))
            assert (await expect(pub, PubRec)).packet_id == 9
            pub.send(PubRel(9))
            await expect(pub, PubComp)
        finally:
            await pub.close()
        async with aio(node, "once-pub2") as pub2:
            before = await until_sentinel(sub, pub2, "exactly/once", qos=2)
    assert payloads(before) == [b"first", b"second"]


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_messages_of_one_publisher_keep_their_order_MQTT_4_6_0_6(
    node: Node, qos: int
) -> None:
    count = 40
    async with aio(node, "order-sub") as sub, aio(node, "order-pub") as pub:
        await sub.subscribe("order/t", qos=2)
        for i in range(count):
            await pub.publish("order/t", str(i).encode(), qos=qos)
        received = await collect(sub, count)
    assert payloads(received) == [str(i).encode() for i in range(count)]
    assert {m.qos for m in received} == {qos}


async def test_qos1_deliveries_to_raw_subscriber_have_distinct_ids_MQTT_2_3_1_2(
    node: Node,
) -> None:
    """Each outgoing QoS 1 PUBLISH in flight uses a packet id not currently in use."""
    sub, _ = await raw_connect(node, "ids-sub")
    pub, _ = await raw_connect(node, "ids-pub")
    try:
        await raw_subscribe(sub, ("ids/#", 1))
        for i in range(5):
            await raw_publish_qos1(pub, f"ids/{i}", b"p", i + 1)
        got = [await expect(sub, Publish) for _ in range(5)]
        assert [p.topic for p in got] == [f"ids/{i}" for i in range(5)]
        ids = [p.packet_id for p in got]
        assert None not in ids and len(set(ids)) == 5
        for packet_id in ids:
            sub.send(PubAck(packet_id or 0))
        assert await ping_barrier(sub) == []
        assert node.broker.sessions["ids-sub"].inflight == {}
    finally:
        await sub.close()
        await pub.close()


@needs_mosquitto_clients
@pytest.mark.interop
@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
async def test_mosquitto_clients_publish_subscribe_MQTT_4_3(node: Node, version: str) -> None:
    """mosquitto_sub waits for two messages that mosquitto_pub sends at QoS 1 and 2."""
    port = str(node.tcp_port)
    sub_id = f"mosq-sub-{version}"
    topic = f"mosq/live/{version}"
    sub_args = [
        "mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-V", version, "-i", sub_id,
        "-q", "2", "-t", topic, "-C", "2", "-v", "-W", "5",
    ]  # fmt: skip
    sub = asyncio.create_task(mosquitto(*sub_args))
    try:
        await eventually(
            lambda: (
                sub_id in node.broker.sessions
                and topic in node.broker.sessions[sub_id].subscriptions
            )
        )
        channel = node.broker.connected[sub_id]
        assert channel.version == (3 if version == "mqttv31" else 4)
        for qos, text in (("1", "first"), ("2", "second")):
            rc, _, err = await mosquitto(
                "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", version,
                "-q", qos, "-t", topic, "-m", text,
            )  # fmt: skip
            assert rc == 0, err
        rc, out, err = await sub
    finally:
        if not sub.done():
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
    assert rc == 0, err
    assert out.decode().splitlines() == [f"{topic} first", f"{topic} second"]


async def test_incoming_dup_flag_not_propagated_MQTT_3_3_1_3(node: Node) -> None:
    sub, _ = await raw_connect(node, "dup-sub")
    pub, _ = await raw_connect(node, "dup-pub")
    try:
        await raw_subscribe(sub, ("dupf/t", 1))
        pub.send(Publish("dupf/t", b"resent by publisher", qos=1, packet_id=3, dup=True))
        assert (await expect(pub, PubAck)).packet_id == 3
        got = await expect(sub, Publish)
        assert (got.payload, got.dup, got.qos) == (b"resent by publisher", False, 1)
        assert got.packet_id not in (None, 0)  # MQTT-2.3.1-1
        sub.send(PubAck(got.packet_id or 0))
    finally:
        await sub.close()
        await pub.close()


async def test_client_receives_its_own_publications(node: Node) -> None:
    """MQTT 3.1.1 has no No Local option: a subscriber that publishes to a matching topic gets
    its own message back."""
    async with aio(node, "echo") as client:
        await client.subscribe("echo/#", qos=1)
        await client.publish("echo/me", b"back to me", qos=1)
        message = await next_message(client)
    assert (message.topic.value, message.payload) == ("echo/me", b"back to me")


async def test_large_payload_round_trip(node: Node) -> None:
    """A 600 kB payload crosses many TCP reads on the way in and out (below the 1 MiB limit)."""
    payload = bytes(range(256)) * 2400
    async with aio(node, "big-sub") as sub, aio(node, "big-pub") as pub:
        await sub.subscribe("big/t", qos=1)
        await pub.publish("big/t", payload, qos=1)
        message = await next_message(sub)
    assert message.payload == payload


async def test_fan_out_to_many_subscribers(node: Node) -> None:
    subs = [(await raw_connect(node, f"fan-{i}"))[0] for i in range(20)]
    pub, _ = await raw_connect(node, "fan-pub")
    try:
        for i, sub in enumerate(subs):
            await raw_subscribe(sub, ("fan/+", i % 3))
        await raw_publish_qos1(pub, "fan/x", b"to all", 1)
        for i, sub in enumerate(subs):
            got = await expect(sub, Publish)
            assert (got.payload, got.qos) == (b"to all", min(1, i % 3))
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()


async def test_packets_split_and_coalesced_on_the_stream_MQTT_4_2(node: Node) -> None:
    """MQTT runs over an ordered byte stream: packets cut at every byte, and several packets in
    one write, decode the same."""
    client = await RawClient.open(node.tcp_port)
    try:
        first = encode(Connect("chunky"), MQTT_3_1_1) + encode(
            Subscribe(1, [SubscriptionRequest("chunk/t", 1)]), MQTT_3_1_1
        )
        for i in range(len(first)):
            client.send_raw(first[i : i + 1])
            await client.writer.drain()
            await asyncio.sleep(0)
        assert (await expect(client, ConnAck)).reason_code == 0
        assert (await expect(client, SubAck)).reason_codes == [1]
        batch = b"".join(
            encode(Publish("chunk/t", str(i).encode(), qos=1, packet_id=i + 1), MQTT_3_1_1)
            for i in range(3)
        )
        client.send_raw(batch + encode(PingReq(), MQTT_3_1_1))
        packets = [await client.recv() for _ in range(7)]
        acks = sorted(p.packet_id for p in packets if isinstance(p, PubAck))
        echoed = [p.payload for p in packets if isinstance(p, Publish)]
        assert acks == [1, 2, 3]
        assert echoed == [b"0", b"1", b"2"]
        assert isinstance(packets[-1], PingResp)  # handled in order, after the three PUBLISHes
    finally:
        await client.close()


async def test_websocket_and_tcp_clients_share_the_core(node: Node) -> None:
    """The same channel logic behind both transports: TCP publisher -> WebSocket subscriber."""
    ws = aiomqtt.Client(
        "127.0.0.1",
        node.ws_port,
        identifier="ws-sub",
        transport="websockets",
        websocket_path="/mqtt",
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=TIMEOUT,
    )
    async with ws, aio(node, "tcp-pub") as pub:
        await ws.subscribe("cross/#", qos=2)
        await pub.publish("cross/ws", b"over websocket", qos=2)
        message = await next_message(ws)
    assert (message.topic.value, message.payload, message.qos) == ("cross/ws", b"over websocket", 2)
