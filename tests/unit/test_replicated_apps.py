"""Replicated tables without sockets: `cluster.replicas.ReplicaSet` over a fake RPC, and the API
apps' last-writer-wins merge (`management.apps.AppStore.apply/merge`), which must end in the same
table whatever order the records arrive in."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.replicas import ReplicaSet
from cluster.rpc import MethodHandler, NodeUnreachable
from management import apps as apps_module
from management.apps import App, AppStore, app_from_record, make_app, read_records, tombstone


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


async def test_replica_set_pulls_every_table_and_resync_only_the_light_ones() -> None:
    fake = FakeCluster({"b": {"retained": [1, 2], "apps": [3]}, "c": {"retained": [], "apps": []}})
    merged: dict[str, list[Any]] = {"retained": [], "apps": []}
    replicas = ReplicaSet(fake.call, fake.register)
    replicas.add("retained", _dump, lambda a: merged["retained"].extend(a) or len(a))
    replicas.add("apps", _dump, lambda a: merged["apps"].extend(a) or len(a), resync=True)
    assert set(fake.served) == {"retained_dump", "apps_dump"}  # the wire names

    fake.down.add("b")
    assert await replicas.pull_all(["b", "c"]) == "c"  # b does not answer: the next one
    fake.down.clear()
    assert await replicas.pull("b") == {"retained": 2, "apps": 1}
    fake.calls.clear()
    assert await replicas.pull("b", resync_only=True) == {"apps": 1}
    assert fake.calls == [("b", "apps_dump")]
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


@functools.cache
def _records() -> list[App]:
    """Three generations of one app (created, disabled, deleted) and another app."""
    created = make_app("ops", "pw", now=10.0)
    disabled = dataclasses.replace(created, status=False, updated_at=20.0)
    deleted = tombstone("ops", 30.0)
    other = make_app("other", "pw2", now=15.0)
    return [created, disabled, deleted, other]


def _table(store: AppStore) -> dict[str, tuple[bool, bool, float]]:
    return {a.id: (a.deleted, a.status, a.updated_at) for a in read_records(store.path)}


def test_merge_ends_in_the_same_table_in_any_order(tmp_path: Path) -> None:
    records = _records()
    outcomes = set()
    for i, order in enumerate(itertools.permutations(records)):
        store = AppStore(tmp_path / str(i), default_app=False)
        assert store.merge([r.record() for r in order]) >= 2
        outcomes.add(tuple(sorted(_table(store).items())))
        assert "ops" not in store.apps() and "other" in store.apps()
    assert len(outcomes) == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(range(4)), min_size=1, max_size=8))
def test_applying_any_sequence_keeps_the_newest_record(
    tmp_path_factory: Any, picks: list[int]
) -> None:
    records = _records()
    store = AppStore(tmp_path_factory.mktemp("apps"), default_app=False)
    for i in picks:
        store.apply(app_from_record(records[i].record()))
    for app_id in {records[i].id for i in picks}:
        newest = max((records[i] for i in picks if records[i].id == app_id),
                     key=lambda a: a.updated_at)  # fmt: skip
        stored = next(a for a in read_records(store.path) if a.id == app_id)
        assert (stored.updated_at, stored.deleted) == (newest.updated_at, newest.deleted)


async def test_a_tombstone_hides_a_config_app_and_the_hash_never_leaves_as_a_row(
    tmp_path: Path,
) -> None:
    from broker.server.config import ManagementApp

    store = AppStore(tmp_path, [ManagementApp("cfg", "c-secret")])
    assert await store.authenticate("cfg", "c-secret")
    assert await store.authenticate("admin", "public")
    assert store.apply(tombstone("cfg", 1.0)) and store.apply(tombstone("admin", 1.0))
    assert not await store.authenticate("cfg", "c-secret")
    assert not await store.authenticate("admin", "public")
    assert store.apps() == {}
    assert not store.apply(tombstone("cfg", 0.5))  # older: ignored
    app = make_app("n", "pw", now=2.0)
    assert store.apply(app) and await store.authenticate("n", "pw")
    row = store.apps()["n"].row()
    assert set(row) == {"app_id", "name", "desc", "status", "expired"}


async def test_a_change_stays_in_force_when_the_file_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AppStore(tmp_path, default_app=False)
    assert store.apply(make_app("x", "pw", now=1.0)) and await store.authenticate("x", "pw")

    def disk_full(path: Path, apps: list[App]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(apps_module, "write_file", disk_full)
    disabled = dataclasses.replace(store.apps()["x"], status=False, updated_at=2.0)
    assert store.apply(disabled)
    assert store.save_errors == 1
    assert not await store.authenticate("x", "pw")  # refused all the same
