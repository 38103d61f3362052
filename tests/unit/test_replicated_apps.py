"""Replicated tables without sockets: `cluster.replicas.ReplicaSet` over a fake RPC, and the API
apps on the replicated table `apps` (`management.apps.AppStore`): the same apps whatever order the
rows arrive in, tombstones that hide default and config apps, and the `minibroker apps` CLI
editing a running node's file without either side's change being lost."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.replicated import Row
from broker.server import replicated_store
from cluster.replicas import ReplicaSet
from cluster.rpc import MethodHandler, NodeUnreachable
from management.apps import AppStore, add_app, apps_path, delete_app, make_app


class FakeCluster:
    """`call(node, method, args)` answered from per-node tables; a node in `down` is unreachable."""

    def __init__(self, tables: dict[str, dict[str, Any]]) -> None:
        self.tables = tables
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.served: dict[str, MethodHandler] = {}

    async def call(self, node: str, method: str, args: dict[str, Any]) -> Any:
        self.calls.append((node, method))
        if node in self.down:
            raise NodeUnreachable(node)
        return self.tables[node][method.removesuffix("_dump")]

    def register(self, method: str, handler: MethodHandler) -> None:
        self.served[method] = handler


async def _dump(args: dict[str, Any], from_node: str) -> Any:
    return []


class Peer:
    """A ReplicaSet over a dict table (key -> (stamp, value)), wired to the other peers by a
    direct call (no sockets): the anti-entropy exchange as two real nodes run it."""

    def __init__(self, name: str, net: dict[str, Peer]) -> None:
        self.name, self.net = name, net
        self.rows: dict[str, tuple[int, str]] = {}
        self.rpc: dict[str, MethodHandler] = {}
        self.replicas = ReplicaSet(self.call, self.rpc.__setitem__)
        self.replicas.add("kv", self.dump, self.merge, resync=True, digest=self.digest)
        net[name] = self

    async def call(self, node: str, method: str, args: dict[str, Any]) -> Any:
        return await self.net[node].rpc[method](args, self.name)

    async def dump(self, args: dict[str, Any], from_node: str) -> Any:
        return dict(self.rows)

    def merge(self, answer: Any) -> int:
        changed = 0
        for key, (stamp, value) in answer.items():
            if key not in self.rows or self.rows[key][0] < stamp:
                self.rows[key] = (stamp, value)
                changed += 1
        return changed

    def digest(self) -> str:
        return repr(sorted(self.rows.items()))


async def test_one_anti_entropy_exchange_repairs_a_divergence_both_ways() -> None:
    net: dict[str, Peer] = {}
    a, b = Peer("a", net), Peer("b", net)
    a.rows = {"x": (2, "a-new"), "y": (1, "only-a")}
    b.rows = {"x": (1, "b-old"), "z": (5, "only-b")}
    assert await a.replicas.exchange("b") == ["kv"]
    for _ in range(20):  # b's pull back from a runs as its own task
        if b.rows == a.rows:
            break
        await asyncio.sleep(0.01)
    assert a.rows == b.rows == {"x": (2, "a-new"), "y": (1, "only-a"), "z": (5, "only-b")}
    assert await a.replicas.exchange("b") == []  # equal digests: nothing pulled
    assert a.replicas.stats == {"exchanges": 2, "repairs": 1}


async def test_replica_set_pulls_every_table_and_resync_only_the_light_ones() -> None:
    fake = FakeCluster(
        {"b": {"retained": [1, 2], "tables": [3]}, "c": {"retained": [], "tables": []}}
    )
    merged: dict[str, list[Any]] = {"retained": [], "tables": []}
    replicas = ReplicaSet(fake.call, fake.register)
    replicas.add("retained", _dump, lambda a: merged["retained"].extend(a) or len(a))
    replicas.add("tables", _dump, lambda a: merged["tables"].extend(a) or len(a), resync=True)
    # the wire names
    assert set(fake.served) == {"retained_dump", "tables_dump", "replicas_digest"}

    fake.down.add("b")
    assert await replicas.pull_all(["b", "c"]) == "c"  # b does not answer: the next one
    fake.down.clear()
    assert await replicas.pull("b") == {"retained": 2, "tables": 1}
    fake.calls.clear()
    assert await replicas.pull("b", resync_only=True) == {"tables": 1}
    assert fake.calls == [("b", "tables_dump")]
    fake.down.add("c")
    with pytest.raises(NodeUnreachable):
        await replicas.pull("c")
    assert await replicas.pull_all(["c"]) is None


async def test_a_bad_answer_for_one_table_does_not_stop_the_others() -> None:
    fake = FakeCluster({"b": {"bad": "junk", "good": [1]}})
    replicas = ReplicaSet(fake.call, fake.register)

    def explode(answer: Any) -> int:
        raise ValueError("malformed")

    replicas.add("bad", _dump, explode)
    replicas.add("good", _dump, len)
    assert await replicas.pull("b") == {"good": 1}


def _rows() -> list[Row]:
    """Three generations of one app (created, disabled, deleted) and another app, as rows of
    the replicated table `apps`."""
    created = make_app("ops", "pw", now=10.0)
    disabled = dataclasses.replace(created, status=False, updated_at=20.0)
    other = make_app("other", "pw2", now=15.0)
    return [
        *(Row(a.id, a.updated_at, a.value()) for a in (created, disabled, other)),
        Row("ops", 30.0, None),  # deleted
    ]


def _store(path: Path, **kw: Any) -> AppStore:
    return AppStore(path, default_app=False, **kw)


def test_apps_end_the_same_whatever_order_their_rows_arrive_in(tmp_path: Path) -> None:
    outcomes = set()
    for i, order in enumerate(itertools.permutations(_rows())):
        store = _store(tmp_path / str(i))
        assert store.table.merge(order) >= 2
        outcomes.add(json.dumps(store.table.dump()))
        assert "ops" not in store.apps() and "other" in store.apps()
    assert len(outcomes) == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(range(4)), min_size=1, max_size=8))
def test_any_sequence_of_writes_keeps_the_newest_app(
    tmp_path_factory: Any, picks: list[int]
) -> None:
    rows = _rows()
    path = tmp_path_factory.mktemp("apps")
    store = _store(path)
    for i in picks:
        store.table.merge([rows[i]])
    reopened = _store(path)  # what was saved
    for app_id in {rows[i].key for i in picks}:
        newest = max((rows[i] for i in picks if rows[i].key == app_id), key=Row.order)
        app = reopened.apps().get(app_id)
        if newest.value is None:
            assert app is None
        else:
            assert app is not None and (app.updated_at, app.status) == (
                newest.at,
                newest.value["status"],
            )


async def test_a_tombstone_hides_a_config_app_and_the_hash_never_leaves_as_a_row(
    tmp_path: Path,
) -> None:
    from broker.server.config import ManagementApp

    store = AppStore(tmp_path, [ManagementApp("cfg", "c-secret")])
    assert await store.authenticate("cfg", "c-secret")
    assert await store.authenticate("admin", "public")
    assert store.table.delete("cfg", 1.0) and store.table.delete("admin", 1.0)
    assert not await store.authenticate("cfg", "c-secret")
    assert not await store.authenticate("admin", "public")
    assert store.apps() == {}
    assert not store.table.delete("cfg", 0.5)  # older: ignored
    app = make_app("n", "pw", now=2.0)
    assert store.table.put(app.id, app.value(), app.updated_at)
    assert await store.authenticate("n", "pw")
    row = store.apps()["n"].row()
    assert set(row) == {"app_id", "name", "desc", "status", "expired"}


async def test_a_change_stays_in_force_when_the_file_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    app = make_app("x", "pw", now=1.0)
    assert store.table.put(app.id, app.value(), 1.0) and await store.authenticate("x", "pw")

    def disk_full(path: str, data: bytes, mode: int | None = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replicated_store, "write_atomic", disk_full)
    assert store.table.put(app.id, {**app.value(), "status": False}, 2.0)
    assert store.store.save_errors == 1
    assert not await store.authenticate("x", "pw")  # refused all the same


async def test_the_cli_edits_a_running_nodes_file_and_neither_side_is_lost(tmp_path: Path) -> None:
    store = _store(tmp_path)  # the node's (its store saves every change)
    mine = make_app("api", "pw", now=1.0)
    assert store.table.put(mine.id, mine.value(), mine.updated_at)
    add_app(tmp_path, "cli", "pw2")  # `minibroker apps add` on the same data dir
    # a change arriving (a peer's row) before anything read the file: the save merges it first
    peer = make_app("peer", "pw3", now=3.0)
    assert store.table.merge([Row(peer.id, peer.updated_at, peer.value())]) == 1
    saved = json.loads(apps_path(tmp_path).read_text())["rows"]
    assert {row["key"] for row in saved} == {"api", "cli", "peer"}
    assert await store.authenticate("cli", "pw2")
    delete_app(tmp_path, "api")  # and a deletion by the CLI is seen by the next check
    assert not await store.authenticate("api", "pw")
    assert sorted(store.apps()) == ["cli", "peer"]
