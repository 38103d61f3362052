"""cluster.membership: SWIM state transitions, failure detection, gossip, on the simulator."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.delegate import Delegate
from cluster.members import MemberState, Update
from cluster.membership import Membership, MembershipConfig, Outgoing
from cluster.sim import SimNetwork
from cluster.transmit import TransmitQueue, retransmit_limit
from cluster.wire import MessageType

ALIVE, SUSPECT, DEAD, LEFT = MemberState
CFG = MembershipConfig()


def _cluster(n: int, seed: int = 0, **kwargs: Any) -> tuple[SimNetwork, list[str]]:
    sim = SimNetwork(seed=seed, wire=True, **kwargs)
    names = sim.start_cluster(n)
    assert sim.run_until_true(sim.all_know_all, 10) is not None
    return sim, names


def _kinds(sim: SimNetwork, observer: str, name: str) -> list[str]:
    return [e.kind for _, e in sim.nodes[observer].events if e.name == name]


# -- formulas and the transmit queue -------------------------------------------------------


def test_formulas() -> None:
    assert [retransmit_limit(4, n) for n in (1, 9, 10, 99, 1000)] == [4, 4, 8, 8, 16]
    assert CFG.suspicion_timeout(3) == 2.0 and CFG.suspicion_timeout(100) == 4.0
    assert CFG.push_pull_period(32) == 10.0 and CFG.push_pull_period(1000) == 60.0
    assert CFG.detection_bound(3) == 5.0


def test_transmit_queue_limits_and_order() -> None:
    queue: TransmitQueue[str] = TransmitQueue()
    for key in "abc":
        queue.push(key, key, 10)
    sent: list[str] = []
    for _ in range(10):
        items, used = queue.take(limit=3, max_bytes=25, max_items=5)
        assert used == 10 * len(items) <= 25
        sent.extend(items)
    assert sorted(sent) == sorted("abc" * 3)  # each exactly `limit` times
    assert sent[:2] == ["c", "b"]  # newest first among the least sent
    assert not queue
    queue.push("a", "old", 10)
    queue.push("a", "new", 10)  # replaces
    assert queue.take(3, 100, 10)[0] == ["new"] and len(queue) == 1
    queue.discard("a")
    assert len(queue) == 0 and list(queue) == []


# -- state transitions (hypothesis, against a reference model) -----------------------------

_updates = st.tuples(
    st.sampled_from(list(MemberState)), st.integers(0, 3), st.integers(1, 3)
)  # (state, incarnation, epoch) about node "x"


def _model(
    current: tuple[int, int, MemberState] | None, state: MemberState, inc: int, epoch: int
) -> tuple[int, int, MemberState] | None:
    """The precedence rules of the module docstring, written out plainly."""
    if current is None:
        return (epoch, inc, ALIVE) if state is ALIVE else None
    cur_epoch, cur_inc, cur_state = current
    if epoch != cur_epoch:
        return (epoch, inc, state) if epoch > cur_epoch else current
    if state is ALIVE:
        wins = inc > cur_inc
    elif state is SUSPECT:
        wins = cur_state in (ALIVE, SUSPECT) and (
            inc > cur_inc or (inc == cur_inc and cur_state is ALIVE)
        )
    else:
        wins = (
            cur_state is not LEFT and inc >= cur_inc and not (cur_state is DEAD and state is DEAD)
        )
    return (epoch, inc, state) if wins else current


def _gossip(m: Membership, updates: list[Update], now: float = 1.0) -> list[Outgoing]:
    body = {"from": "y", "updates": [u.to_wire() for u in updates]}
    return m.handle(("10.0.0.9", 1), MessageType.GOSSIP, body, now)


@settings(max_examples=300, deadline=None)
@given(st.lists(_updates, max_size=12))
def test_state_transitions_follow_the_rules(updates: list[tuple[MemberState, int, int]]) -> None:
    m = Membership("me", ("10.0.0.1", 1), 1, CFG, random.Random(0))
    model = None
    for state, inc, epoch in updates:
        before = m.get("x")
        before_key = None if before is None else (before.epoch, before.incarnation)
        _gossip(m, [Update(state, "x", ("10.0.0.2", 1), inc, epoch)])
        model = _model(model, state, inc, epoch)
        x = m.get("x")
        assert (None if x is None else (x.epoch, x.incarnation, x.state)) == model
        if before_key is not None and x is not None:
            assert (x.epoch, x.incarnation) >= before_key  # never goes back
    # Every state change was reported, in order, as an event.
    kinds = [e.kind for e in m.take_events()]
    assert all(k in ("join", "alive", "suspect", "dead", "left") for k in kinds)
    if model is not None:
        assert kinds[0] == "join"


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([SUSPECT, DEAD, LEFT]), st.integers(0, 5), st.integers(0, 5))
def test_refutation(state: MemberState, current: int, claimed: int) -> None:
    m = Membership("me", ("10.0.0.1", 1), 7, CFG, random.Random(0))
    _gossip(m, [Update(ALIVE, "y", ("10.0.0.2", 1), 0, 1)])
    m.tick(50.0)  # drain the first gossip
    m._me.incarnation = current
    _gossip(m, [Update(state, "me", ("10.0.0.1", 1), claimed, 7)])
    _gossip(m, [Update(SUSPECT, "me", ("10.0.0.1", 1), 99, 6)])  # an older run: ignored
    refuted = [int(ALIVE), "me", "10.0.0.1", 1, claimed + 1, 7]
    sent = [u for o in m.tick(100.0) for u in o.body.get("updates", [])]
    if claimed >= current:
        assert m.incarnation == claimed + 1
        assert refuted in sent  # the refutation is gossiped at once
    else:  # old news: no new incarnation, but our alive is spread again for whoever is behind
        assert m.incarnation == current
        assert [int(ALIVE), "me", "10.0.0.1", 1, current, 7] in sent
    me = m.get("me")
    assert me is not None and me.state is ALIVE


_junk = st.recursive(
    st.none() | st.integers() | st.text(max_size=5) | st.binary(max_size=5) | st.booleans(),
    lambda inner: (
        st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(MessageType)),
    st.dictionaries(
        st.sampled_from(
            [
                "seq",
                "from",
                "target",
                "target_addr",
                "updates",
                "deltas",
                "members",
                "state",
                "join",
            ]
        ),
        _junk,
    ),
)
def test_handle_never_raises(msg_type: MessageType, body: dict[str, Any]) -> None:
    m = Membership("me", ("10.0.0.1", 1), 1, CFG, random.Random(0))
    m.handle(("10.0.0.2", 1), msg_type, body, 1.0)
    m.tick(5.0)


# -- direct message handling ---------------------------------------------------------------


def test_ping_ack_and_indirect_relay() -> None:
    m = Membership("me", ("10.0.0.1", 1), 1, CFG, random.Random(0))
    (ack,) = m.handle(("10.0.0.2", 1), MessageType.PING, {"seq": 5, "target": "me"}, 0.0)
    assert ack.address == ("10.0.0.2", 1) and ack.msg_type is MessageType.ACK
    assert ack.body["seq"] == 5
    assert m.handle(("10.0.0.2", 1), MessageType.PING, {"seq": 6, "target": "other"}, 0.0) == []
    # PING_REQ: we ping the target with our own seq and relay its ACK with the requester's seq.
    req = {"seq": 9, "from": "a", "target": "t", "target_addr": ["10.0.0.3", 1]}
    (ping,) = m.handle(("10.0.0.2", 1), MessageType.PING_REQ, req, 0.0)
    assert ping.address == ("10.0.0.3", 1) and ping.msg_type is MessageType.PING
    (relayed,) = m.handle(("10.0.0.3", 1), MessageType.ACK, {"seq": ping.body["seq"]}, 0.05)
    assert relayed.address == ("10.0.0.2", 1) and relayed.body["seq"] == 9
    # No ACK in time: NACK to the requester.
    (ping,) = m.handle(("10.0.0.2", 1), MessageType.PING_REQ, {**req, "seq": 10}, 1.0)
    out = m.tick(1.0 + CFG.probe_timeout)
    assert [(o.msg_type, o.body["seq"]) for o in out if o.msg_type is MessageType.NACK] == [
        (MessageType.NACK, 10)
    ]


# -- whole clusters on the simulator -------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_join_converges(n: int) -> None:
    sim, names = _cluster(n)
    for node in sim.nodes.values():
        assert {m.name for m in node.membership.live_members()} == set(names) - {node.name}
        assert all(m.incarnation == 0 for m in node.membership.members.values())


@pytest.mark.parametrize("seed", range(4))
def test_killed_node_is_suspected_then_dead_within_bound(seed: int) -> None:
    sim, names = _cluster(5, seed=seed)
    victim = names[seed % 5]
    sim.kill(victim)
    took = sim.run_until_true(lambda: sim.states_of(victim) == {DEAD}, 30, step=0.05)
    assert took is not None and took <= CFG.detection_bound(5)
    timeout = CFG.suspicion_timeout(5)
    suspected = 0
    for observer in set(names) - {victim}:
        events = [(t, e.kind) for t, e in sim.nodes[observer].events if e.name == victim]
        assert events[-1][1] == "dead"
        if len(events) >= 2 and events[-2][1] == "suspect":  # else the dead news came first
            suspected += 1
            assert events[-1][0] - events[-2][0] <= timeout + 1e-9
    assert suspected >= 1


def test_indirect_probe_saves_a_node_behind_a_broken_link() -> None:
    sim, names = _cluster(4)
    sim.cut(names[0], names[1])  # only this link is broken: others can still reach both
    sim.run_for(15)
    assert sim.states_of(names[1]) == {ALIVE}
    assert sim.states_of(names[0]) == {ALIVE}
    assert sum(n.membership.stats["indirect_probes"] for n in sim.nodes.values()) > 0


def test_wrongly_suspected_node_refutes() -> None:
    sim, names = _cluster(5, seed=3)
    victim = names[2]
    sim.block(victim)
    took = sim.run_until_true(lambda: SUSPECT in sim.states_of(victim), 10, step=0.05)
    assert took is not None
    sim.unblock(victim)  # back before the suspicion timeout runs out
    assert sim.run_until_true(lambda: sim.states_of(victim) == {ALIVE}, 5) is not None
    assert sim.nodes[victim].membership.incarnation >= 1
    sim.run_for(5)
    assert all("dead" not in _kinds(sim, o, victim) for o in names if o != victim)
    assert sim.nodes[victim].membership.stats["refutes"] >= 1


def test_node_declared_dead_comes_back_with_its_routes() -> None:
    sim, names = _cluster(3, seed=1)
    victim = names[1]
    sim.announce(victim, "v/#")
    sim.run_for(1)
    sim.block(victim)
    assert sim.run_until_true(lambda: sim.states_of(victim) == {DEAD}, 15) is not None
    assert sim.route_nowhere(victim)
    sim.unblock(victim)  # gossip to the dead tells it; it refutes; the others resync with it
    assert sim.run_until_true(lambda: sim.states_of(victim) == {ALIVE}, 15) is not None
    assert sim.run_until_true(lambda: sim.route_everywhere("v/#", victim), 5) is not None


def test_partition_heals() -> None:
    sim, names = _cluster(6, seed=7)
    for name in names:
        sim.announce(name, f"r/{name}")
    everywhere = sim.run_until_true(
        lambda: all(sim.route_everywhere(f"r/{n}", n) for n in names), 5
    )
    assert everywhere is not None
    left, right = names[:3], names[3:]
    sim.partition(left, right)

    def split_seen() -> bool:
        def dead(observer: str, name: str) -> bool:
            member = sim.nodes[observer].membership.get(name)
            return member is not None and member.state is DEAD

        return all(dead(a, b) and dead(b, a) for a in left for b in right)

    split = sim.run_until_true(split_seen, 20)
    assert split is not None
    assert ("r/" + right[0], right[0]) not in sim.nodes[left[0]].table.routes()
    sim.run_for(20)  # well past gossip-to-the-dead: only reconnects can heal it now
    sim.partition()
    healed = sim.run_until_true(sim.all_know_all, CFG.reconnect_interval + 10)
    assert healed is not None
    routes = sim.run_until_true(lambda: all(sim.route_everywhere(f"r/{n}", n) for n in names), 5)
    assert routes is not None


def test_tombstones_are_reclaimed() -> None:
    m = Membership("me", ("10.0.0.1", 1), 1, CFG, random.Random(0))
    _gossip(
        m, [Update(ALIVE, "d", ("10.0.0.2", 1), 0, 1), Update(ALIVE, "l", ("10.0.0.3", 1), 0, 1)]
    )
    _gossip(m, [Update(DEAD, "d", ("10.0.0.2", 1), 0, 1), Update(LEFT, "l", ("10.0.0.3", 1), 0, 1)])
    m.tick(2 + CFG.left_reclaim_time)
    assert m.get("l") is None and m.get("d") is not None
    m.tick(2 + CFG.dead_reclaim_time)
    assert m.get("d") is None and len(m.members) == 1


def test_graceful_leave() -> None:
    sim, names = _cluster(5)
    sim.announce(names[3], "a/b")
    assert sim.run_until_true(lambda: sim.route_everywhere("a/b", names[3]), 5) is not None
    sim.leave(names[3])
    took = sim.run_until_true(lambda: sim.states_of(names[3]) == {LEFT}, 5, step=0.01)
    assert took is not None and took < 0.5
    assert sim.route_nowhere(names[3])
    sim.run_for(10)  # no one turns it into dead
    assert sim.states_of(names[3]) == {LEFT}
    assert all(_kinds(sim, o, names[3])[-1] == "left" for o in names if o != names[3])


@pytest.mark.parametrize("wait_for_dead", [True, False])
def test_restart_with_new_epoch_rejoins_clean(wait_for_dead: bool) -> None:
    sim, names = _cluster(5, seed=2)
    victim = names[4]
    sim.announce(victim, "old/#")
    sim.run_for(1)
    sim.kill(victim)
    if wait_for_dead:
        assert sim.run_until_true(lambda: sim.states_of(victim) == {DEAD}, 15) is not None
    node = sim.restart(victim, [names[0]])
    assert node.epoch == 2
    sim.announce(victim, "new/#")

    def new_run_known() -> bool:
        members = [sim.nodes[other].membership.get(victim) for other in names[:4]]
        return all(m is not None and m.epoch == 2 and m.state is ALIVE for m in members)

    assert sim.run_until_true(new_run_known, 5) is not None
    assert sim.all_know_all()
    assert all(_kinds(sim, other, victim)[-1] == "join" for other in names[:4])
    assert sim.run_until_true(lambda: sim.route_everywhere("new/#", victim), 5) is not None
    assert all(("old/#", victim) not in n.table.routes() for n in sim.live_nodes())
    sim.run_for(10)  # stale gossip of the first run never resurrects it
    assert sim.states_of(victim) == {ALIVE}


def test_converges_with_message_loss() -> None:
    sim = SimNetwork(seed=5, loss=0.10, wire=True)
    names = sim.start_cluster(8)
    assert sim.run_until_true(sim.all_know_all, 20) is not None
    sim.announce(names[5], "lossy/+")
    assert sim.run_until_true(lambda: sim.route_everywhere("lossy/+", names[5]), 10) is not None
    sim.kill(names[6])
    took = sim.run_until_true(lambda: sim.states_of(names[6]) == {DEAD}, 30)
    assert took is not None and took <= CFG.detection_bound(8)
    sim.run_for(10)
    # Loss causes false suspicions now and then (refuted); once it stops, all is well again.
    sim.loss = 0.0
    assert sim.run_until_true(sim.all_know_all, CFG.push_pull_interval) is not None
    # A node wrongly declared dead lost its routes on some nodes: the resync brings them back.
    assert sim.run_until_true(lambda: sim.route_everywhere("lossy/+", names[5]), 2) is not None


def test_push_pull_alone_repairs_routes() -> None:
    cfg = MembershipConfig(push_pull_interval=2.0)
    sim = SimNetwork(cfg, seed=4, route_gossip=False)
    names = sim.start_cluster(6)
    assert sim.run_until_true(sim.all_know_all, 10) is not None
    sim.announce(names[2], "pp/#")
    assert sim.run_until_true(lambda: sim.route_everywhere("pp/#", names[2]), 30) is not None
    sim.announce(names[2], "pp/#", present=False)
    assert sim.run_until_true(lambda: sim.route_nowhere(names[2]), 30) is not None


def test_join_retries_until_the_seed_is_up() -> None:
    sim = SimNetwork(seed=0)
    a = sim.add_node("a")
    sim.add_node("b")
    sim.kill("a")  # the seed is not up yet
    sim.join("b", ["a"])
    sim.run_for(3)
    assert sim.nodes["b"].membership.live_count == 1
    sim.restart("a", [], epoch=a.epoch)
    assert sim.run_until_true(sim.all_know_all, 5) is not None


@pytest.mark.parametrize("seed", range(6))
def test_chaos_then_calm_converges(seed: int) -> None:
    """Random kills, restarts, leaves, partitions, loss and route churn; then calm: the cluster
    must agree on who is up, and every table must hold exactly the routes of the running nodes."""
    rnd = random.Random(seed)
    sim = SimNetwork(seed=seed, wire=True)
    names = sim.start_cluster(6)
    assert sim.run_until_true(sim.all_know_all, 10) is not None
    filters = ["a", "a/+", "b/#", "c/d"]
    for _ in range(25):
        up = [n.name for n in sim.live_nodes()]
        down = [n for n in names if n not in up]
        action = rnd.choice(["kill", "leave", "restart", "split", "heal", "loss", "route", "route"])
        if action in ("kill", "leave") and len(up) > 2:
            victim = rnd.choice(up)
            sim.kill(victim) if action == "kill" else sim.leave(victim)
        elif action == "restart" and down:
            sim.restart(rnd.choice(down), names)  # seeds: every node, as a config would list
        elif action == "split":
            shuffled = rnd.sample(names, len(names))
            sim.partition(shuffled[:3], shuffled[3:])
        elif action == "heal":
            sim.partition()
        elif action == "loss":
            sim.loss = rnd.choice([0.0, 0.05, 0.2])
        else:
            node = rnd.choice(up)
            sim.announce(node, rnd.choice(filters), rnd.random() < 0.7)
        sim.run_for(rnd.uniform(0.1, 4.0))
    sim.partition()
    sim.loss = 0.0

    def calm() -> bool:
        up = {n.name: n for n in sim.live_nodes()}
        for node in up.values():
            for name in names:
                m = node.membership.get(name)
                if name in up:
                    if m is None or m.state is not ALIVE or m.epoch != up[name].epoch:
                        return False
                elif m is not None and m.state is ALIVE:
                    return False
        truth = sorted((f, n.name) for n in up.values() for f in n.table.local_routes())
        return all(node.table.routes() == truth for node in up.values())

    assert sim.run_until_true(calm, 60) is not None


class _Chatty(Delegate):
    """A delegate that always has a broadcast queued (a lone node's route changes)."""

    def has_broadcasts(self) -> bool:
        return True


def test_a_lone_node_does_not_wake_to_probe_or_gossip() -> None:
    """With nobody else in its table, neither the probe nor the gossip interval brings the
    deadline forward (they would wake the loop several times a second for nothing); once a
    second member is known, both do."""
    cfg = MembershipConfig()
    m = Membership("a", ("10.0.0.1", 1), 1, cfg, random.Random(0), _Chatty())
    m.tick(0.0)
    quiet = min(cfg.probe_interval, cfg.gossip_interval)
    assert m.next_deadline() > quiet * 3
    _gossip(m, [Update(ALIVE, "y", ("10.0.0.9", 1), 0, 1)])
    assert m.next_deadline() <= max(cfg.probe_interval, cfg.gossip_interval)
