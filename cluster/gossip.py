"""Membership vocabulary and gossip building blocks: member states and records, the update
record, timing configuration, the delegate interface and the transmit queue.

The transmit queue is HashiCorp memberlist's `TransmitLimitedQueue`: every queued item is sent
(piggybacked on protocol messages) at most `limit` times, where memberlist's formula gives
`limit = retransmit_mult * ceil(log10(n + 1))` for a cluster of `n` nodes. Items sent the fewest
times go first, and among equals the newest; a new item with the same key (the same node, or the
same route) replaces the queued one, so stale news is never sent after fresh news.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

from cluster.wire import Address, Body, MessageType, WireError

if TYPE_CHECKING:
    from cluster.membership import Membership

K = TypeVar("K", bound=Hashable)


class MemberState(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


def retransmit_limit(mult: int, n: int) -> int:
    """memberlist: `mult * ceil(log10(n + 1))` (at least 1)."""
    return max(1, mult * math.ceil(math.log10(n + 1)))


@dataclass(frozen=True, slots=True)
class Update:
    """One membership fact: node `name` (run `epoch`) is in `state` at `incarnation`.

    On the wire: `[state, name, host, port, incarnation, epoch]`; extra trailing fields from a
    newer peer are ignored.
    """

    state: MemberState
    name: str
    address: Address
    incarnation: int
    epoch: int

    def to_wire(self) -> list[Any]:
        return [
            int(self.state),
            self.name,
            self.address[0],
            self.address[1],
            self.incarnation,
            self.epoch,
        ]

    def wire_size(self) -> int:
        """A close upper estimate of the packed size, for piggyback budgets."""
        return 24 + len(self.name) + len(self.address[0])

    @classmethod
    def from_wire(cls, item: Any) -> Update:
        """Raises WireError on anything malformed."""
        if not isinstance(item, list | tuple) or len(item) < 6:
            raise WireError(f"bad membership update {item!r}")
        state, name, host, port, incarnation, epoch = item[:6]
        if (
            not isinstance(state, int)
            or state not in _STATES
            or not isinstance(name, str)
            or not name
            or not isinstance(host, str)
            or not _is_int(port)
            or not 0 <= port <= 65535
            or not _is_int(incarnation)
            or incarnation < 0
            or not _is_int(epoch)
        ):
            raise WireError(f"bad membership update {item!r}")
        return cls(MemberState(state), name, (host, port), incarnation, epoch)


_STATES = frozenset(int(s) for s in MemberState)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TransmitQueue(Generic[K]):
    """Items to piggyback, each sent at most `limit` times; fewest-sent and newest first.

    Items are kept in buckets by transmit count (dicts keep insertion order, so the newest item of
    a bucket is its last), which makes `take` cost proportional to what it returns.
    """

    __slots__ = ("_buckets", "_count")

    def __init__(self) -> None:
        self._buckets: list[dict[K, tuple[Any, int]]] = [{}]
        self._count = 0

    def push(self, key: K, item: Any, size: int) -> None:
        """Queue `item` (already in wire form), replacing any queued item with the same key."""
        self.discard(key)
        self._buckets[0][key] = (item, size)
        self._count += 1

    def take(self, limit: int, max_bytes: int, max_items: int) -> tuple[list[Any], int]:
        """Up to `max_items` items within `max_bytes`; returns (items, bytes used).

        Each returned item counts one transmit; items that reached `limit` are dropped.
        """
        buckets = self._buckets
        if len(buckets) > limit:  # the limit shrank (fewer nodes): drop what is over it
            for bucket in buckets[limit:]:
                self._count -= len(bucket)
            del buckets[limit:]
        items: list[Any] = []
        append = items.append
        used = 0
        room = max_items
        moves: list[tuple[int, list[K]]] = []
        for count, bucket in enumerate(buckets):
            if not bucket:
                continue
            taken: list[K] = []
            for key, (item, size) in reversed(bucket.items()):
                if used + size > max_bytes:
                    if max_bytes - used < 16:
                        break
                    continue
                append(item)
                used += size
                taken.append(key)
                room -= 1
                if not room:
                    break
            if taken:
                moves.append((count, taken))
            if not room or max_bytes - used < 16:
                break
        for count, taken in moves:
            src = buckets[count]
            if count + 1 >= limit:
                for key in taken:
                    del src[key]
                self._count -= len(taken)
                continue
            if count + 1 == len(buckets):
                buckets.append({})
            dst = buckets[count + 1]
            if len(taken) == len(src) and not dst:  # the whole bucket moves up
                buckets[count], buckets[count + 1] = dst, src
                continue
            pop = src.pop
            for key in taken:
                dst[key] = pop(key)
        return items, used

    def __iter__(self) -> Iterator[K]:
        """The queued keys (a snapshot: the queue may be changed while iterating)."""
        return iter([key for bucket in self._buckets for key in bucket])

    def discard(self, key: K) -> None:
        for bucket in self._buckets:
            if bucket.pop(key, None) is not None:
                self._count -= 1
                return

    def clear(self) -> None:
        self._buckets = [{}]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0


EventKind = Literal["join", "alive", "suspect", "dead", "left"]
EVENT_OF: dict[MemberState, EventKind] = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "left",
}


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timings (seconds) and limits. The defaults suit a LAN or loopback."""

    probe_interval: float = 0.5
    probe_timeout: float = 0.2
    indirect_checks: int = 3
    suspicion_mult: float = 4.0
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 10.0
    push_pull_interval: float = 10.0
    join_retry_interval: float = 1.0
    reconnect_interval: float = 10.0
    dead_reclaim_time: float = 3600.0
    left_reclaim_time: float = 300.0
    leave_fanout: int = 8
    max_piggyback_bytes: int = 4096
    max_piggyback_items: int = 128

    def suspicion_timeout(self, n: int) -> float:
        """memberlist: `suspicion_mult * max(1, log10(n)) * probe_interval`."""
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval

    def retransmit_limit(self, n: int) -> int:
        return retransmit_limit(self.retransmit_mult, n)

    def push_pull_period(self, n: int) -> float:
        """memberlist's pushPullScale: one more interval per doubling of the cluster above 32."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def detection_bound(self, n: int) -> float:
        """Worst case from a node's death until all `n - 1` others hold it dead (no loss).

        The first probe of the dead node comes within `2(n-2)+1` probe intervals (the worst
        place in two consecutive shuffles of one prober's round robin), the probe itself takes one
        interval, then the suspicion timeout runs; the suspect/dead news spreads within a few
        gossip intervals (allowed: 5).
        """
        first_probe = (2 * max(0, n - 2) + 1) * self.probe_interval
        return (
            first_probe + self.probe_interval + self.suspicion_timeout(n) + 5 * self.gossip_interval
        )


@dataclass(slots=True)
class Member:
    name: str
    address: Address
    state: MemberState
    incarnation: int
    epoch: int
    state_change_at: float

    def update(self) -> Update:
        return Update(self.state, self.name, self.address, self.incarnation, self.epoch)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """`join`: a new member, or a new run (epoch) of a known one; `alive`: back from suspect or
    dead in the same run; `suspect`, `dead`, `left`: that run's state changed."""

    kind: EventKind
    name: str
    address: Address
    epoch: int


class Outgoing(NamedTuple):
    address: Address
    msg_type: MessageType
    body: Body


class Delegate:
    """Hooks for what rides on membership (routes); every method is optional."""

    def attached(self, membership: Membership) -> None:
        """Called once by `Membership.__init__`."""

    def has_broadcasts(self) -> bool:
        return False

    def broadcasts(self, limit: int, max_bytes: int, max_items: int) -> list[Any]:
        """Items (wire form) to piggyback; `limit` is the current retransmit limit."""
        return []

    def receive_broadcasts(self, items: list[Any], now: float) -> None:
        """Items another node piggybacked (untrusted: validate)."""

    def local_state(self, join: bool) -> Any:
        """This node's full state for a push/pull (wire form)."""
        return None

    def merge_remote_state(self, state: Any, join: bool, now: float) -> None:
        """A peer's `local_state` (untrusted: validate); members are merged before."""

    def on_event(self, event: MemberEvent) -> None:
        """A member joined, came back, became suspect, died or left."""
