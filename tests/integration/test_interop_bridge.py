"""Brokers bridging to us: protocol level `0x80 | n` (RSMB's private bridge protocol, mosquitto's
`try_private true`, EMQX's `is_bridge`), accepted, shown as `is_bridge` in the API, and given
No Local + Retain As Published subscriptions so nothing loops back (issue 12 part 4).

The last test runs a real `mosquitto` (2.0) with a `connection` block bridging to our node, both
directions. It starts its own mosquitto on a free loopback port and kills only that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from api_support import NODE, make_api
from rawclient import RawClient
from test_core_support import TIMEOUT, aio, ping_barrier, raw_connect, raw_subscribe

from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1, MQTT_3_1_1, MQTT_5
from broker.protocol.packets import ConnAck, Connect, PubAck, Publish
from broker.server.node import Node

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


async def _bridge_connect(node: Node, client_id: str, level: int) -> tuple[RawClient, ConnAck]:
    name = "MQIsdp" if level == MQTT_3_1 else "MQTT"
    client = await RawClient.open(node.tcp_port, level)
    client.send(Connect(client_id, level, name, clean_start=True, bridge=True))
    ack = await client.recv()
    assert isinstance(ack, ConnAck), ack
    return client, ack


def test_bridge_bit_round_trips_in_the_codec() -> None:
    """The CONNECT level byte is `0x80 | level` on the wire; decoding gives level and bit."""
    for level, name in ((MQTT_3_1, "MQIsdp"), (MQTT_3_1_1, "MQTT"), (MQTT_5, "MQTT")):
        data = encode(Connect("b", level, name, bridge=True), level)
        assert data[2 + 2 + len(name)] == 0x80 | level
        (packet,) = Decoder().feed(data)
        assert isinstance(packet, Connect)
        assert (packet.protocol_level, packet.bridge) == (level, True)


async def test_bridge_protocol_levels_accepted_MQTT_3_1_2_2(node: Node) -> None:
    """0x83/0x84/0x85 are accepted as a bridge of 3.1/3.1.1/5.0; another unknown level is still
    refused with CONNACK 0x01 (MQTT-3.1.2-2)."""
    for level in (MQTT_3_1, MQTT_3_1_1, MQTT_5):
        client, ack = await _bridge_connect(node, f"bridge-{level}", level)
        assert ack.reason_code == 0
        channel = node.broker.connected[f"bridge-{level}"]
        assert channel.is_bridge and channel.version == level
        await client.close()
    client = await RawClient.open(node.tcp_port)
    client.send_raw(encode(Connect("bad", 0x86, "MQTT"), MQTT_3_1_1))
    refused = await client.recv()
    assert isinstance(refused, ConnAck) and refused.reason_code == 0x01
    assert await client.closed()


async def test_bridge_messages_not_sent_back_and_retain_kept(node: Node) -> None:
    """A bridge's subscriptions are No Local (MQTT-3.8.3-3 semantics, forced for bridges as
    RSMB/mosquitto/EMQX do) and Retain As Published (MQTT-3.3.1-13): what it publishes does not
    come back to it, what others publish reaches it with RETAIN as sent."""
    bridge, _ = await _bridge_connect(node, "edge", MQTT_3_1_1)
    assert await raw_subscribe(bridge, ("loop/#", 1)) == [1]
    plain, _ = await raw_connect(node, "plain")
    assert await raw_subscribe(plain, ("loop/#", 1)) == [1]
    bridge.send(Publish("loop/a", b"from-edge", 1, packet_id=5))
    assert await ping_barrier(bridge) == [PubAck(5)]  # and not its own message back
    got = await plain.recv(TIMEOUT)
    assert isinstance(got, Publish) and got.payload == b"from-edge"
    assert got.packet_id is not None
    plain.send(PubAck(got.packet_id))
    plain.send(Publish("loop/b", b"kept", 1, retain=True, packet_id=6))
    back = await bridge.recv(TIMEOUT)
    assert isinstance(back, Publish) and (back.payload, back.retain) == (b"kept", True)
    # A plain 3.1.1 subscriber gets RETAIN 0 on a live message (MQTT-3.3.1-9)...
    await plain.recv(TIMEOUT)  # the PUBACK
    live = await plain.recv(TIMEOUT)
    assert isinstance(live, Publish) and (live.payload, live.retain) == (b"kept", False)
    await bridge.close()
    await plain.close()


async def test_bridge_flag_in_rest_connection_rows(app_factory: Any) -> None:
    """GET /api/v3/connections shows `is_bridge` true for a bridge, false for a client."""
    app = await app_factory()
    bridge, _ = await _bridge_connect(app.node, "edge-rest", MQTT_3_1_1)
    plain, _ = await raw_connect(app.node, "plain-rest")
    async for api in make_api(app, "real_http"):
        page = await api.ok("GET", "/api/v3/connections")
        rows = {row["client_id"]: row for row in page["items"]}
        assert rows["edge-rest"]["is_bridge"] is True
        assert rows["edge-rest"]["proto_ver"] == MQTT_3_1_1
        assert rows["plain-rest"]["is_bridge"] is False
        found = await api.ok("GET", f"/api/v3/nodes/{NODE}/connections/edge-rest")
        assert [r["is_bridge"] for r in found] == [True]
    await bridge.close()
    await plain.close()


# --------------------------------------------------------------------------- real mosquitto


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _mosquitto_bridge(tmp_path: Path, our_port: int) -> AsyncIterator[int]:
    """A mosquitto on a free loopback port, bridging `br/#` both ways to `our_port` with its
    defaults (`try_private true`, MQTT 3.1.1). Yields its port; kills it (by PID) after."""
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "connection edge\n"
        f"address 127.0.0.1:{our_port}\n"
        "remote_clientid edge-mosquitto\n"
        "topic br/# both 1\n"
        "try_private true\n"
        "cleansession true\n"
        "notifications false\n"
        "restart_timeout 1\n"
    )
    proc = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield port
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _wait_for(predicate: Any, what: str) -> None:
    """Poll `predicate` every 20 ms, for at most 10 s (mosquitto starts, then connects)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting: {what}")


