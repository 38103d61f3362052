"""Shared subscription groups cluster-wide: each message goes to ONE member in the whole cluster.

Theory of operation
-------------------
Every node announces `(group, real filter)` in the replicated route table when its first local
member of the group joins and withdraws it after the last leaves (`RouteTable.local_shared_update`,
wired to `Broker.shared_route_listeners`). So each node knows, per group, which nodes have
members, including groups with no member on this node at all.

The node where a message is published does all the shared dispatch for it (this class is then the
broker's `shared_dispatcher`, `broker.core.cluster_port`): for every group whose filter matches
the topic (`RouteTable.match_shared`, a trie walk), it picks one node with the broker's strategy
(round robin over the nodes by default; `hash_clientid`/`hash_topic` pick over the nodes sorted
by name, so every origin maps a publisher/topic to the same node; `random`), then either delivers
to one local member (`Broker.deliver_shared_local`) or sends the message to that node, which
delivers it to one of its members. A node then picks the member with its own picker, so the
choice is "node, then member": with round robin every node gets its turn, whatever its number of
members (member counts are not replicated, only presence).

Copies forwarded for normal subscriptions are published with `shared=False` by the receiver, so
a member that also has a normal subscription gets one copy per subscription, never two for its
group. Nodes that membership does not consider alive are skipped while another one has members;
when the send to the chosen node fails (queue full, link down), the next node in order is tried,
then this node; a message no node takes is counted in `dropped`.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.core.message import Message
from broker.core.shared import SharedGroupPicker
from cluster.routes import RouteTable

#: Delivers to one local member: (message, group, real filter) -> deliveries (0 or 1).
DeliverLocal = Callable[[Message, str, str], int]
#: Sends to the chosen node: (node, group, real filter, message) -> False if dropped.
SendShared = Callable[[str, str, str, Message], bool]

_HASHED = ("hash_clientid", "hash_topic")


class ClusterSharedDispatcher:
    """The cluster's `SharedDispatcher` (see the module docstring). No I/O: `send` does it."""

    def __init__(
        self,
        table: RouteTable,
        node: str,
        deliver_local: DeliverLocal,
        send: SendShared,
        *,
        strategy: str = "round_robin",
        alive: Callable[[str], bool] | None = None,
        picker: SharedGroupPicker | None = None,
    ) -> None:
        self.table = table
        self.node = node
        self.deliver_local = deliver_local
        self.send = send
        self.alive = alive
        self.picker = picker if picker is not None else SharedGroupPicker(strategy)
        self.sorted = self.picker.strategy in _HASHED
        self.dispatched = 0  # messages given to a member here or sent to another node
        self.sent = 0  # of which sent to another node
        self.dropped = 0  # group matched, but no node took the message
        self._cursor_keys: set[tuple[str, str]] = set()

    def has_groups(self, topic: str) -> bool:
        """True when a shared group in the cluster matches `topic`."""
        table = self.table  # its count read as an attribute: this runs once per PUBLISH
        return table.shared_len > 0 and bool(table.match_shared(topic))

    def dispatch(self, message: Message) -> int:
        """One member per matching group in the cluster; the deliveries made or sent."""
        if not self.table.shared_count():
            return 0  # no shared group anywhere: skip the walk (the PUBLISH hot path)
        groups = self.table.match_shared(message.topic)
        if not groups:
            return 0
        delivered = 0
        for group, filt, nodes in groups:
            delivered += self._dispatch_one(message, group, filt, nodes)
        return delivered

    def _dispatch_one(self, message: Message, group: str, filt: str, nodes: list[str]) -> int:
        alive = self.alive
        local = self.node
        candidates = nodes
        if alive is not None:
            candidates = [n for n in nodes if n == local or alive(n)] or nodes
        if self.sorted:
            candidates = sorted(candidates)
        first = self.picker.pick(group, filt, candidates, message.publisher, message.topic)
        if first is None:  # pragma: no cover - a matched group has at least one node
            return 0
        self._note_cursor(group, filt)
        n = len(candidates)
        start = candidates.index(first)
        for i in range(n):  # the chosen node first, then the others in order
            node = candidates[(start + i) % n]
            if node == local:
                if self.deliver_local(message, group, filt):
                    self.dispatched += 1
                    return 1
            elif self.send(node, group, filt, message):
                self.dispatched += 1
                self.sent += 1
                return 1
        self.dropped += 1
        return 0

    def _note_cursor(self, group: str, filt: str) -> None:
        """Round-robin cursors of groups gone from the table are dropped now and then, so
        they do not pile up with group churn (amortised: a scan when the set doubles)."""
        keys = self._cursor_keys
        if (group, filt) in keys:
            return
        keys.add((group, filt))
        if len(keys) > 2 * self.table.shared_count() + 64:
            live = {(g, f) for g, f, _node in self.table.shared_routes()}
            for key in keys - live:
                self.picker.forget(*key)
            self._cursor_keys = keys & live
