"""auth_clientid / auth_username in a 2-node cluster: credentials reach every node.

Two `NodeApp`s in this process, clustered over real loopback sockets (as test_cluster_runtime),
with both plugins loaded and allow_anonymous off; real MQTT clients (aiomqtt) and real HTTP.
A credential written through either node's API is checked at CONNECT on both; a node that was
down while credentials changed takes the changes when it rejoins (the tables are exchanged on
join, deletions included) and keeps its own copy across the restart (persistence); the two
sides of a healed partition exchange what each took meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_support import ADMIN, basic, eventually
from cluster_support import ClusterNodes, converged, live
from plugin_support import BAD_USERNAME_OR_PASSWORD, NOT_AUTHORIZED, connect_code

from broker.app import NodeApp
from cluster.membership_config import MembershipConfig
from cluster.runtime import ClusterConfig
from cluster.transport import Transport
from cluster.wire import Body, Hello, MessageType

pytestmark = pytest.mark.cluster

A, B = "a@127.0.0.1", "b@127.0.0.1"
PLUGINS = {"auth_clientid": {"enabled": True}, "auth_username": {"enabled": True}}


class Nodes(ClusterNodes):
    """Clustered NodeApps with both auth plugins loaded and anonymous access refused."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, plugins=PLUGINS, allow_anonymous=False)

    async def pair(self, cluster_config: ClusterConfig | None = None) -> tuple[NodeApp, NodeApp]:
        a = await self.start(A, cluster_config=cluster_config)
        b = await self.start(B, a, cluster_config=cluster_config)
        await converged(a, b)
        return a, b


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    await started.stop_all()


async def http(app: NodeApp, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}", headers=basic(*ADMIN)) as s,
        s.request(method, "/api/v3" + path, **kw) as reply,
    ):
        return reply.status, await reply.json()


async def code(app: NodeApp, client_id: str, username: str, password: str) -> int:
    return await connect_code(app, client_id, username=username, password=password)


async def test_a_user_added_on_one_node_connects_on_any_node(nodes: Nodes) -> None:
    a, b = await nodes.pair()
    assert await http(a, "POST", "/auth_username", json={"username": "u1", "password": "p1"}) == (
        200,
        "ok",
    )
    assert await http(b, "POST", "/auth_clientid", json={"clientid": "d1", "password": "p2"}) == (
        200,
        "ok",
    )
    for app in (a, b):
        assert await http(app, "GET", "/auth_username") == (200, ["u1"])
        assert await http(app, "GET", "/auth_clientid") == (200, ["d1"])
        assert await code(app, "c", "u1", "p1") == 0
        assert await code(app, "d1", "whoever", "p2") == 0
        assert await code(app, "c", "u1", "wrong") in BAD_USERNAME_OR_PASSWORD
        assert await code(app, "d1", "whoever", "p1") in BAD_USERNAME_OR_PASSWORD
    # the same salted hash on both nodes (hashed once, by the node that took the call)
    rows = [app.broker.replicated.table("auth_username").get("u1") for app in (a, b)]
    assert rows[0] == rows[1] and rows[0] is not None
    # one hybrid-clock stamp, given by the node that took the call, on every node
    stamps = [app.broker.replicated.table("auth_clientid").row("d1") for app in (a, b)]
    assert stamps[0] is not None and stamps[1] is not None
    assert stamps[0].stamp == stamps[1].stamp and stamps[0].stamp is not None
    assert stamps[0].stamp.node == B
    # an existing entry is refused whichever node is asked
    status, body = await http(b, "POST", "/auth_username", json={"username": "u1", "password": "x"})
    assert (status, body) == (409, {"message": "existed"})
    # deleted through B: refused on A at once (unknown again, and anonymous is off)
    assert await http(b, "DELETE", "/auth_username/u1") == (200, "ok")
    assert await code(a, "c", "u1", "p1") in NOT_AUTHORIZED
    assert await code(b, "c", "u1", "p1") in NOT_AUTHORIZED
    # a new password through A: the old one is refused on B
    assert await http(a, "PUT", "/auth_clientid/d1", json={"password": "p3"}) == (200, "ok")
    assert await code(b, "d1", "whoever", "p2") in BAD_USERNAME_OR_PASSWORD
    assert await code(b, "d1", "whoever", "p3") == 0


async def test_a_node_down_during_changes_takes_them_when_it_rejoins(nodes: Nodes) -> None:
    a, b = await nodes.pair()
    for user in ("stays", "deleted", "changed"):
        await http(a, "POST", "/auth_username", json={"username": user, "password": "old"})
    await nodes.stop(b)
    await eventually(lambda: live(a) == [A], timeout=10)
    assert await http(a, "DELETE", "/auth_username/deleted") == (200, "ok")
    assert await http(a, "PUT", "/auth_username/changed", json={"password": "new"}) == (
        200,
        "ok",
    )
    await http(a, "POST", "/auth_username", json={"username": "added", "password": "new"})

    b2 = await nodes.start(B, a)  # same data dir: B's own (stale) copy is loaded first
    await converged(a, b2)
    table = b2.broker.replicated.table("auth_username")
    await eventually(lambda: table.keys() == ["added", "changed", "stays"], timeout=10)
    assert await code(b2, "c1", "stays", "old") == 0  # kept across the restart
    assert await code(b2, "c2", "added", "new") == 0
    assert await code(b2, "c3", "changed", "old") in BAD_USERNAME_OR_PASSWORD
    assert await code(b2, "c4", "changed", "new") == 0
    assert await code(b2, "c5", "deleted", "old") in NOT_AUTHORIZED
    assert await http(b2, "GET", "/auth_username") == (200, ["added", "changed", "stays"])


