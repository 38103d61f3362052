"""cluster.probe: any frame from a member answers our probe of it (`Membership.heard_from`).

Under load a PING or its ACK waits behind megabytes of FORWARDs on the same TCP link; traffic
from a member proves it is running. A member that sends nothing is still suspected.

Each test drives one `Membership` with a fake clock: a member is learnt at T_JOIN, the first
`tick` at T0 (a probe interval later, so past the random first probe time) pings it.
"""

from __future__ import annotations

import random

from cluster.members import MemberState, Update
from cluster.membership import Membership, MembershipConfig, Outgoing
from cluster.wire import MessageType

CFG = MembershipConfig()
INTERVAL = CFG.probe_interval
T_JOIN = 10.0
T0 = T_JOIN + INTERVAL  # the first tick: the probe is sent then
EPS = 0.01


def _membership(*peers: str) -> Membership:
    m = Membership("me", ("10.0.0.1", 1), 1, CFG, random.Random(0))
    updates = [
        Update(MemberState.ALIVE, name, ("10.0.0.2", i + 2), 0, 1).to_wire()
        for i, name in enumerate(peers)
    ]
    m.handle(("10.0.0.9", 1), MessageType.GOSSIP, {"from": "z", "updates": updates}, T_JOIN)
    return m


def _pings(out: list[Outgoing]) -> list[Outgoing]:
    return [o for o in out if o.msg_type is MessageType.PING]


def _probe(m: Membership) -> str:
    """Tick at T0: the probe goes out; its target's name."""
    (ping,) = _pings(m.tick(T0))
    target = ping.body["target"]
    assert isinstance(target, str)
    return target


def _state(m: Membership, name: str) -> MemberState:
    member = m.get(name)
    assert member is not None
    return member.state


def test_a_silent_target_still_fails_its_probe_and_is_suspected() -> None:
    m = _membership("x", "y")
    target = _probe(m)
    out = m.tick(T0 + CFG.probe_timeout)
    assert [o.msg_type for o in out if o.msg_type is MessageType.PING_REQ] == [
        MessageType.PING_REQ
    ], "no ACK in time: an indirect probe through the other member"
    m.tick(T0 + INTERVAL)
    assert _state(m, target) is MemberState.SUSPECT
    assert m.stats["probe_failures"] == 1
    assert m.stats["probes/answered_by_traffic"] == 0


def test_traffic_from_the_target_while_probed_answers_the_probe() -> None:
    m = _membership("x", "y")
    target = _probe(m)
    m.heard_from(target, T0 + CFG.probe_timeout / 2)
    assert m.stats["probes/answered_by_traffic"] == 1
    out = m.tick(T0 + CFG.probe_timeout)
    assert not [o for o in out if o.msg_type is MessageType.PING_REQ], "answered: no indirect"
    assert m.stats["indirect_probes"] == 0
    m.tick(T0 + INTERVAL)
    assert _state(m, target) is MemberState.ALIVE
    assert m.stats["probe_failures"] == 0


def test_traffic_from_another_member_does_not_answer_the_probe() -> None:
    m = _membership("x", "y")
    target = _probe(m)
    other = "y" if target == "x" else "x"
    m.heard_from(other, T0 + CFG.probe_timeout / 2)
    m.tick(T0 + CFG.probe_timeout)
    assert m.stats["indirect_probes"] == 1
    m.tick(T0 + INTERVAL)
    assert _state(m, target) is MemberState.SUSPECT
    assert _state(m, other) is MemberState.ALIVE


def test_traffic_within_a_probe_interval_before_the_probe_prevents_suspicion() -> None:
    m = _membership("x")
    m.heard_from("x", T0 - INTERVAL + EPS)
    assert _probe(m) == "x"
    m.tick(T0 + CFG.probe_timeout)  # still outstanding: the indirect probe goes out
    assert m.stats["indirect_probes"] == 1
    m.tick(T0 + INTERVAL)
    assert _state(m, "x") is MemberState.ALIVE
    assert m.stats["probe_failures"] == 0
    assert m.stats["probes/answered_by_traffic"] == 1


def test_traffic_older_than_a_probe_interval_before_the_probe_does_not() -> None:
    m = _membership("x")
    m.heard_from("x", T0 - INTERVAL - EPS)
    assert _probe(m) == "x"
    m.tick(T0 + CFG.probe_timeout)
    m.tick(T0 + INTERVAL)
    assert _state(m, "x") is MemberState.SUSPECT
    assert m.stats["probe_failures"] == 1
    assert m.stats["probes/answered_by_traffic"] == 0


def test_a_member_that_goes_silent_is_suspected_two_probes_later() -> None:
    m = _membership("x")
    assert _probe(m) == "x"
    m.heard_from("x", T0 + EPS)  # answers the first probe; the last frame it ever sends
    now = T0
    for k in range(1, 101):
        now = T0 + k * INTERVAL / 10
        m.tick(now)
        if _state(m, "x") is not MemberState.ALIVE:
            break
    assert _state(m, "x") is MemberState.SUSPECT
    # The probe sent at T0 + INTERVAL still counts that frame (heard less than an interval
    # before it was sent); the next one, sent at T0 + 2 * INTERVAL, fails at its end.
    assert T0 + 3 * INTERVAL - EPS <= now <= T0 + 3 * INTERVAL + EPS
    assert m.stats["probes/answered_by_traffic"] == 2
    assert m.stats["probe_failures"] == 1


def _heard(m: Membership) -> set[str]:
    """The senders whose last frame the prober remembers (internal: what must stay bounded)."""
    return set(m._prober._heard)


def test_a_reaped_member_is_forgotten_by_the_prober() -> None:
    m = _membership("x", "y")
    # x fell silent longer than the suspicion timeout ago: a "dead" verdict about it is believed
    m.heard_from("x", T0 - CFG.suspicion_timeout(3) - EPS)
    m.heard_from("y", T_JOIN)
    dead = Update(MemberState.DEAD, "x", ("10.0.0.2", 2), 0, 1).to_wire()
    m.handle(("10.0.0.9", 1), MessageType.GOSSIP, {"from": "z", "updates": [dead]}, T0)
    assert _state(m, "x") is MemberState.DEAD
    now = T0
    for k in range(1, 11):  # y keeps talking; x is kept as a tombstone, then reaped
        now = T0 + k * CFG.dead_reclaim_time / 5
        m.heard_from("y", now)
        m.tick(now)
    assert m.get("x") is None, "reaped"
    assert _heard(m) == {"y"}
    # A frame from x after it was reaped (before it rejoins) is kept only briefly.
    m.heard_from("x", now)
    m.tick(now + 2 * INTERVAL + 1.0)
    assert "x" not in _heard(m)


def test_frames_older_than_any_probe_can_use_are_dropped_and_recent_ones_kept() -> None:
    """A probe counts frames of the interval before it was sent and lasts one interval: what is
    older than two intervals is dropped at the next reap pass (one a second)."""
    assert 2 * INTERVAL <= 1.0  # the passes below are 1 s apart
    m = _membership("x")  # started at T_JOIN: reap passes at T_JOIN + 1, + 2, ...
    m.heard_from("stranger", T_JOIN + EPS)  # a sender that never became a member
    m.heard_from("x", T_JOIN + EPS)
    m.tick(T_JOIN + 1.0)
    assert _heard(m) == {"x", "stranger"}, "heard within two probe intervals: kept"
    m.heard_from("x", T_JOIN + 2.0 - EPS)
    m.tick(T_JOIN + 2.0)
    assert _heard(m) == {"x"}
