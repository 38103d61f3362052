"""Choosing which member of a shared subscription group receives a message (MQTT 5 section 4.8.2).

The picker owns only the round-robin cursors; the caller owns membership and passes the members
it considers eligible (for example the online ones) in a stable order, so the same picker works
whatever the broker's policy for offline members is. Hashes use CRC-32 rather than `hash()` so a
given publisher or topic maps to the same member on every node and across restarts.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

STRATEGIES = ("round_robin", "random", "hash_clientid", "hash_topic")


class SharedGroupPicker:
    """Chooses one member of a shared group per message.

    Strategy 'round_robin' (default), 'random', 'hash_clientid' (hash of publisher client id),
    'hash_topic'.
    """

    __slots__ = ("_cursors", "_rng", "strategy")

    def __init__(self, strategy: str = "round_robin", rng: random.Random | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown shared subscription strategy {strategy!r}")
        self.strategy = strategy
        self._rng = rng if rng is not None else random.Random()
        self._cursors: dict[tuple[str, str], int] = {}

    def pick(
        self, group: str, real_filter: str, members: Sequence[str], publisher: str, topic: str
    ) -> str | None:
        """One of `members` for this message, or None when there is none to pick."""
        n = len(members)
        if n == 0:
            return None
        strategy = self.strategy
        if strategy == "round_robin":
            cursor_key = (group, real_filter)
            index = self._cursors.get(cursor_key, 0) % n
            self._cursors[cursor_key] = index + 1
            return members[index]
        if strategy == "random":
            return members[self._rng.randrange(n)]
        if strategy == "hash_clientid":
            return members[zlib.crc32(publisher.encode("utf-8", "surrogatepass")) % n]
        return members[zlib.crc32(topic.encode("utf-8", "surrogatepass")) % n]

    def forget(self, group: str, real_filter: str) -> None:
        """Drop the cursor of a group that no longer exists, so cursors do not leak with churn."""
        self._cursors.pop((group, real_filter), None)
