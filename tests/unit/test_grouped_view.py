"""`GroupedClusterView`: the members `<node>/w<i>` of a node of workers are one node to the API
(names, liveness, routes, merged answers); other members stay nodes of their own. Driven with
a stand-in for the `ClusterNode` (membership, liveness, RPC by member name)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.rpc import NodeUnreachable
from management.grouped_view import GroupedClusterView, split_member
from management.view import NodeDown

PLAIN = "plain@h"
NODE = "w@h"


class _Table:
    def routes(self) -> list[tuple[str, str]]:
        return [("a/#", f"{NODE}/w0"), ("a/#", f"{NODE}/w1"), ("b", PLAIN)]


class _Membership:
    def __init__(self, members: list[str]) -> None:
        self.members = {name: object() for name in members}


class _Cluster:
    """What the view uses of a ClusterNode: this member is `plain@h`."""

    name = PLAIN

    def __init__(self, live: list[str], dead: list[str]) -> None:
        self.live = live
        self.membership = _Membership([PLAIN, *live, *dead])
        self.table = _Table()
        self.calls: list[tuple[str, str]] = []

    def register_rpc(self, method: str, handler: Any) -> None:
        pass

    def live_nodes(self) -> list[str]:
        return [self.name, *sorted(self.live)]

    def is_live(self, name: str) -> bool:
        return name == self.name or name in self.live

    def knows(self, name: str) -> bool:
        return name in self.membership.members

    async def call(self, node: str, method: str, args: dict[str, Any], timeout: Any) -> Any:
        self.calls.append((node, method))
        if node not in self.live:
            raise NodeUnreachable(node)
        index = int(node.rsplit("/w", 1)[1])
        if method == "connections":
            return [{"client_id": f"c{index}", "node": NODE}]
        if method == "node_info":
            return {"node": NODE, "connections": index + 1, "memory_used": 10, "process_used": 1}
        if method == "worker_info":
            return {"pid": 100 + index, "connections": index + 1}
        return f"{method} on {node}"


class _Ctx:
    node_name = PLAIN


def _view(live: list[str], dead: list[str] = []) -> tuple[GroupedClusterView, _Cluster]:  # noqa: B006
    cluster = _Cluster(live, dead)
    return GroupedClusterView(_Ctx(), cluster), cluster  # type: ignore[arg-type]


def test_split_member() -> None:
    assert split_member("w@h/w0") == ("w@h", 0)
    assert split_member("w@h/w12") == ("w@h", 12)
    assert split_member("plain@h") == ("plain@h", None)
    assert split_member("odd/wx") == ("odd/wx", None)


def test_workers_are_one_node_in_names_liveness_and_routes() -> None:
    view, _ = _view([f"{NODE}/w0", f"{NODE}/w1"])
    assert view.local_node == PLAIN
    assert view.node_names() == [PLAIN, NODE]
    assert view.is_known(NODE) and not view.is_known(f"{NODE}/w0x")
    assert view.stopped_nodes() == []
    assert view.route_rows() == [("a/#", NODE), ("b", PLAIN)]
    view, _ = _view([], dead=[f"{NODE}/w0", f"{NODE}/w1"])
    assert view.node_names() == [PLAIN]
    assert view.stopped_nodes() == [NODE]


async def test_a_query_runs_on_every_live_worker_and_is_merged() -> None:
    view, cluster = _view([f"{NODE}/w0", f"{NODE}/w1"])
    rows = await view.call(NODE, "connections", {})
    assert rows == [
        {"client_id": "c0", "node": NODE, "worker": 0},
        {"client_id": "c1", "node": NODE, "worker": 1},
    ]
    info = await view.call(NODE, "node_info", {})
    assert info["connections"] == 3 and info["memory_used"] == 20
    assert [(w["worker"], w["pid"], w["node_status"]) for w in info["workers"]] == [
        (0, 100, "Running"),
        (1, 101, "Running"),
    ]
    # a table every worker holds in full: asked of one worker only
    cluster.calls.clear()
    assert await view.call(NODE, "retained", {}) == f"retained on {NODE}/w0"
    assert cluster.calls == [(f"{NODE}/w0", "retained")]


async def test_a_dead_worker_is_left_out_and_shown_stopped() -> None:
    view, _ = _view([f"{NODE}/w1"], dead=[f"{NODE}/w0"])
    assert view.node_names() == [PLAIN, NODE]
    assert await view.call(NODE, "connections", {}) == [
        {"client_id": "c1", "node": NODE, "worker": 1}
    ]
    info = await view.call(NODE, "node_info", {})
    assert [(w["worker"], w["node_status"]) for w in info["workers"]] == [
        (0, "Stopped"),
        (1, "Running"),
    ]
    view, _ = _view([], dead=[f"{NODE}/w0", f"{NODE}/w1"])
    with pytest.raises(NodeDown):
        await view.call(NODE, "connections", {})
