"""The two-phase session move (`cluster.takeover_park`) between in-process nodes: the old node
keeps a surrendered session parked until the new node confirms its commit, reinstates it when
the new node dies first, and drops it on confirmation or after its bound."""

from __future__ import annotations

from test_cluster_takeover import Net, cid_owned_by, settle

from broker.core.message import Message
from cluster.takeover import SURRENDER_METHOD
from cluster.takeover_park import CONFIRM_METHOD


async def moved_unconfirmed(net: Net, cid: str) -> None:
    """`cid`'s session (subscribed to t, two messages queued) moves from a to b; b's
    confirmation is lost on the way."""
    old = net.client("a")
    old.connect(cid, clean_start=False)
    await settle()
    old.subscribe("t", qos=1)
    old.drop()
    for n in range(2):
        net.arrive("a", Message("t", b"q%d" % n, 1, publisher="p", node="a"))
    net.lost = {CONFIRM_METHOD}
    new = net.client("b")
    new.connect(cid, clean_start=False)
    await settle()
    assert new.connack().session_present
    assert cid in net.locators["a"].parking.parked
    assert cid not in net.brokers["a"].sessions


async def test_the_new_node_dies_unconfirmed_and_the_old_one_reinstates() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await moved_unconfirmed(net, cid)
    # After the surrender, a message reaches a: forwarded to b, and kept with the parked copy.
    net.arrive("a", Message("t", b"after", 1, publisher="p", node="c"))
    await settle()
    locator = net.locators["a"]
    claim = net.locators["c"].registry.get(cid)
    assert claim is not None and claim.node == "b"
    net.views["c"] = list(net.live)  # the owner c has not declared b dead yet
    net.live.remove("b")
    locator.parking.member_event("b", "dead")
    assert cid not in locator.parking.parked
    session = net.brokers["a"].sessions[cid]
    assert [m.payload for m, *_ in session.queue] == [b"q0", b"q1", b"after"]
    # Held again just after b's claim: it beats b's entry, and a later claim beats it.
    held = locator.held[cid]
    assert claim.stamp < held < (claim.stamp[0] + 1, 0) and cid in locator._dirty
    locator.members_changed("b", "dead")
    await settle()
    entry = net.locators["c"].registry.get(cid)
    assert entry is not None and entry.node == "a" and entry.stamp == held
    back = net.client("a")
    back.connect(cid, clean_start=False)
    await settle()
    assert back.connack().session_present
    assert [p.payload for p in back.publishes()] == [b"q0", b"q1", b"after"]


async def test_a_confirmed_move_leaves_nothing_parked() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await moved_unconfirmed(net, cid)
    parking = net.locators["a"].parking
    token = parking.parked[cid].token
    assert not await parking.serve_committed({"client_id": cid, "token": [0, 0]}, "b")
    assert not await parking.serve_committed({"client_id": cid, "token": token}, "c")
    assert await parking.serve_committed({"client_id": cid, "token": token}, "b")
    parking.member_event("b", "dead")
    assert cid not in net.brokers["a"].sessions


async def test_a_parked_copy_past_its_bound_is_dropped_while_the_new_node_lives() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await moved_unconfirmed(net, cid)
    parking = net.locators["a"].parking
    parking.bound = 0.0
    parking.member_event("c", "suspect")  # any event looks at the bound
    assert parking.parked == {} and parking.stats["parked/expired"] == 1
    parking.member_event("b", "dead")
    assert cid not in net.brokers["a"].sessions


async def test_a_claim_on_the_old_node_that_gets_no_state_takes_the_parked_copy() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await moved_unconfirmed(net, cid)
    net.lost = {CONFIRM_METHOD, SURRENDER_METHOD}  # b does not answer the owner
    back = net.client("a")
    back.connect(cid, clean_start=False)
    await settle()
    assert back.connack().session_present
    assert [p.payload for p in back.publishes()] == [b"q0", b"q1"]
    assert cid not in net.locators["a"].parking.parked


async def test_a_new_run_of_the_new_node_reinstates_and_suspicion_does_not() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    await moved_unconfirmed(net, cid)
    parking = net.locators["a"].parking
    for kind in ("suspect", "alive"):  # the same run of b may still commit and confirm
        parking.member_event("b", kind)
        assert cid in parking.parked and cid not in net.brokers["a"].sessions
    parking.member_event("b", "join")  # b restarted: its new run never had the session
    assert cid not in parking.parked
    assert [m.payload for m, *_ in net.brokers["a"].sessions[cid].queue] == [b"q0", b"q1"]
