"""The TLS listeners: MQTT over TLS (`[listener.ssl]`) and WebSocket over TLS (`[listener.wss]`).

Certificates come from `trustme`: one test CA signs the server certificate (for 127.0.0.1) and
the client certificates (CN = the identity). Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import trustme
from test_core_support import TIMEOUT, eventually, next_message
from test_transport_websocket import RawWs

from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import ConnAck, Connect, Publish, Subscribe, SubscriptionRequest
from broker.server.config import ConfigError, ListenerConfig, parse_config
from broker.server.errors import StartupError
from broker.server.node import Node

V311 = aiomqtt.ProtocolVersion.V311


@dataclasses.dataclass
class Pki:
    ca: trustme.CA
    dir: Path
    certfile: str
    keyfile: str
    cafile: str

    def client_context(self, identity: str | None = None) -> ssl.SSLContext:
        """A client context trusting the test CA, with a client certificate of CN `identity`."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        if identity is not None:
            self.ca.issue_cert(f"{identity}@example.org", common_name=identity).configure_cert(ctx)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("pki")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return Pki(ca, d, str(d / "server.pem"), str(d / "server.key"), str(d / "ca.pem"))


def tls_listener(pki: Pki, **fields: Any) -> ListenerConfig:
    return ListenerConfig(
        bind="127.0.0.1", port=0, enabled=True, certfile=pki.certfile, keyfile=pki.keyfile, **fields
    )


def tls_client(node: Node, ctx: ssl.SSLContext, identifier: str, **kw: Any) -> aiomqtt.Client:
    kw.setdefault("protocol", V311)
    return aiomqtt.Client(
        "127.0.0.1", node.ssl_port, identifier=identifier, tls_context=ctx, timeout=TIMEOUT, **kw
    )


async def test_tls_listener_roundtrip_with_aiomqtt(node_factory: Callable[..., Any], pki: Pki):
    """A client over TLS talks to a client over plain TCP: one broker, the same protocol."""
    node = await node_factory(ssl=tls_listener(pki))
    assert node.ssl_port and ("mqtt/tls", "127.0.0.1", node.ssl_port) in node.bound_listeners()
    async with (
        tls_client(node, pki.client_context(), "tls-sub") as sub,
        aiomqtt.Client("127.0.0.1", node.tcp_port, identifier="tcp-pub", protocol=V311) as pub,
    ):
        await sub.subscribe("tls/t", qos=1)
        await pub.publish("tls/t", b"over tls", qos=1)
        message = await next_message(sub)
        assert message.payload == b"over tls"
    stats = next(s for s in node.listeners if s.protocol == "mqtt:ssl")
    await eventually(lambda: stats.shutdown_count["normal"] == 1)  # counted on its listener


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls_rejects_tls_1_1(node_factory: Callable[..., Any], pki: Pki) -> None:
    """TLS 1.2 is the floor: a client that offers at most TLS 1.1 fails the handshake."""
    node = await node_factory(ssl=tls_listener(pki))
    ctx = pki.client_context()
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):  # pragma: no cover - a build without old TLS at all
        pytest.skip("this OpenSSL cannot offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        async with asyncio.timeout(TIMEOUT):
            await asyncio.open_connection("127.0.0.1", node.ssl_port, ssl=ctx)


async def test_tls_require_certificate_refuses_client_without_one(
    node_factory: Callable[..., Any], pki: Pki
) -> None:
    node = await node_factory(ssl=tls_listener(pki, cafile=pki.cafile, require_certificate=True))
    # (TLS 1.3: the client's side of the handshake may finish; the server's alert ends it.)
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", node.ssl_port, ssl=pki.client_context()
            )
            writer.write(encode(Connect("no-cert"), MQTT_3_1_1))
            if not await reader.read(1):
                raise EOFError("closed by the broker")
    assert "no-cert" not in node.broker.connected
    async with tls_client(node, pki.client_context("bob"), "with-cert") as client:
        await client.publish("x/y", b"ok", qos=1)
        assert node.broker.connected["with-cert"].username is None  # identity not used


