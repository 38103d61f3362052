"""Two copies of one session after a partition: folded, not chosen (`broker.core.session_fold`,
`cluster.takeover_fold`), so a QoS 2 message the client had from one copy is not delivered
again from the other (MQTT-4.3.3-2: QoS 2 is delivered exactly once).

The pure fold first, then the README's isolate_sub case over the in-memory `Net` of
test_cluster_takeover: the client moves across the cut to the isolated node, which delivers
what was held for it; after the heal its next node's claim takes the majority side's copy,
whose queue holds the same messages.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from cluster_fakes import FakeClient
from test_cluster_takeover import (
    Net,
    cid_owned_by,
    persistent_then_away,
    released_then_gone,
    settle,
)

from broker.core.message import Message
from broker.core.qos2_once import SEEN_MAX
from broker.core.session_fold import SEEN_ONLY, delivered_qos2, fold_copies
from broker.protocol.packets import PubComp, Publish, PubRec, PubRel
from cluster.takeover_fold import COLLECT_METHOD
from cluster.takeover_heal import PARK_MAX


def _item(stamp: list[Any] | None, qos: int = 2, payload: bytes = b"x") -> list[Any]:
    message: dict[str, Any] = {"topic": "w/1", "payload": payload, "qos": qos}
    if stamp is not None:
        message["hlc"] = stamp
    return [message, qos, False, None]


def _copy(arrived: int, queue: list[list[Any]], seen: list[list[Any]]) -> dict[str, Any]:
    return {
        "client_id": "roam",
        "arrived": [arrived, 0, "n"],
        "disconnected_at": 1.0,
        "queue": queue,
        "qos2_seen": seen,
        "awaiting_rel": [],
        "subscriptions": [["w/#", 2, False, False, 0, None]],
    }


S1, S2, S3, S4 = ([10 + i, 0, "p"] for i in range(4))


def test_what_one_copy_delivered_leaves_the_other_copys_queue() -> None:
    # The stale copy (arrived first) queued S1..S3; the client had S1 and S2 from the later
    # copy, which still queues S4 (the stale one never saw it).
    stale = _copy(100, [_item(S1), _item(S2), _item(S3)], [S1, S2, S3])
    used = _copy(200, [_item(S4)], [S1, S2, S4])
    assert delivered_qos2(used) == {tuple(S1), tuple(S2)}
    for order in ([stale, used], [used, stale], [None, used, stale]):
        folded = fold_copies(order)
        state = folded.state
        assert state is not None
        assert state["arrived"] == [200, 0, "n"]  # the copy the client arrived at last
        assert [item[0]["hlc"] for item in state["queue"]] == [S4, S3]  # S3: no loss
        assert sorted(map(tuple, state["qos2_seen"])) == [tuple(s) for s in (S1, S2, S3, S4)]
        assert (folded.removed, folded.added, folded.dropped) == (0, 1, 2)


def test_the_base_loses_what_the_other_copy_delivered() -> None:
    base = _copy(300, [_item(S1), _item(S2), _item(None, qos=1)], [S1, S2])
    other = _copy(100, [], [S1])  # delivered S1 (in its record, not queued)
    folded = fold_copies([base, other])
    assert folded.state is not None
    assert [item[0].get("hlc") for item in folded.state["queue"]] == [S2, None]
    assert folded.removed == 1


def test_qos1_of_the_other_copy_is_counted_not_carried() -> None:
    base = _copy(300, [], [])
    other = _copy(100, [_item(None, qos=1)], [])
    folded = fold_copies([base, other])
    assert folded.state is not None and folded.state["queue"] == []
    assert folded.dropped == 1


def test_one_copy_or_none_is_left_as_it_is() -> None:
    only = _copy(100, [_item(S1)], [S1])
    assert fold_copies([None, only]).state == only
    assert fold_copies([None]).state is None


def test_what_the_other_copy_sent_but_never_released_is_carried() -> None:
    """The other copy sent S1 and S2 (accepted, not queued): S1 awaits PUBREC, so a client
    that delivers on PUBREL (MQTT 4.3.3 method A) has not had it and nobody will release it
    once that copy is gone: carried into the base. S2 awaits PUBCOMP: released, so it is
    delivered and leaves the base's queue, as before."""
    base = _copy(300, [_item(S2), _item(S3)], [S2, S3])
    other = _copy(100, [], [S1, S2])
    other["inflight"] = [
        [7, _item(S1)[0], 2, False, None, False],
        [8, _item(S2)[0], 2, False, None, True],
    ]
    assert delivered_qos2(other) == {tuple(S2)}
    folded = fold_copies([base, other])
    assert folded.state is not None
    assert [item[0]["hlc"] for item in folded.state["queue"]] == [S3, S1]
    assert (folded.removed, folded.added) == (1, 1)


