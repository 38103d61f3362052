"""Stale "dead" verdicts after a partition heals (`cluster.membership._heard_lately`).

When two sides of a partition meet again, the verdicts each side held about the other spread by
gossip; a node can hear "X is dead" about X on its *own* side before X's refutation reaches it.
A verdict about a member whose frames reached us within the suspicion timeout makes us suspect
it only; one about a member silent that long (a real death) is taken as before.
"""

from __future__ import annotations

import random

from cluster.members import MemberState, Update
from cluster.membership import Membership, MembershipConfig
from cluster.wire import MessageType

CFG = MembershipConfig()
T = 100.0
FROM = ("10.0.0.9", 1)


def _node(*peers: str) -> Membership:
    m = Membership("me", ("10.0.0.1", 1), 1, CFG, random.Random(0))
    alive = [
        Update(MemberState.ALIVE, p, ("10.0.0.2", i + 2), 0, 1).to_wire()
        for i, p in enumerate(peers)
    ]
    m.handle(FROM, MessageType.GOSSIP, {"from": "z", "updates": alive}, T)
    return m


def _gossip(m: Membership, state: MemberState, name: str, incarnation: int, now: float) -> None:
    update = Update(state, name, ("10.0.0.2", 2), incarnation, 1).to_wire()
    m.handle(FROM, MessageType.GOSSIP, {"from": "far-side", "updates": [update]}, now)


def _dead_events(m: Membership) -> list[str]:
    return [e.name for e in m.take_events() if e.kind == "dead"]


def test_a_dead_verdict_about_a_member_we_hear_from_only_makes_us_suspect_it() -> None:
    m = _node("x", "y")
    m.take_events()
    m.heard_from("x", T + 0.5)  # x's frames reach us (our own side of the healed split)
    _gossip(m, MemberState.DEAD, "x", 0, T + 1.0)  # the far side's verdict, same incarnation
    assert m.get("x").state is MemberState.SUSPECT  # type: ignore[union-attr]
    assert _dead_events(m) == []
    assert m.stats["dead_doubted"] == 1
    _gossip(m, MemberState.ALIVE, "x", 1, T + 1.2)  # x heard it and refuted
    m.tick(T + 1.0 + CFG.suspicion_timeout(3) + 0.1)  # the suspicion timer is void now
    assert m.get("x").state is MemberState.ALIVE  # type: ignore[union-attr]
    assert _dead_events(m) == []


def test_the_verdict_is_doubted_also_when_a_full_state_made_us_suspect_it_first() -> None:
    m = _node("x", "y")
    m.heard_from("x", T + 0.5)
    dead = Update(MemberState.DEAD, "x", ("10.0.0.2", 2), 0, 1).to_wire()
    body = {"from": "far", "join": False, "members": [dead], "state": None}
    m.handle(FROM, MessageType.PUSH_PULL_RESP, body, T + 1.0)  # a full state: suspect only
    assert m.get("x").state is MemberState.SUSPECT  # type: ignore[union-attr]
    _gossip(m, MemberState.DEAD, "x", 0, T + 1.0)  # then the verdict itself, by gossip
    assert m.get("x").state is MemberState.SUSPECT  # type: ignore[union-attr]
    assert _dead_events(m) == []


def test_a_dead_verdict_about_a_silent_member_is_believed() -> None:
    m = _node("x", "y")
    m.take_events()
    m.heard_from("x", T)
    later = T + CFG.suspicion_timeout(3) + 0.1  # x silent since: it may really be dead
    _gossip(m, MemberState.DEAD, "x", 0, later)
    assert m.get("x").state is MemberState.DEAD  # type: ignore[union-attr]
    assert _dead_events(m) == ["x"]


def test_a_doubted_member_that_never_refutes_is_dead_after_the_suspicion_timeout() -> None:
    m = _node("x", "y")
    m.take_events()
    m.heard_from("x", T + 0.5)
    _gossip(m, MemberState.DEAD, "x", 0, T + 1.0)
    m.tick(T + 1.0 + CFG.suspicion_timeout(3) + 0.01)
    assert m.get("x").state is MemberState.DEAD  # type: ignore[union-attr]


def test_a_verdict_for_an_incarnation_already_refuted_is_ignored() -> None:
    m = _node("x", "y")
    _gossip(m, MemberState.ALIVE, "x", 3, T + 0.1)  # x refuted up to incarnation 3
    m.take_events()
    _gossip(m, MemberState.DEAD, "x", 2, T + 5.0)  # silent or not: older than what we know
    _gossip(m, MemberState.SUSPECT, "x", 2, T + 5.0)
    assert m.get("x").state is MemberState.ALIVE  # type: ignore[union-attr]
    assert m.take_events() == []


def test_a_node_told_it_is_dead_refutes_with_a_higher_incarnation() -> None:
    m = _node("x")
    _gossip(m, MemberState.DEAD, "me", 0, T + 1.0)
    assert m.incarnation == 1
    assert m.stats["refutes"] == 1
