"""A copy of a session that loses to a newer claim passes its queue on to the copy that won.

The case, from the fault suite's kill_during_takeover (2 QoS 2 messages lost at the roaming
session in a rehearsal of `.ci/run`): the roaming session's node was killed just as the client
moved on; the claim found no live holder and the client resumed a fresh copy elsewhere; the
killed node came back with its persisted copy, whose queue held what was published just before
the kill, and lost the registration round to the newer claim. Evicting it dropped that queue.

Each case runs twice: with `heal_fold` off, the eviction alone (its pass-on); with it on, the
claim on b was made while a was dead, so b holds the id and asks a for its copy when a is
back (`cluster.takeover_heal`), which carries the same messages (or the eviction gets there
first): the client gets the same either way.
"""

from __future__ import annotations

import pytest
from cluster_fakes import FakeClient
from test_cluster_takeover import Net, cid_owned_by, persistent_then_away, released_then_gone
from test_cluster_takeover import settle as settle_once

from broker.core.message import Message
from broker.protocol.packets import Publish, PubRec, PubRel

HEAL_FOLD = pytest.mark.parametrize("heal_fold", [False, True], ids=["evict", "heal_fold"])


async def settle() -> None:
    """Claims with a surrender or a registration round take several turns of the loop."""
    for _ in range(5):
        await settle_once()


async def _copy_left_on_a_node_that_comes_back(
    heal_fold: bool,
) -> tuple[Net, FakeClient, list[bytes]]:
    net = Net(["a", "b", "c"])
    net.heal_fold = heal_fold
    cid = cid_owned_by("c", net.live)
    await persistent_then_away(net, "a", cid)
    # Published while the client is away: queued in a's copy (the only one).
    net.publish_qos2("a", b"m0", b"m1")
    on_b = await killed_then_back(net, cid)
    return net, on_b, [p.payload for p in on_b.publishes()]


async def killed_then_back(net: Net, cid: str) -> FakeClient:
    """a is killed: the client resumes on b, whose claim finds no live holder (a fresh copy).
    Then a is back with its copy: every node registers again, b's claim is the newer one, and
    a's copy is evicted. Returns the client on b."""
    net.live = ["b", "c"]
    net.views = {"b": ["b", "c"], "c": ["b", "c"]}
    on_b = net.client("b")
    on_b.connect(cid, clean_start=False)
    await settle()
    assert not on_b.connack().session_present
    on_b.subscribe("w/#", qos=2)
    net.heal()
    await settle()
    net.run_later()
    await settle()
    assert cid not in net.brokers["a"].sessions  # evicted: one session per id
    return on_b


def _passed_on(net: Net) -> int:
    return net.locators["a"].stats["evicted/passed_on"]


@HEAL_FOLD
async def test_the_evicted_copys_queue_reaches_the_copy_that_won(heal_fold: bool) -> None:
    net, _, got = await _copy_left_on_a_node_that_comes_back(heal_fold)
    assert got == [b"m0", b"m1"]
    if not heal_fold:
        assert _passed_on(net) == 2


@HEAL_FOLD
async def test_what_reaches_the_evicted_copys_node_afterwards_goes_on_too(heal_fold: bool) -> None:
    """A forward held for the killed node (sent just before the kill) is sent again when it is
    back, possibly after the eviction: the node passes it on as after a surrender."""
    net, on_b, _ = await _copy_left_on_a_node_that_comes_back(heal_fold)
    late = Message("w/1", b"late", 2, publisher="p", node="c")
    late.stamp = net.brokers["c"].hlc.now()
    net.arrive("a", late)
    net.run_later()
    await settle()
    assert [p.payload for p in on_b.publishes()] == [b"late"]


