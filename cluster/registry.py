"""The client-id registry: which node holds the session of each client id, spread over the cluster.

Theory of operation
-------------------
Every client id has one **owner** among the live members, chosen by rendezvous (highest random
weight) hashing of `(client id, node name)`: every node computes the same owner from the same
member list without asking anyone, and when a member joins or goes only the ids it wins or held
move (`owner_of`, `moved`). The owner keeps a `Registry` entry `client id -> (holder node,
stamp)` for the ids it owns; it is the one place where two CONNECTs with one id meet, so it
serialises them (`cluster.takeover`): the later claim wins and the earlier holder is told to
give the client up.

A **stamp** orders the claims of one id cluster-wide: `(milliseconds, counter)` of the node's
one hybrid clock (`broker.core.hlc.HybridClock`, `Broker.hlc`: wall time, but never behind a
stamp it has seen, so it moves forward across nodes whose clocks disagree), with the node name
breaking ties. The clock's drift rule holds here too: a stamp further ahead of the owner's
wall clock than the bound is rejected, and the owner then orders by its own clock
(`cluster.takeover`). A session that this node holds without a claim (restored from disk at
start) has stamp `ZERO`: any real claim beats it.

When the members change, each node registers again the ids it holds whose owner changed, and
all the ids owned by a node that (re)joined (it may have restarted with an empty table). After a
partition heals, two nodes may hold one id: the owner sees both registrations and keeps the
newer stamp (`Registry.register`); the other holder is told to drop it (DISCONNECT 0x8E). Entries
of a member that died or left are dropped (it registers again if it comes back).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

#: A claim's order: (milliseconds, counter); compared with the node name as the tie-breaker.
Stamp = tuple[int, int]
ZERO: Stamp = (0, 0)


def _weight(client_id: str, node: str) -> bytes:
    return hashlib.blake2b(f"{node}\x00{client_id}".encode(), digest_size=8).digest()


def owner_of(client_id: str, nodes: Iterable[str]) -> str:
    """The live node that owns `client_id`'s registry entry (rendezvous hashing); `nodes` must
    not be empty."""
    best = ""
    best_weight = b""
    for node in nodes:
        weight = _weight(client_id, node)
        if weight > best_weight or (weight == best_weight and node > best):
            best, best_weight = node, weight
    if not best:
        raise ValueError("no node to own a client id")
    return best


def moved(
    client_ids: Iterable[str], before: list[str], after: list[str], rejoined: Iterable[str] = ()
) -> dict[str, list[str]]:
    """The ids to register again after the live members changed from `before` to `after`,
    by their new owner: those whose owner changed, and every id owned by a node in `rejoined`
    (a node that joined again may have lost its table)."""
    again = set(rejoined)
    out: dict[str, list[str]] = {}
    if not after:
        return out
    for client_id in client_ids:
        owner = owner_of(client_id, after)
        if owner in again or not before or owner_of(client_id, before) != owner:
            out.setdefault(owner, []).append(client_id)
    return out


def newer(a: Stamp, a_node: str, b: Stamp, b_node: str) -> bool:
    """Is claim (a, a_node) newer than (b, b_node)? Equal stamps: the greater node name wins."""
    return (a, a_node) > (b, b_node)


def parse_stamp(value: Any) -> Stamp | None:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


class Entry(NamedTuple):
    node: str
    stamp: Stamp


class Evict(NamedTuple):
    """A holder that lost a conflict: it must drop `client_id` if it still holds it at `stamp`."""

    client_id: str
    node: str
    stamp: Stamp


class Registry:
    """The owner's table of the ids it owns: id -> the holder and the stamp of its claim."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.stats: dict[str, int] = {"claims": 0, "conflicts": 0, "released": 0}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, client_id: str) -> Entry | None:
        return self.entries.get(client_id)

    def claim(self, client_id: str, node: str, stamp: Stamp) -> tuple[Entry | None, Stamp]:
        """`node` takes `client_id` over (a CONNECT there): the previous entry (whose holder
        must surrender when it is another node) and the stamp recorded, made newer than the
        previous one if a clock behind produced it (claims are ordered as the owner sees them)."""
        self.stats["claims"] += 1
        previous = self.entries.get(client_id)
        if previous is not None and not newer(stamp, node, previous.stamp, previous.node):
            stamp = (previous.stamp[0], previous.stamp[1] + 1)
        self.entries[client_id] = Entry(node, stamp)
        return previous, stamp

    def register(
        self, client_id: str, node: str, stamp: Stamp, live: Callable[[str], bool]
    ) -> Evict | None:
        """`node` says it holds `client_id` since `stamp` (after a membership change). Two
        holders: the newer claim stays, the other is returned to be evicted. A holder that is
        not live any more is replaced."""
        current = self.entries.get(client_id)
        if current is None or current.node == node or not live(current.node):
            if current is None or current.node != node or stamp > current.stamp:
                self.entries[client_id] = Entry(node, stamp)
            return None
        self.stats["conflicts"] += 1
        if newer(stamp, node, current.stamp, current.node):
            self.entries[client_id] = Entry(node, stamp)
            return Evict(client_id, current.node, current.stamp)
        return Evict(client_id, node, stamp)

    def holders(self, client_ids: Iterable[str]) -> dict[str, str]:
        """The node that holds each of `client_ids` here (those with an entry): where a losing
        copy's queue goes."""
        entries = self.entries
        return {cid: entries[cid].node for cid in client_ids if cid in entries}

    def release(self, client_id: str, node: str, stamp: Stamp) -> bool:
        """`node` no longer holds `client_id` (the session ended there); ignored unless the
        entry is still that claim."""
        current = self.entries.get(client_id)
        if current is None or current.node != node or current.stamp != stamp:
            return False
        del self.entries[client_id]
        self.stats["released"] += 1
        return True

    def drop_node(self, node: str) -> int:
        """A member died or left: forget what it held (it registers again if it comes back)."""
        gone = [cid for cid, entry in self.entries.items() if entry.node == node]
        for client_id in gone:
            del self.entries[client_id]
        return len(gone)

    def not_owned(self, me: str, nodes: list[str]) -> list[str]:
        """Entries whose owner is another node now (dropped after a membership change: the
        holders register them with their new owner)."""
        return [cid for cid in self.entries if owner_of(cid, nodes) != me]


def entries_wire(items: Mapping[str, Stamp]) -> list[list[Any]]:
    return [[cid, list(stamp)] for cid, stamp in items.items()]


def parse_entries(value: Any) -> list[tuple[str, Stamp]]:
    """`[[client_id, [ms, n]], ...]`; malformed items are skipped."""
    out: list[tuple[str, Stamp]] = []
    if not isinstance(value, list):
        return out
    for item in value:
        if isinstance(item, list) and len(item) >= 2 and isinstance(item[0], str) and item[0]:
            stamp = parse_stamp(item[1])
            if stamp is not None:
                out.append((item[0], stamp))
    return out