async def _aio_on(port: int, identifier: str) -> aiomqtt.Client:
    """An aiomqtt 3.1.1 client of the mosquitto at `port`, retried while it starts."""
    for _ in range(100):
        client = aiomqtt.Client("127.0.0.1", port, identifier=identifier, timeout=TIMEOUT)
        try:
            await client.__aenter__()
            return client
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"mosquitto on port {port} never accepted a client")


async def _messages(client: aiomqtt.Client, count: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(TIMEOUT):
        async for message in client.messages:
            got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
            if len(got) == count:
                return got
    return got


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path(MOSQUITTO).exists(),
                    reason="mosquitto not installed")  # fmt: skip
async def test_real_mosquitto_bridge_both_directions_no_loop(node: Node, tmp_path: Path) -> None:
    """mosquitto 2.0 bridges to us with `try_private true` (CONNECT level 0x84): accepted and
    marked a bridge; a message published on mosquitto reaches our subscriber, one published
    here reaches mosquitto's subscriber, and neither comes back over the bridge (no loop)."""
    async with _mosquitto_bridge(tmp_path, node.tcp_port) as port:
        broker = node.broker
        await _wait_for(lambda: "edge-mosquitto" in broker.connected, "bridge connected")
        bridge = broker.connected["edge-mosquitto"]
        assert bridge.is_bridge and bridge.version == MQTT_3_1_1
        session = broker.sessions["edge-mosquitto"]
        await _wait_for(lambda: "br/#" in session.subscriptions, "bridge subscribed")
        assert session.subscriptions["br/#"].no_local
        far = await _aio_on(port, "far-side")
        try:
            await far.subscribe("br/#", qos=1)
            async with aio(node, "our-side") as ours:
                await ours.subscribe("br/#", qos=1)
                # mosquitto -> us
                await far.publish("br/in", b"from-mosquitto", qos=1)
                assert await _messages(ours, 1) == [("br/in", b"from-mosquitto")]
                # us -> mosquitto
                await ours.publish("br/out", b"from-us", qos=1)
                await ours.publish("br/end", b"end", qos=1)
                # mosquitto's own subscriber: its local message, then ours, each once; an echo
                # of br/in over the bridge would be a fourth message before br/end.
                assert await _messages(far, 3) == [
                    ("br/in", b"from-mosquitto"),
                    ("br/out", b"from-us"),
                    ("br/end", b"end"),
                ]
                # Our side sent the bridge exactly the two messages published here.
                assert bridge.send_msg == 2
                assert await _messages(ours, 2) == [("br/out", b"from-us"), ("br/end", b"end")]
        finally:
            await far.__aexit__(None, None, None)
