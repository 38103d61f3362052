"""The cluster route table: topic filter -> the nodes that have local subscribers for it.

Theory of operation
-------------------
Every node owns its own routes (its *origin* state) and is the only one that changes them. Each
run of a node has an `epoch` (chosen at start, larger than any earlier run's), and every change of
that run gets the next `seq` (1, 2, ...). A run starts with no routes: the state "epoch E, seq 0"
is empty by definition.

What one node knows about an origin is an `_Origin`, and merging two of them is a join (the
result does not depend on order or duplication; this is what makes gossip and push/pull converge):

* a newer epoch replaces everything known about an older epoch (a restarted node starts clean,
  and nothing from its previous run can come back);
* within an epoch, `base_seq`/`base` is an authoritative snapshot: the exact set of filters the
  origin had after its change number `base_seq`. Only the origin makes snapshots (it sends its
  own state as one in every push/pull), so two snapshots with the same `base_seq` are equal, and
  the larger `base_seq` wins;
* `deltas` holds the individual changes newer than the base, per filter the one with the largest
  seq (`present` True = announced, False = withdrawn). Deltas at or below `base_seq` are covered by
  the snapshot and dropped, which is how withdrawn-filter tombstones are reclaimed.

The routes of an origin are `base` overridden by `deltas`. A single gossiped `RouteDelta` is just a
state with an empty base at seq 0. The local node's own entry is always a bare snapshot (no
deltas).

The table does not know who is alive: `RouteSync` (cluster.sync) purges dead nodes and ignores
updates from origins membership does not consider alive, so stale gossip cannot resurrect them.

Lookups: `match(topic)` walks a `SubscriptionTrie` whose keys are node names (no scan of all
filters); `nodes_for(filter)` is a dict lookup. Filters are real filters (a `$share/g/f`
subscription is routed as `f`); the local node's routes are included.

Shared routes. The same table (same origins, epochs, seqs, gossip and push/pull) also carries
"node N has at least one member of shared group g on real filter f", under the key
`$share/g/f` (`shared_route_key`; `$queue/f` is group `$queue`), announced by
`local_shared_update` when the first local member joins and withdrawn after the last leaves. These
keys sit in the trie as shared entries, so `match` (normal routes, for forwarding) never sees
them and `match_shared(topic)` returns `(group, filter, nodes)` per matching group, for the
cluster-wide dispatch of shared subscriptions (`cluster.shared_dispatch`). `routes()` and
`len()` count normal routes only; `shared_routes()` lists the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from broker.core.topics import SHARE_PREFIX, parse_shared, validate_topic_filter
from broker.core.trie import SubscriptionTrie
from cluster.wire import WireError

#: Wire form of one origin in push/pull: [origin, epoch, base_seq, [base filters], [deltas]],
#: each delta `[filter, seq, present]`.
OriginWire = list[Any]


def valid_route_filter(filt: str) -> bool:
    """A valid plain (non-shared) topic filter."""
    try:
        return validate_topic_filter(filt) and parse_shared(filt)[0] is None
    except ValueError:
        return False


def shared_route_key(group: str, filt: str) -> str:
    """The route key of shared group `group` on the real filter `filt`: `$share/<group>/<filt>`."""
    return f"{SHARE_PREFIX}/{group}/{filt}"


def valid_route_key(key: str) -> bool:
    """A plain filter, or a shared route key in its canonical `$share/<group>/<filter>` form."""
    if not key.startswith(_SHARED_KEY_START):
        return valid_route_filter(key)
    try:
        if not validate_topic_filter(key):
            return False
        group, real = parse_shared(key)
    except ValueError:
        return False
    return group is not None and shared_route_key(group, real) == key


_SHARED_KEY_START = SHARE_PREFIX + "/"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RouteDelta:
    """One change of one origin's routes. Wire: `[origin, epoch, seq, filter, present]`."""

    origin: str
    epoch: int
    seq: int
    filter: str
    present: bool

    def to_wire(self) -> list[Any]:
        return [self.origin, self.epoch, self.seq, self.filter, self.present]

    def wire_size(self) -> int:
        return 24 + len(self.origin) + len(self.filter.encode("utf-8", "surrogatepass"))

    @classmethod
    def from_wire(cls, item: Any) -> RouteDelta:
        """Raises WireError on anything malformed, including an invalid or shared filter."""
        if not isinstance(item, list | tuple) or len(item) < 5:
            raise WireError(f"bad route delta {item!r}")
        origin, epoch, seq, filt, present = item[:5]
        if (
            not isinstance(origin, str)
            or not origin
            or not _is_int(epoch)
            or not _is_int(seq)
            or seq < 1
            or not isinstance(filt, str)
            or not valid_route_key(filt)
            or not isinstance(present, bool)
        ):
            raise WireError(f"bad route delta {item!r}")
        return cls(origin, epoch, seq, filt, present)


