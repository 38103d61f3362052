"""QoS 2 exactly once at a persistent session that moves between nodes (MQTT-4.3.3-2).

Why: a session that moves across a partition leaves a copy on each side, and a message held
for a node while it was cut off (`cluster.dead_hold`) is delivered there after the heal. Two
rules keep each QoS 2 message to one delivery per session:

* **Late copies** (`is_late`): every QoS 2 message carries the hybrid-clock stamp of its
  publish (`broker.core.hlc`, set at its origin by `Broker.publish`, FORWARD field `hlc`),
  every session copy the stamp of its arrival on its node (`Session.arrived`: new, moved
  there, or as saved on disk). A message published before the copy arrived is not routed to
  it: where the session was then, it got the message there, and what it had not delivered came
  with its state or the old node's handoff (`cluster.handoff`, which applies the same rule to
  what it passes on). The rule is asked only of copies that came *late*: held for a node
  that was cut off, or sent again after a link dropped. A copy a peer forwarded as it routed
  it, on a link that was up (`Message.live`, FORWARD_BATCH field `live`), is not compared:
  two nodes' clocks made the two stamps, and a publisher's node whose wall clock is behind
  (or a session's node ahead) made live messages look published before the session arrived
  (measured with libfaketime, 2 s apart: 4 and 12 QoS 2 messages lost at a session that
  moves every 3 s; 0 since). A live copy of a message the session had already is dropped by
  the record below (it moved with the session), or by the handoff's arrival window. Limit
  left: a late copy published within the clocks' gap after the session arrived is skipped
  (only after a cut, and only with clocks apart by more than the time between the arrival
  and the publish).
* **Repeats** (`Seen`): a persistent session remembers the publish stamps of the last
  `SEEN_MAX` QoS 2 messages it accepted, moved and persisted with it (`Session.export_state`),
  and drops a copy that reaches it again (held for one node and passed on by another).

A third case needs the other copy itself: a copy resumed while members were out of reach gets
late copies at the heal that the far side's copy may have delivered, and neither rule can tell.
Those wait until that copy is folded in (`broker.core.late_hold`, `cluster.takeover_heal`).

Both rules cost one comparison and one dict operation per QoS 2 delivery, nothing for QoS 0/1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from broker.core.hlc import Stamp, stamp_from_wire

__all__ = ["SEEN_MAX", "Seen", "is_late"]

#: Stamps a session remembers: at a few dozen QoS 2 messages a second to one session, the last
#: half minute or so, longer than a partition's held copies take to arrive after a heal. Cost
#: when full: about 100 KB of memory, 27 KB in its exported state, 0.2 ms to export.
SEEN_MAX = 1_000


def is_late(arrived: Stamp | None, stamp: Stamp) -> bool:
    """A message published at `stamp` predates a session copy that arrived at `arrived`."""
    return arrived is not None and stamp < arrived


class Seen:
    """The publish stamps of the QoS 2 messages a session accepted, oldest first, bounded."""

    __slots__ = ("stamps",)

    def __init__(self) -> None:
        self.stamps: OrderedDict[Stamp, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.stamps)

    def accept(self, stamp: Stamp) -> bool:
        """False for a stamp accepted before; else it is remembered (the oldest goes)."""
        stamps = self.stamps
        if stamp in stamps:
            return False
        stamps[stamp] = None
        if len(stamps) > SEEN_MAX:
            stamps.popitem(last=False)  # O(1); a dict's first key is not, after many deletes
        return True

    def to_wire(self) -> list[list[Any]]:
        return [list(stamp) for stamp in self.stamps]

    @classmethod
    def from_wire(cls, value: Any) -> Seen | None:
        """The record of `to_wire` (None when empty or absent); raises ValueError."""
        if not value:
            return None
        stamps = [stamp_from_wire(item) for item in value] if isinstance(value, list) else [None]
        seen = cls()
        for stamp in stamps[-SEEN_MAX:]:
            if stamp is None:
                raise ValueError("bad qos2_seen")
            seen.stamps[stamp] = None
        if None in stamps:
            raise ValueError("bad qos2_seen")
        return seen
