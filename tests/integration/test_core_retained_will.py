"""Retained messages and Will messages (MQTT 3.1.1 sections 3.1.2.5-3.1.2.7, 3.3.1.3, 3.14)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from rawclient import RawClient
from test_core_support import (
    aio,
    eventually,
    expect,
    mosquitto,
    needs_mosquitto_clients,
    next_message,
    paho_client,
    payloads,
    ping_barrier,
    raw_connect,
    raw_subscribe,
    until_sentinel,
)

from broker.protocol.packets import ConnAck, Connect, Disconnect, Publish, Will
from broker.server.node import Node

# -- retained ---------------------------------------------------------------------------------


async def test_retained_delivered_on_subscribe_with_retain_flag_MQTT_3_3_1_6_and_8(
    node: Node,
) -> None:
    async with aio(node, "ret-pub") as pub:
        await pub.publish("ret/a", b"kept", qos=1, retain=True)
    assert node.broker.retained.get("ret/a") is not None  # MQTT-3.3.1-5
    async with aio(node, "ret-sub") as sub:
        await sub.subscribe("ret/a", qos=1)
        message = await next_message(sub)
    assert (message.topic.value, message.payload, message.retain, message.qos) == (
        "ret/a",
        b"kept",
        True,
        1,
    )


async def test_retained_sent_again_on_resubscribe_MQTT_3_8_4_3(node: Node) -> None:
    async with aio(node, "rs-pub") as pub:
        await pub.publish("rs/t", b"r", qos=0, retain=True)
    sub, _ = await raw_connect(node, "rs-sub")
    try:
        await raw_subscribe(sub, ("rs/t", 0), packet_id=1)
        assert (await expect(sub, Publish)).retain is True
        await raw_subscribe(sub, ("rs/t", 0), packet_id=2)
        again = await expect(sub, Publish)
        assert (again.payload, again.retain) == (b"r", True)
    finally:
        await sub.close()


async def test_retained_message_replaced_MQTT_3_3_1_5_and_7(node: Node) -> None:
    """A new retained message replaces the old one, also a QoS 0 one (MQTT-3.3.1-7)."""
    async with aio(node, "rep-pub") as pub:
        await pub.publish("rep/t", b"old", qos=1, retain=True)
        await pub.publish("rep/t", b"new", qos=0, retain=True)
        async with aio(node, "rep-sub") as sub:
            await sub.subscribe("rep/t", qos=1)
            before = await until_sentinel(sub, pub, "rep/t")
    assert [(m.payload, m.retain, m.qos) for m in before] == [(b"new", True, 0)]


async def test_retained_cleared_by_empty_payload_MQTT_3_3_1_10_and_11(node: Node) -> None:
    async with aio(node, "clr-pub") as pub, aio(node, "clr-live") as live:
        await pub.publish("clr/t", b"value", qos=1, retain=True)
        await live.subscribe("clr/t", qos=1)
        assert (await next_message(live)).retain is True
        await pub.publish("clr/t", b"", qos=1, retain=True)
        # MQTT-3.3.1-10: processed as normal, so current subscribers get the empty message.
        cleared = await next_message(live)
        assert (cleared.payload, cleared.retain) == (b"", False)
        # MQTT-3.3.1-11: and nothing is stored.
        assert node.broker.retained.get("clr/t") is None
        async with aio(node, "clr-late") as late:
            await late.subscribe("clr/#", qos=1)
            assert await until_sentinel(late, pub, "clr/sentinel") == []


async def test_normal_delivery_has_retain_0_MQTT_3_3_1_9(node: Node) -> None:
    async with aio(node, "r0-sub") as sub, aio(node, "r0-pub") as pub:
        await sub.subscribe("r0/t", qos=1)
        await pub.publish("r0/t", b"live", qos=1, retain=True)
        message = await next_message(sub)
    assert (message.payload, message.retain) == (b"live", False)


async def test_wildcard_subscription_gets_all_matching_retained_MQTT_3_3_1_6(node: Node) -> None:
    stored = {
        "foo/a": b"1",
        "foo/a/b": b"2",
        "foo/b/c/d": b"3",
        "foo": b"no: + needs a level",
        "bar/a/b": b"no",
        "foo//x": b"4",
    }
    async with aio(node, "wr-pub") as pub:
        for topic, payload in stored.items():
            await pub.publish(topic, payload, qos=1, retain=True)
    sub, _ = await raw_connect(node, "wr-sub")
    try:
        await raw_subscribe(sub, ("foo/+/#", 1))
        got = [p for p in await ping_barrier(sub) if isinstance(p, Publish)]
    finally:
        await sub.close()
    assert sorted((p.topic, p.payload) for p in got) == [
        ("foo//x", b"4"),
        ("foo/a", b"1"),
        ("foo/a/b", b"2"),
        ("foo/b/c/d", b"3"),
    ]
    assert all(p.retain for p in got)


@pytest.mark.parametrize(("msg_qos", "sub_qos"), [(2, 0), (2, 1), (1, 2), (0, 2), (2, 2)])
async def test_retained_delivered_at_min_qos_MQTT_3_8_4_6(
    node: Node, msg_qos: int, sub_qos: int
) -> None:
    async with aio(node, "rq-pub") as pub:
        await pub.publish("rq/t", b"r", qos=msg_qos, retain=True)
    sub, _ = await raw_connect(node, "rq-sub")
    try:
        await raw_subscribe(sub, ("rq/t", sub_qos))
        got = await expect(sub, Publish)
    finally:
        await sub.close()
    assert (got.retain, got.qos) == (True, min(msg_qos, sub_qos))


@needs_mosquitto_clients
@pytest.mark.interop
@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
async def test_mosquitto_clients_retained_publish_subscribe_MQTT_3_3_1_6(
    node: Node, version: str
) -> None:
    port = str(node.tcp_port)
    topic = f"mosq/{version}/retained"
    rc, _, err = await mosquitto(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", version, "-q", "1", "-r",
        "-t", topic, "-m", "from mosquitto_pub",
    )  # fmt: skip
    assert rc == 0, err
    rc, out, err = await mosquitto(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-V", version, "-q", "1",
        "-t", f"mosq/{version}/#", "-C", "1", "-v", "-W", "4",
    )  # fmt: skip
    assert rc == 0, err
    assert out.decode().strip() == f"{topic} from mosquitto_pub"


# -- will -------------------------------------------------------------------------------------


async def test_will_published_on_abnormal_disconnect_paho_MQTT_3_1_2_8(node: Node) -> None:
    """paho-mqtt sets a will; its socket is closed without DISCONNECT: the will goes out."""
    async with aio(node, "will-watch") as watch:
        await watch.subscribe("will/paho", qos=1)
        client = paho_client("paho-will")
        client.will_set("will/paho", b"paho died", qos=1)
        await asyncio.to_thread(client.connect, "127.0.0.1", node.tcp_port, 30)
        client.loop_start()
        await eventually(lambda: "paho-will" in node.broker.connected)
        await asyncio.to_thread(client.loop_stop)  # no automatic reconnect
        sock = client.socket()
        assert sock is not None
        sock.close()  # no DISCONNECT
        message = await next_message(watch)
    assert (message.topic.value, message.payload, message.qos, message.retain) == (
        "will/paho",
        b"paho died",
        1,
        False,
    )


async def test_will_not_published_after_disconnect_paho_MQTT_3_1_2_10_and_3_14_4_3(
    node: Node,
) -> None:
    async with aio(node, "nowill-watch") as watch, aio(node, "nowill-pub") as pub:
        await watch.subscribe("nowill/#", qos=1)
        client = paho_client("paho-nowill")
        client.will_set("nowill/paho", b"must not appear", qos=1)
        await asyncio.to_thread(client.connect, "127.0.0.1", node.tcp_port, 30)
        client.loop_start()
        await eventually(lambda: "paho-nowill" in node.broker.connected)
        await asyncio.to_thread(client.disconnect)
        await asyncio.to_thread(client.loop_stop)
        await eventually(lambda: "paho-nowill" not in node.broker.connected)
        assert await until_sentinel(watch, pub, "nowill/sentinel", qos=1) == []


async def test_will_not_published_after_raw_disconnect_MQTT_3_14_4_3(node: Node) -> None:
    async with aio(node, "rnw-watch") as watch, aio(node, "rnw-pub") as pub:
        await watch.subscribe("rnw/#", qos=0)
        client, _ = await raw_connect(node, "rnw", will=Will("rnw/will", b"no"))
        client.send(Disconnect())
        assert await client.closed()
        await client.close()
        assert await until_sentinel(watch, pub, "rnw/sentinel") == []


async def test_will_published_when_socket_drops_raw_MQTT_3_1_2_8(node: Node) -> None:
    async with aio(node, "rw-watch") as watch:
        await watch.subscribe("rw/will", qos=2)
        client, _ = await raw_connect(node, "rw", will=Will("rw/will", b"gone", qos=2))
        client.writer.transport.abort()
        await client.close()
        message = await next_message(watch)
    assert (message.payload, message.qos, message.retain) == (b"gone", 2, False)


async def test_will_published_on_keepalive_timeout_MQTT_3_1_2_24_and_3_1_2_8(
    node: Node,
) -> None:
    """keepalive=1 and silence: the broker closes after 1.5 keepalives (the node ticks every
    second) and publishes the will. A client pinging within its keepalive stays connected."""
    async with aio(node, "ka-watch") as watch:
        await watch.subscribe("ka/will", qos=1)
        silent, _ = await raw_connect(node, "ka-silent", keepalive=1, will=Will("ka/will", b"ka"))
        pinging, _ = await raw_connect(node, "ka-pinging", keepalive=1)
        stop = asyncio.Event()

        async def keep_pinging() -> None:
            while not stop.is_set():
                await ping_barrier(pinging)
                await asyncio.sleep(0.3)

        pinger = asyncio.create_task(keep_pinging())
        try:
            assert await silent.closed(timeout=4.0)
            message = await next_message(watch)
            assert (message.topic.value, message.payload) == ("ka/will", b"ka")
            assert "ka-silent" not in node.broker.connected
            assert "ka-pinging" in node.broker.connected
        finally:
            stop.set()
            await pinger
            await silent.close()
            await pinging.close()


async def test_will_published_when_server_closes_on_protocol_error_MQTT_3_1_2_8(
    node: Node,
) -> None:
    async with aio(node, "pe-watch") as watch:
        await watch.subscribe("pe/will", qos=0)
        client, _ = await raw_connect(node, "pe", will=Will("pe/will", b"violated"))
        client.send(Publish("pe/+", b"wildcard", qos=0))  # MQTT-3.3.2-2
        assert await client.closed()
        await client.close()
        message = await next_message(watch)
    assert message.payload == b"violated"


async def test_will_retain_flag_honoured_MQTT_3_1_2_17(node: Node) -> None:
    """Will Retain=1: published as a retained message; a later subscriber gets it with
    RETAIN=1. Will Retain=0 (MQTT-3.1.2-16): not retained."""
    kept, _ = await raw_connect(node, "wr1", will=Will("wret/kept", b"k", qos=1, retain=True))
    lost, _ = await raw_connect(node, "wr0", will=Will("wret/lost", b"l", qos=1, retain=False))
    for client, cid in ((kept, "wr1"), (lost, "wr0")):
        client.writer.transport.abort()
        await client.close()
        await eventually(lambda cid=cid: cid not in node.broker.connected)  # type: ignore[misc]
    async with aio(node, "wret-late") as late, aio(node, "wret-pub") as pub:
        await late.subscribe("wret/#", qos=1)
        before = await until_sentinel(late, pub, "wret/sentinel", qos=1)
    assert [(m.topic.value, m.payload, m.retain, m.qos) for m in before] == [
        ("wret/kept", b"k", True, 1)
    ]


async def test_aiomqtt_will_not_sent_after_clean_disconnect_MQTT_3_14_4_3(node: Node) -> None:
    async with aio(node, "aw-watch") as watch, aio(node, "aw-pub") as pub:
        await watch.subscribe("aw/#", qos=1)
        will = aiomqtt.Will("aw/will", b"aiomqtt will", qos=1)
        async with aio(node, "aw", will=will):
            await eventually(lambda: "aw" in node.broker.connected)
        await eventually(lambda: "aw" not in node.broker.connected)
        assert payloads(await until_sentinel(watch, pub, "aw/sentinel", qos=1)) == []


@pytest.mark.parametrize("topic", ["w/#", "w/+", "#", ""])
async def test_will_topic_must_be_valid_topic_name_MQTT_4_7_1_1_and_4_7_3_1(
    node: Node, topic: str
) -> None:
    """The Will Topic is the topic of a PUBLISH the broker will send: wildcards (MQTT-4.7.1-1,
    MQTT-3.3.2-2) or an empty topic (MQTT-4.7.3-1) make the CONNECT a protocol violation. Else
    subscribers later get a PUBLISH with a wildcard topic and the retained store keeps it."""
    watch, _ = await raw_connect(node, "bad-will-watch")
    try:
        await raw_subscribe(watch, ("w/#", 0), ("#", 0))
        client = await RawClient.open(node.tcp_port)
        client.send(Connect("bad-will", will=Will(topic, b"x", retain=True)))
        try:
            assert await client.closed()
            assert not any(isinstance(p, ConnAck) and p.reason_code == 0 for p in client.pending)
        finally:
            await client.close()
        await eventually(lambda: "bad-will" not in node.broker.connected)
        assert await ping_barrier(watch) == []
        assert node.broker.retained.get(topic) is None
    finally:
        await watch.close()
