"""cluster.routes: merges converge whatever the order and duplication; epochs; purge; lookups."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.topics import topic_matches
from cluster.delegate import MemberEvent
from cluster.routes import RouteDelta, RouteTable
from cluster.sync import RouteSync
from cluster.wire import WireError

FILTERS = ["a", "a/b", "a/+", "a/#", "#", "+/b", "x/y/z", "$SYS/#", "+"]
ORIGINS = ["n1", "n2", "n3"]

# One origin's history: runs (epochs), each a list of (filter, present) changes and, after each
# change, whether to take a push/pull snapshot of the origin's own state at that point.
_changes = st.lists(st.tuples(st.sampled_from(FILTERS), st.booleans(), st.booleans()), max_size=8)
_history = st.lists(_changes, min_size=1, max_size=3)

Update = tuple[str, Any]  # ("delta", RouteDelta) or ("state", push/pull state)


def _generate(
    histories: dict[str, list[list[tuple[str, bool, bool]]]],
) -> tuple[list[Update], list[tuple[str, str]]]:
    """Every update the origins would send, and the table they must converge to."""
    updates: list[Update] = []
    expected: list[tuple[str, str]] = []
    for origin, runs in histories.items():
        final: RouteTable | None = None
        for epoch, changes in enumerate(runs, start=1):
            table = RouteTable(origin, epoch)
            for filt, present, snapshot in changes:
                updates.append(("delta", table.local_update(filt, present)))
                if snapshot:
                    updates.append(("state", table.state_for_push_pull()))
            if changes:
                final = table  # the newest run that said anything
        if final is not None:
            expected.extend((f, origin) for f in final.local_routes())
    return updates, sorted(expected)


def _apply(table: RouteTable, update: Update) -> None:
    kind, value = update
    if kind == "delta":
        table.apply(value)
    else:
        table.merge_full(value)


_histories = st.fixed_dictionaries({origin: _history for origin in ORIGINS})


@settings(max_examples=150, deadline=None)
@given(_histories, st.randoms(use_true_random=False), st.data())
def test_any_order_with_duplicates_converges(
    histories: dict[str, Any], rnd: Any, data: Any
) -> None:
    updates, expected = _generate(histories)
    results = []
    for _ in range(3):
        sequence = (
            updates + [rnd.choice(updates) for _ in range(len(updates) // 2)] if updates else []
        )
        rnd.shuffle(sequence)
        table = RouteTable("observer", 1)
        for update in sequence:
            _apply(table, update)
        results.append(table.routes())
    assert results[0] == results[1] == results[2] == expected


@settings(max_examples=100, deadline=None)
@given(_histories, st.randoms(use_true_random=False))
def test_gossip_between_observers_converges(histories: dict[str, Any], rnd: Any) -> None:
    """Updates split among observers that then exchange full states (push/pull) converge."""
    updates, expected = _generate(histories)
    observers = [RouteTable(f"o{i}", 1) for i in range(3)]
    for update in updates:
        _apply(rnd.choice(observers), update)
    for _ in range(2):
        for a in observers:
            for b in observers:
                b.merge_full(a.state_for_push_pull())
    assert [o.routes() for o in observers] == [expected] * 3


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(FILTERS), min_size=1, max_size=10), st.randoms())
def test_older_epoch_never_resurrects(filters: list[str], rnd: Any) -> None:
    old, new = RouteTable("n1", 1), RouteTable("n1", 2)
    old_updates = [old.local_update(f, True) for f in filters]
    new_delta = new.local_update("only/new", True)
    table = RouteTable("observer", 1)
    table.apply(new_delta)
    rnd.shuffle(old_updates)
    for delta in old_updates:
        assert not table.apply(delta)
    table.merge_full(old.state_for_push_pull())
    assert table.routes() == [("only/new", "n1")]
    assert table.digest()["n1"] == (2, 1)


def test_newer_epoch_replaces_older_routes() -> None:
    table = RouteTable("me", 1)
    old = RouteTable("n1", 5)
    for f in ("a", "b"):
        table.apply(old.local_update(f, True))
    new = RouteTable("n1", 6)
    table.apply(new.local_update("c", True))
    assert table.routes() == [("c", "n1")]


def test_withdraw_beats_late_announce() -> None:
    origin = RouteTable("n1", 1)
    announce = origin.local_update("a/b", True)
    withdraw = origin.local_update("a/b", False)
    table = RouteTable("me", 1)
    assert table.apply(withdraw)
    assert not table.apply(announce)
    assert table.routes() == []
    assert not table.apply(withdraw)  # duplicate


def test_snapshot_reclaims_tombstones() -> None:
    origin = RouteTable("n1", 1)
    table = RouteTable("me", 1)
    for f in FILTERS:
        table.apply(origin.local_update(f, True))
        table.apply(origin.local_update(f, False))
    table.apply(origin.local_update("kept", True))
    table.merge_full(origin.state_for_push_pull())
    state = {s[0]: s for s in table.state_for_push_pull()}
    assert state["n1"][3:] == [["kept"], []]  # base only, no tombstones left
    assert table.routes() == [("kept", "n1")]


def test_purge() -> None:
    table = RouteTable("me", 1)
    table.local_update("mine", True)
    for origin in ("n1", "n2"):
        other = RouteTable(origin, 3)
        table.apply(other.local_update("t/#", True))
    assert table.nodes_for("t/#") == {"n1", "n2"}
    assert table.purge("n1")
    assert table.nodes_for("t/#") == {"n2"}
    assert not table.purge("n1")
    assert not table.purge("n2", older_than=3)  # not older
    assert table.purge("n2", older_than=4)
    assert not table.purge("me")  # our own routes are not purged
    assert table.routes() == [("mine", "me")]
    assert len(table) == 1
    assert table.remote_count() == 0, "alone again: only this node's routes are left"


def test_match_uses_wildcards_and_includes_self() -> None:
    table = RouteTable("me", 1)
    table.local_update("a/+", True)
    for origin, filt in (("n1", "a/#"), ("n2", "b"), ("n3", "#"), ("n4", "$SYS/#")):
        table.apply(RouteTable(origin, 1).local_update(filt, True))
    assert table.match("a/x") == {"me", "n1", "n3"}
    assert table.match("a") == {"n1", "n3"}
    assert table.match("b") == {"n3", "n2"}
    assert table.match("$SYS/x") == {"n4"}  # `#` does not match `$` topics


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(ORIGINS), st.sampled_from(FILTERS)), max_size=15),
    st.sampled_from(["a", "a/b", "x/y/z", "$SYS/x", "b", "a/b/c"]),
)
def test_match_agrees_with_naive(routes: list[tuple[str, str]], topic: str) -> None:
    table = RouteTable("me", 1)
    origins = {o: RouteTable(o, 1) for o in ORIGINS}
    for origin, filt in routes:
        table.apply(origins[origin].local_update(filt, True))
    naive = {node for filt, node in table.routes() if topic_matches(filt, topic)}
    assert table.match(topic) == naive
    assert table.remote_match(topic) == naive - {"me"}
    # `remote_count` 0 (what lets a read of frames skip `remote_match`) only with no route
    # of another node, and then no topic has a remote match.
    assert table.remote_count() == sum(node != "me" for _, node in table.routes())


def test_remote_match_leaves_this_node_out_and_follows_route_changes() -> None:
    table = RouteTable("me", 1)
    table.local_update("a/#", True)
    assert table.remote_match("a/x") == set()
    n1 = RouteTable("n1", 1)
    table.apply(n1.local_update("a/+", True))  # after the topic's answer was cached
    assert table.remote_match("a/x") == {"n1"}
    table.apply(n1.local_update("a/+", False))
    assert table.remote_match("a/x") == set()


def test_shared_prefix_is_stripped_and_bad_filters_refused() -> None:
    table = RouteTable("me", 1)
    delta = table.local_update("$share/g/a/b", True)
    assert delta.filter == "a/b"
    with pytest.raises(ValueError):
        table.local_update("a/#/b", True)
    for bad in (
        ["n1", 1, 1, "a/#/b", True],
        ["n1", 1, 1, "$queue/x", True],  # shared keys travel only as `$share/<g>/<f>`
        ["n1", 1, 1, "$share/g/a/#/b", True],
        ["n1", 1, 0, "a", True],
        ["n1", 1, 1, "a", 1],
        "junk",
    ):
        with pytest.raises(WireError):
            RouteDelta.from_wire(bad)
    assert RouteDelta.from_wire(delta.to_wire()) == delta


def test_merge_full_skips_malformed_entries() -> None:
    table = RouteTable("me", 1)
    good = RouteTable("n1", 1)
    good.local_update("ok", True)
    junk: list[Any] = [
        "x",
        ["n2", 1, 1, ["a/#/b"], []],
        ["n3", 1, 1, [["unhashable"]], []],
        ["n4", 1, 1, [], [["a", 0, True]]],
    ]
    assert table.merge_full(junk + good.state_for_push_pull())
    assert table.routes() == [("ok", "n1")]


def test_route_sync_accepts_routes_of_live_runs_only_from_member_events() -> None:
    """RouteSync is never handed the membership: the member events alone decide whose routes
    it takes (a live run, or a newer one), as `_accept` did when it read the membership."""
    sync = RouteSync(RouteTable("a", 1))
    b1 = RouteTable("b", 5)
    first = b1.local_update("t/1", True).to_wire()
    sync.receive_broadcasts([first], 0.0)
    assert sync.table.routes() == []  # b unknown: dropped
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 2), 5))
    sync.receive_broadcasts([first], 0.0)
    assert sync.table.routes() == [("t/1", "b")]
    sync.on_event(MemberEvent("suspect", "b", ("127.0.0.1", 2), 5))
    sync.receive_broadcasts([b1.local_update("t/2", True).to_wire()], 0.0)
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]  # suspect is still live
    older = RouteTable("b", 4).local_update("t/old", True).to_wire()
    sync.receive_broadcasts([older], 0.0)
    assert ("t/old", "b") not in sync.table.routes()  # an older run: dropped
    sync.on_event(MemberEvent("dead", "b", ("127.0.0.1", 2), 5))
    assert sync.table.routes() == []  # purged with the run
    sync.receive_broadcasts([b1.local_update("t/3", True).to_wire()], 0.0)
    assert sync.table.routes() == []  # dead: dropped
    sync.on_event(MemberEvent("alive", "b", ("127.0.0.1", 2), 5))  # back, same run
    sync.merge_remote_state(b1.state_for_push_pull(), False, 0.0)
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b"), ("t/3", "b")]
    own = RouteTable("a", 2).local_update("t/self", True).to_wire()
    sync.receive_broadcasts([own], 0.0)
    assert ("t/self", "a") not in sync.table.routes()  # our own name from elsewhere: dropped


def test_a_new_run_learnt_by_gossip_keeps_the_old_runs_routes_until_its_own_arrive() -> None:
    """A restarted node's new run often reaches a peer by gossip (a `join` event) before its
    routes do; the old run's routes stay meanwhile, frozen, so what is published for the
    restarted node's restored sessions still goes there (issue 14, restart_each)."""
    sync = RouteSync(RouteTable("a", 1))
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 2), 5))
    b5 = RouteTable("b", 5)
    sync.receive_broadcasts([b5.local_update("w/#", True).to_wire()], 0.0)
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 2), 6))  # restarted: learnt by gossip
    assert sync.table.routes() == [("w/#", "b")]  # kept
    sync.receive_broadcasts([b5.local_update("t/old", True).to_wire()], 0.0)
    assert ("t/old", "b") not in sync.table.routes()  # frozen: the old run's news is refused
    b6 = RouteTable("b", 6)
    b6.local_update("w/#", True)
    b6.local_update("t/new", True)
    sync.merge_remote_state(b6.state_for_push_pull(), False, 0.0)
    assert sync.table.routes() == [("t/new", "b"), ("w/#", "b")]  # the new run's, whole


def test_a_new_run_with_no_routes_says_so_and_the_old_runs_go() -> None:
    sync = RouteSync(RouteTable("a", 1))
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 2), 5))
    sync.receive_broadcasts([RouteTable("b", 5).local_update("w/#", True).to_wire()], 0.0)
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 2), 6))
    assert sync.table.routes() == [("w/#", "b")]
    sync.merge_remote_state(RouteTable("b", 6).state_for_push_pull(), True, 0.0)  # none
    assert sync.table.routes() == []
    sync.on_event(MemberEvent("dead", "b", ("127.0.0.1", 2), 6))
    assert sync.table.routes() == []
