"""The grace period of a peer declared dead (`[cluster] dead_hold`): which dead peers are still
held, and until when. `DeadHold` is the pure part (the clock is
passed in); `PeerGrace` applies it to the routes, the held forwards and the link.

Why: a "dead" verdict is often wrong for a while only (a partition that heals, a paused
process, a cut link). If the verdict purged everything at once, QoS 1/2 forwards in flight when
the fault began were dropped with it, and after a heal each side had no route to the other
until they saw each other alive again, so messages published then had no target at all.

Policy (carried out by `cluster.runtime`): while a dead peer is within its grace, its routes
stay in the route table (`cluster.sync` keeps them; publishes still target it), QoS 1/2
forwards for it are held in its outbox within the usual bounds (`cluster.outbox`), and when it
comes back (alive or a new run, on the same or a new address) what is held goes to it, once
(the receiver de-duplicates). At the end of the grace what is held is dropped and counted
(`forward/held_dropped`), and so is every later QoS 1/2 forward for it
(`forward/held_dropped/after_grace`) while its link is down (a link up again is a heal the
links saw before the membership: `ClusterNode.send_forward` sends to it, measured in the fault
suite's long_partition: 8-32 acknowledged messages per run were dropped in that window before):
its routes stay, frozen, for `count_for` seconds more (the
membership's `dead_reclaim_time`, the hour it retries and remembers a dead member), so that a
message for a session on the far side of a long partition is dropped *and counted*, never sent
nowhere in silence (a purge at the end of the grace left such messages with no route, measured
in the fault suite: 241 of 497 lost across a 12 s cut with a 3 s grace were not counted). When
it comes back its routes are replaced by its current ones (the push/pull of its return); after
`count_for` they are purged. A peer that *leaves* (a graceful leave) has no grace: purged at
once. A second "dead" after the peer came back starts a new grace; membership (`$SYS`, the REST
node lists) shows the peer dead all along.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from dataclasses import dataclass

from cluster.forwarder import Forwarder
from cluster.sync import RouteSync
from cluster.transport import Transport
from cluster.wire import Address

__all__ = ["DeadHold", "Grace", "PeerGrace"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Grace:
    """One dead peer held: its run (`epoch`), the address it had, the end of its grace."""

    name: str
    epoch: int
    address: Address
    until: float


class DeadHold:
    """Dead peers within their grace, by name; `seconds` 0 holds nothing (purge at once)."""

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("dead_hold must be >= 0")
        self.seconds = seconds
        self._held: dict[str, Grace] = {}
        #: (until, name, epoch): ends, oldest first; an entry no longer in `_held` is stale.
        self._ends: list[tuple[float, str, int]] = []

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, name: object) -> bool:
        return name in self._held

    def get(self, name: str) -> Grace | None:
        return self._held.get(name)

    def start(self, name: str, epoch: int, address: Address, now: float) -> Grace | None:
        """`name` (run `epoch`) was declared dead at `now`: its grace starts (again: a later
        verdict replaces an earlier one). None when nothing is held (`seconds` 0)."""
        if self.seconds <= 0:
            return None
        grace = Grace(name, epoch, address, now + self.seconds)
        self._held[name] = grace
        heapq.heappush(self._ends, (grace.until, name, epoch))
        return grace

    def end(self, name: str) -> Grace | None:
        """The grace of `name` ends now (it came back, left or was replaced); what it was."""
        return self._held.pop(name, None)

    def due(self, now: float) -> list[Grace]:
        """The graces over at `now` (removed): their routes and held messages go."""
        out: list[Grace] = []
        ends = self._ends
        while ends and ends[0][0] <= now:
            until, name, epoch = heapq.heappop(ends)
            grace = self._held.get(name)
            if grace is not None and grace.until == until and grace.epoch == epoch:
                del self._held[name]
                out.append(grace)
        return out

    def next_deadline(self) -> float | None:
        """When the next grace ends (None: none held)."""
        ends = self._ends
        while ends and self._is_stale(ends[0]):
            heapq.heappop(ends)
        return ends[0][0] if ends else None

    def _is_stale(self, entry: tuple[float, str, int]) -> bool:
        until, name, epoch = entry
        grace = self._held.get(name)
        return grace is None or grace.until != until or grace.epoch != epoch


class PeerGrace:
    """Carries out the policy above for the runtime: what a member event, or the end of a
    grace, does to the peer's routes (`RouteSync`), held forwards (`Forwarder`) and link
    (`Transport`). Built with `seconds` 0 it purges at the verdict, as before `dead_hold`."""

    def __init__(
        self,
        seconds: float,
        sync: RouteSync,
        forwarder: Forwarder,
        transport: Transport,
        stats: Counter[str],
        count_for: float = 3600.0,
    ) -> None:
        self.hold = DeadHold(seconds)
        #: Dead peers past their grace whose routes stay so that forwards for them are counted.
        self.counting = DeadHold(count_for if seconds > 0 else 0.0)
        self.sync = sync
        self.forwarder = forwarder
        self.transport = transport
        self.stats = stats
        sync.keep_dead = seconds > 0

    def holds(self, name: str) -> bool:
        """`name` is dead but within its grace: QoS 1/2 publishes for it are held."""
        return name in self.hold

    def active(self) -> bool:
        """Some dead peer still has its routes here (the forward hook must stay on)."""
        return len(self.hold) > 0 or len(self.counting) > 0

    def dropped(self, name: str, qos: int) -> None:
        """A forward for dead `name` was dropped (and counted in `forward/dropped`); a QoS 1/2
        one for a peer past its grace (routes kept) is also counted as a held one."""
        if qos > 0 and name in self.counting:
            self.stats["forward/held_dropped"] += 1
            self.stats["forward/held_dropped/after_grace"] += 1

    def dead(self, name: str, epoch: int, address: Address, now: float) -> None:
        """`name` was declared dead. Its link is closed either way (a partition leaves a TCP
        connection that only a timeout would end; the next one starts fresh)."""
        self.transport.forget(address)
        if self.hold.start(name, epoch, address, now) is None:
            self.forwarder.forget(address)  # what it has not acknowledged is dropped
            return
        self.stats["dead_hold/started"] += 1
        log.warning(
            "cluster: node %s is dead; its routes and held messages are kept for %g s",
            name, self.hold.seconds,
        )  # fmt: skip
        self.forwarder.resume(address)  # dialled until it answers, if anything is held

    def back(self, name: str, address: Address) -> None:
        """`name` is alive again or joined with a new run (on `address`, where the forwarder
        moved what it held): the grace ends and what is held goes to it."""
        self.counting.end(name)
        if self.hold.end(name) is not None:
            self.stats["dead_hold/returned"] += 1
            self.forwarder.resume(address)

    def left(self, name: str, address: Address) -> None:
        """A graceful leave: no grace (its routes went with the event)."""
        self.hold.end(name)
        self.counting.end(name)
        self.forwarder.forget(address)
        self.transport.forget(address)

    def expire(self, now: float) -> int:
        """End the graces that are over: held messages dropped and counted, the routes kept
        (frozen) for counting; purge the routes of peers past that too."""
        due = self.hold.due(now)
        for grace in due:
            self.stats["dead_hold/expired"] += 1
            log.warning(
                "cluster: node %s still dead after %g s: what is held for it is dropped, and"
                " from now on counted as dropped",
                grace.name,
                self.hold.seconds,
            )
            self.forwarder.forget(grace.address)
            self.transport.forget(grace.address)
            self.counting.start(grace.name, grace.epoch, grace.address, grace.until)
        for gone in self.counting.due(now):
            log.warning("cluster: node %s forgotten: its routes are purged", gone.name)
            self.sync.purge_dead(gone.name, gone.epoch)
        return len(due)

    def next_deadline(self) -> float | None:
        ends = [t for t in (self.hold.next_deadline(), self.counting.next_deadline()) if t]
        return min(ends) if ends else None