def test_what_the_other_copy_released_goes_on_under_its_packet_id() -> None:
    """The other copy released S1 (awaiting PUBCOMP under id 8) and went: its PUBREL may never
    have reached the client, which then still holds S1. The exchange goes on in the base
    (resumed, it sends PUBREL 8: MQTT-4.4.0-1), never S1 again (MQTT-4.3.3-2); not when the
    base uses id 8 itself, whose state for it is the client's now."""
    released = [8, _item(S1)[0], 2, False, None, True]
    other = _copy(100, [], [S1])
    other["inflight"] = [released, [9, _item(S2)[0], 2, False, None, False]]
    base = _copy(300, [], [])
    base["inflight"] = [[3, _item(S3)[0], 2, False, None, False]]
    folded = fold_copies([base, other])
    assert folded.state is not None
    assert [entry[0] for entry in folded.state["inflight"]] == [3, 8]
    assert folded.state["inflight"][1] == released
    assert [item[0]["hlc"] for item in folded.state["queue"]] == [S2]  # unreleased: carried
    assert folded.adopted == 1
    base["inflight"] = [[8, _item(S3)[0], 2, False, None, False]]
    folded = fold_copies([base, other])
    assert folded.state is not None and folded.adopted == 0
    assert [entry[1]["hlc"] for entry in folded.state["inflight"]] == [S3]


def test_the_joined_record_stays_bounded() -> None:
    base = _copy(300, [], [[i, 0, "a"] for i in range(SEEN_MAX)])
    other = _copy(100, [], [[i, 1, "b"] for i in range(SEEN_MAX)])
    state = fold_copies([base, other]).state
    assert state is not None and len(state["qos2_seen"]) == SEEN_MAX
    assert state["qos2_seen"][-1] == [SEEN_MAX - 1, 1, "b"]  # the newest kept


def complete_qos2(client: FakeClient) -> list[Publish]:
    """The PUBLISHes received, each QoS 2 one taken through PUBREC, PUBREL and PUBCOMP as a
    real client does (one that delivers on PUBREL, MQTT 4.3.3 method A, delivers it there)."""
    got = client.publishes()
    client.send(*(PubRec(p.packet_id) for p in got if p.qos == 2 and p.packet_id is not None))
    released = [p for p in client.received() if isinstance(p, PubRel)]
    assert len(released) == len([p for p in got if p.qos == 2])
    client.send(*(PubComp(p.packet_id) for p in released))
    return got


