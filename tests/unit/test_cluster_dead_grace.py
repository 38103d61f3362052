"""The grace of a peer declared dead (`cluster.dead_hold`, `[cluster] dead_hold`): the pure
clock of the graces, the route table kept through a grace (`RouteSync.keep_dead`) and replaced
by the peer's current routes when it comes back, shared dispatch that never picks a member on a
dead node while a live one exists, and `PeerGrace` driving them from member events."""

from __future__ import annotations

from collections import Counter

import pytest

from broker.core.message import Message
from cluster.dead_hold import DeadHold, PeerGrace
from cluster.delegate import MemberEvent
from cluster.forwarder import Forwarder
from cluster.routes import RouteTable
from cluster.shared_dispatch import ClusterSharedDispatcher
from cluster.sync import RouteSync
from cluster.transport import Transport

B = ("127.0.0.1", 2)


# -- DeadHold: which dead peers are held, until when -------------------------------------------


def test_a_grace_ends_after_its_seconds() -> None:
    hold = DeadHold(10.0)
    grace = hold.start("b", 5, B, now=100.0)
    assert grace is not None and grace.until == 110.0
    assert "b" in hold and len(hold) == 1 and hold.next_deadline() == 110.0
    assert hold.due(109.9) == []
    assert hold.due(110.0) == [grace]
    assert "b" not in hold and hold.next_deadline() is None
    assert hold.due(200.0) == []  # once


def test_a_peer_that_comes_back_is_not_expired() -> None:
    hold = DeadHold(10.0)
    hold.start("b", 5, B, now=0.0)
    assert hold.end("b") is not None  # alive again: nothing purged later
    assert hold.next_deadline() is None and hold.due(100.0) == []
    assert hold.end("b") is None


def test_a_second_verdict_starts_a_new_grace() -> None:
    hold = DeadHold(10.0)
    hold.start("b", 5, B, now=0.0)
    hold.end("b")
    again = hold.start("b", 5, B, now=8.0)  # back, then dead again
    assert hold.due(10.0) == []  # the first grace's end is stale
    assert hold.next_deadline() == 18.0
    assert hold.due(18.0) == [again]


def test_a_later_verdict_replaces_the_earlier_one() -> None:
    hold = DeadHold(10.0)
    hold.start("b", 5, B, now=0.0)
    newer = hold.start("b", 6, ("127.0.0.1", 3), now=4.0)  # a new run, dead too
    assert hold.due(10.0) == [] and hold.due(14.0) == [newer]


def test_graces_end_in_order_of_their_deadlines() -> None:
    hold = DeadHold(5.0)
    c = hold.start("c", 1, ("127.0.0.1", 4), now=3.0)
    b = hold.start("b", 1, B, now=1.0)
    assert hold.next_deadline() == 6.0
    assert hold.due(100.0) == [b, c]


def test_zero_seconds_holds_nothing() -> None:
    hold = DeadHold(0.0)
    assert hold.start("b", 5, B, now=0.0) is None
    assert "b" not in hold and hold.next_deadline() is None
    with pytest.raises(ValueError):
        DeadHold(-1.0)


# -- RouteSync: routes through a grace ------------------------------------------------------


def _synced(keep_dead: bool) -> tuple[RouteSync, RouteTable]:
    """Node a's sync, knowing b (run 5) with routes t/1 and t/2."""
    sync = RouteSync(RouteTable("a", 1), keep_dead=keep_dead)
    b = RouteTable("b", 5)
    b.local_update("t/1", True)
    b.local_update("t/2", True)
    sync.on_event(MemberEvent("join", "b", B, 5))
    sync.merge_remote_state(b.state_for_push_pull(), False, 0.0)
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]
    return sync, b


def test_without_a_grace_a_dead_peer_is_purged_at_the_verdict() -> None:
    sync, _ = _synced(keep_dead=False)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    assert sync.table.routes() == []


def test_a_dead_peer_keeps_its_routes_until_its_grace_ends() -> None:
    sync, b = _synced(keep_dead=True)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    assert sync.table.remote_match("t/1") == {"b"}  # publishes still target it
    # frozen meanwhile: news of a dead node is refused, as before
    sync.receive_broadcasts([b.local_update("t/3", True).to_wire()], 0.0)
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]
    assert sync.purge_dead("b", 5)
    assert sync.table.routes() == []
    assert not sync.purge_dead("b", 5)


def test_the_routes_of_a_peer_back_are_its_current_ones() -> None:
    """Kept routes are replaced by the peer's own snapshot in the push/pull of its return:
    a route it withdrew while apart does not linger, one it added appears."""
    sync, b = _synced(keep_dead=True)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    b.local_update("t/1", False)  # while apart
    b.local_update("t/4", True)
    sync.on_event(MemberEvent("alive", "b", B, 5))
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]  # until the push/pull
    sync.merge_remote_state(b.state_for_push_pull(), False, 0.0)
    assert sync.table.routes() == [("t/2", "b"), ("t/4", "b")]
    assert not sync.purge_dead("b", 5)  # a late end of the grace purges nothing: it is live
    assert sync.table.routes() == [("t/2", "b"), ("t/4", "b")]


def test_a_peer_back_with_a_new_run_replaces_the_kept_routes() -> None:
    sync, _ = _synced(keep_dead=True)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 3), 6))  # restarted elsewhere
    # the old run's routes stay until the new run's own arrive (cluster.sync): its restored
    # persistent sessions are still served meanwhile
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]
    run6 = RouteTable("b", 6)
    run6.local_update("t/9", True)
    sync.merge_remote_state(run6.state_for_push_pull(), True, 0.0)
    assert sync.table.routes() == [("t/9", "b")]


