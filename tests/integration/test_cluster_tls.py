"""Mutual TLS on the cluster link: `[cluster] tls_*`, certificates of a `trustme` cluster CA.

Real nodes (`NodeApp`, cluster on port 0) and real MQTT clients over loopback. A TLS cluster
forms and forwards; a node whose certificate comes from another CA, and a node without TLS, are
refused (counted, one log line) and never become members.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trustme
from api_support import eventually, next_message
from cluster_support import ClusterNodes

from broker.app import NodeApp
from broker.server.errors import StartupError

A, B, X = "a@127.0.0.1", "b@127.0.0.1", "x@127.0.0.1"
Start = Callable[..., Awaitable[NodeApp]]


def tls_files(tmp_path: Path, ca: trustme.CA, name: str) -> dict[str, Any]:
    """The [cluster] tls_* settings of a node whose certificate `ca` issued."""
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
    chain = tmp_path / f"{name}-chain.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca_file = tmp_path / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {
        "cluster_tls_enable": True,
        "cluster_tls_certfile": str(chain),
        "cluster_tls_keyfile": "",
        "cluster_tls_cafile": str(ca_file),
    }


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Start]:
    nodes = ClusterNodes(tmp_path)
    yield nodes.start
    await nodes.stop_all()


def live(app: NodeApp) -> list[str]:
    assert app.cluster is not None
    return app.cluster.live_nodes()


def client(app: NodeApp, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=client_id, timeout=5.0)


async def test_two_nodes_over_tls_form_and_forward(start_node: Start, tmp_path: Path) -> None:
    ca = trustme.CA()
    a = await start_node(A, **tls_files(tmp_path, ca, "a"))
    b = await start_node(B, a, **tls_files(tmp_path, ca, "b"))
    await eventually(lambda: sorted(live(a)) == sorted(live(b)) == [A, B])
    assert a.cluster is not None and b.cluster is not None
    async with client(b, "sub") as sub, client(a, "pub") as pub:
        await sub.subscribe("t/#", qos=1)
        await eventually(lambda: ("t/#", B) in a.cluster.table.routes())  # type: ignore[union-attr]
        for i in range(20):
            await pub.publish(f"t/{i}", f"m{i}".encode(), qos=1)
        got = [(await next_message(sub)).payload for _ in range(20)]
    assert got == [f"m{i}".encode() for i in range(20)]
    assert a.broker.metrics.counters["messages/forward"] == 20
    # every accepted link went through the TLS handshake: nothing was refused
    assert a.cluster.transport.stats["refused"] == b.cluster.transport.stats["refused"] == 0
    for app in (a, b):
        links = list(app.cluster.transport._links.values())  # type: ignore[union-attr]
        assert links and all(link.tls_used for link in links if link.up)


async def test_a_certificate_of_another_ca_is_refused(
    start_node: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cluster.transport")
    cluster_ca, other_ca = trustme.CA(), trustme.CA()
    a = await start_node(A, **tls_files(tmp_path, cluster_ca, "a"))
    # x trusts the cluster CA (so it would accept a's certificate) but holds another CA's
    x_files = tls_files(tmp_path, other_ca, "x")
    cluster_ca.cert_pem.write_to_path(x_files["cluster_tls_cafile"])
    x = await start_node(X, a, **x_files)
    assert a.cluster is not None and x.cluster is not None
    await eventually(lambda: a.cluster.transport.stats["refused_tls"] >= 1)  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert live(a) == [A] and live(x) == [X]
    assert a.cluster.membership.get(X) is None
    refusals = [r.getMessage() for r in caplog.records if "refused a connection" in r.message]
    assert refusals and "TLS handshake failed" in refusals[0]


async def test_a_plain_node_cannot_join_a_tls_cluster(
    start_node: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cluster.transport")
    ca = trustme.CA()
    a = await start_node(A, **tls_files(tmp_path, ca, "a"))
    plain = await start_node(X, a)  # no TLS, right cookie
    assert a.cluster is not None and plain.cluster is not None
    await eventually(lambda: a.cluster.transport.stats["refused_tls"] >= 1)  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert live(a) == [A] and live(plain) == [X]
    assert a.cluster.membership.get(X) is None
    assert any("does not speak TLS" in r.getMessage() for r in caplog.records)


async def test_a_tls_node_cannot_join_a_plain_cluster(
    start_node: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cluster.transport")
    plain = await start_node(A)
    x = await start_node(X, plain, **tls_files(tmp_path, trustme.CA(), "x"))
    assert plain.cluster is not None and x.cluster is not None
    await eventually(lambda: plain.cluster.transport.stats["refused_tls"] >= 1)  # type: ignore[union-attr]
    assert live(plain) == [A] and plain.cluster.membership.get(X) is None
    assert any("it speaks TLS" in r.getMessage() for r in caplog.records)


async def test_tls_enable_without_certificates_is_a_startup_error(
    start_node: Start, tmp_path: Path
) -> None:
    with pytest.raises(StartupError, match="tls_certfile and tls_cafile"):
        await start_node(A, cluster_tls_enable=True)
    with pytest.raises(StartupError, match="cannot load"):
        await start_node(
            A,
            cluster_tls_enable=True,
            cluster_tls_certfile=str(tmp_path / "missing.pem"),
            cluster_tls_cafile=str(tmp_path / "missing.pem"),
        )
