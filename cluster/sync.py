"""Route synchronisation: the membership `Delegate` that keeps every node's `RouteTable` in step.

* Local changes (`local_update`, wired to the broker's `route_listeners`) become `RouteDelta`s in
  a transmit queue; membership piggybacks them on its messages, each sent at most the retransmit
  limit times, and every node that learns something new from a delta queues it again (epidemic
  spread).
* Push/pull carries the whole table (`RouteTable.state_for_push_pull`), which repairs anything
  gossip lost.
* Only routes of origins that membership holds alive or suspect are accepted (of that run, or of
  a newer one: a restart membership has not heard of yet): news from a dead, left or unknown
  node, or from an older run, is dropped. As memberlist's delegates, `RouteSync` is never handed
  the membership: it keeps its own view of the live runs from the member events it is told.
  A `dead`/`left` event purges that run's routes. A `join` of a new run of a node we knew
  (a restart) keeps the old run's routes, frozen, until the new run's own reach us and replace
  them whole (`RouteTable`: a newer epoch replaces an older one; a run with no routes says so
  in its push/pull, `state_for_push_pull`). Why: a node may learn of the new run by gossip
  before its routes (they come in the new run's own push/pull or gossip); purging at the join
  left the restarted node, and the persistent sessions it restored, without routes meanwhile,
  so a peer acknowledged publishes for them and routed them nowhere (issue 14: the likely
  cause of one loss in a long restart_each run). With `keep_dead` (`[cluster] dead_hold`
  above 0) a `dead` event keeps the routes
  (frozen: news from a dead node is still refused) until the runtime ends the grace with
  `purge_dead` (`cluster.dead_hold`); `left` purges at once.
* A node that was wrongly declared dead (a partition, heavy loss) comes back alive in the same
  epoch; every node that purged its routes then runs a push/pull with it at once (membership does
  that on such a resurrection), which brings its routes back. A node that kept them (its grace)
  gets the same push/pull: the returning node's own entry is a snapshot at its latest seq, which
  replaces the kept one whole, so a route it withdrew while apart does not linger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cluster.delegate import Delegate, MemberEvent
from cluster.routes import RouteDelta, RouteTable
from cluster.transmit import TransmitQueue
from cluster.wire import WireError


class RouteSync(Delegate):
    """Gossip and push/pull of a `RouteTable`. Create it, then pass it to `Membership`."""

    def __init__(
        self,
        table: RouteTable,
        *,
        gossip: bool = True,
        limit_factor: int = 2,
        keep_dead: bool = False,
    ) -> None:
        self.table = table
        #: True: a dead member's routes stay until `purge_dead` (its grace, `cluster.dead_hold`).
        self.keep_dead = keep_dead
        self.gossip = gossip  # False: push/pull only (for the simulation's comparison)
        #: Route deltas are sent `limit_factor` times as often as membership updates: a route
        #: that gossip misses loses messages until the next push/pull repairs it.
        self.limit_factor = limit_factor
        #: name -> epoch of the other members alive or suspect, kept from `on_event` (a join,
        #: alive or suspect event makes that run live; dead or left ends it).
        self._live: dict[str, int] = {}
        self.malformed = 0
        self._queue: TransmitQueue[tuple[str, str]] = TransmitQueue()
        #: Called after each peer's whole table is merged (push/pull): `cluster.first_sync`.
        self.on_full_state: Callable[[], None] | None = None

    # -- the broker side ---------------------------------------------------------------------

    def local_update(self, filt: str, present: bool) -> RouteDelta:
        """This node's first subscriber of `filt` arrived (True) or its last left (False)."""
        delta = self.table.local_update(filt, present)
        self._queue_delta(delta)
        return delta

    def local_shared_update(self, group: str, filt: str, present: bool) -> RouteDelta:
        """This node's first member of shared group `group` on `filt` arrived (True) or its
        last left (False); wired to the broker's `shared_route_listeners`."""
        delta = self.table.local_shared_update(group, filt, present)
        self._queue_delta(delta)
        return delta

    def _queue_delta(self, delta: RouteDelta) -> None:
        if self.gossip:
            self._queue.push((delta.origin, delta.filter), delta.to_wire(), delta.wire_size())

    def _accept(self, origin: str, epoch: int) -> bool:
        """Routes of `origin`'s run `epoch` are welcome if that node is alive (or suspect).

        A newer epoch than membership knows is a restart that gossip has not told us about yet;
        the old run being alive still, it is accepted (its routes replace the old run's).
        """
        known = self._live.get(origin)
        return known is not None and epoch >= known and origin != self.table.node

    # -- Delegate ----------------------------------------------------------------------------

    def has_broadcasts(self) -> bool:
        return bool(self._queue)

    def broadcasts(self, limit: int, max_bytes: int, max_items: int) -> list[Any]:
        items, _ = self._queue.take(limit * self.limit_factor, max_bytes, max_items)
        return items

    def receive_broadcasts(self, items: list[Any], now: float) -> None:
        for item in items:
            try:
                delta = RouteDelta.from_wire(item)
            except WireError:
                self.malformed += 1
                continue
            if self._accept(delta.origin, delta.epoch) and self.table.apply(delta):
                self._queue_delta(delta)

    def local_state(self, join: bool) -> Any:
        return self.table.state_for_push_pull()

    def merge_remote_state(self, state: Any, join: bool, now: float) -> None:
        if isinstance(state, list):
            self.table.merge_full(state, self._accept)
            if self.on_full_state is not None:
                self.on_full_state()

    def on_event(self, event: MemberEvent) -> None:
        if event.kind in ("dead", "left"):  # that run, not a newer one we already heard of
            self._live.pop(event.name, None)
            if event.kind == "left" or not self.keep_dead:
                self._purge(event.name, event.epoch)
            return
        # join, alive, suspect: the member's current run (an event always names it) is live;
        # an older run's routes stay until this run's replace them (module docstring)
        self._live[event.name] = event.epoch

    def purge_dead(self, name: str, epoch: int) -> bool:
        """The grace of dead member `name` (run `epoch`) is over: its routes go, unless it is
        live again (then they are its current ones). True if something was purged."""
        if name in self._live:
            return False
        return self._purge(name, epoch)

    def _purge(self, name: str, epoch: int) -> bool:
        if self.table.purge(name, older_than=epoch + 1):
            self._drop_queued(name)
            return True
        return False

    def _drop_queued(self, origin: str) -> None:
        # Rare (a death), so a scan of the queued keys is fine.
        for key in [k for k in self._queue if k[0] == origin]:
            self._queue.discard(key)
