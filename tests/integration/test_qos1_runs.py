"""The QoS 1 fast path with real clients over real sockets: a window of QoS 1 PUBLISHes
written in one go (the runs of `broker.protocol.acked_runs`) is acknowledged once per
PUBLISH, in order, with each one's packet id (MQTT-4.3.2-2, MQTT-4.6.0-2), reaches a QoS 1
aiomqtt subscriber, a QoS 0 paho subscriber and mosquitto_sub in order, and every message is
counted once, in the core and in the REST API."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest
from rawclient import RawClient
from runs_support import acked_spy, rest_metrics
from test_core_support import TIMEOUT, collect, eventually, paho_client

from broker.app import NodeApp
from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_5
from broker.protocol.packets import PubAck, Publish

AppFactory = Callable[..., Any]


async def acks(client: RawClient, n: int) -> list[PubAck]:
    out: list[PubAck] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < n:
            packet = await client.recv()
            assert isinstance(packet, PubAck), packet
            out.append(packet)
    return out


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub missing")
async def test_a_window_of_qos1_publishes_is_acked_in_order_and_delivered(
    app_factory: AppFactory,
) -> None:
    app: NodeApp = await app_factory()
    port = app.node.tcp_port
    broker = app.node.broker
    # 3 windows of 64 QoS 1 messages to one topic, ids wrapping past 0xFFFF (never 0).
    ids = [(0xFFC0 + i) % 0xFFFF + 1 for i in range(192)]
    messages = [
        Publish("w/a", f"m{i:04d}".encode(), qos=1, packet_id=pid) for i, pid in enumerate(ids)
    ]
    msub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", "msub", "-q", "1",
        "-t", "w/#", "-C", str(len(messages)), "-F", "%t %q %p", "-W", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    got_paho: list[tuple[str, bytes, int]] = []
    paho = paho_client("paho-sub")
    paho.on_message = lambda c, u, m: got_paho.append((m.topic, m.payload, m.qos))
    paho.on_connect = lambda c, u, f, rc, p: c.subscribe("w/a", 0)
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="aio-sub", protocol=aiomqtt.ProtocolVersion.V5
        ) as aio:
            await aio.subscribe("w/+", 1)
            paho.connect("127.0.0.1", port)
            paho.loop_start()
            await eventually(
                lambda: all(
                    cid in broker.sessions and broker.sessions[cid].subscriptions
                    for cid in ("msub", "paho-sub")
                )
            )
            before = dict(broker.metrics.counters)
            publisher, _ = await RawClient.connect(port, "pub")
            got_acks: list[PubAck] = []
            with acked_spy() as runs:
                for window in range(3):
                    part = messages[window * 64 : (window + 1) * 64]
                    publisher.send_raw(b"".join(encode(m) for m in part))
                    got_acks += await acks(publisher, 64)
            assert sum(n for n in runs if n > 0) >= 150, runs  # most went as runs
            assert [a.packet_id for a in got_acks] == ids  # MQTT-4.3.2-2, MQTT-4.6.0-2

            aio_got = await collect(aio, len(messages))
            assert [(m.payload, m.qos) for m in aio_got] == [(m.payload, 1) for m in messages]
            await eventually(lambda: len(got_paho) == len(messages))
            assert got_paho == [("w/a", m.payload, 0) for m in messages]
            async with asyncio.timeout(TIMEOUT):
                out, err = await msub.communicate()
            lines = out.decode().splitlines()
            assert lines == [f"w/a 1 {m.payload.decode()}" for m in messages], err

            counters = broker.metrics.counters

            def delta(name: str) -> int:
                return counters[name] - before.get(name, 0)

            assert delta("messages/received") == delta("messages/qos1/received") == 192
            assert delta("packets/publish/received") == 192
            assert delta("packets/puback/sent") == 192
            assert delta("messages/qos1/sent") == 2 * 192  # aiomqtt and mosquitto_sub
            assert delta("messages/qos0/sent") == 192  # paho
            rest = await rest_metrics(app)
            for name in ("messages/received", "messages/sent", "bytes/sent", "messages/dropped"):
                assert rest[name] == counters[name], name
            await publisher.close()
    finally:
        paho.loop_stop()
        paho.disconnect()
        if msub.returncode is None:
            msub.kill()
            await msub.wait()


async def test_mqtt5_acks_say_no_subscribers_for_a_run(app_factory: AppFactory) -> None:
    """5.0 3.4.2.1: PUBACK 0x10 (No matching subscribers) for each message of a run that
    nobody subscribed to; still one per PUBLISH, with its packet id."""
    app: NodeApp = await app_factory()
    publisher, _ = await RawClient.connect(app.node.tcp_port, "pub5", MQTT_5)
    messages = [Publish("nobody/here", b"x", qos=1, packet_id=i + 1) for i in range(40)]
    with acked_spy() as runs:
        publisher.send_raw(b"".join(encode(m, MQTT_5) for m in messages))
        got = await acks(publisher, 40)
    assert sum(n for n in runs if n > 0) >= 30, runs
    assert [(a.packet_id, a.reason_code) for a in got] == [(i + 1, 0x10) for i in range(40)]
    await publisher.close()
