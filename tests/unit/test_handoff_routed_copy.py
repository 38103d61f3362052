"""A message the old node publishes just after it surrendered a session reaches the session
once on the new node, whichever of its two copies gets there first (`cluster.handoff`).

Found in the fault suite (issue 14, `skew_behind`): the old node `a` routed the message to `b`
(where another subscriber of `w/#` lives) and, since `b` was among the nodes routed to, sent
no copy for the moved session. The routed copy reached `b` 19 ms before the session did (the
claim's answer went `a` -> the id's owner -> `b`), found no session there, and the session
never got the message: acknowledged to its publisher, lost. Not a clock effect: the node
whose clock was behind only happened to be the one the session first moved to.
"""

from __future__ import annotations

from typing import Any

from cluster_fakes import FakeClient, msgpack_roundtrip

from broker.core.broker import Broker
from broker.core.message import Message
from broker.core.settings import Settings
from broker.protocol.packets import Publish
from cluster.handoff import Handoff, deliver_to

PAYLOAD = b"0:41:1"


class Pair:
    """The old node `a` (it surrendered `roam` to `b`) and the new node `b` with its broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message, dict[str, Any]]] = []
        self.later: list[Any] = []  # copies waiting `cluster.handoff.HOLD`
        self.old = Handoff("a", self._send, lambda cid, m: 0)
        self.broker = Broker(Settings(node_name="b"), clock=lambda: 1000.0)
        self.new = Handoff(
            "b", lambda *_: 1, lambda cid, m: deliver_to(self.broker, cid, m), later=self._later
        )
        self.client = FakeClient(self.broker)

    def _send(self, node: str, message: Message, extra: dict[str, Any]) -> int:
        self.sent.append((node, message, msgpack_roundtrip(extra)))
        return 1

    def _later(self, delay: float, callback: Any) -> None:
        self.later.append(callback)

    def publish_on_old_node(self, qos: int) -> None:
        """As `ClusterRuntime.forward` does: routed to `b`, then the handoff is told so."""
        self.old.on_message(Message("w/0", PAYLOAD, qos, node="a"), 0.0, sent_to={"b", "c"})

    def routed_copy_reaches_new_node(self, qos: int) -> None:
        """As `ClusterRuntime._deliver` does with a FORWARD from `a`."""
        message = Message("w/0", PAYLOAD, qos, node="a")
        self.broker.publish(message, forward=False, shared=False)
        self.new.on_message(message, 0.0)

    def session_arrives(self) -> None:
        """The claim answers: the session is installed (here: its client connects and
        subscribes, as the import would) and the handoff is told."""
        self.client.connect("roam", clean_start=False)
        self.client.subscribe("w/#", qos=2)
        self.client.received()
        self.new.claim_finished("roam", ["w/#"], 0.0)

    def session_copies_reach_new_node(self) -> None:
        for node, message, extra in self.sent:
            assert node == "b"
            copy = Message(message.topic, message.payload, message.qos, node=message.node)
            self.new.on_session_forward(copy, extra, 0.0)
        while self.later:
            self.later.pop(0)()

    def received(self) -> list[bytes]:
        return [p.payload for p in self.client.received() if isinstance(p, Publish)]


def test_a_copy_routed_to_the_new_node_before_the_session_got_there_is_not_lost() -> None:
    for qos in (1, 2):
        pair = Pair()
        pair.new.claim_started("roam")
        pair.old.surrendered("roam", "b", ["w/#"], 0.0)
        pair.publish_on_old_node(qos)
        pair.routed_copy_reaches_new_node(qos)  # no session here yet: nobody gets it
        pair.session_arrives()
        pair.session_copies_reach_new_node()
        assert pair.received() == [PAYLOAD], qos
        assert pair.old.stats["also_routed"] == 1


def test_a_copy_routed_after_the_session_got_there_is_delivered_once() -> None:
    for qos in (1, 2):
        pair = Pair()
        pair.new.claim_started("roam")
        pair.old.surrendered("roam", "b", ["w/#"], 0.0)
        pair.publish_on_old_node(qos)
        pair.session_arrives()
        pair.routed_copy_reaches_new_node(qos)  # the session gets this one
        pair.session_copies_reach_new_node()  # the old node's copy: a duplicate, dropped
        assert pair.received() == [PAYLOAD], qos
        assert pair.new.stats["duplicates"] == 1