async def _roam_across_the_cut(
    fold: bool, sees_b: bool = True, linked: bool = False
) -> list[bytes]:
    """What the client gets at its third node (see the module docstring). Without the heal
    fold (`cluster.takeover_heal`): the claim's fold alone."""
    net = Net(["a", "b", "c"])
    net.heal_fold = False
    cid = cid_owned_by("c", net.live)
    await persistent_then_away(net, "a", cid)
    net.views["b"] = ["b"]  # b is cut off (it declared the others dead)
    net.live = ["a", "c"]
    on_b = net.client("b")
    on_b.connect(cid, clean_start=False)  # b owns the id alone: its own fresh copy
    await settle()
    on_b.subscribe("w/#", qos=2)
    # Published on the majority side during the cut: queued in a's copy, held for b.
    held = [Message("w/1", f"m{i}".encode(), 2, publisher="p", node="a") for i in range(3)]
    for message in held:
        message.stamp = net.brokers["a"].hlc.now()  # as `Broker.publish` stamps it at its origin
        net.arrive("a", message)
    # The heal: b gets what was held for it and delivers it.
    net.live = ["a", "b", "c"]
    del net.views["b"]
    for message in held:
        net.arrive("b", message)
    assert [p.payload for p in complete_qos2(on_b)] == [b"m0", b"m1", b"m2"]
    on_b.drop()
    await settle()
    if fold:  # c saw the membership change (b alive again); the rounds have not run yet
        net.locators["c"]._changed_at = 1.0
        net.locators["c"].unsettled = lambda: True  # type: ignore[method-assign]
    if not sees_b:  # c's links are back but its membership still holds b dead
        net.views["c"] = ["a", "c"]
    if linked:
        net.locators["c"].linked_dead = lambda: ["b"]
        net.locators["c"].call_linked = net._caller("c")
    last = net.client("c")
    last.connect(cid, clean_start=False)
    await settle()
    assert last.connack().session_present
    if fold and sees_b:
        # a parked the copy it surrendered (`cluster.takeover_park`); the folded state keeps
        # its `moved_from`, so c confirms and a drops it (else a could reinstate it later).
        assert net.locators["a"].parking.parked == {}
    return [p.payload for p in last.publishes()]


async def test_the_next_node_takes_the_stale_copy_without_the_fold() -> None:
    # The mechanism, as measured in isolate_sub: the stale copy's queue is delivered again.
    assert await _roam_across_the_cut(fold=False) == [b"m0", b"m1", b"m2"]


async def test_after_a_membership_change_the_claim_folds_the_copies() -> None:
    assert await _roam_across_the_cut(fold=True) == []


async def test_a_node_seen_dead_whose_link_is_back_is_asked_too() -> None:
    # The heal as the links see it before the membership does: b's copy delivered the held
    # forwards; c does not count b live yet. Measured in isolate_sub (32 twice in 1 of 20 runs
    # before this): the claim 0.1 s before b was seen alive took the majority side's copy.
    assert await _roam_across_the_cut(fold=True, sees_b=False) == [b"m0", b"m1", b"m2"]
    assert await _roam_across_the_cut(fold=True, sees_b=False, linked=True) == []


async def _back_to_the_owner(fold: bool) -> list[bytes]:
    """The other order: the client leaves the owner c just as c is cut off, is served on the
    majority side (a copy made there), and comes back to c after the heal, where c's own copy
    queued the forwards held for it: c resumes that copy with no claim (it owns the id).
    Without the heal fold (a's copy, made while c was apart, would hold the id)."""
    net = Net(["a", "b", "c"])
    net.heal_fold = False
    cid = cid_owned_by("c", net.live)
    await persistent_then_away(net, "c", cid)
    net.views["c"] = ["c"]
    net.live = ["a", "b"]  # c cut off: a claim on a goes to a stand-in, c's copy stays
    on_a = net.client("a")
    on_a.connect(cid, clean_start=False)
    await settle()
    on_a.subscribe("w/#", qos=2)
    held = net.publish_qos2("a", b"m0", b"m1", b"m2")
    assert [p.payload for p in complete_qos2(on_a)] == [b"m0", b"m1", b"m2"]
    on_a.drop()
    await settle()
    net.live = ["a", "b", "c"]  # the heal: c gets what was held for it, into its own copy
    del net.views["c"]
    for message in held:
        net.arrive("c", message)
    if fold:
        net.locators["c"].unsettled = lambda: True  # type: ignore[method-assign]
    last = net.client("c")
    last.connect(cid, clean_start=False)
    await settle()
    assert last.connack().session_present
    return [p.payload for p in last.publishes()]


async def test_the_owner_resumes_its_own_stale_copy_without_the_fold() -> None:
    assert await _back_to_the_owner(fold=False) == [b"m0", b"m1", b"m2"]


async def test_after_a_membership_change_the_owner_folds_its_copy_with_the_others() -> None:
    assert await _back_to_the_owner(fold=True) == []


