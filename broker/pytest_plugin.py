"""pytest fixtures that start minibroker in the test process (registered as a `pytest11` plugin).

Installing minibroker makes these fixtures available to every test suite, without a conftest:

- `mqtt_broker`: a started `broker.embedded.EmbeddedNode` (MQTT/TCP, WebSocket, REST API on
  free loopback ports), stopped after the test;
- `mqtt_url`: its `mqtt://127.0.0.1:<port>`;
- `mqtt_cluster`: a started `broker.embedded.EmbeddedCluster` of 3 nodes (or `nodes=N`).

The nodes run in a background thread with their own event loop, so the fixtures serve
synchronous tests (paho-mqtt) and async ones (aiomqtt under pytest-asyncio or anyio) alike.
Options come from markers, with the keywords of `broker.embedded.embedded_node`::

    @pytest.mark.mqtt_broker(allow_anonymous=False, users={"alice": "secret"})
    @pytest.mark.mqtt_broker(tls=True)           # a test CA; needs `trustme`; see `mqtt_tls_ca`
    @pytest.mark.mqtt_broker(max_packet_size=1024, max_qos_allowed=1)
    @pytest.mark.mqtt_cluster(nodes=2, allow_anonymous=False, users={"bob": "pw"})

Nothing heavy is imported when pytest starts: the broker is imported by the first test that
uses a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from broker.embedded import EmbeddedCluster, EmbeddedNode

#: Nodes in `mqtt_cluster` unless its marker says `nodes=N`.
DEFAULT_CLUSTER_SIZE = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mqtt_broker(**options): options of the `mqtt_broker` fixture's node "
        "(broker.embedded.embedded_node keywords, plus tls=True)",
    )
    config.addinivalue_line(
        "markers",
        "mqtt_cluster(nodes=3, **options): size and node options of the `mqtt_cluster` fixture",
    )


def _options(request: pytest.FixtureRequest, marker: str) -> dict[str, Any]:
    """The marker's keywords, the closest marker (function, then class, module) winning."""
    found = request.node.get_closest_marker(marker)
    return dict(found.kwargs) if found is not None else {}


class SelfSignedCA:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (from `trustme`)."""

    def __init__(self, directory: Path) -> None:
        try:
            import trustme
        except ImportError:  # pragma: no cover - depends on the user's environment
            raise pytest.UsageError(
                "mqtt_broker(tls=True) needs the `trustme` package: pip install trustme"
            ) from None
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        #: PEM file of the CA: what clients pass as `ca_certs` / `cafile`.
        self.ca_file = str(directory / "ca.pem")
        self.cert_file = str(directory / "server.pem")
        self.key_file = str(directory / "server.key")
        ca.cert_pem.write_to_path(self.ca_file)
        cert.private_key_pem.write_to_path(self.key_file)
        cert.cert_chain_pems[0].write_to_path(self.cert_file)
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(self.cert_file, append=True)


def _resolve_tls(options: dict[str, Any], tmp: Path) -> SelfSignedCA | None:
    """`tls=True` -> a test CA and its server certificate on the TLS listeners."""
    if options.get("tls") is not True:
        return None
    from broker.embedded import TlsFiles

    ca = SelfSignedCA(tmp)
    options["tls"] = TlsFiles(certfile=ca.cert_file, keyfile=ca.key_file)
    return ca


@pytest.fixture
def mqtt_tls_ca(request: pytest.FixtureRequest) -> str:
    """The PEM CA file that signed the TLS certificate of `mqtt_broker(tls=True)`."""
    broker: EmbeddedNode = request.getfixturevalue("mqtt_broker")
    ca_file = broker.tls_ca_file
    if ca_file is None:
        raise pytest.UsageError("mqtt_tls_ca needs @pytest.mark.mqtt_broker(tls=True)")
    return ca_file


@pytest.fixture
def mqtt_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedNode]:
    """A started embedded node (see `broker.embedded.EmbeddedNode`), stopped after the test."""
    from broker.embedded import threaded_node

    options = _options(request, "mqtt_broker")
    ca = _resolve_tls(options, tmp_path_factory.mktemp("mqtt-tls"))
    with threaded_node(**options) as node:
        node.tls_ca_file = ca.ca_file if ca is not None else None
        yield node


@pytest.fixture
def mqtt_url(mqtt_broker: EmbeddedNode) -> str:
    """`mqtt://127.0.0.1:<port>` of `mqtt_broker`."""
    return mqtt_broker.mqtt_url


@pytest.fixture
def mqtt_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedCluster]:
    """A started in-process cluster (`broker.embedded.EmbeddedCluster`); index it for nodes.
    Wait for a subscription to reach every node with `broker.embedded.wait_routed`."""
    from broker.embedded import threaded_cluster

    options = _options(request, "mqtt_cluster")
    size = int(options.pop("nodes", DEFAULT_CLUSTER_SIZE))
    ca = _resolve_tls(options, tmp_path_factory.mktemp("mqtt-tls"))
    with threaded_cluster(size, **options) as cluster:
        for node in cluster:
            node.tls_ca_file = ca.ca_file if ca is not None else None
        yield cluster
