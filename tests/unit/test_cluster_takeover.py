"""The cluster side of takeover: the registry locator over an in-memory RPC, the surrender
method, the forwarding of messages for a session that moved (`cluster.handoff`).

`Net` wires N `ClusterSessionLocator`s with real `Broker`s: `call` dispatches to the target's
RPC methods after a loop turn, through msgpack as on the wire, and counts every call.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest
from cluster_fakes import FakeClient, msgpack_roundtrip

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from broker.core.message import Message
from broker.core.settings import Settings
from broker.protocol.constants import ReasonCode
from broker.protocol.packets import ConnAck, Disconnect, Publish, PubRec, PubRel
from cluster.handoff import Handoff, deliver_to
from cluster.registry import owner_of
from cluster.rpc import NodeUnreachable, RemoteError, RpcTimeout
from cluster.takeover import (
    CLAIM_METHOD,
    EVICT_METHOD,
    REGISTER_METHOD,
    RELEASE_METHOD,
    SURRENDER_METHOD,
    ClusterSessionLocator,
    pick_state,
    serve_surrender,
    trim_state,
)
from cluster.takeover_fold import COLLECT_METHOD
from cluster.takeover_park import CONFIRM_METHOD


class Net:
    def __init__(self, names: list[str]) -> None:
        self.live = list(names)
        self.calls: list[tuple[str, str, str]] = []  # (from, to, method)
        self.forwards = 0
        self.later: list[Any] = []  # forwarded copies waiting (`cluster.handoff.HOLD`)
        self.lost: set[str] = set()  # methods whose requests are lost on the way
        self.old: set[str] = set()  # nodes of the previous version: no registry methods
        self.views: dict[str, list[str]] = {}  # a node's own member view, when it differs
        self.heal_fold = True  # a copy resumed behind a cut holds late QoS 2 (takeover_heal)
        self.brokers: dict[str, Broker] = {}
        self.locators: dict[str, ClusterSessionLocator] = {}
        for name in names:
            broker = Broker(Settings(node_name=name), clock=lambda: 1000.0)
            later = self._later
            handoff = Handoff(name, self._sender(name), partial(deliver_to, broker), later=later)
            locator = ClusterSessionLocator(
                name, broker, self._live_for(name), self._caller(name), handoff, timeout=1.0
            )
            locator.apart_nodes = self._apart_for(name, names)
            broker.session_locator = locator
            broker.hooks.client_disconnected.append(locator.client_gone)
            self.brokers[name] = broker
            self.locators[name] = locator

    def _live_for(self, name: str) -> Any:
        return lambda: [name, *sorted(n for n in self.views.get(name, self.live) if n != name)]

    def _apart_for(self, name: str, names: list[str]) -> Any:
        """The members `name` does not see live (`ClusterNode.apart_nodes`); none when
        `heal_fold` is off (a test of what the other mechanisms do alone)."""
        return lambda: [
            n for n in names if self.heal_fold and n not in self.views.get(name, self.live)
        ]

    def _caller(self, origin: str) -> Any:
        async def call(node: str, method: str, args: dict[str, Any], timeout: float) -> Any:
            if node not in self.live:
                raise NodeUnreachable(node)
            self.calls.append((origin, node, method))
            if method in self.lost:
                raise RpcTimeout(node)
            if node in self.old and method != SURRENDER_METHOD:
                raise RemoteError(f"{node}: LookupError: no RPC method {method!r}")
            await asyncio.sleep(0)
            target = self.locators[node]
            handler = {
                CLAIM_METHOD: target.serve_claim,
                REGISTER_METHOD: target.serve_register,
                RELEASE_METHOD: target.serve_release,
                EVICT_METHOD: target.serve_evict,
                SURRENDER_METHOD: target.serve_surrender,
                COLLECT_METHOD: target.serve_collect,
                CONFIRM_METHOD: target.parking.serve_committed,
            }[method]
            result = await handler(msgpack_roundtrip(args), origin)
            await asyncio.sleep(0)
            return msgpack_roundtrip(result)

        return call

    def _sender(self, origin: str) -> Any:
        def send(node: str, message: Message, extra: dict[str, Any]) -> int:
            self.forwards += 1
            target = self.locators[node].handoff
            loop = asyncio.get_running_loop()
            loop.call_soon(target.on_session_forward, message, msgpack_roundtrip(extra), 0.0)
            return 1

        return send

    def _later(self, delay: float, callback: Any) -> None:
        self.later.append(callback)

    def run_later(self) -> None:
        while self.later:
            self.later.pop(0)()

    def client(self, node: str) -> FakeClient:
        return FakeClient(self.brokers[node])

    def heal(self, joined: str | None = None) -> None:
        """Every node sees every other live again (`members_changed`): "alive", or "join"
        for `joined` (a node back from a restart)."""
        self.views = {}
        self.live = sorted(self.brokers)
        for name, locator in self.locators.items():
            for other in self.brokers:
                if other != name:
                    locator.members_changed(other, "join" if other == joined else "alive")

    def publish_qos2(self, node: str, *payloads: bytes) -> list[Message]:
        """QoS 2 messages published at `node` on `w/1`, stamped by its clock as
        `Broker.publish` stamps them at their origin, and routed there."""
        messages = [Message("w/1", payload, 2, publisher="p", node=node) for payload in payloads]
        for message in messages:
            message.stamp = self.brokers[node].hlc.now()
            self.arrive(node, message)
        return messages

    def arrive(self, node: str, message: Message) -> None:
        """A message reaches `node` (published there or forwarded to it)."""
        self.brokers[node].publish(message, forward=False, shared=False)
        handoff = self.locators[node].handoff
        if handoff.active:
            handoff.on_message(message, 0.0)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def persistent_then_away(net: Net, node: str, cid: str) -> None:
    """`cid` opens a persistent session on `node`, subscribed to `w/#` at QoS 2, and drops."""
    client = net.client(node)
    client.connect(cid, clean_start=False)
    await settle()
    client.subscribe("w/#", qos=2)
    client.drop()
    await settle()


async def released_then_gone(net: Net, node: str, cid: str) -> Publish:
    """`cid` opens a persistent session on `node` (QoS 2 on `w/#`), gets one QoS 2 message and
    answers PUBREC; the node releases it (PUBREL sent), and the client's connection drops as if
    that PUBREL never reached it. Returns the PUBLISH it got (its packet id is the exchange's)."""
    client = net.client(node)
    client.connect(cid, clean_start=False)
    await settle()
    client.subscribe("w/#", qos=2)
    net.publish_qos2(node, b"released")
    [sent] = client.publishes(ack=False)
    assert sent.packet_id is not None
    client.send(PubRec(sent.packet_id))
    assert any(isinstance(p, PubRel) for p in client.received())  # lost with the connection
    client.drop()
    return sent


def cid_owned_by(owner: str, nodes: list[str]) -> str:
    return next(f"dev{i}" for i in range(1000) if owner_of(f"dev{i}", nodes) == owner)


async def test_a_lone_node_makes_no_call_on_connect() -> None:
    net = Net(["a"])
    for i in range(20):
        client = net.client("a")
        client.connect(f"c{i}", clean_start=i % 2 == 0)
        assert client.connack().reason_code == 0  # at once: no TAKEOVER wait
    await settle()
    assert net.calls == []
    assert len(net.locators["a"].registry) == 20


async def test_connect_costs_at_most_two_calls_whatever_the_cluster_size() -> None:
    names = [f"n{i}" for i in range(6)]
    net = Net(names)
    cid = cid_owned_by("n1", names)
    old = net.client("n2")
    old.connect(cid, clean_start=False)
    await settle()
    assert old.connack().reason_code == 0
    assert net.calls == [("n2", "n1", CLAIM_METHOD)]
    net.calls.clear()
    new = net.client("n3")
    new.connect(cid, clean_start=False)
    await settle()
    assert new.connack().session_present
    # Two on the CONNECT's path; the third, after it, tells the old node to drop its parked
    # copy (`cluster.takeover_park`).
    assert net.calls == [
        ("n3", "n1", CLAIM_METHOD),
        ("n1", "n2", SURRENDER_METHOD),
        ("n3", "n2", CONFIRM_METHOD),
    ]
    assert net.locators["n2"].parking.parked == {}
    packets = old.received()
    assert isinstance(packets[-1], Disconnect)
    assert packets[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert cid not in net.brokers["n2"].sessions and cid in net.brokers["n3"].sessions


async def test_a_reconnect_on_the_owner_itself_makes_no_call() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("a", net.live)
    for _ in range(3):
        client = net.client("a")
        client.connect(cid)
        assert client.connack().reason_code == 0
    await settle()
    assert net.calls == []


@pytest.mark.parametrize("owner", ["a", "b", "c"])
async def test_concurrent_connects_with_one_id_leave_exactly_one(owner: str) -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by(owner, net.live)
    first, second = net.client("b"), net.client("c")
    first.connect(cid)
    second.connect(cid)  # before the first's claim is answered
    await settle()
    live = [c for c in (first, second) if not c.link.closed]
    assert len(live) == 1, "exactly one connection stays (issue 14)"
    loser = first if live[0] is second else second
    packets = loser.received()
    assert isinstance(packets[0], ConnAck)
    assert isinstance(packets[-1], Disconnect)
    assert packets[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER  # 0x8E
    holders = [n for n, b in net.brokers.items() if cid in b.connected]
    assert len(holders) == 1
    assert net.locators[owner].registry.get(cid).node == holders[0]  # type: ignore[union-attr]


async def test_the_session_ended_is_released_at_its_owner() -> None:
    net = Net(["a", "b"])
    cid = cid_owned_by("a", net.live)
    client = net.client("b")
    client.connect(cid)  # clean: the session ends with the connection
    await settle()
    assert net.locators["a"].registry.get(cid) is not None
    client.drop()
    await settle()
    assert net.locators["a"].registry.get(cid) is None
    assert ("b", "a", RELEASE_METHOD) in net.calls


async def test_a_session_that_expires_is_released_by_the_sweep() -> None:
    net = Net(["a", "b"])
    cid = cid_owned_by("a", net.live)
    client = net.client("b")
    client.connect(cid, clean_start=False)
    await settle()
    client.drop()
    await settle()
    assert net.locators["a"].registry.get(cid) is not None  # persistent: still held by b
    net.brokers["b"].discard_session(cid)  # as its expiry would
    net.locators["b"].sweep()
    await settle()
    assert net.locators["a"].registry.get(cid) is None


async def test_messages_reaching_the_old_node_follow_the_session_once() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    old = net.client("a")
    old.connect(cid, clean_start=False)
    await settle()
    old.subscribe("t/#", qos=2)
    new = net.client("b")
    new.connect(cid, clean_start=False)
    await settle()
    assert new.connack().session_present
    assert net.locators["a"].handoff.records  # a forwarding record on the old node
    # A publisher's node that still routes t/# to a only:
    net.arrive("a", Message("t/1", b"only-a", 1, publisher="p", node="c"))
    # ...and one that routes to both (b has the subscription now): delivered once.
    both = Message("t/2", b"both", 2, publisher="p", node="c")
    net.arrive("b", both)
    net.arrive("a", Message("t/2", b"both", 2, publisher="p", node="c"))
    await settle()
    net.run_later()
    got = [p.payload for p in new.publishes()]
    assert sorted(got) == [b"both", b"only-a"]
    assert net.locators["b"].handoff.stats["duplicates"] == 1


async def test_a_forwarded_copy_that_overtook_the_direct_one_is_dropped() -> None:
    net = Net(["a", "b"])
    cid = cid_owned_by("b", net.live)
    old = net.client("a")
    old.connect(cid, clean_start=False)
    await settle()
    old.subscribe("t", qos=2)
    new = net.client("b")
    new.connect(cid, clean_start=False)
    # while b's claim is in flight, a copy reaches b directly (not delivered: no session yet)
    net.arrive("b", Message("t", b"gap", 2, publisher="p", node="c"))
    await settle()
    assert new.connack().session_present
    handoff = net.locators["b"].handoff
    # the old node forwards the gap message (at once) and one the publisher also sent to b
    for payload in (b"gap", b"race"):
        body = {"cid": cid, "org": "c"}
        handoff.on_session_forward(Message("t", payload, 2, publisher="p", node="a"), body, 0.0)
    assert [p.payload for p in new.publishes()] == [b"gap"]
    net.arrive("b", Message("t", b"race", 2, publisher="p", node="c"))  # the direct copy, late
    net.run_later()
    assert [p.payload for p in new.publishes()] == [b"race"]  # once
    assert handoff.stats["duplicates"] == 1


async def test_forwards_during_the_claim_wait_for_the_import() -> None:
    net = Net(["a", "b"])
    cid = cid_owned_by("a", net.live)
    old = net.client("a")
    old.connect(cid, clean_start=False)
    old.subscribe("t", qos=1)
    new = net.client("b")
    handoff = net.locators["b"].handoff
    new.connect(cid, clean_start=False)
    assert cid in handoff.pending
    message = Message("t", b"early", 1, publisher="p", node="a")
    handoff.on_session_forward(message, {"cid": cid, "org": "a"}, 0.0)
    assert handoff.pending[cid]  # held: the session is not here yet
    await settle()
    assert new.publishes() == []  # it may be overtaking a direct copy: it waits a moment
    net.run_later()
    assert [p.payload for p in new.publishes()] == [b"early"]


async def test_duplicates_after_a_heal_keep_the_newer_claim() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    net.live = ["a", "c"]  # b cut off: it takes its own claims
    on_a = net.client("a")
    on_a.connect(cid)
    await settle()
    net.live = ["b"]
    on_b = net.client("b")
    on_b.connect(cid)  # b alone owns everything: newer claim, no call
    await settle()
    assert on_a.connack().reason_code == on_b.connack().reason_code == 0
    net.heal()  # everyone registers again
    await settle()
    assert on_a.link.closed and not on_b.link.closed
    last = on_a.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert net.locators["c"].registry.get(cid).node == "b"  # type: ignore[union-attr]
    assert cid not in net.brokers["a"].sessions


async def test_a_holder_that_does_not_answer_the_surrender_is_evicted_later() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    old = net.client("a")
    old.connect(cid)
    await settle()
    net.lost = {SURRENDER_METHOD}
    new = net.client("b")
    new.connect(cid)
    await settle()
    assert new.connack().reason_code == 0  # the CONNECT goes on without the old session
    assert ("c", "a", EVICT_METHOD) in net.calls
    last = old.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["b"]


def registry_calls(net: Net) -> list[tuple[str, str, str]]:
    return [c for c in net.calls if c[2] in (CLAIM_METHOD, REGISTER_METHOD, RELEASE_METHOD)]


async def test_two_connects_meet_at_a_stand_in_while_the_owner_has_no_link() -> None:
    """The owner was killed (or is restarting): its peers still count it live but have no
    link to it. Both claims go to the next node of the id's rendezvous order, the same on
    both sides, so exactly one connection stays (the fault suite's restart_each double)."""
    net = Net(["a", "b", "c", "d"])
    cid = next(
        f"dev{i}"
        for i in range(1000)
        if owner_of(f"dev{i}", net.live) == "c" and owner_of(f"dev{i}", ["a", "b", "d"]) == "d"
    )
    net.views = {name: ["a", "b", "c", "d"] for name in ("a", "b", "d")}
    net.live = ["a", "b", "d"]  # c unreachable, not yet declared dead by anyone
    first, second = net.client("a"), net.client("b")
    first.connect(cid)
    second.connect(cid)
    await settle()
    assert len([c for c in (first, second) if not c.link.closed]) == 1
    assert [n for n, b in net.brokers.items() if cid in b.connected] in (["a"], ["b"])
    assert net.locators["a"].stats["stand_ins"] == net.locators["b"].stats["stand_ins"] == 1
    holder = next(n for n, b in net.brokers.items() if cid in b.connected)
    assert net.locators["d"].registry.get(cid).node == holder  # type: ignore[union-attr]
    # c comes back (empty table): the next round registers the id at its owner again
    net.live = ["a", "b", "c", "d"]
    for locator in net.locators.values():
        locator.reconcile()
    await settle()
    assert net.locators["c"].registry.get(cid).node == holder  # type: ignore[union-attr]


async def test_the_round_resolves_a_duplicate_left_by_disagreeing_views() -> None:
    net = Net(["a", "b", "c"])
    # c rejoins: b sees it already, a not yet; a owns the id in its view, c in b's.
    cid = next(
        f"dev{i}"
        for i in range(1000)
        if owner_of(f"dev{i}", ["a", "b"]) == "a" and owner_of(f"dev{i}", net.live) == "c"
    )
    net.views = {"a": ["a", "b"]}
    on_a = net.client("a")
    on_a.connect(cid)  # a is the owner in its view: no call
    await settle()
    on_b = net.client("b")
    on_b.connect(cid)  # claimed at c, which knows no holder
    await settle()
    assert on_a.connack().reason_code == on_b.connack().reason_code == 0
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["a", "b"]
    net.views = {}  # the views agree; no member event is seen any more
    for locator in net.locators.values():
        locator.reconcile()
    await settle()
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["b"]
    last = on_a.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert net.locators["c"].registry.get(cid).node == "b"  # type: ignore[union-attr]
    assert ("a", "c", REGISTER_METHOD) in net.calls


async def test_a_failed_registration_is_retried_in_the_next_round() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    net.lost = {CLAIM_METHOD, REGISTER_METHOD}
    on_a = net.client("a")
    on_a.connect(cid)  # the owner does not answer: a goes on alone, unknown to c
    await settle()
    net.lost = set()
    on_b = net.client("b")
    on_b.connect(cid)  # c knows no holder: b stays too
    await settle()
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["a", "b"]
    net.lost = {REGISTER_METHOD}
    assert net.locators["a"].reconcile() == 1
    await settle()
    assert not on_a.link.closed  # that registration was lost
    net.lost = set()
    assert net.locators["a"].reconcile() == 1  # so it is sent again
    await settle()
    assert [n for n, b in net.brokers.items() if cid in b.connected] == ["b"]
    last = on_a.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert net.locators["a"].reconcile() == 0


async def test_a_steady_cluster_sends_nothing_in_a_round() -> None:
    net = Net(["a", "b", "c"])
    for i, name in enumerate(["a", "b", "c", "a", "b", "c"]):
        net.client(name).connect(f"dev{i}")
    await settle()
    assert sum(len(loc.held) for loc in net.locators.values()) == 6
    before = len(registry_calls(net))
    assert before > 0  # some claims went to another owner
    for locator in net.locators.values():
        assert locator.reconcile() == 0
    await settle()
    assert len(registry_calls(net)) == before
    net.live = ["a", "b"]  # c leaves: what a and b hold is registered once under the new view
    for name in ("a", "b"):
        net.locators[name].members_changed("c", "dead")
    await settle()
    for name in ("a", "b"):
        net.locators[name].reconcile()
    await settle()
    after = len(registry_calls(net))
    for name in ("a", "b"):
        assert net.locators[name].reconcile() == 0
    await settle()
    assert len(registry_calls(net)) == after


async def test_an_owner_of_the_previous_version_makes_the_connect_ask_everyone() -> None:
    net = Net(["a", "b", "c"])
    cid = cid_owned_by("c", net.live)
    net.old = {"c"}
    old = net.client("a")
    old.connect(cid, clean_start=False)
    await settle()
    old.subscribe("t", qos=1)
    new = net.client("b")
    new.connect(cid, clean_start=False)
    await settle()
    assert new.connack().session_present  # the session came from a, asked directly
    assert ("b", "a", SURRENDER_METHOD) in net.calls and ("b", "c", SURRENDER_METHOD) in net.calls
    assert net.locators["b"].stats["fallbacks"] == 1


async def test_an_owner_that_does_not_answer_lets_the_connect_go_on() -> None:
    net = Net(["a", "b"])
    cid = cid_owned_by("a", net.live)
    locator = net.locators["b"]

    async def silent(node: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        await asyncio.sleep(timeout)  # as ClusterNode.call: no answer within the timeout
        raise RpcTimeout(node)

    locator.call = silent
    locator.timeout = 0.05
    client = net.client("b")
    client.connect(cid)
    await settle()
    assert client.received() == []  # waiting
    async with asyncio.timeout(5):
        while not client.inbox and not client.link.out:
            await asyncio.sleep(0.02)
    assert client.connack().reason_code == 0
    assert locator.stats["failures"] == 1


async def test_close_answers_pending_takeovers_once() -> None:
    net = Net(["a", "b"])
    locator = net.locators["b"]

    async def hang(*args: Any) -> Any:
        await asyncio.sleep(3600)

    locator.call = hang
    got: list[SessionState | None] = []
    assert locator.takeover(cid_owned_by("a", net.live), False, got.append)
    await asyncio.sleep(0)
    locator.close()
    await asyncio.sleep(0.01)
    assert got == [None]


def test_pick_state() -> None:
    assert pick_state([None, None]) is None
    a: SessionState = {"disconnected_at": None}
    b: SessionState = {"disconnected_at": 1.0}
    assert pick_state([a, b]) is b and pick_state([a]) is a


def test_serve_surrender_validates_and_trims() -> None:
    broker = Broker(clock=lambda: 1.0)
    client = FakeClient(broker)
    client.connect("c", clean_start=False)
    client.subscribe("t", qos=1)
    client.drop()
    for i in range(5):
        broker.publish(Message("t", bytes(100) + b"%d" % i, 1))
    with pytest.raises(ValueError):
        serve_surrender(broker, {"client_id": 3}, "b")
    state = serve_surrender(broker, {"client_id": "c", "clean_start": False}, "b", max_bytes=400)
    assert state is not None and len(state["queue"]) == 2  # the oldest kept
    assert state["queue"][0][0]["payload"].endswith(b"0")
    assert broker.metrics.counters["messages/dropped"] >= 3
    assert serve_surrender(broker, {"client_id": "c", "clean_start": False}, "b") is None


def test_trim_state_keeps_everything_that_fits() -> None:
    state: SessionState = {"queue": [[{"payload": b"x", "topic": "t"}, 1, False, None]]}
    assert trim_state(state, 10_000) == 0 and len(state["queue"]) == 1


def test_deliver_to_one_session_only() -> None:
    broker = Broker(clock=lambda: 1.0)
    one, two = FakeClient(broker), FakeClient(broker)
    one.connect("one")
    one.subscribe("t/+", qos=1)
    two.connect("two")
    two.subscribe("t/#", qos=1)
    assert deliver_to(broker, "one", Message("t/x", b"m", 2)) == 1
    assert deliver_to(broker, "one", Message("u", b"m", 1)) == 0
    assert deliver_to(broker, "nobody", Message("t/x", b"m", 1)) == 0
    got = one.publishes()
    assert [(p.payload, p.qos) for p in got] == [(b"m", 1)]
    assert isinstance(got[0], Publish) and two.publishes() == []


async def test_the_registry_uses_the_nodes_one_clock_and_its_drift_rule() -> None:
    """Claims are stamped by `Broker.hlc` (one clock per node); a claim or a registration
    stamped beyond the drift bound (broker.core.hlc) is not trusted by the owner."""
    net = Net(["a", "b", "c"])
    owner = net.locators["a"]
    cid = cid_owned_by("a", net.live)
    ahead = [1000_000 + 10 * 60_000, 0]  # 10 minutes ahead of a's wall clock (1000 s)
    answer = await owner.serve_claim({"client_id": cid, "clean_start": True, "stamp": ahead}, "b")
    assert answer["stamp"][0] < ahead[0]  # ordered by the owner's own clock
    assert owner.stats["stamps_rejected"] == 1 and net.brokers["a"].hlc.rejected == 1
    assert net.brokers["a"].hlc.peek().ms < ahead[0]
    # a later claim from c (sane clock) is newer: the far-ahead one did not win
    later = net.brokers["c"].hlc.now()
    args = {"client_id": cid, "clean_start": True, "stamp": [later.ms, later.counter]}
    await owner.serve_claim(args, "c")
    assert owner.registry.get(cid).node == "c"  # type: ignore[union-attr]
    # a registration stamped far ahead loses to the holder the owner knows
    got = await owner.serve_register({"entries": [[cid, ahead]]}, "b")
    assert got == {"evict": [[cid, [0, 0]]], "to": {cid: "c"}}  # c holds it: the queue goes there
    assert owner.registry.get(cid).node == "c"  # type: ignore[union-attr]
    # the stamp of a CONNECT comes from the broker's clock
    before = net.brokers["b"].hlc.peek()
    net.client("b").connect(cid_owned_by("b", net.live))
    assert net.brokers["b"].hlc.peek() > before


async def test_a_claim_older_than_two_timeouts_is_refused_by_the_owner() -> None:
    """A claim delivered late (a TCP retransmit after a partition healed) must not move the
    live session to the stale copy of its caller."""
    net = Net(["a", "b"])
    owner = net.locators["a"]
    now_ms = int(net.brokers["a"].hlc.wall() * 1000)
    stale = {"client_id": "c", "clean_start": False, "stamp": [now_ms - 2_500, 0]}
    with pytest.raises(ValueError, match="old"):
        await owner.serve_claim(stale, "b")
    assert owner.stats["stale_claims"] == 1 and len(owner.registry) == 0
    fresh = {"client_id": "c", "clean_start": False, "stamp": [now_ms - 500, 0]}
    answer = await owner.serve_claim(fresh, "b")
    assert answer["state"] is None and len(owner.registry) == 1


async def test_claims_waiting_on_an_owner_declared_dead_meet_when_they_give_up() -> None:
    """The owner is cut off by a partition (no answer, no refused link). Two CONNECTs of one
    id on the near side each wait for it; the owner is declared dead meanwhile, and that
    change's registration cannot include the id (held by nobody yet). When the claims time
    out, each registers at the id's owner under the new view, so one connection stays
    without waiting for the periodic round (fault suite split_2_3, one_session_per_id)."""
    net = Net(["a", "b", "c", "d"])
    cid = cid_owned_by("c", net.live)
    cut_off = asyncio.Event()
    for name in ("a", "b"):
        reach = net.locators[name].call

        async def call(node: str, method: str, args: dict[str, Any], timeout: float,
                       reach: Any = reach) -> Any:  # fmt: skip
            if node == "c":
                await cut_off.wait()
                raise RpcTimeout(node)
            return await reach(node, method, args, timeout)

        net.locators[name].call = call
    first, second = net.client("a"), net.client("b")
    first.connect(cid)
    second.connect(cid)
    await settle()
    assert first.received() == second.received() == []  # both waiting on c
    net.live = ["a", "b", "d"]
    for name in ("a", "b", "d"):
        net.locators[name].members_changed("c", "dead")
    await settle()
    cut_off.set()  # both claims time out
    await settle()
    assert first.connack().reason_code == second.connack().reason_code == 0
    assert len([n for n, b in net.brokers.items() if cid in b.connected]) == 1
    loser = first if first.link.closed else second
    last = loser.received()[-1]
    assert isinstance(last, Disconnect) and last.reason_code == ReasonCode.SESSION_TAKEN_OVER
