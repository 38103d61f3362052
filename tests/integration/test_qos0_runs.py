"""The QoS 0 fast path with real clients over real sockets: a burst of plain QoS 0 PUBLISHes
written in one go (the runs of `broker.protocol.runs`) reaches aiomqtt, paho, mosquitto_sub
and a raw client as the very bytes sent, in order; a retained frame inside the burst still
reaches existing subscribers with RETAIN 0 (MQTT-3.3.1-9); the ACL decides per topic; and the
counters of the REST API and `$SYS` count every message."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from plugin_support import client as app_client
from rawclient import RawClient
from runs_support import rest_metrics, run_spy
from test_core_support import (
    TIMEOUT,
    collect,
    eventually,
    paho_client,
    ping_barrier,
    raw_publish_qos1,
    raw_subscribe,
)

from broker.app import NodeApp
from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_5
from broker.protocol.packets import Publish

AppFactory = Callable[..., Any]


def burst() -> list[Publish]:
    """400 messages on burst/a (two payload sizes, each numbered), a retained one among them,
    then 100 on burst/b: what one publisher writes in one go."""
    a = [Publish("burst/a", f"a{i:04d}".encode() * (1 if i % 3 else 5)) for i in range(400)]
    b = [Publish("burst/b", f"b{i:04d}".encode()) for i in range(100)]
    return [*a[:200], Publish("burst/a", b"kept", retain=True), *a[200:], *b]


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub missing")
async def test_a_burst_reaches_every_client_in_order_byte_for_byte(
    app_factory: AppFactory,
) -> None:
    app: NodeApp = await app_factory(sys_interval=1)
    port = app.node.tcp_port
    broker = app.node.broker
    messages = burst()
    total = len(messages) + 1  # and the QoS 1 sentinel
    msub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", "msub", "-V", "mqttv311",
        "-t", "burst/#", "-C", str(total), "-F", "%t %r %x", "-W", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    got_paho: list[tuple[str, bytes, bool]] = []
    paho = paho_client("paho-sub")
    paho.on_message = lambda c, u, m: got_paho.append((m.topic, m.payload, bool(m.retain)))
    paho.on_connect = lambda c, u, f, rc, p: c.subscribe("burst/#", 0)
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="aio-sub", protocol=aiomqtt.ProtocolVersion.V311
        ) as aio:
            await aio.subscribe("burst/a", 0)
            raw_sub, _ = await RawClient.connect(port, "raw-sub")
            assert await raw_subscribe(raw_sub, ("burst/#", 0)) == [0]
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
            with run_spy() as runs:
                publisher.send_raw(b"".join(encode(m) for m in messages))
                # Acknowledged after the burst: by then every message has been routed.
                await raw_publish_qos1(publisher, "burst/end", b"end", 1)
            assert sum(n for n in runs if n > 0) >= len(messages) - 1, runs

            # Existing subscribers get the retained one as a normal message (MQTT-3.3.1-9).
            sent = [Publish(m.topic, m.payload) for m in messages]
            wire = [encode(m) for m in sent]
            raw_got = await ping_barrier(raw_sub)
            assert [encode(p) for p in raw_got] == [*wire, encode(Publish("burst/end", b"end"))]
            aio_got = await collect(aio, 401)
            assert [(m.payload, m.retain) for m in aio_got] == [
                (m.payload, False) for m in sent if m.topic == "burst/a"
            ]
            await eventually(lambda: len(got_paho) == total)
            assert got_paho[:-1] == [(m.topic, m.payload, False) for m in sent]
            async with asyncio.timeout(TIMEOUT):
                out, err = await msub.communicate()
            lines = out.decode().splitlines()
            assert lines[:-1] == [f"{m.topic} 0 {m.payload.hex()}" for m in sent], err
            # A new subscriber gets the retained message, flagged (MQTT-3.3.1-8).
            await aio.subscribe("burst/#", 0)  # a second filter, beside burst/a
            late = await anext(aiter(aio.messages))
            assert (late.topic.value, late.payload, late.retain) == ("burst/a", b"kept", True)

            # Every message counted once, as the packet path counts (REST and $SYS).
            counters = broker.metrics.counters
            received = counters["messages/received"] - before["messages/received"]
            assert received == total
            deliveries = counters["messages/sent"] - before["messages/sent"]
            assert deliveries == 3 * total + 401 + 1  # raw, paho, mosquitto_sub; aiomqtt
            assert (
                counters["packets/publish/received"] - before["packets/publish/received"] == total
            )
            rest = await rest_metrics(app)
            for name in ("messages/received", "messages/sent", "bytes/sent", "messages/dropped"):
                assert rest[name] == counters[name], name
            async with aiomqtt.Client("127.0.0.1", port, identifier="sys-sub") as sys_sub:
                await sys_sub.subscribe("$SYS/broker/publish/messages/received")
                async with asyncio.timeout(TIMEOUT):
                    async for message in sys_sub.messages:
                        if message.payload == str(counters["messages/received"]).encode():
                            break
            await raw_sub.close()
            await publisher.close()
    finally:
        paho.loop_stop()
        paho.disconnect()
        if msub.returncode is None:
            msub.kill()
            await msub.wait()


async def test_acl_decides_per_topic_inside_a_burst(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic write alice/#\ntopic deny alice/secret\n"
                   "user admin\ntopic readwrite #\n")  # fmt: skip
    app: NodeApp = await app_factory(acl_file=str(acl))
    broker = app.node.broker
    async with app_client(app, "admin", username="admin") as admin:
        await admin.subscribe("#", 0)
        alice, _ = await RawClient.connect(app.node.tcp_port, "alice", username="alice")
        before = dict(broker.metrics.counters)
        allowed = [Publish("alice/x", f"ok{i}".encode()) for i in range(100)]
        denied = [Publish("alice/secret", b"no")] * 50 + [Publish("bob/x", b"no")] * 50
        with run_spy() as runs:
            alice.send_raw(b"".join(encode(m) for m in [*allowed[:50], *denied, *allowed[50:]]))
            await raw_publish_qos1(alice, "alice/end", b"end", 1)
        assert all(n > 0 for n in runs) and sum(runs) == 200, runs  # ACL once per run
        got = await collect(admin, 101)
        assert [m.payload for m in got] == [m.payload for m in allowed] + [b"end"]
        counters = broker.metrics.counters
        assert counters["messages/received"] - before["messages/received"] == 201
        assert counters["messages/dropped"] - before["messages/dropped"] == 100
        await alice.close()


@pytest.mark.parametrize("with_v3", [False, True])
async def test_a_v5_burst_reaches_v5_and_v3_clients_as_bytes(
    app_factory: AppFactory, with_v3: bool
) -> None:
    """5.0 frames with a property length of 0 are what a 5.0 subscriber gets; a 3.1.1 one
    gets them without it (`PublishRun.for_family`), still as a run."""
    app: NodeApp = await app_factory()
    port = app.node.tcp_port
    messages = [Publish("v5/t", f"m{i}".encode()) for i in range(300)]
    async with contextlib.AsyncExitStack() as stack:
        v5 = await stack.enter_async_context(
            aiomqtt.Client(
                "127.0.0.1", port, identifier="v5-sub", protocol=aiomqtt.ProtocolVersion.V5
            )
        )
        await v5.subscribe("v5/#", 0)
        clients = [v5]
        if with_v3:
            v3 = await stack.enter_async_context(app_client(app, "v3-sub"))
            await v3.subscribe("v5/t", 0)
            clients.append(v3)
        publisher, _ = await RawClient.connect(port, "v5-pub", MQTT_5)
        with run_spy() as runs:
            publisher.send_raw(b"".join(encode(m, MQTT_5) for m in messages))
            publisher.send(Publish("v5/t", b"end", qos=1, packet_id=1))
            await publisher.recv()  # the PUBACK: everything before it is routed
        assert sum(runs) == 300, runs
        for sub in clients:
            got = await collect(sub, 301)
            assert [m.payload for m in got] == [m.payload for m in messages] + [b"end"]
        await publisher.close()
