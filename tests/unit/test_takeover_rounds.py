"""One session per client id when a claim gets no answer or the views disagree for a moment
(`cluster.takeover`, `cluster.takeover_rounds`), over the in-memory `Net` of
test_cluster_takeover. Both cases come from the fault suite: a twin pair left both up until
the 10 s round."""

from __future__ import annotations

import asyncio

from test_cluster_takeover import Net, cid_owned_by, settle

from broker.protocol.constants import ReasonCode
from broker.protocol.packets import Disconnect
from cluster.registry import owner_of
from cluster.takeover import CLAIM_METHOD


async def test_a_claim_without_an_answer_meets_the_other_connect_at_the_owner_at_once() -> None:
    """The fault suite's pause (one twin pair both up in a rehearsal of .ci/run): a node
    resumed after a pause sent its claim on a link the owner had just closed, so the claim got
    no answer and its CONNECT went on alone, while the id was connected on another node. It is
    registered with the owner at once, where the newer CONNECT stays and the other gets 0x8E
    (one session per client id), not only at the next round (10 s)."""
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    on_b = net.client("b")
    on_b.connect(cid)
    await settle()
    net.lost = {CLAIM_METHOD}
    # a's clock has seen b's claim (every clock stands still here; gossip merges them)
    net.brokers["a"].hlc.update(net.brokers["c"].hlc.peek())
    on_a = net.client("a")
    on_a.connect(cid)  # the owner does not answer: a goes on alone
    await settle()
    await settle()
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["a"]
    last = on_b.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert net.locators["c"].registry.get(cid).node == "a"  # type: ignore[union-attr]


async def test_a_round_follows_the_last_member_event_so_a_duplicate_meets_in_seconds() -> None:
    """The fault suite's split_2_3 (one twin pair both up at the end of a run): around the heal
    two nodes on one side had different views for 0.2 s, and two CONNECTs of one id made then
    were claimed at two owners. The round `settle_round` seconds after the last member event
    registers them again under the agreed view, where they meet (not only the 10 s round)."""
    net = Net(["a", "b", "c"])
    cid = next(
        f"dev{i}"
        for i in range(1000)
        if owner_of(f"dev{i}", ["a", "b"]) == "a" and owner_of(f"dev{i}", net.live) == "c"
    )
    for locator in net.locators.values():
        locator.settle_round = 0.2  # after the CONNECTs below (a few loop turns)
    net.views = {"a": ["a", "b"]}
    net.locators["a"].members_changed("c", "dead")  # a's event: c gone in its view
    await settle()
    on_a = net.client("a")
    on_a.connect(cid)  # a is the owner in its view: no call
    await settle()
    on_b = net.client("b")
    on_b.connect(cid)  # claimed at c, which knows no holder
    await settle()
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["a", "b"]
    net.views = {}  # the views agree now; the event that told a came before its CONNECT
    async with asyncio.timeout(5):
        while cid in net.brokers["a"].connected:
            await asyncio.sleep(0.02)
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["b"]
    last = on_a.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
