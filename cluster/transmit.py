"""The transmit queue of gossip: HashiCorp memberlist's `TransmitLimitedQueue` (queue.go).

Every queued item is sent (piggybacked on protocol messages) at most `limit` times, where
memberlist's formula gives `limit = retransmit_mult * ceil(log10(n + 1))` for a cluster of `n`
nodes. Items sent the fewest times go first, and among equals the newest; a new item with the same
key (the same node, or the same route) replaces the queued one, so stale news is never sent after
fresh news. Membership queues its updates here, and `RouteSync` its route deltas.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def retransmit_limit(mult: int, n: int) -> int:
    """memberlist: `mult * ceil(log10(n + 1))` (at least 1)."""
    return max(1, mult * math.ceil(math.log10(n + 1)))


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