def test_a_peer_that_leaves_is_purged_at_once() -> None:
    sync, _ = _synced(keep_dead=True)
    sync.on_event(MemberEvent("left", "b", B, 5))
    assert sync.table.routes() == []
    sync, _ = _synced(keep_dead=True)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    sync.on_event(MemberEvent("left", "b", B, 5))  # force-leave of a dead node
    assert sync.table.routes() == []


# -- shared dispatch with the kept routes of a dead node ----------------------------------------


def test_shared_dispatch_never_picks_a_dead_node_while_a_live_one_has_members() -> None:
    table = RouteTable("a", 1)
    for node in ("b", "c"):
        other = RouteTable(node, 1)
        other.local_shared_update("g", "t/#", True)
        table.merge_full(other.state_for_push_pull())
    live = {"b"}  # c is dead, its route kept through its grace
    sent: list[str] = []

    def send(node: str, group: str, filt: str, message: Message) -> bool:
        sent.append(node)
        return node in live

    def dispatcher(strategy: str) -> ClusterSharedDispatcher:
        return ClusterSharedDispatcher(
            table, "a", lambda m, g, f: 0, send, strategy=strategy, alive=lambda n: n in live
        )

    for strategy in ("round_robin", "random", "hash_clientid", "hash_topic"):
        each = dispatcher(strategy)
        for i in range(20):
            assert each.dispatch(Message(f"t/{i}", b"x", 1, publisher=f"p{i}")) == 1
    assert set(sent) == {"b"}
    last = dispatcher("round_robin")
    live.clear()  # b dead too: only dead members left, the message goes to one of them
    sent.clear()
    assert last.dispatch(Message("t/x", b"x", 1)) == 0  # (their sends drop and count)
    assert set(sent) == {"b", "c"} and last.dropped == 1


# -- PeerGrace: the policy applied to routes, held forwards and the link -------------------------


def _grace(seconds: float) -> tuple[PeerGrace, RouteSync, Forwarder, Counter[str]]:
    sync, _ = _synced(keep_dead=False)
    stats: Counter[str] = Counter()
    transport = Transport("a", 1, "cookie", lambda *x: None)
    forwarder = Forwarder(transport, "a", stats, lambda n: None)
    return PeerGrace(seconds, sync, forwarder, transport, stats), sync, forwarder, stats


def test_peer_grace_keeps_a_dead_peer_then_counts_its_forwards_then_purges_it() -> None:
    grace, sync, _, stats = _grace(30.0)
    assert sync.keep_dead
    sync.on_event(MemberEvent("dead", "b", B, 5))  # (membership tells the sync first)
    grace.dead("b", 5, B, now=10.0)
    assert grace.holds("b") and sync.table.remote_match("t/1") == {"b"}
    assert grace.next_deadline() == 40.0 and grace.active()
    assert grace.expire(39.0) == 0 and grace.holds("b")
    grace.dropped("b", 1)  # within the grace a forward is held, not dropped: nothing counted
    assert stats["forward/held_dropped"] == 0
    assert grace.expire(40.0) == 1
    assert stats["dead_hold/started"] == 1 and stats["dead_hold/expired"] == 1
    # Past the grace: the routes stay (frozen) so that what is sent for it is counted.
    assert not grace.holds("b") and sync.table.remote_match("t/1") == {"b"} and grace.active()
    grace.dropped("b", 1)
    grace.dropped("b", 2)
    grace.dropped("b", 0)  # QoS 0: counted in forward/dropped only (by the runtime)
    grace.dropped("c", 1)  # not a dead peer past its grace here
    assert stats["forward/held_dropped"] == stats["forward/held_dropped/after_grace"] == 2
    assert grace.next_deadline() == 40.0 + 3600.0
    assert grace.expire(3639.0) == 0 and sync.table.remote_match("t/1") == {"b"}
    grace.expire(3640.0)  # forgotten, as membership forgets a dead member: purged
    assert sync.table.routes() == [] and not grace.active() and grace.next_deadline() is None


def test_peer_grace_counting_ends_when_the_peer_comes_back() -> None:
    grace, sync, _, stats = _grace(30.0)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    grace.dead("b", 5, B, now=0.0)
    grace.expire(30.0)
    sync.on_event(MemberEvent("alive", "b", B, 5))
    grace.back("b", B)
    grace.dropped("b", 1)
    assert stats["forward/held_dropped"] == 0 and not grace.active()
    assert grace.expire(5000.0) == 0
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]  # its own, not purged


def test_peer_grace_ends_when_the_peer_comes_back() -> None:
    grace, sync, _, stats = _grace(30.0)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    grace.dead("b", 5, B, now=0.0)
    sync.on_event(MemberEvent("alive", "b", B, 5))
    grace.back("b", B)
    assert not grace.holds("b") and stats["dead_hold/returned"] == 1
    assert grace.expire(100.0) == 0
    assert sync.table.routes() == [("t/1", "b"), ("t/2", "b")]  # not purged


def test_peer_grace_of_zero_and_a_leave_purge_at_once() -> None:
    grace, sync, _, stats = _grace(0.0)
    assert not sync.keep_dead
    sync.on_event(MemberEvent("dead", "b", B, 5))
    grace.dead("b", 5, B, now=0.0)
    assert not grace.holds("b") and sync.table.routes() == [] and not stats
    grace, sync, _, _ = _grace(30.0)
    sync.on_event(MemberEvent("dead", "b", B, 5))
    grace.dead("b", 5, B, now=0.0)
    sync.on_event(MemberEvent("left", "b", B, 5))
    grace.left("b", B)
    assert not grace.holds("b") and sync.table.routes() == [] and grace.expire(100.0) == 0
