"""Runs of plain QoS 0 frames across the cluster: the broker's `RunForwarder` port of a node.

Why: the QoS 0 fast path (`broker.core.runs_delivery`) routes a run of frames once and writes
its bytes to each subscriber; the cluster's forward hook takes one `Message` per PUBLISH, so a
node with a live peer used to lose the fast path for every run. Here:

* `run_nodes(topic)`: the remote nodes the forward hook would send a message to `topic` to,
  from the route table's per-topic cache (`RouteTable.remote_match`). Empty (the usual case
  for a topic nobody elsewhere subscribes to): the run goes exactly as on a lone node. None
  when one of them cannot take a run entry (a link that did not negotiate `wire.RUN_VERSION`,
  one that cannot take a frame now, a member not live): every message then takes the packet
  path and is forwarded, or dropped and counted, as ever. Also None while a session moved
  lately (`cluster.handoff` looks at every message then).
* `forward_run`: the run goes as ONE entry of each such node's FORWARD_BATCH
  (`Forwarder.send_run`), counted per message as `ClusterNode.send_forward` counts
  (`messages/forward`, `stats["forward/sent"]`), with the same flow control.
* `deliver` (the receiving node): a run entry to the local subscribers as bytes
  (`runs_delivery.deliver_forwarded_run`, `forward=False, shared=False` semantics), or, when
  one of them needs the messages (or the handoff looks at messages), each message as the
  runtime delivers a forwarded copy (`deliver_one`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from broker.core.broker import Broker
from broker.core.cluster_port import WaitDrained
from broker.core.message import Message
from broker.core.runs_delivery import deliver_forwarded_run, run_messages
from broker.protocol.runs import PublishRun
from cluster.forwarder import Forwarder
from cluster.members import LIVE_STATES, Member
from cluster.routes import RouteTable
from cluster.transport import Transport
from cluster.wire import RUN_VERSION, Body, ForwardedRun, Hello

__all__ = ["ClusterRuns"]


class ClusterRuns:
    """See the module docstring. The callables are the node's: its member lookup, its
    per-message forward (`send_forward`), its congestion check (`_congestion`), whether
    its handoff looks at messages now, and its delivery of one forwarded copy (`_deliver`)."""

    def __init__(
        self,
        broker: Broker,
        table: RouteTable,
        transport: Transport,
        forwarder: Forwarder,
        stats: Counter[str],
        member: Callable[[str], Member | None],
        send_forward: Callable[[str, Message], int],
        congestion: Callable[[AbstractSet[str]], WaitDrained | None],
        handoff_active: Callable[[], bool],
        deliver_one: Callable[[Message, Body, Hello], None],
    ) -> None:
        self.broker = broker
        self.table = table
        self.transport = transport
        self.forwarder = forwarder
        self.stats = stats
        self.member = member
        self.send_forward = send_forward
        self.congestion = congestion
        self.handoff_active = handoff_active
        self.deliver_one = deliver_one

    # -- the sending node (broker.core.cluster_port.RunForwarder) ---------------------------

    def run_nodes(self, topic: str) -> AbstractSet[str] | None:
        if self.handoff_active():
            return None
        nodes = self.table.remote_match(topic)
        if not nodes:
            return nodes
        transport = self.transport
        for node in nodes:
            member = self.member(node)
            if member is None or member.state not in LIVE_STATES:
                return None
            address = member.address
            version = transport.peer_version(address)
            if version is None or version < RUN_VERSION or not transport.accepting(address):
                return None
        return nodes

    def alone(self) -> bool:
        return not self.table.remote_count() and not self.handoff_active()

    def forward_run(
        self, run: PublishRun, publisher: str, nodes: AbstractSet[str]
    ) -> WaitDrained | None:
        forwarded = ForwardedRun(run, publisher)
        count = run.count
        counters = self.broker.metrics.counters
        for node in nodes:
            member = self.member(node)
            if member is not None and self.forwarder.send_run(member.address, forwarded):
                counters["messages/forward"] += count
                self.stats["forward/sent"] += count
            else:  # (not in the turn `run_nodes` answered in) message by message
                broker = self.broker
                for message in run_messages(run, publisher, broker.clock(), broker.node_name):
                    self.send_forward(node, message)
        return self.congestion(nodes)

    # -- the receiving node ------------------------------------------------------------------

    def deliver(self, forwarded: ForwardedRun, hello: Hello) -> None:
        """A run entry from `hello`'s node, given to the local subscribers."""
        run = forwarded.run
        broker = self.broker
        if not self.handoff_active() and deliver_forwarded_run(broker, run, forwarded.publisher):
            self.stats["forward/received"] += run.count
            self.stats["forward/runs_received"] += 1
            return
        deliver_one = self.deliver_one
        for message in run_messages(run, forwarded.publisher, broker.clock(), hello.name):
            deliver_one(message, _PLAIN, hello)


#: The FORWARD fields of a plain publish (what a batch's plain entries carry).
_PLAIN: Body = {}
