"""Topic aliases this server uses on one connection towards a 5.0 client (MQTT 5 section 3.3.2.3.4).

Theory of operation
-------------------
A client that sends Topic Alias Maximum N > 0 in CONNECT lets the server replace topic names by
numbers 1..N (MQTT-3.1.2-26 / MQTT-3.3.2-11: never above N; MQTT-3.1.2-27: none when N is absent
or 0). The mapping belongs to the connection and starts empty on each one (MQTT-3.3.2-7).
`lookup(topic)` says how to write the next PUBLISH:

* `alias > 0`: the client already knows the alias: send an empty topic name and the alias;
* `alias < 0`: `-alias` is (re)mapped now: send the topic name *and* the alias, the client
  records the mapping (section 3.3.2.3.4);
* `0`: no alias, send the topic name only.

While free aliases remain, every new topic gets one. When all N are taken, the most used topics
keep theirs: a new topic is admitted only when it is seen a second time (a bounded "seen once"
set keeps one-off topics out), and the alias it takes is chosen by a CLOCK hand that halves hit
counts as it passes and evicts the first slot at zero, so a slot's count is its recent use. The
work per PUBLISH is a dict lookup; an eviction costs O(1) amortised.

A PUBLISH that is finally not sent (too large for the client) must not leave a mapping the client
never learnt: `forget(alias)` undoes a fresh one.
"""

from __future__ import annotations

from broker.core.shared_empty import SharedEmptyDict

#: Topics shorter than this (in characters) cost no more than the 3-byte alias property: no alias.
MIN_TOPIC_LENGTH = 4


#: The incoming alias table of a connection that has not set an alias (most): one shared
#: read-only empty dict, replaced by its own on the first alias (`handle_publish`).
NO_ALIASES: dict[int, str] = SharedEmptyDict()


class OutgoingAliases:
    """The server -> client alias table of one connection. See the module docstring."""

    __slots__ = ("_alias_of", "_free", "_hand", "_hits", "_next", "_seen", "_topics", "maximum")

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError("an alias table needs at least one alias")
        self.maximum = maximum
        self._alias_of: dict[str, int] = {}
        self._topics: list[str] = [""] * (maximum + 1)  # alias -> topic ("" = free)
        self._hits: list[int] = [0] * (maximum + 1)
        self._next = 1  # first never-used alias
        self._free: list[int] = []  # aliases given back by `forget`
        self._hand = 1
        self._seen: set[str] = set()

    def lookup(self, topic: str) -> int:
        """The alias to write for `topic`: > 0 known, < 0 new mapping, 0 none (module doc)."""
        alias = self._alias_of.get(topic)
        if alias is not None:
            self._hits[alias] += 1
            return alias
        if len(topic) < MIN_TOPIC_LENGTH:
            return 0
        if self._free:
            alias = self._free.pop()
        elif self._next <= self.maximum:
            alias = self._next
            self._next += 1
        else:  # every alias is in use (so no free one for `_evict` to pick)
            seen = self._seen
            if topic not in seen:
                if len(seen) >= 4 * self.maximum + 64:
                    seen.clear()
                seen.add(topic)
                return 0
            seen.discard(topic)
            alias = self._evict()
        self._alias_of[topic] = alias
        self._topics[alias] = topic
        self._hits[alias] = 1
        return -alias

    def forget(self, alias: int) -> None:
        """Undo the mapping of `alias` (its PUBLISH was not sent after all)."""
        topic = self._topics[alias]
        if topic:
            del self._alias_of[topic]
            self._topics[alias] = ""
            self._hits[alias] = 0
            self._free.append(alias)

    def _evict(self) -> int:
        hits = self._hits
        topics = self._topics
        n = self.maximum
        hand = self._hand
        while hits[hand] > 0:
            hits[hand] >>= 1
            hand = hand % n + 1
        self._hand = hand % n + 1
        old = topics[hand]
        if old:
            del self._alias_of[old]
        return hand

    def __len__(self) -> int:
        return len(self._alias_of)

    def mapping(self) -> dict[int, str]:
        """alias -> topic as the client should know it (for tests and introspection)."""
        return {alias: topic for topic, alias in self._alias_of.items()}
