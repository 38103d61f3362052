"""DNS discovery: `--join dns:NAME:PORT` joins every A/AAAA record of NAME, re-resolved
periodically (`[cluster] dns_refresh_interval`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

from broker.app import NodeApp
from broker.cli import _config_from_args, build_parser
from broker.server.config import ConfigError, ListenerConfig, apply_overrides, parse_config

TIMEOUT = 10.0
A, B = "a@127.0.0.1", "b@127.0.0.1"


def cluster_config(tmp_path: Path, name: str, **kw: Any) -> Any:
    return make_config(
        tmp_path,
        node_name=name,
        data_dir=str(tmp_path / name),
        cluster=ListenerConfig(bind="127.0.0.1", port=0, enabled=True),
        **kw,
    )


@pytest.fixture
async def apps() -> AsyncIterator[list[NodeApp]]:
    started: list[NodeApp] = []
    yield started
    for app in reversed(started):
        await app.stop()


async def start(apps: list[NodeApp], cfg: Any) -> NodeApp:
    app = NodeApp(cfg)
    await app.start()
    apps.append(app)
    return app


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.02)


def test_config_accepts_the_dns_form() -> None:
    cfg = parse_config(
        '[cluster]\njoin = ["dns:minibroker-headless.default.svc.cluster.local:7946",'
        ' "10.0.0.1:7946"]\ndns_refresh_interval = 5\n'
    )
    assert cfg.cluster_join[0] == "dns:minibroker-headless.default.svc.cluster.local:7946"
    assert cfg.cluster_dns_refresh_interval == 5.0
    assert parse_config("").cluster_dns_refresh_interval == 30.0
    for bad in ('["dns:nameonly"]', '["dns:host:0"]', '["dns::7946"]'):
        with pytest.raises(ConfigError, match="join"):
            parse_config(f"[cluster]\njoin = {bad}\n")
    with pytest.raises(ConfigError, match="dns_refresh_interval"):
        parse_config("[cluster]\ndns_refresh_interval = 0\n")
    out = apply_overrides(cfg, join=["dns:localhost:7946"])
    assert out.cluster_join == ["dns:localhost:7946"]
    args = build_parser().parse_args(["start", "--join", "dns:svc.local:7946,10.0.0.2:7946"])
    assert _config_from_args(args).cluster_join == ["dns:svc.local:7946", "10.0.0.2:7946"]
    args = build_parser().parse_args(["start", "--advertise", "10.1.2.3"])
    assert _config_from_args(args).cluster_advertise == "10.1.2.3"


async def test_join_through_dns_localhost(tmp_path: Path, apps: list[NodeApp]) -> None:
    a = await start(apps, cluster_config(tmp_path, A))
    b = await start(
        apps, cluster_config(tmp_path, B, cluster_join=[f"dns:localhost:{a.cluster_port}"])
    )
    assert b.cluster is not None and a.cluster is not None
    assert ("127.0.0.1", a.cluster_port) in b.cluster.resolved
    await until(lambda: A in b.cluster.live_nodes() and B in a.cluster.live_nodes())  # type: ignore[union-attr]


async def test_dns_is_re_resolved_and_new_records_joined(
    tmp_path: Path, apps: list[NodeApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves to nothing at first; a later refresh finds node A and joins it."""
    a = await start(apps, cluster_config(tmp_path, A))
    records: list[tuple[str, int]] = []
    real = asyncio.get_running_loop().getaddrinfo
    asked: list[str] = []

    async def fake_getaddrinfo(host: Any, port: Any, **kw: Any) -> Any:
        if host != "minibroker-headless.test":
            return await real(host, port, **kw)
        asked.append(host)
        if not records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", r) for r in records]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    cfg = cluster_config(
        tmp_path,
        B,
        cluster_join=[f"dns:minibroker-headless.test:{a.cluster_port}"],
        cluster_dns_refresh_interval=0.1,
        cluster_sync_timeout=0,  # open at once: no peer yet (what this test watches come)
    )
    b = await start(apps, cfg)
    assert b.cluster is not None
    assert b.cluster.resolved == [] and b.cluster.stats["dns/failed"] == 1
    await asyncio.sleep(0.3)
    assert b.cluster.live_nodes() == [B]  # nothing to join yet
    # the node's own record is ignored; A's is joined
    records[:] = [("127.0.0.1", b.cluster.port), ("127.0.0.1", a.cluster_port)]
    await until(lambda: A in b.cluster.live_nodes())  # type: ignore[union-attr]
    assert b.cluster.resolved == [("127.0.0.1", a.cluster_port)]
    assert len(asked) >= 3
