"""An in-memory network with a virtual clock that runs many nodes' membership and route sync.

Theory of operation
-------------------
A discrete-event simulation, in the spirit of memberlist's in-memory transport. One heap holds
two kinds of events, ordered by virtual time:

* *deliver*: a message in flight to an address; it reaches whichever node instance holds that
  address when it lands (a restarted node gets the traffic for its address; a killed one drops it);
* *wake*: a node's `Membership.next_deadline()`, when its `tick` must run.

Sending applies, in order: the blocks (`block`: everything to or from a node; `cut`: one link;
`partition`: between groups), random loss (`loss`), and a random latency (`latency`, uniform). With
`wire=True` every message is encoded with `cluster.wire` and decoded again on arrival, so the
nodes see exactly what msgpack gives back; `measure_bytes=True` only counts encoded sizes, of a
random `byte_sample` fraction of the messages if that is below 1 (an estimate, for big runs).

Everything is driven by one `random.Random(seed)`, so a run is reproducible.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cluster.delegate import MemberEvent
from cluster.members import MemberState
from cluster.membership import Membership
from cluster.membership_config import MembershipConfig
from cluster.routes import RouteTable
from cluster.sync import RouteSync
from cluster.wire import Address, Body, FrameDecoder, MessageType, Outgoing, encode_frame

_DELIVER, _WAKE = 0, 1
_INF = float("inf")


@dataclass(eq=False)
class SimNode:
    """One run of one node: its membership, route table and route sync."""

    name: str
    address: Address
    epoch: int
    membership: Membership
    table: RouteTable
    sync: RouteSync
    up: bool = True
    scheduled: float = _INF
    events: list[tuple[float, MemberEvent]] = field(default_factory=list)


@dataclass
class SimStats:
    messages: int = 0
    bytes: int = 0
    dropped: int = 0
    by_type: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> SimStats:
        return SimStats(self.messages, self.bytes, self.dropped, Counter(self.by_type))


class SimNetwork:
    """N simulated nodes on a virtual network. See the module docstring."""

    def __init__(
        self,
        config: MembershipConfig | None = None,
        *,
        seed: int = 0,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.001, 0.005),
        wire: bool = False,
        measure_bytes: bool = False,
        byte_sample: float = 1.0,
        route_gossip: bool = True,
        record_events: bool = True,
    ) -> None:
        self.config = config or MembershipConfig()
        self.rng = random.Random(seed)
        self.loss = loss
        self.latency = latency
        self.wire = wire
        self.measure_bytes = measure_bytes or wire
        self.byte_sample = 1.0 if wire else byte_sample
        self.route_gossip = route_gossip
        self.record_events = record_events
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.stats = SimStats()
        self._by_address: dict[Address, SimNode] = {}
        self._blocked: set[str] = set()
        self._cuts: set[frozenset[str]] = set()
        self._groups: dict[str, int] | None = None
        self._heap: list[tuple[float, int, int, Any]] = []
        self._counter = 0
        self._decoder = FrameDecoder()

    # -- building the cluster ----------------------------------------------------------------

    def add_node(self, name: str, *, epoch: int = 1, address: Address | None = None) -> SimNode:
        """A node (not yet joined). The address defaults to a fresh one per name."""
        if address is None:
            old = self.nodes.get(name)
            address = old.address if old is not None else (f"10.0.{len(self.nodes)}.1", 7946)
        table = RouteTable(name, epoch)
        sync = RouteSync(table, gossip=self.route_gossip)
        rng = random.Random(self.rng.getrandbits(64))
        membership = Membership(name, address, epoch, self.config, rng, delegate=sync)
        node = SimNode(name, address, epoch, membership, table, sync)
        self.nodes[name] = node
        self._by_address[address] = node
        self._reschedule(node)
        return node

    def join(self, name: str, seeds: Iterable[str]) -> None:
        node = self.nodes[name]
        addresses = [self.nodes[s].address for s in seeds]
        self._run_node(node, node.membership.join(addresses, self.now))

    def start_cluster(self, count: int, prefix: str = "node") -> list[str]:
        """`count` nodes named prefix0.. that all join through the first one."""
        names = [f"{prefix}{i}" for i in range(count)]
        for name in names:
            self.add_node(name)
        for name in names[1:]:
            self.join(name, [names[0]])
        return names

    def kill(self, name: str) -> None:
        """Crash: the node stops at once; messages to it are lost."""
        node = self.nodes[name]
        node.up = False
        if self._by_address.get(node.address) is node:
            del self._by_address[node.address]

    def leave(self, name: str) -> None:
        """Graceful shutdown: LEAVE is sent, then the node stops."""
        node = self.nodes[name]
        self._run_node(node, node.membership.leave(self.now))
        self.kill(name)

    def restart(self, name: str, seeds: Iterable[str], *, epoch: int | None = None) -> SimNode:
        """A new run of a killed node: same name and address, a newer epoch, a clean state."""
        old = self.nodes[name]
        if old.up:
            self.kill(name)
        node = self.add_node(
            name, epoch=epoch if epoch is not None else old.epoch + 1, address=old.address
        )
        self.join(name, seeds)
        return node

    def block(self, name: str) -> None:
        """Drop every message to or from `name` until `unblock`."""
        self._blocked.add(name)

    def unblock(self, name: str) -> None:
        self._blocked.discard(name)

    def cut(self, a: str, b: str) -> None:
        """Drop every message between `a` and `b` (both ways) until `heal`."""
        self._cuts.add(frozenset((a, b)))

    def heal(self, a: str, b: str) -> None:
        self._cuts.discard(frozenset((a, b)))

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes of the same group can talk; `partition()` heals."""
        self._groups = {n: i for i, g in enumerate(groups) for n in g} if groups else None

    def announce(self, name: str, filt: str, present: bool = True) -> None:
        """The broker of `name` got its first subscriber of `filt` (or lost its last)."""
        node = self.nodes[name]
        node.sync.local_update(filt, present)
        self._reschedule(node)

    # -- running -----------------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            at, _, kind, data = heapq.heappop(heap)
            self.now = at
            if kind == _DELIVER:
                self._deliver(*data)
            else:
                node: SimNode = data
                if not node.up or at != node.scheduled:
                    continue
                node.scheduled = _INF
                self._run_node(node, node.membership.tick(at))
        self.now = max(self.now, until)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.1
    ) -> float | None:
        """Run until `predicate()` holds (checked every `step`); the time it took, or None."""
        start = self.now
        while self.now - start <= timeout:
            if predicate():
                return self.now - start
            self.run_for(step)
        return None

    # -- observation -------------------------------------------------------------------------

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def all_know_all(self) -> bool:
        """Every running node holds every other running node alive."""
        live = self.live_nodes()
        names = {n.name for n in live}
        if any(node.membership.live_count < len(live) for node in live):
            return False  # the cheap test first
        for node in live:
            for name in names:
                m = node.membership.get(name)
                if m is None or m.state is not MemberState.ALIVE:
                    return False
        return True

    def quiet(self) -> bool:
        """No running node has membership updates or route deltas left to gossip."""
        return not any(n.membership.queued or n.sync.has_broadcasts() for n in self.live_nodes())

    def states_of(self, name: str) -> set[MemberState | None]:
        """What the other running nodes think of `name` (None: unknown or forgotten)."""
        out: set[MemberState | None] = set()
        for node in self.live_nodes():
            if node.name != name:
                m = node.membership.get(name)
                out.add(None if m is None else m.state)
        return out

    def route_everywhere(self, filt: str, origin: str) -> bool:
        return all(origin in n.table.nodes_for(filt) for n in self.live_nodes())

    def route_nowhere(self, origin: str) -> bool:
        return all(
            all(node != origin for _, node in n.table.routes())
            for n in self.live_nodes()
            if n.name != origin
        )

    # -- internals ---------------------------------------------------------------------------

    def _run_node(self, node: SimNode, out: list[Outgoing]) -> None:
        for message in out:
            self._send(node, message)
        events = node.membership.take_events()
        if events and self.record_events:
            node.events.extend((self.now, e) for e in events)
        self._reschedule(node)

    def _reschedule(self, node: SimNode) -> None:
        if not node.up:
            return
        at = max(node.membership.next_deadline(), self.now + 1e-6)
        if at < node.scheduled:
            node.scheduled = at
            self._push(at, _WAKE, node)

    def _push(self, at: float, kind: int, data: Any) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (at, self._counter, kind, data))

    def _send(self, src: SimNode, message: Outgoing) -> None:
        address, msg_type, body = message
        stats = self.stats
        stats.messages += 1
        stats.by_type[msg_type.name] += 1
        if self.measure_bytes and (self.byte_sample >= 1.0 or self.rng.random() < self.byte_sample):
            frame = encode_frame(msg_type, body)
            stats.bytes += round(len(frame) / self.byte_sample)
            if self.wire:
                ((_, msg_type, body),) = self._decoder.feed(frame)
        dst = self._by_address.get(address)
        if dst is None or not self._can_talk(src.name, dst.name):
            stats.dropped += 1
            return
        if self.loss and self.rng.random() < self.loss:
            stats.dropped += 1
            return
        lo, hi = self.latency
        self._push(self.now + self.rng.uniform(lo, hi), _DELIVER, (address, src, msg_type, body))

    def _can_talk(self, a: str, b: str) -> bool:
        if a in self._blocked or b in self._blocked:
            return False
        if self._cuts and frozenset((a, b)) in self._cuts:
            return False
        groups = self._groups
        return groups is None or groups.get(a, -1) == groups.get(b, -2)

    def _deliver(self, address: Address, src: SimNode, msg_type: MessageType, body: Body) -> None:
        dst = self._by_address.get(address)
        if dst is None or not dst.up or not self._can_talk(src.name, dst.name):
            self.stats.dropped += 1
            return
        self._run_node(dst, dst.membership.handle(src.address, msg_type, body, self.now))