async def test_the_claims_fold_takes_over_what_the_stale_copy_left_half_released() -> None:
    """a released a QoS 2 message (PUBREL sent) whose PUBREL was lost with the client's
    connection; the client went to b, cut off then (b's copy is fresh: it could not reach
    a), and after the heal to c. c's claim folds a's copy with b's, which is the base (the
    client arrived there last): a's exchange goes on under its packet id (PUBREL on resume,
    MQTT-4.4.0-1), never the message again (MQTT-4.3.3-2). Without the heal fold, as when
    the client moves on before b's ask is answered."""
    net = Net(["a", "b", "c"])
    net.heal_fold = False
    cid = cid_owned_by("c", net.live)
    sent = await released_then_gone(net, "a", cid)
    await settle()
    net.views["b"] = ["b"]  # b is cut off
    net.live = ["a", "c"]
    # b's clock has seen a's stamps (gossip merges them); here every wall clock stands still
    net.brokers["b"].hlc.update(net.brokers["a"].hlc.peek())
    on_b = net.client("b")
    on_b.connect(cid, clean_start=False)
    await settle()
    assert not on_b.connack().session_present
    on_b.drop()
    await settle()
    net.live = ["a", "b", "c"]
    del net.views["b"]
    net.brokers["c"].hlc.update(net.brokers["b"].hlc.peek())
    net.locators["c"]._changed_at = 1.0
    net.locators["c"].unsettled = lambda: True  # type: ignore[method-assign]
    last = net.client("c")
    last.connect(cid, clean_start=False)
    await settle()
    assert last.connack().session_present
    received = last.received()
    assert [p.packet_id for p in received if isinstance(p, PubRel)] == [sent.packet_id]
    assert [p for p in received if isinstance(p, Publish)] == []
    last.send(PubComp(sent.packet_id))
    assert not net.brokers["c"].sessions[cid].inflight


async def test_a_copy_brought_by_a_newer_claim_is_not_given_up() -> None:
    net = Net(["a", "b"])
    cid = cid_owned_by("a", net.live)
    client = net.client("b")
    client.connect(cid, clean_start=False)
    await settle()
    newer = list(net.locators["b"].held[cid])
    older = [newer[0] - 1, 0]
    answer = await net.locators["b"].serve_collect(
        {"client_id": cid, "stamp": older, "node": "a"}, "a"
    )
    assert answer is None and cid in net.brokers["b"].sessions
    answer = await net.locators["b"].serve_collect(
        {"client_id": cid, "stamp": [newer[0] + 1, 0], "node": "a"}, "a"
    )
    assert answer is not None and answer["client_id"] == cid
    assert cid not in net.brokers["b"].sessions
    assert COLLECT_METHOD == "session_collect"


async def test_a_copy_resumed_behind_a_cut_does_not_repeat_what_the_other_side_delivered() -> None:
    """c is cut off with a copy of the session. The client is served on the majority side
    (a fresh copy on a, which delivers m), then comes back to c, which resumes its own copy
    alone. At the heal, what a held for c during the cut arrives there (late): m, which the
    client has had, and n, published on a after the client left it (queued in a's copy).
    MQTT-4.3.3: QoS 2 is delivered exactly once. The arrival rule (`Broker.late_for`) cannot
    tell m from n (both are newer than the copy's first arrival on c): c holds the id since
    its resume (members were apart), parks both, asks a for its copy when a is back
    (`cluster.takeover_heal`), and folds it in: m is a repeat, n goes once. (Measured before:
    about 100 of 3,000 twice per long-profile isolate_sub run.)"""
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await persistent_then_away(net, "c", cid)
    net.views = {"c": ["c"], "a": ["a", "b"], "b": ["a", "b"]}
    net.live = ["a", "b"]
    on_a = net.client("a")
    on_a.connect(cid, clean_start=False)
    await settle()
    assert not on_a.connack().session_present  # c's copy is out of reach
    on_a.subscribe("w/#", qos=2)
    [m] = net.publish_qos2("a", b"m")
    assert [p.payload for p in complete_qos2(on_a)] == [b"m"]
    on_a.drop()
    await settle()
    [n] = net.publish_qos2("a", b"n")  # queued in a's copy
    on_c = net.client("c")
    on_c.connect(cid, clean_start=False)
    await settle()
    assert on_c.connack().session_present  # c's own copy, resumed alone
    assert cid in net.brokers["c"].late_hold
    net.heal()
    net.arrive("c", m)  # the forwards held for c, before c's ask is answered
    net.arrive("c", n)
    assert on_c.publishes(ack=False) == []  # parked
    for _ in range(5):
        await settle()
    net.run_later()
    await settle()
    assert [p.payload for p in complete_qos2(on_c)] == [b"n"]
    assert net.brokers["c"].late_hold.waiting == {}
    assert cid not in net.brokers["a"].sessions  # one copy left: c's
    assert net.locators["c"].stats["apart/folded"] == 1