async def test_tls_identity_as_username(node_factory: Callable[..., Any], pki: Pki) -> None:
    """use_identity_as_username: the certificate's CN is the username; the CONNECT's username
    and password are not used (the certificate is the authentication), even when anonymous
    clients are refused."""
    listener = tls_listener(
        pki, cafile=pki.cafile, require_certificate=True, use_identity_as_username=True
    )
    node = await node_factory(ssl=listener, allow_anonymous=False)
    async with tls_client(
        node, pki.client_context("alice"), "cert-client", username="mallory", password="x"
    ):
        assert node.broker.connected["cert-client"].username == "alice"
        assert node.broker.sessions["cert-client"].username == "alice"


async def test_wss_listener_with_raw_client(node_factory: Callable[..., Any], pki: Pki) -> None:
    node = await node_factory(wss=tls_listener(pki, path="/mqtt"))
    assert ("mqtt/wss", "127.0.0.1", node.wss_port) in node.bound_listeners()
    url = f"wss://127.0.0.1:{node.wss_port}/mqtt"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=("mqtt",), ssl=pki.client_context()) as ws,
        aiomqtt.Client("127.0.0.1", node.tcp_port, identifier="wss-pub", protocol=V311) as pub,
    ):
        client = RawWs(ws, MQTT_3_1_1)
        await client.send(Connect("wss-client", keepalive=0))
        assert isinstance(await client.recv(), ConnAck)
        assert node.broker.connected["wss-client"].listener == "wss"
        await client.send(Subscribe(1, [SubscriptionRequest("wss/t", 0)]))
        await client.recv()  # SUBACK
        await pub.publish("wss/t", b"over wss")
        packet = await client.recv()
        assert isinstance(packet, Publish) and packet.payload == b"over wss"


async def test_wss_identity_as_username_with_aiomqtt(
    node_factory: Callable[..., Any], pki: Pki
) -> None:
    listener = tls_listener(
        pki, cafile=pki.cafile, require_certificate=True, use_identity_as_username=True
    )
    node = await node_factory(wss=listener)
    client = aiomqtt.Client(
        "127.0.0.1", node.wss_port, identifier="wss-alice", transport="websockets",
        websocket_path="/mqtt", tls_context=pki.client_context("carol"), protocol=V311,
        timeout=TIMEOUT,
    )  # fmt: skip
    async with client:
        await eventually(lambda: "wss-alice" in node.broker.connected)
        assert node.broker.connected["wss-alice"].username == "carol"


async def test_tls_bad_certificate_is_a_startup_error(
    tmp_path: Path, node_factory: Callable[..., Any], pki: Pki
) -> None:
    missing = ListenerConfig(bind="127.0.0.1", port=0, enabled=True,
                             certfile=str(tmp_path / "nope.pem"), keyfile=pki.keyfile)  # fmt: skip
    with pytest.raises(StartupError, match=r"listener\.ssl"):
        await node_factory(ssl=missing)


def test_tls_config_keys_checked() -> None:
    cfg = parse_config(
        '[listener.ssl]\nenabled = true\ncertfile = "c.pem"\nkeyfile = "k.pem"\n'
        'cafile = "ca.pem"\nrequire_certificate = true\nuse_identity_as_username = true\n'
        'tls_version = "tlsv1.3"\n[listener.wss]\nport = 9443\n'
    )
    assert cfg.ssl.port == 8883 and cfg.ssl.tls_version == "tlsv1.3"
    assert cfg.wss.port == 9443 and not cfg.wss.enabled and cfg.wss.path == "/mqtt"
    for bad, why in (
        ("[listener.ssl]\nenabled = true\n", "certfile"),
        ("[listener.ssl]\nrequire_certificate = true\n", "cafile"),
        ('[listener.ssl]\ncafile = "a"\nuse_identity_as_username = true\n', "require_certificate"),
        ('[listener.ssl]\ntls_version = "tlsv1.1"\n', "tlsv1.2"),
    ):
        with pytest.raises(ConfigError, match=why):
            parse_config(bad)
