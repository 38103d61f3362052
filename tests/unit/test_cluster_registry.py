"""The client-id registry's pure logic: owner choice, moves on membership changes, conflicts."""

from __future__ import annotations

from collections import Counter

from cluster.registry import (
    ZERO,
    Entry,
    Evict,
    Registry,
    moved,
    newer,
    owner_of,
    parse_entries,
)

NODES = ["a@h", "b@h", "c@h"]
IDS = [f"client-{i}" for i in range(3000)]


def test_owner_is_the_same_whatever_the_order_of_the_members() -> None:
    for cid in IDS[:200]:
        assert owner_of(cid, NODES) == owner_of(cid, list(reversed(NODES)))
        assert owner_of(cid, NODES) in NODES


def test_owners_are_spread_over_the_members() -> None:
    counts = Counter(owner_of(cid, NODES) for cid in IDS)
    assert set(counts) == set(NODES)
    assert min(counts.values()) > len(IDS) / 3 * 0.8  # rendezvous hashing: about even


def test_a_lone_node_owns_everything() -> None:
    assert {owner_of(cid, ["a@h"]) for cid in IDS[:50]} == {"a@h"}


def test_only_the_ids_of_a_dead_node_move() -> None:
    after = ["a@h", "c@h"]
    groups = moved(IDS, NODES, after)
    moved_ids = {cid for ids in groups.values() for cid in ids}
    assert moved_ids == {cid for cid in IDS if owner_of(cid, NODES) == "b@h"}
    for owner, ids in groups.items():
        assert all(owner_of(cid, after) == owner for cid in ids)


def test_a_joining_node_takes_only_ids_from_others_and_rejoined_get_all_theirs() -> None:
    before, after = ["a@h", "b@h"], NODES
    groups = moved(IDS, before, after)
    assert set(groups) == {"c@h"}  # every id that moves goes to the newcomer
    assert sorted(groups["c@h"]) == sorted(c for c in IDS if owner_of(c, after) == "c@h")
    # b came back from a restart without the members changing: all its ids again
    again = moved(IDS, NODES, NODES, rejoined=["b@h"])
    assert set(again) == {"b@h"}
    assert len(again["b@h"]) == sum(owner_of(c, NODES) == "b@h" for c in IDS)
    assert moved(IDS, NODES, NODES) == {}


def test_claims_are_ordered_as_the_owner_sees_them() -> None:
    reg = Registry()
    previous, stamp = reg.claim("x", "a@h", (100, 0))
    assert previous is None and stamp == (100, 0)
    # b's clock is behind: its claim still comes after a's
    previous, stamp = reg.claim("x", "b@h", (50, 0))
    assert previous == Entry("a@h", (100, 0)) and stamp == (100, 1)
    assert reg.get("x") == Entry("b@h", (100, 1))


def test_register_keeps_the_newer_claim_and_evicts_the_other() -> None:
    reg = Registry()
    live = {"a@h", "b@h"}.__contains__
    assert reg.register("x", "a@h", (10, 0), live) is None
    # b registers an older claim: b loses
    assert reg.register("x", "b@h", (5, 0), live) == Evict("x", "b@h", (5, 0))
    assert reg.get("x") == Entry("a@h", (10, 0))
    # b registers a newer one: a loses
    assert reg.register("x", "b@h", (20, 0), live) == Evict("x", "a@h", (10, 0))
    assert reg.get("x") == Entry("b@h", (20, 0))
    # equal stamps: the greater node name wins, whichever registers first
    reg2 = Registry()
    reg2.register("y", "b@h", (7, 0), live)
    assert reg2.register("y", "a@h", (7, 0), live) == Evict("y", "a@h", (7, 0))
    reg3 = Registry()
    reg3.register("y", "a@h", (7, 0), live)
    assert reg3.register("y", "b@h", (7, 0), live) == Evict("y", "a@h", (7, 0))
    assert reg2.get("y") == reg3.get("y") == Entry("b@h", (7, 0))


def test_a_session_restored_from_disk_loses_to_any_claim() -> None:
    reg = Registry()
    live = {"a@h", "b@h"}.__contains__
    reg.register("x", "b@h", (1, 0), live)
    assert reg.register("x", "a@h", ZERO, live) == Evict("x", "a@h", ZERO)


def test_a_holder_that_is_not_live_is_replaced_without_conflict() -> None:
    reg = Registry()
    reg.register("x", "a@h", (50, 0), lambda n: True)
    assert reg.register("x", "b@h", (1, 0), lambda n: n == "b@h") is None
    assert reg.get("x") == Entry("b@h", (1, 0))


def test_release_only_of_the_claim_it_names() -> None:
    reg = Registry()
    reg.claim("x", "a@h", (1, 0))
    reg.claim("x", "b@h", (2, 0))
    assert not reg.release("x", "a@h", (1, 0))  # a's old session ending: b keeps it
    assert not reg.release("x", "b@h", (1, 0))
    assert reg.release("x", "b@h", (2, 0)) and reg.get("x") is None


def test_drop_node_and_not_owned() -> None:
    reg = Registry()
    for cid in IDS[:100]:
        reg.claim(cid, "b@h" if cid.endswith("7") else "a@h", (1, 0))
    assert reg.drop_node("b@h") == 10 and len(reg) == 90
    gone = reg.not_owned("a@h", NODES)
    assert all(owner_of(cid, NODES) != "a@h" for cid in gone)


def test_newer_breaks_ties_by_node_name() -> None:
    assert newer((1, 0), "a", (0, 9), "z") and newer((1, 0), "b", (1, 0), "a")


def test_parse_entries_skips_malformed_items() -> None:
    raw = [["x", [1, 2]], ["", [1, 2]], ["y", [1]], "z", ["w", [True, 1]], ["v", [3, 4], 9]]
    assert parse_entries(raw) == [("x", (1, 2)), ("v", (3, 4))]
    assert parse_entries("junk") == []
