"""QoS 2 exactly once with machines' wall clocks apart (issue 14): a session copy skips a QoS 2
message stamped before it arrived (`Broker.late_for`), but only a copy that came late (held
for a cut-off peer or sent again); a copy forwarded as it was routed, on a live link
(`Message.live`, FORWARD_BATCH field `live`), is delivered whatever the clocks say. Measured
in the fault suite with libfaketime (skew_behind, skew_ahead): before, a node 2 s behind lost
its messages to a session that had just moved to another node, a node 2 s ahead the others'.
The clocks here are injected: each broker's wall clock is a lambda."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from cluster_fakes import FakeClient, msgpack_roundtrip

from broker.core.broker import Broker
from broker.core.message import Message
from broker.protocol.packets import Publish
from cluster.forwarder import Forwarder
from cluster.receiver import Receiver
from cluster.wire import Address, Hello, MessageType, forward_entry

NOW = 1000.0
PEER: Address = ("10.0.0.2", 7946)


def payloads(client: FakeClient) -> list[bytes]:
    return [p.payload for p in client.received() if isinstance(p, Publish)]


def moved_here(wall: list[float]) -> tuple[Broker, FakeClient]:
    """Node B (wall clock `wall[0]`): session `c` moved here from node H (a takeover), and
    its client resumed it."""
    old = Broker(clock=lambda: NOW)
    client = FakeClient(old)
    client.connect("c", clean_start=False)
    client.subscribe("t/#", qos=2)
    client.drop()
    state = old.surrender_session("c", "b")
    assert state is not None
    here = Broker(clock=lambda: wall[0])
    here.import_session(msgpack_roundtrip(state), moved=True)
    resumed = FakeClient(here)
    resumed.connect("c", clean_start=False)
    resumed.received()
    return here, resumed


def published_on(node: str, wall: float) -> Message:
    """A QoS 2 message published on `node` whose wall clock reads `wall`, as it leaves there."""
    origin = Broker(clock=lambda: wall)
    origin.hlc.node = node
    message = Message("t/1", f"from {node}".encode(), 2, node=node)
    message.stamp = origin.hlc.now()
    return message


@pytest.mark.parametrize("live", [True, False])
def test_a_publisher_node_2s_behind_loses_nothing_to_a_session_that_just_moved(live: bool) -> None:
    """Published 0.5 s after the session arrived on B, on a node whose clock is 2 s behind:
    its stamp is 1.5 s *before* the arrival stamp. Forwarded live, it is delivered; the same
    stamp on a copy that came late is taken for one published before the move (the rule)."""
    wall = [NOW]
    b, client = moved_here(wall)
    arrived = b.sessions["c"].arrived
    assert arrived is not None
    message = published_on("behind", NOW + 0.5 - 2.0)
    assert message.stamp is not None and message.stamp < arrived
    message.live = live
    b.publish(message, forward=False, shared=False)
    assert payloads(client) == ([b"from behind"] if live else [])
    assert b.late_skipped == (0 if live else 1)


def test_a_session_on_a_node_2s_ahead_gets_the_live_copies_of_the_others() -> None:
    wall = [NOW + 2.0]  # B's clock ahead: its arrival stamp is 2 s in everyone else's future
    b, client = moved_here(wall)
    for k in range(3):
        message = published_on("n0", NOW + 0.1 * k)
        message.live = True
        b.publish(message, forward=False, shared=False)
    assert len(payloads(client)) == 3 and b.late_skipped == 0


def test_a_live_copy_that_repeats_one_the_session_had_is_still_dropped() -> None:
    """`live` lifts the arrival rule only: the session's record of accepted stamps
    (`Session.accept_qos2`, moved with it) still drops a second copy."""
    wall = [NOW]
    b, client = moved_here(wall)
    message = published_on("behind", NOW - 1.0)
    message.live = True
    b.publish(message, forward=False, shared=False)
    again = Message("t/1", message.payload, 2, node="behind")
    again.stamp = message.stamp
    again.live = True
    b.publish(again, forward=False, shared=False)
    assert payloads(client) == [b"from behind"] and b.qos2_repeats == 1


class _Link:
    """The transport as the forwarder sees it: a version-4 peer, its link up or not."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.sent: list[tuple[MessageType, dict[str, Any]]] = []

    def peer_version(self, address: Address) -> int:
        return 4

    def accepting(self, address: Address) -> bool:
        return True

    def is_up(self, address: Address) -> bool:
        return self.up

    def connect(self, address: Address) -> None:
        pass

    def send(self, address: Address, kind: MessageType, body: Any, weight: int = 1) -> bool:
        if not self.up:
            return False
        self.sent.append((kind, msgpack_roundtrip(body)))
        return True


async def test_a_batch_sent_as_routed_says_live_and_a_held_one_sent_later_does_not() -> None:
    link = _Link(up=True)
    forwarder = Forwarder(link, "a", Counter(), lambda n: None)  # type: ignore[arg-type]
    message = Message("t/1", b"x", 2, node="a")
    message.stamp = published_on("a", NOW).stamp
    forwarder.send(PEER, message)
    forwarder.flush()
    [(kind, body)] = link.sent
    assert kind is MessageType.FORWARD_BATCH and body["live"] is True and body["seq"] == 1
    link.up = False  # cut: the next one is parked, then sent when the link is back
    forwarder.send(PEER, message)
    forwarder.flush()
    link.up = True
    forwarder.link_up(PEER, None)  # type: ignore[arg-type]
    later = [body for _, body in link.sent[1:]]
    assert later and all("live" not in body for body in later)  # resent and parked ones


def test_the_receiver_marks_the_messages_of_a_live_batch_live() -> None:
    got: list[bool] = []
    receiver = Receiver(
        "b", Counter(), lambda: NOW, lambda *a: True,
        {"publish": lambda m, e, h: got.append(m.live)}, lambda: True, lambda: None,
    )  # fmt: skip
    message = published_on("a", NOW)
    hello = Hello("a", 1, PEER, 4)
    for live in (True, None):
        body: dict[str, Any] = {"origin": "a", "msgs": [forward_entry(message)]}
        if live:
            body["live"] = True
        receiver._deliver_batch(hello, msgpack_roundtrip(body))
    assert got == [True, False]  # no field (an older node, or sent late): not live
