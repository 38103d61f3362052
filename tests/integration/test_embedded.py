"""The embedding API (`broker.embedded`) as a user's code drives it: aiomqtt in the test's own
event loop, paho-mqtt against a node in a background thread, the REST helpers over HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.embedded import (
    RestError,
    TlsFiles,
    embedded_cluster,
    embedded_node,
    threaded_cluster,
    threaded_node,
    wait_routed,
)

TIMEOUT = 5.0


async def next_payload(client: aiomqtt.Client) -> bytes:
    async with asyncio.timeout(TIMEOUT):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
    raise AssertionError("no message")


async def test_a_node_on_free_ports_serves_mqtt_websocket_and_rest() -> None:
    async with embedded_node() as node:
        assert node.mqtt_url == f"mqtt://127.0.0.1:{node.mqtt_port}" and node.mqtt_port > 0
        assert node.ws_url == f"ws://127.0.0.1:{node.ws_port}/mqtt" and node.ws_port > 0
        assert node.http_url == f"http://127.0.0.1:{node.http_port}" and node.http_port > 0
        assert node.mqtts_url == ""  # no TLS unless asked for
        data_dir = node.data_dir
        async with (
            aiomqtt.Client(node.host, node.mqtt_port, identifier="sub") as sub,
            aiomqtt.Client(
                node.host, node.ws_port, identifier="pub", transport="websockets",
                websocket_path="/mqtt",
            ) as pub,
        ):  # fmt: skip
            await sub.subscribe("greet/#", qos=1)
            await pub.publish("greet/ws", b"over websocket", qos=1)
            assert await next_payload(sub) == b"over websocket"
            async with node.rest() as api:
                clients = await api.get("/connections")
                ids = sorted(c["client_id"] for c in clients["items"])
                assert ids == ["pub", "sub"]
                with pytest.raises(RestError) as err:
                    await api.delete("/connections/nobody")  # kick: not connected
                assert err.value.status == 404
    assert node.app is None and not os.path.exists(data_dir)
    await node.stop()  # a second stop is harmless


async def test_stop_disconnects_the_clients() -> None:
    node = await embedded_node().start()
    async with aiomqtt.Client(node.host, node.mqtt_port) as client:
        await node.stop()
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(TIMEOUT):
                await client.publish("t", b"x", qos=1)


async def test_users_and_acl_options_load_the_auth_plugins() -> None:
    acl = "user alice\ntopic readwrite alice/#\n"
    async with embedded_node(allow_anonymous=False, users={"alice": "s3cret"}, acl=acl) as node:
        with pytest.raises(aiomqtt.MqttCodeError):  # refused: not authorized (CONNACK 5)
            async with aiomqtt.Client(node.host, node.mqtt_port, timeout=TIMEOUT):
                pass
        with pytest.raises(aiomqtt.MqttCodeError):
            async with aiomqtt.Client(
                node.host, node.mqtt_port, username="alice", password="wrong", timeout=TIMEOUT
            ):
                pass
        async with aiomqtt.Client(
            node.host, node.mqtt_port, username="alice", password="s3cret", timeout=TIMEOUT
        ) as alice:
            await alice.subscribe("alice/#")
            await alice.subscribe("bob/#")  # not in the ACL: no delivery
            await alice.publish("bob/x", b"denied")
            await alice.publish("alice/x", b"allowed")
            assert await next_payload(alice) == b"allowed"


async def test_broker_settings_pass_through(tmp_path: Path) -> None:
    async with embedded_node(retain_available=False, data_dir=str(tmp_path / "d")) as node:
        assert node.app is not None and not node.app.config.retain_available
        assert node.data_dir == str(tmp_path / "d")
    assert (tmp_path / "d").is_dir()  # a directory the caller gave is kept


async def test_a_failed_start_raises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    node = embedded_node(tls=TlsFiles(str(tmp_path / "missing.pem"), str(tmp_path / "k.pem")))
    with pytest.raises(Exception, match=r"\[listener.ssl\]: no such file: certfile .*missing\.pem"):
        await node.start()
    assert node.app is None and not os.path.exists(node.data_dir)


async def test_a_three_node_cluster_delivers_across_nodes() -> None:
    async with embedded_cluster(3) as cluster:
        assert len(cluster) == 3
        assert [n.name for n in cluster] == [f"node{i}@127.0.0.1" for i in (1, 2, 3)]
        async with (
            aiomqtt.Client(cluster[2].host, cluster[2].mqtt_port, identifier="s") as sub,
            aiomqtt.Client(cluster[0].host, cluster[0].mqtt_port, identifier="p") as pub,
        ):
            await sub.subscribe("sensors/+/temp", qos=1)
            await cluster.routed("sensors/+/temp")
            await pub.publish("sensors/kitchen/temp", b"21.5", qos=1)
            assert await next_payload(sub) == b"21.5"
        async with cluster[1].rest() as api:
            nodes = await api.get("/nodes")
            assert sorted(n["node"] for n in nodes) == [n.name for n in cluster]
    assert cluster.nodes == []


def paho_client(client_id: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)


def test_threaded_node_serves_a_synchronous_paho_client() -> None:
    with threaded_node() as node:
        received: list[bytes] = []
        got = threading.Event()
        client = paho_client("sync")

        def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
            received.append(message.payload)
            got.set()

        client.on_message = on_message
        client.connect(node.host, node.mqtt_port)
        client.loop_start()
        try:
            client.subscribe("t", qos=1)[0]
            # the SUBACK before the publish: the subscription exists when the message arrives
            info = client.publish("t", b"hello", qos=1)
            info.wait_for_publish(TIMEOUT)
            assert got.wait(TIMEOUT) and received == [b"hello"]
            listed = node.rest_sync().get("/connections")
            assert [c["client_id"] for c in listed["items"]] == ["sync"]
        finally:
            client.loop_stop()
            client.disconnect()
    assert node.app is None


def test_threaded_cluster_waits_for_routes() -> None:
    with threaded_cluster(2) as cluster:
        got = threading.Event()
        sub, pub = paho_client("s"), paho_client("p")
        sub.on_message = lambda _c, _u, _m: got.set()
        sub.connect(cluster[1].host, cluster[1].mqtt_port)
        pub.connect(cluster[0].host, cluster[0].mqtt_port)
        sub.loop_start()
        pub.loop_start()
        try:
            subscribed = threading.Event()
            sub.on_subscribe = lambda *_a: subscribed.set()
            sub.subscribe("x/#", qos=1)
            assert subscribed.wait(TIMEOUT)
            wait_routed(cluster, "x/#")
            pub.publish("x/1", b"across", qos=1).wait_for_publish(TIMEOUT)
            assert got.wait(TIMEOUT)
        finally:
            for client in (sub, pub):
                client.loop_stop()
                client.disconnect()


def test_an_unknown_option_names_the_closest_one() -> None:
    with pytest.raises(TypeError, match=r"'max_packet_sise' \(did you mean 'max_packet_size'\?\)"):
        embedded_node(max_packet_sise=10)
