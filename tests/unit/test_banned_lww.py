"""Bans replicated by last writer (`BannedTable.merge` / `merge_gone`) and stored with their
stamps and removals (`broker.server.banned_store`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.banned import BanEntry, BannedTable
from broker.core.hlc import Stamp
from broker.server.banned_store import BannedStore, BannedStoreError


def ban(who: str, stamp: Stamp | None, reason: str = "", at: float = 0.0) -> BanEntry:
    return BanEntry(who, "client_id", reason=reason, at=at, stamp=stamp)


def test_the_later_ban_wins_and_a_removal_keeps_an_older_copy_out() -> None:
    table = BannedTable()
    assert table.merge(ban("x", Stamp(10, 0, "a"), "first"))
    assert table.merge(ban("x", Stamp(10, 1, "b"), "second"))
    assert not table.merge(ban("x", Stamp(10, 0, "c"), "stale"))
    entry = table.get("client_id", "x")
    assert entry is not None and entry.reason == "second"
    assert table.remove("client_id", "x", Stamp(20, 0, "a"))
    assert not table.merge(ban("x", Stamp(10, 1, "b"), "second"))  # the copy of a node away
    assert table.get("client_id", "x") is None
    assert table.merge(ban("x", Stamp(21, 0, "b"), "again"))  # a new ban after the removal
    assert table.gone == {}


def test_a_removal_from_a_peer_lifts_only_an_older_ban() -> None:
    table = BannedTable()
    table.merge(ban("x", Stamp(30, 0, "a")))
    assert not table.merge_gone("client_id", "x", Stamp(20, 0, "b"))  # the ban came later
    assert table.get("client_id", "x") is not None
    assert table.merge_gone("client_id", "x", Stamp(40, 0, "b"))
    assert table.get("client_id", "x") is None
    assert not table.merge_gone("client_id", "y", Stamp(1, 0, "b"))  # nothing to lift...
    assert table.gone[("client_id", "y")] == Stamp(1, 0, "b")  # ...but remembered


def test_a_ban_without_stamp_is_ordered_by_its_time() -> None:
    table = BannedTable()
    table.merge(ban("x", None, "old node", at=5.0))
    assert table.merge(ban("x", Stamp(5_000, 0, "a"), "stamped"))  # same ms, a real stamp
    assert not table.merge(ban("x", None, "older", at=4.0))


_ops = st.lists(
    st.tuples(
        st.booleans(),  # True: a ban, False: a removal
        st.sampled_from(["x", "y"]),
        st.builds(Stamp, st.integers(0, 20), st.integers(0, 2), st.sampled_from(["a", "b"])),
    ),
    max_size=12,
)


def _apply(table: BannedTable, ops: list[tuple[bool, str, Stamp]]) -> None:
    for is_ban, who, stamp in ops:
        if is_ban:
            table.merge(ban(who, stamp, reason=repr(stamp)))
        else:
            table.merge_gone("client_id", who, stamp)


@given(_ops)
def test_property_any_order_of_the_same_writes_gives_the_same_bans(
    ops: list[tuple[bool, str, Stamp]],
) -> None:
    forward, backward = BannedTable(), BannedTable()
    _apply(forward, ops)
    _apply(backward, list(reversed(ops)))
    key = sorted((e.who, e.reason) for e in forward.entries())
    assert key == sorted((e.who, e.reason) for e in backward.entries())


def test_store_keeps_stamps_and_removals_across_a_restart(tmp_path: Path) -> None:
    table = BannedTable()
    store = BannedStore(table, str(tmp_path))
    store.open()
    table.add(ban("x", Stamp(10, 2, "a")))
    table.add(ban("y", Stamp(11, 0, "a")))
    table.remove("client_id", "y", Stamp(12, 0, "b"))
    again = BannedTable()
    BannedStore(again, str(tmp_path)).open()
    entry = again.get("client_id", "x")
    assert entry is not None and entry.stamp == Stamp(10, 2, "a")
    assert again.gone == {("client_id", "y"): Stamp(12, 0, "b")}
    assert sorted(again.stamps()) == [Stamp(10, 2, "a"), Stamp(12, 0, "b")]


def test_a_malformed_removal_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "banned.json"
    path.write_text(json.dumps({"version": 1, "banned": [], "gone": [["client_id", "y"]]}))
    with pytest.raises(BannedStoreError, match="removal 0 is invalid"):
        BannedStore(BannedTable(), str(tmp_path)).open()
