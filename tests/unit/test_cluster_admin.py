"""Membership's operator changes, sans-IO: isolate (after leave), rejoin, force_leave."""

from __future__ import annotations

import random

from cluster.membership import Membership, MembershipConfig, MemberState
from cluster.wire import MessageType

ME, X, Y = "me@h", "x@h", "y@h"


def gossip(m: Membership, *updates: list[object], now: float = 1.0) -> None:
    m.handle(("h", 2), MessageType.GOSSIP, {"from": X, "updates": list(updates)}, now)


def member(
    name: str, port: int, state: MemberState = MemberState.ALIVE, inc: int = 0
) -> list[object]:
    return [int(state), name, "h", port, inc, 7]


def fresh() -> Membership:
    m = Membership(ME, ("h", 1), 5, MembershipConfig(), random.Random(1))
    gossip(m, member(X, 2), member(Y, 3))
    assert m.live_count == 3
    m.take_events()
    return m


def test_isolate_forgets_everyone_and_ignores_membership_until_rejoin() -> None:
    m = fresh()
    out = m.leave(2.0)
    assert {o.msg_type for o in out} == {MessageType.LEAVE}
    assert m.isolate(2.0) == []
    assert m.isolated and m.live_members() == []  # (live_count 0: we are left too)
    assert m.get(X) is None and m.get(Y) is None
    assert sorted((e.kind, e.name) for e in m.take_events()) == [("left", X), ("left", Y)]
    gossip(m, member(X, 2, inc=4), now=3.0)  # the others keep talking: ignored
    assert m.get(X) is None and m.stats["ignored"] == 1
    assert all(o.msg_type is not MessageType.PUSH_PULL_REQ for o in m.tick(1000.0))  # no rejoining
    left_at = m.incarnation
    out = m.rejoin([("h", 2)], 1001.0)
    assert not m.isolated and not m.leaving
    assert m.incarnation == left_at + 1  # alive one past our `left`: it wins everywhere
    assert m.members[ME].state is MemberState.ALIVE
    assert [(o.address, o.msg_type) for o in out] == [(("h", 2), MessageType.PUSH_PULL_REQ)]
    gossip(m, member(X, 2, inc=4), now=1002.0)
    assert m.live_count == 2


def test_rejoin_of_a_member_adds_a_seed_only() -> None:
    m = fresh()
    inc = m.incarnation
    out = m.rejoin([("h", 9)], 2.0)
    assert m.incarnation == inc and [o.address for o in out] == [("h", 9)]


def test_force_leave_marks_a_dead_member_left_and_gossips_it() -> None:
    m = fresh()
    assert not m.force_leave(X, 2.0)  # alive: it would refute
    assert not m.force_leave(ME, 2.0) and not m.force_leave("nobody@h", 2.0)
    gossip(m, member(X, 2, MemberState.DEAD), now=2.0)
    assert m.members[X].state is MemberState.DEAD
    m.take_events()
    assert m.force_leave(X, 3.0)
    assert m.members[X].state is MemberState.LEFT
    assert [(e.kind, e.name) for e in m.take_events()] == [("left", X)]
    assert not m.force_leave(X, 4.0)  # left already
    sent = [o for o in m.tick(100.0) if o.msg_type is MessageType.GOSSIP]
    assert any(u[0] == int(MemberState.LEFT) and u[1] == X for o in sent for u in o.body["updates"])
