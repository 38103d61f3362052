"""The subscription router: topic filter -> subscribers, as a trie of topic levels.

Theory of operation
-------------------
A filter such as `sport/+/score/#` is split on `/` into levels, and each level is one edge of a
trie (mosquitto's subscription tree, `sub__add` / `sub__remove` / `sub__search`). The node reached
by the last level holds the subscribers of that filter: normal subscribers as
`{subscriber_key: value}` and shared subscribers (`$share/<group>/<filter>`) as
`{group: {subscriber_key: value}}`. A shared filter is stored under its *real* filter, so one node
answers both "who subscribed normally" and "which groups want this", and one count per node says
whether the real filter has any subscriber at all (which is what the cluster route table needs).

Wildcard rules, applied while walking the trie with the levels of a published topic:
  * a literal level follows the child with exactly that name (empty levels are levels: `a//b`,
    `/a` and `a/` have an empty level);
  * `+` matches exactly one level, including an empty one, so at each node the walk also follows
    the `+` child;
  * `#` matches the rest of the topic, however many levels, and also the parent level itself
    (`a/#` matches `a`); so at each node the `#` child is a match, and when the topic's levels run
    out, the `#` child of the node we stopped at is a match too;
  * a topic whose first level starts with `$` (`$SYS/...`) is not matched by a filter whose first
    level is `+` or `#` (MQTT-4.7.2-1); this is checked at the root only, deeper `$` levels are
    ordinary.

Cost: at each node the walk does at most three lookups (the level in a dict; `+` and `#` are
attributes of the node, so a node without them costs nothing for them), and it only ever descends
into nodes that lie on some matching path. So the work is bounded by the topic's depth times the
number of wildcard branches that actually apply, plus the matches returned; it does not depend on
how many unrelated filters are stored (a million `other/...` filters are never touched by a
publish to `sport/tennis`). The walk is iterative, goes on with one of the (at most two) nodes a
level leads to and stacks only the other, and builds no intermediate strings or lists beyond the
one split of the topic.

Topics under one parent share all but their last level (`sensors/17/temp`, `sensors/17/hum`), so
the router remembers, per parent topic, the *frontier* its levels lead to (the nodes reached
after the parent's last level, and the `#` nodes met on the way, which match everything below):
a topic then costs one dict lookup for its parent and, per frontier node, the `+` child and the
child named by its last level (`_frontier`, bounded by `MATCH_CACHE_SIZE` parents). A frontier
only depends on which nodes exist, not on who subscribed, so it is forgotten (all of them at
once) only when a wildcard node is created or pruned, i.e. when a new wildcard filter appears
or the last subscriber of one leaves.

Nodes are pruned on removal when they hold no subscriber and have no children, so memory follows
the live subscriptions, not the history of subscribe/unsubscribe churn.

Exact filters and wildcard filters live apart, as in EMQX's router (`emqx_router`): a filter
without `+` or `#` is a key of a plain dict (`_exact`), so a publish to `a/b` finds its exact
subscribers with one lookup, and only filters with wildcards are levels of the trie.

`match_all` (the PUBLISH hot path) remembers, per topic, what the *wildcard* filters matched (up
to `MATCH_CACHE_SIZE` topics), and each node remembers its own flattened subscriber lists; a hit
is one dict lookup that returns the ready-made lists, and a topic matched by one node only gets
that node's lists, so a miss allocates no answer either. Which topics are remembered:
  * from their second sighting on (a doorkeeper, as in TinyLFU: `_seen` holds the topics answered
    once and is emptied when it reaches `MATCH_CACHE_SIZE`), so a stream of always-new topics
    pays only the walk and a set insert, never the cache's bookkeeping;
  * a full cache keeps what it holds (its hits go on) and declines new topics; once it has
    declined `MATCH_CACHE_SIZE` of them, the working set has moved on and it forgets everything
    at once (`_clear`, O(cached topics), no per-topic deletes) and fills again. Evicting the
    oldest one at a time made a cyclic stream of more topics than the cache holds (10 publishers
    x 1,000 topics) pay a fill and an eviction for every message and hit never: 5-6 us per
    message against 1.1 us for the walk alone.

A change forgets only what it can affect: a change to the members of a filter already subscribed
forgets the cached topics that filter matched (each wildcard node knows the topics whose answer
it is part of, `_Node.topics`); a wildcard filter gaining its first subscriber forgets the cached
topics it matches, found through a topic trie of the cached topics (`_cached_topics`, the
retained store's structure); an exact filter forgets only its own lists. A forgotten topic is
remembered again at its next sighting. So a subscribe or a re-subscribe leaves every unrelated
topic's answer in place. The lists returned are shared between callers, who must not change them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from broker.core.retained import RetainedStore
from broker.core.topics import has_wildcard, parse_shared, validate_topic_filter

V = TypeVar("V")

#: Topics whose wildcard matches `match_all` remembers (module docstring: which ones).
MATCH_CACHE_SIZE = 4096

#: (normal subscribers, shared groups): what `match_all` returns.
Matches = tuple[list[tuple[str, V]], list[tuple[str, str, dict[str, V]]]]

#: The answer when no wildcard filter matches: one shared pair of empty lists (read-only).
_NO_MATCH: Matches[Any] = ([], [])


class _Node(Generic[V]):
    """One filter level of the trie, or one exact filter; `filter` is the real filter."""

    __slots__ = ("children", "count", "filter", "flat", "hash", "plus", "shared", "subs", "topics")

    def __init__(self, filt: str) -> None:
        self.filter = filt
        self.children: dict[str, _Node[V]] = {}
        #: `children["+"]` and `children["#"]` (or None), read as attributes by the walk.
        self.plus: _Node[V] | None = None
        self.hash: _Node[V] | None = None
        self.subs: dict[str, V] = {}
        self.shared: dict[str, dict[str, V]] = {}
        # Number of (key, group-or-none) subscriptions held here, normal and shared.
        self.count = 0
        #: This node's own answer, flattened (None = to compute): an exact filter's answer, and
        #: the answer of a topic only this wildcard node matches.
        self.flat: Matches[V] | None = None
        #: Cached topics (`SubscriptionTrie._cache`) whose answer includes this wildcard node.
        self.topics: set[str] = set()

    def flattened(self) -> Matches[V]:
        flat = self.flat
        if flat is None:
            filt = self.filter
            shared = [(group, filt, members) for group, members in self.shared.items()]
            flat = self.flat = (list(self.subs.items()), shared)
        return flat


class SubscriptionTrie(Generic[V]):
    """filter -> {subscriber_key: V} plus shared groups filter -> group -> {subscriber_key: V}."""

    __slots__ = (
        "_cache",
        "_cache_nodes",
        "_cache_size",
        "_cached_topics",
        "_declined",
        "_exact",
        "_frontier",
        "_len",
        "_root",
        "_seen",
    )

    def __init__(self, cache_size: int = MATCH_CACHE_SIZE) -> None:
        self._root: _Node[V] = _Node("")
        self._exact: dict[str, _Node[V]] = {}
        self._len = 0
        #: topic -> what the wildcard filters match (module docstring), and the nodes it came from.
        self._cache: dict[str, Matches[V]] = {}
        self._cache_nodes: dict[str, list[_Node[V]]] = {}
        self._cached_topics: RetainedStore[None] = RetainedStore()
        self._cache_size = max(cache_size, 1)
        #: Topics that passed the doorkeeper while the cache was full (module docstring).
        self._declined = 0
        #: Topics answered once without being remembered (the doorkeeper, module docstring).
        self._seen: set[str] = set()
        #: parent topic -> (the children of the wildcard nodes its levels lead to, the nodes
        #: that match whatever its last level: `#` nodes met on the way, the `+` children
        #: with subscribers and their `#` children); emptied whenever a wildcard node is
        #: created or pruned or gains its first or loses its last subscriber (module docstring).
        self._frontier: dict[str, tuple[list[dict[str, _Node[V]]], list[_Node[V]]]] = {}

    # -- mutation ----------------------------------------------------------------------------

    def add(self, filt: str, key: str, value: V) -> bool:
        """Store or replace `key`'s subscription to `filt` (which may be `$share/...`).

        Returns True when this created the first subscriber (normal or shared, any group) of the
        real filter: the node must then announce a route for it. Raises ValueError on an invalid
        filter, because a bad filter in the trie would silently never match.
        """
        if not validate_topic_filter(filt):
            raise ValueError(f"invalid topic filter: {filt!r}")
        group, real = parse_shared(filt)
        wild = has_wildcard(real)
        if wild:
            node = self._root
            for level in real.split("/"):
                child = node.children.get(level)
                if child is None:
                    child = _Node(level if node is self._root else f"{node.filter}/{level}")
                    node.children[level] = child
                    self._frontier.clear()  # a new node: frontiers through its parent change
                    if level == "+":
                        node.plus = child
                    elif level == "#":
                        node.hash = child
                node = child
        else:
            found = self._exact.get(real)
            if found is None:
                found = self._exact[real] = _Node(real)
            node = found
        if group is None:
            table = node.subs
        else:
            members = node.shared.get(group)
            if members is None:
                members = node.shared[group] = {}
            table = members
        node.flat = None
        if wild:
            if node.count:
                self._forget_node(node)
            else:
                self._forget_matching(real)  # a new filter: the topics it matches change
                self._frontier.clear()  # its node now matches: frontiers' fixed part changes
        if key in table:
            table[key] = value
            return False
        table[key] = value
        node.count += 1
        self._len += 1
        return node.count == 1

    def remove(self, filt: str, key: str) -> tuple[bool, bool]:
        """Drop `key`'s subscription to `filt`; returns (removed, last).

        `last` is True only when this removal left the real filter with no subscriber at all, i.e.
        exactly when the route must be withdrawn; it is False when nothing was removed.
        """
        group, real = parse_shared(filt)
        wild = has_wildcard(real)
        path: list[tuple[_Node[V], str]] = []
        if wild:
            node = self._root
            for level in real.split("/"):
                child = node.children.get(level)
                if child is None:
                    return False, False
                path.append((node, level))
                node = child
        else:
            found = self._exact.get(real)
            if found is None:
                return False, False
            node = found
        if group is None:
            if key not in node.subs:
                return False, False
            del node.subs[key]
        else:
            members = node.shared.get(group)
            if members is None or key not in members:
                return False, False
            del members[key]
            if not members:
                del node.shared[group]
        node.flat = None
        if wild:
            self._forget_node(node)
        node.count -= 1
        self._len -= 1
        last = node.count == 0
        if last:
            if wild:
                self._frontier.clear()  # its node no longer matches (if it stays, as a path)
            else:
                del self._exact[real]
            # Prune upwards while nodes are empty leaves.
            for parent, level in reversed(path):
                child = parent.children[level]
                if child.count or child.children:
                    break
                del parent.children[level]
                self._frontier.clear()  # a frontier may hold the pruned node
                if level == "+":
                    parent.plus = None
                elif level == "#":
                    parent.hash = None
        return True, last

    # -- the match cache (module docstring) --------------------------------------------------

    def _drop(self, topic: str) -> None:
        """Forget the cached answer for `topic` after a change; its next sighting remembers the
        new answer (it passes the doorkeeper: a topic that was cached is no one-off)."""
        if self._cache.pop(topic, None) is None:
            return
        for node in self._cache_nodes.pop(topic):
            node.topics.discard(topic)
        self._cached_topics.delete(topic)
        seen = self._seen
        if len(seen) >= self._cache_size:
            seen.clear()
        seen.add(topic)

    def _forget_node(self, node: _Node[V]) -> None:
        """A wildcard filter's members changed: forget the topics its node answered for."""
        topics = node.topics
        if topics:
            node.topics = set()
            for topic in topics:
                self._drop(topic)

    def _forget_matching(self, real: str) -> None:
        """A wildcard filter got its first subscriber: forget the cached topics it matches."""
        if self._cache:
            for topic, _ in self._cached_topics.match(real):
                self._drop(topic)

    # -- lookup ------------------------------------------------------------------------------

    def _find(self, real: str) -> _Node[V] | None:
        if not has_wildcard(real):
            return self._exact.get(real)
        node = self._root
        for level in real.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node

    def get(self, filt: str, key: str) -> V | None:
        """The value stored for `key` on `filt` (normal or `$share/...`), or None."""
        group, real = parse_shared(filt)
        node = self._find(real)
        if node is None:
            return None
        if group is None:
            return node.subs.get(key)
        members = node.shared.get(group)
        return None if members is None else members.get(key)

    def has_filter(self, filt: str) -> bool:
        """Plain filter: has any subscriber (normal or shared, as in `filters()`).

        Shared filter: that group has at least one member on its real filter.
        """
        group, real = parse_shared(filt)
        node = self._find(real)
        if node is None:
            return False
        if group is None:
            return node.count > 0
        return group in node.shared

    def shared_members(self, group: str, real: str) -> dict[str, V] | None:
        """The members of `group` on the real filter `real` (the trie's own dict: read-only),
        or None when that group has no member there."""
        node = self._find(real)
        return None if node is None else node.shared.get(group)

    def _match_wild(self, topic: str) -> list[_Node[V]]:
        """Every wildcard node whose real filter matches `topic` (each at most once); a list
        the trie may keep (a frontier's fixed part): the caller must not change it.

        A topic of several levels starts from its parent's frontier (`_frontier`, module
        docstring), so only its last level is looked up; the first topic under a parent walks
        the parent's levels once for all of them.
        """
        if not self._root.children:
            return []
        cut = topic.rfind("/")
        if cut < 0:
            return self._walk(topic.split("/"), topic.startswith("$"), None)
        parent = topic[:cut]
        known = self._frontier.get(parent)
        if known is None:
            known = self._frontier_of(parent)
        probes, fixed = known
        last = topic[cut + 1 :]
        out = None
        for children in probes:
            child = children.get(last)
            if child is not None and (child.count or child.hash is not None):
                if out is None:
                    out = fixed.copy()
                if child.count:
                    out.append(child)
                if child.hash is not None:
                    out.append(child.hash)
        return fixed if out is None else out

    def _frontier_of(self, parent: str) -> tuple[list[dict[str, _Node[V]]], list[_Node[V]]]:
        """Walk `parent` once and remember, for the topics below it, what their last level
        is looked up in and what matches them whatever it is (`_frontier`)."""
        frontier: list[_Node[V]] = []
        fixed = self._walk(parent.split("/"), parent.startswith("$"), frontier)
        probes: list[dict[str, _Node[V]]] = []
        for node in frontier:
            plus = node.plus
            if plus is not None:
                if plus.count:
                    fixed.append(plus)
                if plus.hash is not None:
                    fixed.append(plus.hash)
            if node.children:
                probes.append(node.children)
        if len(self._frontier) >= self._cache_size:
            self._frontier.clear()
        known = self._frontier[parent] = (probes, fixed)
        return known

    def _walk(
        self, levels: list[str], dollar: bool, frontier: list[_Node[V]] | None
    ) -> list[_Node[V]]:
        """The trie walk: the wildcard nodes matching the topic of `levels` (its first level
        starts with `$` when `dollar`); or, given a `frontier` list, the walk of a parent topic:
        the nodes its levels lead to go into `frontier`, and the `#` nodes met on the way (which
        match any topic below the parent) are returned.

        Depth first: of the (at most two) nodes a level leads to, the walk goes on with one and
        stacks the other, so a topic that follows one path stacks nothing; `+` and `#` children
        are attributes, looked up only where present.
        """
        root = self._root
        out: list[_Node[V]] = []
        n = len(levels)
        stack: list[tuple[_Node[V], int]] = []
        node: _Node[V] | None = root.children.get(levels[0])
        # Root level handled apart: the `$` rule (MQTT-4.7.2-1) only applies here.
        if not dollar:
            if root.hash is not None:
                out.append(root.hash)
            plus = root.plus
            if plus is not None:
                if node is not None:
                    stack.append((node, 1))
                node = plus
        i = 1
        while True:
            if node is not None:
                if i == n:
                    if frontier is not None:
                        frontier.append(node)
                    elif node.count:
                        out.append(node)
                    if node.hash is not None:
                        out.append(node.hash)
                else:
                    children = node.children
                    if children:
                        if node.hash is not None:
                            out.append(node.hash)
                        plus = node.plus
                        node = children.get(levels[i])
                        i += 1
                        if plus is not None:
                            if node is not None:
                                stack.append((node, i))
                            node = plus
                        continue
            if not stack:
                return out
            node, i = stack.pop()

    def _match_nodes(self, topic: str) -> list[_Node[V]]:
        """Every node, exact or wildcard, whose real filter matches `topic`."""
        out = self._match_wild(topic)
        exact = self._exact.get(topic)
        if exact is not None:
            out = [*out, exact]
        return out

    def match(self, topic: str) -> list[tuple[str, V]]:
        """(key, value) of normal subscribers, one per (matching filter, key); duplicates kept."""
        out: list[tuple[str, V]] = []
        for node in self._match_nodes(topic):
            if node.subs:
                out.extend(node.subs.items())
        return out

    def match_shared(self, topic: str) -> list[tuple[str, str, dict[str, V]]]:
        """(group, real filter, members) per matching shared group.

        `members` is the trie's own dict, returned without a copy for speed: treat it as
        read-only, and copy it before changing subscriptions while still holding it.
        """
        out: list[tuple[str, str, dict[str, V]]] = []
        for node in self._match_nodes(topic):
            if node.shared:
                filt = node.filter
                out.extend((group, filt, members) for group, members in node.shared.items())
        return out

    def match_all(self, topic: str) -> Matches[V]:
        """`match` and `match_shared` in one go (the PUBLISH hot path): an exact lookup plus the
        wildcard answer remembered per topic (module docstring). Do not change the lists."""
        wild = self._cache.get(topic)
        if wild is None:
            wild = self._miss(topic)
        exact = self._exact.get(topic)
        if exact is None:
            return wild
        own = exact.flat or exact.flattened()
        if not wild[0] and not wild[1]:
            return own
        return own[0] + wild[0], own[1] + wild[1]

    def _miss(self, topic: str) -> Matches[V]:
        """The wildcard answer for a topic not in the cache (module docstring: the doorkeeper,
        and a full cache that declines new topics until it has declined `cache_size`)."""
        nodes = self._match_wild(topic)
        seen = self._seen
        remember = topic in seen
        if remember:
            seen.discard(topic)
            if len(self._cache) >= self._cache_size:
                self._declined += 1
                if self._declined < self._cache_size:
                    remember = False
                else:
                    self._clear()
        else:
            if len(seen) >= self._cache_size:
                seen.clear()
            seen.add(topic)
        if not nodes:
            answer: Matches[V] = _NO_MATCH
        elif len(nodes) == 1:
            only = nodes[0]
            answer = only.flat or only.flattened()  # the node's own lists: no allocation
        else:
            normal: list[tuple[str, V]] = []
            shared: list[tuple[str, str, dict[str, V]]] = []
            for node in nodes:
                if node.subs:
                    normal.extend(node.subs.items())
                if node.shared:
                    filt = node.filter
                    shared.extend((group, filt, members) for group, members in node.shared.items())
            answer = (normal, shared)
        if remember:
            for node in nodes:
                node.topics.add(topic)
            self._cache[topic] = answer
            self._cache_nodes[topic] = nodes
            self._cached_topics.set(topic, None)
        return answer

    def _clear(self) -> None:
        """Forget every cached answer at once: O(cached topics), no per-topic trie deletes."""
        for nodes in self._cache_nodes.values():
            for node in nodes:
                node.topics.clear()
        self._cache = {}
        self._cache_nodes = {}
        self._cached_topics = RetainedStore()
        self._declined = 0

    # -- enumeration -------------------------------------------------------------------------

    def filters(self) -> Iterator[str]:
        """Every real filter with at least one subscriber (normal or shared): the route table."""
        yield from self._exact
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.count:
                yield node.filter
            stack.extend(node.children.values())

    def __len__(self) -> int:
        """Number of (filter, key) subscriptions, each shared group membership counted."""
        return self._len

    def _is_empty_tree(self) -> bool:
        """True when no filter node is left (used by tests to check pruning)."""
        return not self._root.children and not self._exact
