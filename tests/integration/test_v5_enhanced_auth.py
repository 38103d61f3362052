"""MQTT 5.0 enhanced authentication (section 4.12): SCRAM-SHA-256 over AUTH, re-authentication,
unknown methods, and a plugin method driven by paho.

Clients cannot run an AUTH exchange (neither paho nor aiomqtt handles AUTH packets), so the
SCRAM tests use RawClient with `ScramClient`, the client half of RFC 5802 from the broker.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from rawclient import RawClient
from test_v5_support import (
    Paho,
    expect,
    paho_props,
    publish1,
    raw5,
    server_disconnect,
    subscribe,
)

from broker.core.enhanced_auth import (
    CONTINUE,
    FAIL,
    SUCCESS,
    AuthResult,
    ScramClient,
    scram_credential,
)
from broker.protocol.constants import MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import Auth, ConnAck, Connect, PubAck, Publish, SubscriptionRequest
from broker.server.node import Node

P = PropertyId
SCRAM = "SCRAM-SHA-256"
CREDENTIALS = {"alice": scram_credential("wonderland", iterations=4096)}


async def scram_node(node_factory: Any) -> Node:
    node: Node = await node_factory(scram_credentials=CREDENTIALS, allow_anonymous=False)
    return node


def auth_props(data: bytes, method: str = SCRAM) -> dict[int, Any]:
    return {P.AUTHENTICATION_METHOD: method, P.AUTHENTICATION_DATA: data}


async def scram_connect(
    node: Node, client_id: str, username: str, password: str
) -> tuple[RawClient, ConnAck, ScramClient]:
    """CONNECT -> AUTH 0x18 -> AUTH 0x18 -> CONNACK, as section 4.12 describes."""
    scram = ScramClient(username, password)
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect(client_id, MQTT_5, keepalive=0, properties=auth_props(scram.first())))
    challenge = await expect(client, Auth)
    assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION  # MQTT-4.12.0-2
    assert challenge.properties[P.AUTHENTICATION_METHOD] == SCRAM  # MQTT-4.12.0-5
    final = scram.final(challenge.properties[P.AUTHENTICATION_DATA])
    client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(final)))  # MQTT-4.12.0-3
    ack = await expect(client, ConnAck)
    return client, ack, scram


async def test_scram_sha_256_full_exchange_4_12(node_factory: Any) -> None:
    node = await scram_node(node_factory)
    client, ack, scram = await scram_connect(node, "scram-ok", "alice", "wonderland")
    assert ack.reason_code == ReasonCode.SUCCESS
    assert ack.properties[P.AUTHENTICATION_METHOD] == SCRAM  # MQTT-4.12.0-5
    assert scram.verify(ack.properties[P.AUTHENTICATION_DATA])  # the server proved itself too
    assert node.broker.connected["scram-ok"].username == "alice"  # the identity SCRAM proved
    await subscribe(client, SubscriptionRequest("scram/t", 1))
    client.send(Publish("scram/t", b"hello", 1, packet_id=1))
    assert (await expect(client, PubAck)).packet_id == 1  # acknowledged before it comes back
    assert (await expect(client, Publish)).payload == b"hello"
    await client.close()


async def test_scram_wrong_password_connack_0x86_MQTT_4_12_0_4(node_factory: Any) -> None:
    node = await scram_node(node_factory)
    client, ack, _ = await scram_connect(node, "scram-bad", "alice", "looking-glass")
    assert ack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert P.AUTHENTICATION_DATA not in ack.properties
    assert await client.closed()
    assert "scram-bad" not in node.broker.connected


async def test_scram_unknown_user_fails_like_a_wrong_password_MQTT_4_12_0_4(
    node_factory: Any,
) -> None:
    node = await scram_node(node_factory)
    client, ack, _ = await scram_connect(node, "scram-who", "mallory", "anything")
    assert ack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert await client.closed()


async def test_unknown_authentication_method_connack_0x8C_MQTT_4_12_0_1(
    node_factory: Any,
) -> None:
    node = await scram_node(node_factory)
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect("kerb", MQTT_5, properties=auth_props(b"", "GSSAPI")))
    ack = await expect(client, ConnAck)
    assert ack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert await client.closed()
    plain = await node_factory()  # no credentials configured: SCRAM is unknown too
    client = await RawClient.open(plain.tcp_port, MQTT_5)
    client.send(Connect("scram-off", MQTT_5, properties=auth_props(b"n,,n=a,r=x")))
    assert (await expect(client, ConnAck)).reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD


async def test_other_packet_during_authentication_is_protocol_error_MQTT_3_1_2_30(
    node_factory: Any,
) -> None:
    node = await scram_node(node_factory)
    scram = ScramClient("alice", "wonderland")
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect("scram-early", MQTT_5, properties=auth_props(scram.first())))
    await expect(client, Auth)
    client.send(Publish("scram/early", b"x"))
    ack = await expect(client, ConnAck)
    assert ack.reason_code == ReasonCode.PROTOCOL_ERROR
    assert await client.closed()


async def test_auth_with_another_method_is_protocol_error_MQTT_4_12_0_5(node_factory: Any) -> None:
    node = await scram_node(node_factory)
    scram = ScramClient("alice", "wonderland")
    client = await RawClient.open(node.tcp_port, MQTT_5)
    client.send(Connect("scram-switch", MQTT_5, properties=auth_props(scram.first())))
    await expect(client, Auth)
    client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(b"x", "PLAIN")))
    assert (await expect(client, ConnAck)).reason_code == ReasonCode.PROTOCOL_ERROR


async def test_reauthentication_MQTT_4_12_1_1(node_factory: Any) -> None:
    node = await scram_node(node_factory)
    client, ack, _ = await scram_connect(node, "scram-re", "alice", "wonderland")
    assert ack.reason_code == 0
    scram = ScramClient("alice", "wonderland")
    client.send(Auth(ReasonCode.REAUTHENTICATE, auth_props(scram.first())))
    challenge = await expect(client, Auth)
    assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
    final = scram.final(challenge.properties[P.AUTHENTICATION_DATA])
    client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(final)))
    done = await expect(client, Auth)
    assert done.reason_code == ReasonCode.SUCCESS
    assert scram.verify(done.properties[P.AUTHENTICATION_DATA])
    assert (await publish1(client, "scram/re", b"still connected")).reason_code in (0, 0x10)
    await client.close()


async def test_failed_reauthentication_disconnects_MQTT_4_12_1_2(node_factory: Any) -> None:
    node = await scram_node(node_factory)
    client, _, _ = await scram_connect(node, "scram-refail", "alice", "wonderland")
    scram = ScramClient("alice", "not-the-password")
    client.send(Auth(ReasonCode.REAUTHENTICATE, auth_props(scram.first())))
    challenge = await expect(client, Auth)
    final = scram.final(challenge.properties[P.AUTHENTICATION_DATA])
    client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(final)))
    disconnect = await server_disconnect(client)
    assert disconnect.reason_code == ReasonCode.NOT_AUTHORIZED


async def test_auth_without_method_in_connect_is_protocol_error_MQTT_4_12_0_6(node: Node) -> None:
    client, _ = await raw5(node, "no-method")
    client.send(Auth(ReasonCode.REAUTHENTICATE, auth_props(b"")))
    assert (await server_disconnect(client)).reason_code == ReasonCode.PROTOCOL_ERROR


class TokenAuth:
    """A one-step plugin method: the data must be b"let-me-in"."""

    def __init__(self, client_id: str, username: str | None) -> None:
        self.client_id = client_id

    def start(self, data: bytes | None) -> AuthResult:
        if data == b"let-me-in":
            return AuthResult(SUCCESS, b"welcome", "token-user")
        return AuthResult(FAIL, None, None, ReasonCode.NOT_AUTHORIZED, "bad token")

    def step(self, data: bytes | None) -> AuthResult:
        return AuthResult(CONTINUE if data is None else FAIL)


async def test_plugin_method_with_paho_MQTT_4_12_0_5(node_factory: Any) -> None:
    node = await node_factory(allow_anonymous=False)
    node.broker.hooks.auth_methods["TOKEN"] = TokenAuth
    good = Paho(node.tcp_port, "token-ok")
    props = paho_props(
        PacketTypes.CONNECT, AuthenticationMethod="TOKEN", AuthenticationData=b"let-me-in"
    )
    _flags, rc, ack_props = await good.connect(props)
    try:
        assert rc == 0
        assert ack_props.AuthenticationMethod == "TOKEN"
        assert ack_props.AuthenticationData == b"welcome"
        assert node.broker.connected["token-ok"].username == "token-user"
    finally:
        await good.close()
    bad = Paho(node.tcp_port, "token-bad")
    props = paho_props(PacketTypes.CONNECT, AuthenticationMethod="TOKEN", AuthenticationData=b"?")
    _flags, rc, ack_props = await bad.connect(props)
    try:
        assert rc.value == ReasonCode.NOT_AUTHORIZED
        assert ack_props.ReasonString == "bad token"
    finally:
        await bad.close()
