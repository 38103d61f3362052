"""Replicated tables: last writer wins, deletions as tombstones, merges that converge, the store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.hlc import Stamp
from broker.core.replicated import ReplicatedTable, ReplicatedTables, Row, valid_table_name
from broker.server.replicated_store import ReplicatedStore, ReplicatedStoreError
from cluster.replicas import ReplicaSet
from cluster.rpc import MethodHandler


def test_put_get_delete_and_older_writes_lose() -> None:
    table = ReplicatedTable("auth_clientid")
    assert table.put("c1", {"password": "h1"}, 10.0)
    assert table.get("c1") == {"password": "h1"} and len(table) == 1
    assert not table.put("c1", {"password": "old"}, 5.0)  # older than what is there
    assert table.get("c1") == {"password": "h1"}
    assert table.delete("c1", 11.0)
    assert table.get("c1") is None and table.keys() == [] and len(table) == 0
    row = table.row("c1")
    assert row is not None and row.value is None  # the tombstone stays
    assert not table.put("c1", {"password": "stale"}, 10.5)  # a stale copy cannot resurrect it
    assert table.put("c1", {"password": "h2"}, 12.0)  # a newer write can
    assert table.keys() == ["c1"]


def test_same_time_the_deletion_wins() -> None:
    table = ReplicatedTable("t")
    table.put("k", {"v": 1}, 3.0)
    assert table.delete("k", 3.0)
    assert table.get("k") is None


def test_on_change_runs_only_for_real_changes() -> None:
    tables = ReplicatedTables()
    seen: list[str] = []
    tables.on_change.append(lambda t: seen.append(t.name))
    table = tables.table("auth_username")
    table.put("u", {"password": "x"}, 1.0)
    table.put("u", {"password": "x"}, 1.0)  # the same row again: nothing changes
    table.put("u", {"password": "y"}, 0.5)  # older: nothing changes
    assert seen == ["auth_username"]


@pytest.mark.parametrize("name", ["", "A", "1abc", "a/b", "../x", "a" * 65, None, 3])
def test_bad_table_names(name: object) -> None:
    assert not valid_table_name(name)


@pytest.mark.parametrize(
    "item",
    [{"at": 1}, {"key": "", "at": 1}, {"key": "k", "at": "1"}, {"key": "k", "at": True},
     {"key": "k", "at": 1, "value": [1]}, {"key": 3, "at": 1},
     {"key": "k", "at": 1, "hlc": [1, 2]}, {"key": "k", "at": 1, "hlc": "x"}],
)  # fmt: skip
def test_malformed_rows_are_refused(item: dict[str, object]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        Row.from_dict(item)


_stamps = st.one_of(
    st.none(),  # a row from an older node: ordered by `at`
    st.builds(Stamp, st.integers(0, 5_000), st.integers(0, 3), st.sampled_from(["n1", "n2"])),
)
_rows = st.lists(
    st.builds(
        Row,
        key=st.sampled_from(["a", "b", "c"]),
        at=st.integers(0, 5).map(float),
        value=st.one_of(st.none(), st.fixed_dictionaries({"password": st.sampled_from("xyz")})),
        stamp=_stamps,
    ),
    max_size=12,
)


def test_the_larger_stamp_wins_whatever_the_wall_times_say() -> None:
    table = ReplicatedTable("t")
    # n2's clock is behind, but its write came after it saw n1's (its stamp is larger)
    assert table.put("k", {"v": "n1"}, 10.0, Stamp(10_000, 0, "n1"))
    assert table.put("k", {"v": "n2"}, 9.0, Stamp(10_000, 1, "n2"))
    assert not table.put("k", {"v": "late"}, 11.0, Stamp(10_000, 0, "n3"))
    assert table.get("k") == {"v": "n2"}
    # one millisecond, two nodes: the node name breaks the tie, the same way everywhere
    assert table.put("j", {"v": "a"}, 1.0, Stamp(1_000, 0, "a"))
    assert table.put("j", {"v": "b"}, 1.0, Stamp(1_000, 0, "b"))
    assert not table.put("j", {"v": "a2"}, 1.0, Stamp(1_000, 0, "a"))


def test_a_row_without_stamp_is_ordered_by_its_time_and_round_trips() -> None:
    old = Row("k", 2.0, {"v": 1})  # from an older node or `minibroker apps`
    new = Row("k", 2.0, {"v": 2}, Stamp(2_000, 0, "n1"))
    assert new.order() > old.order()
    assert Row("k", 2.001, {"v": 3}).order() > new.order()
    assert Row.from_dict(new.to_dict()) == new
    assert "hlc" not in old.to_dict() and Row.from_dict(old.to_dict()) == old
    tables = ReplicatedTables()
    tables.table("t").merge([new, Row("j", 1.0, None, Stamp(5, 1, "n2"))])
    assert sorted(tables.stamps()) == [Stamp(5, 1, "n2"), Stamp(2_000, 0, "n1")]


@given(_rows, _rows)
def test_two_nodes_exchanging_dumps_converge_whatever_the_order(
    left: list[Row], right: list[Row]
) -> None:
    a, b = ReplicatedTables(), ReplicatedTables()
    a.table("t").merge(left)
    b.table("t").merge(reversed(right))
    # what both sides' pulls do: b merges a's dump, a merges b's (merged) dump
    b.merge_all(a.dump_all())
    a.merge_all(b.dump_all())
    assert sorted(map(str, a.dump_all()["t"])) == sorted(map(str, b.dump_all()["t"]))
    both = ReplicatedTable("t")
    both.merge([*right, *left])
    assert {k: a.table("t").get(k) for k in "abc"} == {k: both.get(k) for k in "abc"}


def test_merge_all_skips_what_it_cannot_read() -> None:
    tables = ReplicatedTables()
    doc = {
        "good": [{"key": "k", "at": 1, "value": {"p": "h"}}, {"key": "", "at": 1}],
        "../evil": [{"key": "k", "at": 1, "value": {}}],
        "notalist": {"key": "k"},
    }
    assert tables.merge_all(doc) == 1
    assert tables.merge_all("garbage") == 0
    assert tables.names() == ["good"]


# -- the store ---------------------------------------------------------------------------------


def test_store_saves_on_change_and_loads_at_open(tmp_path: Path) -> None:
    tables = ReplicatedTables()
    store = ReplicatedStore(tables, str(tmp_path))
    assert store.open() == 0
    tables.table("auth_clientid").put("c1", {"password": "$7$h"}, 1.0)
    tables.table("auth_clientid").delete("c2", 2.0)
    path = tmp_path / "tables" / "auth_clientid.json"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"  # password hashes: private
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["table"] == "auth_clientid"
    assert {r["key"] for r in doc["rows"]} == {"c1", "c2"}
    store.close()
    tables.table("auth_clientid").put("c3", {"password": "$7$x"}, 3.0)  # closed: not saved
    assert "c3" not in path.read_text()

    again = ReplicatedTables()
    assert ReplicatedStore(again, str(tmp_path)).open() == 2
    table = again.table("auth_clientid")
    assert table.keys() == ["c1"]
    assert table.row("c2") == Row("c2", 2.0, None)  # the tombstone survives the restart


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ('{"version": 1, "table": "t"}', '"rows" array'),
        ('{"version": 2, "table": "t", "rows": []}', "format version"),
        ('{"version": 1, "table": "other", "rows": []}', "holds table 'other'"),
        ('{"version": 1, "table": "t", "rows": [{"key": "k"}]}', "row 0 is invalid"),
    ],
)
def test_a_corrupt_table_stops_the_start_with_the_file_named(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.json").write_text(text)
    with pytest.raises(ReplicatedStoreError) as info:
        ReplicatedStore(ReplicatedTables(), str(tmp_path)).open()
    assert "t.json" in str(info.value) and problem in str(info.value)


def test_foreign_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / ".t.json.tmp123").write_text("half")
    (tmp_path / "tables" / "README").write_text("x")
    tables = ReplicatedTables()
    assert ReplicatedStore(tables, str(tmp_path)).open() == 0
    assert tables.names() == []


# -- the pull on join, both ways (cluster.replicas) ----------------------------------------------


async def test_tables_pulled_both_ways_leave_both_sides_with_the_newer_rows() -> None:
    joiner, peer = ReplicatedTables(), ReplicatedTables()
    joiner.table("t").put("mine", {"p": "new"}, 5.0)
    peer.table("t").put("mine", {"p": "old"}, 1.0)
    peer.table("t").put("theirs", {"p": "x"}, 2.0)
    joiner.table("t").put("gone", {"p": "y"}, 1.0)
    peer.table("t").delete("gone", 3.0)
    served: dict[str, dict[str, MethodHandler]] = {"joiner@host": {}, "peer@host": {}}
    calls: list[tuple[str, str]] = []

    def node(name: str, tables: ReplicatedTables) -> ReplicaSet:
        async def call(to: str, method: str, args: dict[str, Any]) -> Any:
            calls.append((to, method))
            return await served[to][method](args, name)

        async def dump(args: dict[str, Any], from_node: str) -> Any:
            return tables.dump_all()

        replicas = ReplicaSet(call, served[name].__setitem__)
        replicas.add("tables", dump, tables.merge_all, resync=True)
        return replicas

    joining, serving = node("joiner@host", joiner), node("peer@host", peer)
    # what cluster.runtime does: the joiner pulls from the peer, and the peer (already synced)
    # pulls the resync tables from the node that joined
    assert await joining.pull("peer@host") == {"tables": 2}  # theirs + the deletion
    assert await serving.pull("joiner@host", resync_only=True) == {"tables": 1}  # mine
    assert calls == [("peer@host", "tables_dump"), ("joiner@host", "tables_dump")]
    for side in (joiner, peer):
        assert side.table("t").keys() == ["mine", "theirs"]
        assert side.table("t").get("mine") == {"p": "new"}
    assert joiner.dump_all() == peer.dump_all()