class _Origin:
    """What this node knows of one origin's routes (see the module docstring)."""

    __slots__ = ("base", "base_seq", "deltas", "epoch", "top", "view")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.base_seq = 0
        self.base: set[str] = set()
        self.deltas: dict[str, tuple[int, bool]] = {}
        self.top = 0  # the largest seq known
        self.view: set[str] = set()  # the routes: base overridden by deltas

    def compute_view(self) -> set[str]:
        view = set(self.base)
        for filt, (_seq, present) in self.deltas.items():
            if present:
                view.add(filt)
            else:
                view.discard(filt)
        return view

    def to_wire(self, origin: str) -> OriginWire:
        deltas = [[f, seq, present] for f, (seq, present) in self.deltas.items()]
        return [origin, self.epoch, self.base_seq, sorted(self.base), deltas]


#: What `remote_match` returns when nothing matches elsewhere.
_NO_NODES: frozenset[str] = frozenset()


class RouteTable:
    """filter -> nodes, for the whole cluster, as seen by node `node` in run `epoch`."""

    def __init__(self, node: str, epoch: int) -> None:
        self.node = node
        self.epoch = epoch
        self._origins: dict[str, _Origin] = {node: _Origin(epoch)}
        self._by_filter: dict[str, set[str]] = {}
        self._trie: SubscriptionTrie[None] = SubscriptionTrie()
        self._len = 0
        #: The number of shared routes (`shared_count`; read as an attribute on the PUBLISH path).
        self.shared_len = 0

    # -- the local node's own routes ---------------------------------------------------------

    def local_update(self, filt: str, present: bool) -> RouteDelta:
        """Record a change of this node's routes; returns the delta to gossip.

        A `$share/<group>/` or `$queue/` prefix is stripped: routes are real filters.
        """
        real = parse_shared(filt)[1]
        if not valid_route_filter(real):
            raise ValueError(f"invalid route filter: {filt!r}")
        return self._local_change(real, present)

    def local_shared_update(self, group: str, filt: str, present: bool) -> RouteDelta:
        """Record that this node has a first member (True) or no member left (False) of shared
        group `group` on the real filter `filt`; returns the delta to gossip."""
        key = shared_route_key(group, filt)
        if not valid_route_key(key):
            raise ValueError(f"invalid shared route: {group!r} {filt!r}")
        return self._local_change(key, present)

    def _local_change(self, real: str, present: bool) -> RouteDelta:
        own = self._origins[self.node]
        own.top += 1
        own.base_seq = own.top
        if present and real not in own.base:
            own.base.add(real)
            own.view.add(real)
            self._index_add(self.node, real)
        elif not present and real in own.base:
            own.base.discard(real)
            own.view.discard(real)
            self._index_remove(self.node, real)
        return RouteDelta(self.node, self.epoch, own.top, real, present)

    def local_routes(self) -> frozenset[str]:
        return frozenset(self._origins[self.node].base)

    # -- merging -----------------------------------------------------------------------------

    def _origin_for(self, origin: str, epoch: int) -> _Origin | None:
        """The state to merge into for (origin, epoch), or None if that epoch is stale."""
        st = self._origins.get(origin)
        if st is not None and epoch < st.epoch:
            return None
        if st is None or epoch > st.epoch:
            if st is not None:
                self._set_view(origin, st, set())
            st = _Origin(epoch)
            self._origins[origin] = st
        return st

    def apply(self, delta: RouteDelta) -> bool:
        """Merge one delta; True if it was new information (the caller gossips it on)."""
        if delta.origin == self.node:
            return False  # our own routes are authoritative here
        known = self._origins.get(delta.origin)
        if known is not None and (
            delta.epoch < known.epoch
            or (
                delta.epoch == known.epoch
                and (
                    delta.seq <= known.base_seq
                    or known.deltas.get(delta.filter, (0, False))[0] >= delta.seq
                )
            )
        ):
            return False
        st = self._origin_for(delta.origin, delta.epoch)
        if st is None:  # pragma: no cover - excluded by the check above
            return False
        st.deltas[delta.filter] = (delta.seq, delta.present)
        st.top = max(st.top, delta.seq)
        if delta.present and delta.filter not in st.view:
            st.view.add(delta.filter)
            self._index_add(delta.origin, delta.filter)
        elif not delta.present and delta.filter in st.view:
            st.view.discard(delta.filter)
            self._index_remove(delta.origin, delta.filter)
        return True

    def state_for_push_pull(self) -> list[OriginWire]:
        """Everything this node knows, in wire form (our own entry is a snapshot)."""
        # An origin at seq 0 has no routes by definition: nothing to tell, but for our own
        # entry: "this run has none" replaces what a peer kept of our previous run (RouteSync).
        node = self.node
        return [st.to_wire(o) for o, st in self._origins.items() if st.top or o == node]

    def merge_full(
        self, state: Iterable[Any], accept: Callable[[str, int], bool] | None = None
    ) -> bool:
        """Merge a peer's `state_for_push_pull()`; True if anything changed.

        Malformed entries are skipped. `accept(origin, epoch)` may veto origins (RouteSync keeps
        out nodes that membership does not consider alive).
        """
        changed = False
        for item in state:
            try:
                origin, epoch, base_seq, base, deltas = _parse_origin(item)
            except WireError:
                continue
            if origin == self.node or (accept is not None and not accept(origin, epoch)):
                continue
            changed |= self._merge_origin(origin, epoch, base_seq, base, deltas)
        return changed

    def _merge_origin(
        self,
        origin: str,
        epoch: int,
        base_seq: int,
        base: set[str],
        deltas: list[tuple[str, int, bool]],
    ) -> bool:
        known = self._origins.get(origin)
        if known is not None and epoch < known.epoch:
            return False
        if not base_seq and not deltas and (known is None or epoch == known.epoch):
            return False  # "no routes" that we already know
        new_epoch = known is None or epoch > known.epoch
        st = self._origin_for(origin, epoch)
        if st is None:  # pragma: no cover - excluded by the check above
            return False
        changed = new_epoch
        if base_seq > st.base_seq:
            st.base_seq = base_seq
            st.base = base
            st.deltas = {f: d for f, d in st.deltas.items() if d[0] > base_seq}
            changed = True
        for filt, seq, present in deltas:
            if seq <= st.base_seq:
                continue
            current = st.deltas.get(filt)
            if current is None or current[0] < seq:
                st.deltas[filt] = (seq, present)
                changed = True
        if changed:
            st.top = max(st.top, base_seq, max((d[0] for d in st.deltas.values()), default=0))
            self._set_view(origin, st, st.compute_view())
        return changed

    # -- membership-driven removal -----------------------------------------------------------

    def purge(self, origin: str, *, older_than: int | None = None) -> bool:
        """Forget a (dead, left) origin; with `older_than`, only if its epoch is older."""
        if origin == self.node:
            return False
        st = self._origins.get(origin)
        if st is None or (older_than is not None and st.epoch >= older_than):
            return False
        self._set_view(origin, st, set())
        del self._origins[origin]
        return True

    # -- queries -----------------------------------------------------------------------------

    def digest(self) -> dict[str, tuple[int, int]]:
        """origin -> (epoch, largest seq known)."""
        return {origin: (st.epoch, st.top) for origin, st in self._origins.items()}

    def origins(self) -> list[str]:
        return list(self._origins)

    def nodes_for(self, filt: str) -> set[str]:
        return set(self._by_filter.get(filt, ()))

    def match(self, topic: str) -> set[str]:
        """Nodes with at least one route whose filter matches `topic` (this node included).

        Through the trie's `match_all`, whose answers are remembered per topic until a route
        changes: this runs for every PUBLISH while the node has peers."""
        return {node for node, _ in self._trie.match_all(topic)[0]}

    def remote_match(self, topic: str) -> AbstractSet[str]:
        """`match` without this node; an empty set, not a new one, when no other node matches
        (the usual case for a node's own publishers' topics)."""
        remote: set[str] | None = None
        me = self.node
        for node, _ in self._trie.match_all(topic)[0]:
            if node != me:
                if remote is None:
                    remote = set()
                remote.add(node)
        return _NO_NODES if remote is None else remote

    def match_shared(self, topic: str) -> list[tuple[str, str, list[str]]]:
        """(group, real filter, nodes with a member) per shared group matching `topic`."""
        return [(g, f, list(nodes)) for g, f, nodes in self._trie.match_shared(topic)]

    def routes(self) -> list[tuple[str, str]]:
        """Every (filter, node) pair of normal routes, sorted."""
        return sorted(
            (f, node)
            for f, nodes in self._by_filter.items()
            if not f.startswith(_SHARED_KEY_START)
            for node in nodes
        )

    def shared_routes(self) -> list[tuple[str, str, str]]:
        """Every (group, real filter, node) of shared routes, sorted."""
        out: list[tuple[str, str, str]] = []
        for key, nodes in self._by_filter.items():
            if key.startswith(_SHARED_KEY_START):
                group, real = parse_shared(key)
                assert group is not None
                out.extend((group, real, node) for node in nodes)
        return sorted(out)

    def remote_count(self) -> int:
        """The number of routes (normal and shared) of other nodes: 0 when `remote_match`
        and the shared matches find only this node for any topic."""
        return self._len - len(self._origins[self.node].view)

    def shared_count(self) -> int:
        """The number of (group, filter, node) shared routes."""
        return self.shared_len

    def __len__(self) -> int:
        """The number of normal (filter, node) routes."""
        return self._len - self.shared_len

    # -- the materialized view ---------------------------------------------------------------

    def _set_view(self, origin: str, st: _Origin, view: set[str]) -> None:
        for filt in st.view - view:
            self._index_remove(origin, filt)
        for filt in view - st.view:
            self._index_add(origin, filt)
        st.view = view

    def _index_add(self, origin: str, filt: str) -> None:
        self._by_filter.setdefault(filt, set()).add(origin)
        self._trie.add(filt, origin, None)
        self._len += 1
        if filt.startswith(_SHARED_KEY_START):
            self.shared_len += 1

    def _index_remove(self, origin: str, filt: str) -> None:
        nodes = self._by_filter[filt]
        nodes.discard(origin)
        if not nodes:
            del self._by_filter[filt]
        self._trie.remove(filt, origin)
        self._len -= 1
        if filt.startswith(_SHARED_KEY_START):
            self.shared_len -= 1


def _parse_origin(item: Any) -> tuple[str, int, int, set[str], list[tuple[str, int, bool]]]:
    if not isinstance(item, list | tuple) or len(item) < 5:
        raise WireError("bad origin state")
    origin, epoch, base_seq, base, deltas = item[:5]
    if (
        not isinstance(origin, str)
        or not origin
        or not _is_int(epoch)
        or not _is_int(base_seq)
        or base_seq < 0
        or not isinstance(base, list | tuple)
        or not isinstance(deltas, list | tuple)
    ):
        raise WireError("bad origin state")
    if not all(isinstance(f, str) and valid_route_key(f) for f in base):
        raise WireError("bad filter in origin state")
    filters = set(base)
    parsed: list[tuple[str, int, bool]] = []
    for d in deltas:
        if (
            not isinstance(d, list | tuple)
            or len(d) < 3
            or not isinstance(d[0], str)
            or not valid_route_key(d[0])
            or not _is_int(d[1])
            or d[1] < 1
            or not isinstance(d[2], bool)
        ):
            raise WireError("bad delta in origin state")
        parsed.append((d[0], d[1], d[2]))
    return origin, epoch, base_seq, filters, parsed
