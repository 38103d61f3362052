"""The ports through which a cluster runtime extends the broker beyond one node.

The core stays synchronous and I/O-free: it calls these ports and the cluster side (`cluster/`)
does the I/O. A single node sets none of them (`Broker.shared_dispatcher` and
`Broker.session_locator` stay None) and behaves exactly as without a cluster.

* `SharedDispatcher`: shared subscription groups cluster-wide. When set, `Broker.publish` does not
  deliver to shared groups itself; it hands each message published on this node to `dispatch`,
  which sees every group of the cluster (from the replicated shared-route table, so groups with
  members on other nodes only are included), picks one node per group, and either delivers
  locally through `Broker.deliver_shared_local` or sends the message to the chosen node (which
  calls `deliver_shared_local` there). Forwarded copies are published with `shared=False`, so a
  member never gets a message twice.
* `SessionLocator`: a client id unique in the cluster. After authentication, a CONNECT asks
  `takeover`; when it returns True the channel waits (state TAKEOVER: input held, no keepalive)
  until `done` is called with the session state that another node surrendered (or None), then
  goes on as a local CONNECT does (`broker.core.handle_connect`). The cluster's locator asks the
  client id's owner in a registry (`cluster.takeover`).
* `RunForwarder`: runs of plain QoS 0 frames (`broker.protocol.runs`) on a node with live
  peers. `Broker.run_forwarder` answers for the cluster's forward hook: `run_nodes(topic)` is
  the set of other nodes a message to `topic` is forwarded to (empty: the run goes as on a lone
  node), or None when one of them cannot take a run (an older link, a link that cannot take a
  frame now): each message then takes the packet path. `forward_run` sends the run to those
  nodes as one entry of their FORWARD_BATCH (`cluster.runs`), counted per message.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from broker.core.message import Message
from broker.protocol.runs import PublishRun

#: `Session.export_state()`: a msgpack-able map.
SessionState = dict[str, Any]
#: Back-pressure: `wait_drained(resume)` calls `resume` once the congested path to another node
#: has room again and returns True, or returns False (and never calls it) if it has room now.
WaitDrained = Callable[[Callable[[], None]], bool]
#: Called once, on the event loop, with the surrendered session state or None.
TakeoverDone = Callable[[SessionState | None], None]


class SharedDispatcher(Protocol):
    def dispatch(self, message: Message) -> int:
        """Give `message` to one member of every shared group in the cluster whose filter
        matches its topic; returns the deliveries made or handed to another node."""
        ...

    def has_groups(self, topic: str) -> bool:
        """True when a shared group somewhere in the cluster matches `topic` (`dispatch`
        would deliver it): a run of messages then goes through `dispatch` one by one."""
        ...


class SessionLocator(Protocol):
    def takeover(self, client_id: str, clean_start: bool, done: TakeoverDone) -> bool:
        """Make every other node give up `client_id`: close its connection (0x8E) and, unless
        `clean_start`, hand over its session state. Returns False when there is nothing to ask
        (single node, or no other node holds the id as far as this node knows for sure): `done`
        is then never called and the CONNECT goes on at once. Otherwise `done` is called
        exactly once, later or before returning, with the state (None if no node had one, or
        on failure/timeout)."""
        ...


class RunForwarder(Protocol):
    def run_nodes(self, topic: str) -> AbstractSet[str] | None:
        """The other nodes the cluster's forward hook would send a message to `topic` to
        (empty when none), or None when a run to one of them must go message by message.
        Cheap: it runs once per run, from the route table's per-topic cache."""
        ...

    def alone(self) -> bool:
        """True when `run_nodes` would answer empty for every topic now (no other node has a
        route, normal or shared, and no handoff looks at messages): what a read of frames to
        many topics asks once instead of per topic."""
        ...

    def forward_run(
        self, run: PublishRun, publisher: str, nodes: AbstractSet[str]
    ) -> WaitDrained | None:
        """Send `run` from client `publisher` to `nodes` (`run_nodes`' answer in this loop
        turn) as the forward hook sends each of its messages, and counted so; how to wait when
        a link it went on is congested (as `Forwarded.wait_drained`)."""
        ...
