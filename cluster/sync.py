"""Route synchronisation: the membership `Delegate` that keeps every node's `RouteTable` in step.

* Local changes (`local_update`, wired to the broker's `route_listeners`) become `RouteDelta`s in
  a transmit queue; membership piggybacks them on its messages, each sent at most the retransmit
  limit times, and every node that learns something new from a delta queues it again (epidemic
  spread).
* Push/pull carries the whole table (`RouteTable.state_for_push_pull`), which repairs anything
  gossip lost.
* Only routes of origins that membership holds alive or suspect, in the same epoch, are accepted:
  news from a dead, left or unknown node, or from another run of it, is dropped. A `dead`/`left`
  event purges the origin; a `join` (fresh run) purges what is left of its older runs.
* A node that refutes being dead re-announces its routes with new seqs, since every node that
  believed it dead purged them.
"""

from __future__ import annotations

from typing import Any

from cluster.gossip import Delegate, MemberEvent, MemberState, TransmitQueue
from cluster.membership import Membership
from cluster.routes import RouteDelta, RouteTable
from cluster.wire import WireError


class RouteSync(Delegate):
    """Gossip and push/pull of a `RouteTable`. Create it, then pass it to `Membership`."""

    def __init__(self, table: RouteTable, *, gossip: bool = True) -> None:
        self.table = table
        self.gossip = gossip  # False: push/pull only (for the simulation's comparison)
        self.membership: Membership | None = None
        self.malformed = 0
        self._queue: TransmitQueue[tuple[str, str]] = TransmitQueue()

    # -- the broker side ---------------------------------------------------------------------

    def local_update(self, filt: str, present: bool) -> RouteDelta:
        """This node's first subscriber of `filt` arrived (True) or its last left (False)."""
        delta = self.table.local_update(filt, present)
        self._queue_delta(delta)
        return delta

    def _queue_delta(self, delta: RouteDelta) -> None:
        if self.gossip:
            self._queue.push((delta.origin, delta.filter), delta.to_wire(), delta.wire_size())

    def _accept(self, origin: str, epoch: int) -> bool:
        m = self.membership
        return m is not None and origin != m.name and m.is_live(origin, epoch)

    # -- Delegate ----------------------------------------------------------------------------

    def attached(self, membership: Membership) -> None:
        self.membership = membership

    def has_broadcasts(self) -> bool:
        return bool(self._queue)

    def broadcasts(self, limit: int, max_bytes: int, max_items: int) -> list[Any]:
        items, _ = self._queue.take(limit, max_bytes, max_items)
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

    def on_event(self, event: MemberEvent) -> None:
        if event.kind in ("dead", "left"):
            self.table.purge(event.name)
            self._drop_queued(event.name)
        elif event.kind == "join":
            self.table.purge(event.name, older_than=event.epoch)

    def on_refute(self, state: MemberState) -> None:
        if state in (MemberState.DEAD, MemberState.LEFT):
            for filt in sorted(self.table.local_routes()):
                self.local_update(filt, True)

    def _drop_queued(self, origin: str) -> None:
        # Rare (a death), so a scan of the queued keys is fine.
        for key in [k for k in self._queue if k[0] == origin]:
            self._queue.discard(key)