async def test_with_the_heal_fold_the_next_node_finds_nothing_to_repeat() -> None:
    """The roaming case of `_roam_across_the_cut` with the heal fold on: b (cut off, a fresh
    copy) holds the id; at the heal it folds in a's copy (m0-m2 queued there) and the forwards
    held for b are repeats; the client's next node, c, gets nothing again, even without the
    claim's fold. (The heal's registration, evicting a's copy with its queue, gets the same:
    this checks that the two together still deliver each message once.)"""
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await persistent_then_away(net, "a", cid)
    net.views["b"] = ["b"]
    net.live = ["a", "c"]
    on_b = net.client("b")
    on_b.connect(cid, clean_start=False)
    await settle()
    on_b.subscribe("w/#", qos=2)
    held = net.publish_qos2("a", b"m0", b"m1", b"m2")
    net.heal()
    for message in held:
        net.arrive("b", message)
    for _ in range(5):
        await settle()
    net.run_later()
    await settle()
    assert [p.payload for p in complete_qos2(on_b)] == [b"m0", b"m1", b"m2"]
    on_b.drop()
    await settle()
    net.locators["c"].unsettled = lambda: False  # type: ignore[method-assign]
    last = net.client("c")
    last.connect(cid, clean_start=False)
    for _ in range(5):
        await settle()
    assert last.connack().session_present
    assert last.publishes() == []


async def held_alone() -> tuple[Net, FakeClient]:
    """a cut off from b, and the client `held` resumed on a (held: b is apart), on `w/#`."""
    net = Net(["a", "b"])
    net.views = {"a": ["a"]}
    net.live = ["a"]
    on_a = net.client("a")
    on_a.connect("held", clean_start=False)
    await settle()
    on_a.subscribe("w/#", qos=2)
    assert "held" in net.brokers["a"].late_hold
    return net, on_a


def late_from_b(net: Net) -> Message:
    """A QoS 2 message b published after the resume on a, arriving at a late (held, sent
    again): parked there."""
    late = Message("w/1", b"late", 2, publisher="p", node="b")
    net.brokers["b"].hlc.update(net.brokers["a"].hlc.peek())
    late.stamp = net.brokers["b"].hlc.now()
    net.arrive("a", late)
    return late


async def test_a_local_publish_to_a_held_copy_is_not_parked() -> None:
    """Only late copies from peers wait: one published on this node goes at once."""
    net, on_a = await held_alone()
    net.brokers["a"].publish(Message("w/1", b"here", 2, publisher="p", node="a"))
    late_from_b(net)
    assert [p.payload for p in complete_qos2(on_a)] == [b"here"]  # "late" waits
    assert len(net.brokers["a"].late_hold.waiting["held"]) == 1


async def test_a_hold_ends_when_its_member_is_forgotten_or_the_session_ends() -> None:
    net, on_a = await held_alone()
    late_from_b(net)
    locator = net.locators["a"]
    locator.sweep_holds()
    assert on_a.publishes(ack=False) == []  # b is still apart: still held
    locator.apart_nodes = lambda: []  # b forgotten by the membership (never came back)
    locator.sweep_holds()
    assert [p.payload for p in complete_qos2(on_a)] == [b"late"]
    assert locator.apart == {} and net.brokers["a"].late_hold.waiting == {}


