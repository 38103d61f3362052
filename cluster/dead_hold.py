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
(the receiver de-duplicates). At the end of the grace its routes are purged and what is held
is dropped and counted, as a dead verdict did at once before. A peer that *leaves* (a graceful
leave) has no grace: purged at once. A second "dead" after the peer came back starts a new
grace; membership (`$SYS`, the REST node lists) shows the peer dead all along.
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
    ) -> None:
        self.hold = DeadHold(seconds)
        self.sync = sync
        self.forwarder = forwarder
        self.transport = transport
        self.stats = stats
        sync.keep_dead = seconds > 0

    def holds(self, name: str) -> bool:
        """`name` is dead but within its grace: QoS 1/2 publishes for it are held."""
        return name in self.hold

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
        if self.hold.end(name) is not None:
            self.stats["dead_hold/returned"] += 1
            self.forwarder.resume(address)

    def left(self, name: str, address: Address) -> None:
        """A graceful leave: no grace (its routes went with the event)."""
        self.hold.end(name)
        self.forwarder.forget(address)
        self.transport.forget(address)

    def expire(self, now: float) -> int:
        """End the graces that are over: routes purged, held messages dropped and counted."""
        due = self.hold.due(now)
        for grace in due:
            self.stats["dead_hold/expired"] += 1
            log.warning("cluster: node %s still dead after %g s: its routes are purged",
                        grace.name, self.hold.seconds)  # fmt: skip
            self.sync.purge_dead(grace.name, grace.epoch)
            self.forwarder.forget(grace.address)
            self.transport.forget(grace.address)
        return len(due)

    def next_deadline(self) -> float | None:
        return self.hold.next_deadline()