async def test_a_change_made_on_a_lone_node_reaches_the_other_when_it_rejoins(
    nodes: Nodes,
) -> None:
    a, b = await nodes.pair()
    await http(a, "POST", "/auth_clientid", json={"clientid": "d", "password": "one"})
    await nodes.stop(a)
    await eventually(lambda: live(b) == [B], timeout=10)
    assert await http(b, "PUT", "/auth_clientid/d", json={"password": "two"}) == (200, "ok")
    a2 = await nodes.start(A, b)  # A restarts with its older copy and joins through B
    await converged(a2, b)
    await eventually(
        lambda: (
            a2.broker.replicated.table("auth_clientid").row("d") is not None
            and a2.broker.replicated.table("auth_clientid").row("d")
            == b.broker.replicated.table("auth_clientid").row("d")
        ),
        timeout=10,
    )
    assert await code(a2, "d", "u", "one") in BAD_USERNAME_OR_PASSWORD
    assert await code(a2, "d", "u", "two") == 0


async def test_the_joining_node_hands_its_newer_rows_to_the_peer(nodes: Nodes) -> None:
    a, b = await nodes.pair()
    await http(a, "POST", "/auth_clientid", json={"clientid": "d", "password": "one"})
    await nodes.stop(a)
    await eventually(lambda: live(b) == [B], timeout=10)
    await http(b, "PUT", "/auth_clientid/d", json={"password": "two"})
    await http(b, "POST", "/auth_clientid", json={"clientid": "e", "password": "three"})
    await nodes.stop(b)
    a2 = await nodes.start(A)  # alone, with its older copy
    assert await code(a2, "d", "u", "one") == 0
    b2 = await nodes.start(B, a2)  # B joins A: A is the peer that must take B's newer rows
    await converged(a2, b2)
    table = a2.broker.replicated.table("auth_clientid")
    await eventually(lambda: table.keys() == ["d", "e"], timeout=10)
    assert await code(a2, "d", "u", "one") in BAD_USERNAME_OR_PASSWORD
    assert await code(a2, "d", "u", "two") == 0
    assert await code(a2, "e", "u", "three") == 0


class Partition:
    """Two nodes that drop every frame they receive from each other while `cut` is set
    (RPC answers included), as when the network between them fails."""

    def __init__(self, *apps: NodeApp) -> None:
        self.cut = False
        names = {app.config.node_name for app in apps}
        for app in apps:
            assert app.cluster is not None
            self._filter(app.cluster.transport, names - {app.config.node_name})

    def _filter(self, transport: Transport, peers: set[str]) -> None:
        on_frame, on_heard = transport.on_frame, transport.on_heard

        def frame(hello: Hello, msg_type: MessageType, body: Body) -> None:
            if not (self.cut and hello.name in peers):
                on_frame(hello, msg_type, body)

        def heard(hello: Hello) -> None:
            if not (self.cut and hello.name in peers):
                on_heard(hello)

        transport.on_frame, transport.on_heard = frame, heard


async def test_both_sides_of_a_healed_partition_converge(nodes: Nodes) -> None:
    fast = ClusterConfig(
        membership=MembershipConfig(probe_interval=0.2, reconnect_interval=0.5),
        rpc_timeout=1.0,
    )
    a, b = await nodes.pair(fast)
    await http(a, "POST", "/auth_username", json={"username": "u", "password": "before"})
    partition = Partition(a, b)
    partition.cut = True
    await eventually(lambda: live(a) == [A] and live(b) == [B], timeout=20)
    # each side takes writes of its own while they cannot see each other
    assert await http(a, "PUT", "/auth_username/u", json={"password": "a-side"}) == (200, "ok")
    await http(a, "POST", "/auth_username", json={"username": "only-a", "password": "pa"})
    await http(b, "POST", "/auth_username", json={"username": "only-b", "password": "pb"})
    assert await code(b, "c", "u", "before") == 0  # B has not heard of the change yet
    # a retained message written on both sides, and a ban made on one side only
    for app in (a, b):
        body = {"topic": "split/r", "payload": app.config.node_name, "retain": True, "qos": 1}
        status, _ = await http(app, "POST", "/mqtt/publish", json=body)
        assert status == 200
    assert await http(b, "POST", "/banned", json={"who": "split-ban", "as": "client_id"})
    written = [app.broker.retained.get("split/r") for app in (a, b)]
    assert all(m is not None and m.stamp is not None for m in written)
    winner = max(written, key=lambda m: m.stamp)  # type: ignore[arg-type,return-value,union-attr]
    assert winner is not None
    partition.cut = False
    await converged(a, b)
    # both sides pull each other's tables when they meet again: the later write wins on both
    await eventually(
        lambda: (
            all(
                (m := app.broker.retained.get("split/r")) is not None
                and m.payload == winner.payload
                for app in (a, b)
            )
            and all(app.broker.banned.get("client_id", "split-ban") for app in (a, b))
        ),
        timeout=20,
    )
    tables = [app.broker.replicated.table("auth_username") for app in (a, b)]
    await eventually(
        lambda: (
            all(t.keys() == ["only-a", "only-b", "u"] for t in tables)
            and tables[0].dump() == tables[1].dump()
        ),
        timeout=20,
    )
    for app in (a, b):
        assert await code(app, "c", "u", "a-side") == 0
        assert await code(app, "c", "u", "before") in BAD_USERNAME_OR_PASSWORD
        assert await code(app, "c", "only-a", "pa") == 0
        assert await code(app, "c", "only-b", "pb") == 0