async def test_an_evicted_copy_still_answers_with_what_it_delivered() -> None:
    """The heal's registration can evict the far side's copy before the held copy asks for
    it: `session_collect` then answers with that copy's delivered QoS 2 records alone, which
    a fold takes as another copy, never as the base."""
    net = Net(["a", "b"])
    cid = cid_owned_by("a", net.live)
    on_a = net.client("a")
    on_a.connect(cid, clean_start=False)
    await settle()
    on_a.subscribe("w/#", qos=2)
    [m] = net.publish_qos2("a", b"m")
    complete_qos2(on_a)
    locator = net.locators["a"]
    assert locator.evict({cid: locator.held[cid]}, {cid: "b"}) == 1
    answer = await locator.serve_collect({"client_id": cid, "stamp": [1, 0], "node": "b"}, "b")
    assert answer is not None and answer[SEEN_ONLY] is True
    assert answer["qos2_seen"] == [list(m.stamp)]
    base = _copy(300, [_item(list(m.stamp)), _item(S1)], [list(m.stamp), S1])
    folded = fold_copies([answer, base])
    assert folded.state is not None and folded.state["arrived"] == [300, 0, "n"]
    assert [item[0]["hlc"] for item in folded.state["queue"]] == [S1]


async def test_copies_parked_long_while_a_member_stays_apart_are_delivered() -> None:
    """A member dead for good is remembered for an hour: what was parked meanwhile (from a
    link that dropped elsewhere) is delivered after `PARK_MAX` seconds, and the hold goes on."""
    net, on_a = await held_alone()
    late_from_b(net)
    locator = net.locators["a"]
    locator.sweep_holds(now=1000.0)  # first seen parked
    locator.sweep_holds(now=1000.0 + PARK_MAX - 1)
    assert on_a.publishes(ack=False) == []
    locator.sweep_holds(now=1000.0 + PARK_MAX)
    assert [p.payload for p in complete_qos2(on_a)] == [b"late"]
    assert "held" in locator.apart and "held" in net.brokers["a"].late_hold  # still held


@pytest.mark.parametrize("claimed", [False, True], ids=["owner_resumes", "after_a_claim"])
async def test_a_copy_resumed_as_a_member_heals_holds_its_queue_until_the_fold(
    claimed: bool,
) -> None:
    """The long_partition case (3 QoS 2 twice in a rehearsal): just after a heal two copies of
    the session live, and a message published then reaches both; the client reads it from
    the other copy, then resumes the copy here. Resumed while b heals (its link up, not yet
    seen alive), this copy holds its queued QoS 2 back until b's copy is folded in: b
    delivered m0 (here: the records b keeps of its copy), so m0 is not delivered again
    (MQTT-4.3.3-2); m1, which only this copy had, is delivered at the release. Both ways a
    copy here resumes: its owner's own (no claim), and after a claim that found no other copy
    (members changed lately: `cluster.takeover_fold`), before the CONNECT goes on."""
    net = Net(["a", "b"])
    await persistent_then_away(net, "a", "held")
    m0, _ = net.publish_qos2("a", b"m0", b"m1")  # queued in a's copy (offline)
    assert m0.stamp is not None
    net.views = {"a": ["a"]}  # b not seen alive by a yet...
    net.live = ["a"]
    locator = net.locators["a"]
    locator.linked_dead = lambda: ["b"]  # ...its link up again: healing
    if claimed:
        locator.unsettled = lambda: True  # type: ignore[method-assign]
    net.locators["b"].gave_up["held"] = (time.monotonic() + 30, [list(m0.stamp)], [])
    on_a = net.client("a")
    on_a.connect("held", clean_start=False)
    await settle()
    assert on_a.connack().session_present
    assert on_a.publishes(ack=False) == []  # held until the fold
    assert locator.stats["apart/queue_held"] == 2
    net.heal()
    await settle()
    assert [p.payload for p in complete_qos2(on_a)] == [b"m1"]
    assert locator.stats["apart/folded"] == 1 and locator.apart == {}
