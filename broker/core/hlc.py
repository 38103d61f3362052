"""A hybrid logical clock (Kulkarni et al., 2014): the order of the replicated writes.

Why not wall time alone: two nodes that write one retained topic (or one table row) at nearly
the same moment each keep the last write *they* saw, and wall clocks of two machines disagree
by more than the gap between such writes. A last-writer-wins rule needs one total order that
every node computes the same way and that respects causality (a write made after a node saw
another write is ordered after it, whatever the clocks say).

Theory of operation
-------------------
A `Stamp` is `(ms, counter, node)`: `ms` is the largest wall time (milliseconds) the clock has
seen, `counter` orders events within one `ms`, and `node` (the writer's name) breaks the last
ties, so two stamps of different nodes are never equal. Tuples compare in that order.

* `now()` (a local write, or a send): `ms = max(ms, wall)`; the counter goes up by one if `ms`
  did not move, else back to 0.
* `update(stamp)` (a stamp received from a peer): `ms = max(ms, stamp.ms, wall)` with the
  counter past both when they tie, so the next `now()` is greater than every stamp seen.
* **The drift rule** (one for the node): a received stamp more than `max_drift_ms` (60 s) ahead
  of our wall clock is *rejected*: `update` returns False, counts it in `rejected`, leaves the
  clock alone, and the write it carries is not ordered by it. For a replicated last-writer-wins
  write (a retained message, `Broker.retain`) that means refused: this node keeps what it has,
  and anti-entropy offers the write again until our wall clock is within the bound of it. For
  a claim of a client id (`cluster.takeover`), the one owner of the id orders it by its own
  clock instead. So `ms - wall` never exceeds the bound, and a peer whose clock runs far ahead
  no longer wins every write until real time catches up with it.
  Why reject and not clamp (take the stamp as `wall + bound`): every node would clamp to its
  own wall clock, so two nodes would keep two different orders of the same writes and never
  converge; a rejected write is refused the same way everywhere, and converges (late) once the
  writer's clock is fixed or real time passes it. The cost is said plainly: while its clock is
  ahead, such a node's retained values are kept on that node only (the messages themselves are
  still delivered everywhere; only storing them as retained is refused).

A stamp from a peer that predates this clock (no stamp on the wire) is read as its wall time:
`legacy_stamp(ms)` = `(ms, 0, "")`, which sorts before any stamp of a node at that millisecond.

Pure: the wall clock is passed in (`wall() -> seconds`), so the tests drive it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["HybridClock", "Stamp", "legacy_stamp", "stamp_from_wire"]

#: A received stamp further ahead of the wall clock than this is rejected (1 minute): far more
#: than NTP-synchronised machines drift apart, far less than a clock set wrong by hand.
DEFAULT_MAX_DRIFT_MS = 60_000


class Stamp(NamedTuple):
    ms: int
    counter: int
    node: str

    def to_wire(self) -> list[Any]:
        return [self.ms, self.counter, self.node]


def legacy_stamp(ms: int) -> Stamp:
    """The stamp of a write from a node without a clock: its wall time, counter 0."""
    return Stamp(ms, 0, "")


def stamp_from_wire(value: Any) -> Stamp | None:
    """`[ms, counter, node]` as sent by `Stamp.to_wire` (JSON or msgpack); None if malformed."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    ms, counter, node = value
    for number in (ms, counter):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            return None
    if not isinstance(node, str):
        return None
    return Stamp(ms, counter, node)


class HybridClock:
    """One node's clock; see the module docstring."""

    __slots__ = ("_counter", "_ms", "max_drift_ms", "node", "rejected", "wall")

    def __init__(
        self, node: str, wall: Callable[[], float], max_drift_ms: int = DEFAULT_MAX_DRIFT_MS
    ) -> None:
        self.node = node
        self.wall = wall
        self.max_drift_ms = max_drift_ms
        self.rejected = 0
        self._ms = 0
        self._counter = 0

    def _wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def peek(self) -> Stamp:
        """The last stamp given or seen (no tick)."""
        return Stamp(self._ms, self._counter, self.node)

    def now(self) -> Stamp:
        """A new stamp, greater than every stamp given or seen before."""
        wall = self._wall_ms()
        if wall > self._ms:
            self._ms, self._counter = wall, 0
        else:
            self._counter += 1
        return Stamp(self._ms, self._counter, self.node)

    def update(self, stamp: Stamp) -> bool:
        """Take a received stamp into the clock; False (and counted) when it is further ahead
        of our wall clock than `max_drift_ms` (the clock is then left alone)."""
        wall = self._wall_ms()
        if stamp.ms - wall > self.max_drift_ms:
            self.rejected += 1
            return False
        top = max(self._ms, stamp.ms, wall)
        if top == self._ms and top == stamp.ms:
            counter = max(self._counter, stamp.counter) + 1
        elif top == self._ms:
            counter = self._counter + 1
        elif top == stamp.ms:
            counter = stamp.counter + 1
        else:
            counter = 0
        self._ms, self._counter = top, counter
        return True

    def restore(self, stamp: Stamp) -> None:
        """Take a stored stamp (at start) so that restarts keep the order, whatever the drift."""
        if (stamp.ms, stamp.counter) > (self._ms, self._counter):
            self._ms, self._counter = stamp.ms, stamp.counter