async def test_what_the_winner_has_already_is_not_delivered_again() -> None:
    """QoS 2 exactly once (MQTT-4.3.3): a message the winning copy accepted already is dropped
    there as a repeat when the loser's queue arrives (its publish stamp). (The eviction alone:
    with the heal fold, b would hold the late copy; the next test.)"""
    net = Net(["a", "b"])
    net.heal_fold = False
    cid = cid_owned_by("b", net.live)
    await persistent_then_away(net, "a", cid)
    net.live = ["b"]
    net.views = {"b": ["b"]}
    on_b = net.client("b")
    on_b.connect(cid, clean_start=False)
    await settle()
    on_b.subscribe("w/#", qos=2)
    # Published on a's side of the cut: queued in a's copy, held for b and delivered there.
    message = Message("w/1", b"both", 2, publisher="p", node="a")
    net.brokers["a"].hlc.update(net.brokers["b"].hlc.peek())  # the clocks met before the cut
    message.stamp = net.brokers["a"].hlc.now()
    net.arrive("a", message)
    net.arrive("b", message)
    assert [p.payload for p in on_b.publishes()] == [b"both"]
    net.heal()
    await settle()
    net.run_later()
    await settle()
    assert cid not in net.brokers["a"].sessions
    assert net.locators["a"].stats["evicted/passed_on"] == 1  # passed on ...
    assert net.brokers["b"].qos2_repeats == 1  # ... and known there by its stamp
    assert on_b.publishes() == []  # not delivered again


@HEAL_FOLD
async def test_what_the_client_may_not_have_had_is_passed_on_too(heal_fold: bool) -> None:
    """The evicted copy's inflight window: a QoS 1 message without PUBACK and a QoS 2 one
    without PUBREC go on to the winner (the client delivers QoS 2 on PUBREL, MQTT 4.3.3 method
    A, and never got one); a QoS 2 one awaiting PUBCOMP does not (its PUBREL went out, so the
    client has it: passing it on would deliver it twice). Fault suite kill_during_takeover:
    the QoS 2 message sent to the roaming client just before its node was killed was lost."""
    net = Net(["a", "b", "c"])
    net.heal_fold = heal_fold
    cid = cid_owned_by("c", net.live)
    on_a = net.client("a")
    on_a.connect(cid, clean_start=False)
    await settle()
    on_a.subscribe("w/#", qos=2)
    sent = []
    for payload, qos in ((b"released", 2), (b"unreleased", 2), (b"unacked", 1)):
        message = Message("w/1", payload, qos, publisher="p", node="a")
        message.stamp = net.brokers["a"].hlc.now()
        net.arrive("a", message)
        sent.extend(on_a.publishes(ack=False))
    assert [p.payload for p in sent] == [b"released", b"unreleased", b"unacked"]
    on_a.send(PubRec(sent[0].packet_id))  # the broker answers PUBREL: the client delivers it
    assert any(isinstance(p, PubRel) for p in on_a.received())
    on_a.drop()  # then a is killed
    await settle()
    on_b = await killed_then_back(net, cid)
    assert [p.payload for p in on_b.publishes()] == [b"unreleased", b"unacked"]
    if not heal_fold:
        assert _passed_on(net) == 2


async def test_an_exchange_released_as_its_node_died_goes_on_from_the_fresh_copy() -> None:
    """The last loss through a kill (README "The last path, traced"): a released QoS 2 message
    (PUBREL committed) whose PUBREL never reached the client, as its node a was killed. The
    client's next node b cannot reach a: its copy is fresh (Session Present 0), its packet ids
    start at a random point, and it holds the id for a. When a is back (from disk), b takes the
    exchange over: a PUBREL for that packet id (the client, paho, kept the message across the
    reconnect and delivers it then; one that had it answers PUBCOMP), never the message
    again (MQTT-4.3.3-2: QoS 2 exactly once)."""
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    sent = await released_then_gone(net, "a", cid)  # its PUBREL is lost with the node
    net.live = ["b", "c"]  # a killed: not yet seen dead, but unreachable
    on_b = net.client("b")
    on_b.connect(cid, clean_start=False)
    await settle()
    assert not on_b.connack().session_present
    assert cid in net.brokers["b"].late_hold  # held for a
    on_b.subscribe("w/#", qos=2)
    net.heal(joined="a")  # a is back with its copy
    await settle()
    net.run_later()
    await settle()
    received = on_b.received()
    assert [p.packet_id for p in received if isinstance(p, PubRel)] == [sent.packet_id]
    assert [p for p in received if isinstance(p, Publish)] == []
    assert cid not in net.brokers["a"].sessions
