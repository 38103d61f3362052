"""Keeping the registry right as members change: after a join, death or departure the ids
whose owner changed are registered with their new owner (`members_changed`), and a periodic
round registers again every held id whose registration is not confirmed under the current
member view (`reconcile`), and so does one round `SETTLE_ROUND` seconds after the last member
event: around a heal the nodes' views disagree for a moment (measured: a member seen suspect
and alive again within 0.2 s on the same side of a split), and two CONNECTs of one id made
then meet at two owners; both stayed up until the 10 s round (the fault suite's split_2_3).

Why a module of its own: this is the repair of the registry over time, apart from a CONNECT's
claim and the holder's answers (`cluster.takeover`) and the owner's side
(`cluster.takeover_owner`). `ClusterSessionLocator` inherits `RegistryRounds`, so these stay its
methods, bound as before; this module never imports `cluster.takeover`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.core.broker import Broker
from cluster.registry import ZERO, Registry, Stamp, entries_wire, moved, owner_of, parse_entries
from cluster.takeover_wire import REGISTER_METHOD, chunks, parse_winners, view_of

#: Seconds after the last member event when held ids are registered again (`reconcile`).
SETTLE_ROUND = 2.0


class RegistryRounds:
    """Registration after member changes and the periodic round; mixed into
    `ClusterSessionLocator`, whose `__init__` sets the attributes declared here."""

    name: str
    broker: Broker
    live_nodes: Callable[[], list[str]]
    registry: Registry
    stats: dict[str, int]
    held: dict[str, Stamp]
    _confirmed: dict[str, tuple[str, tuple[str, ...]]]
    _dirty: set[str]
    _rejoined: set[str]
    _gone: set[str]
    _last_live: list[str]
    _rebalance_scheduled: bool
    _settle: asyncio.TimerHandle | None
    settle_round: float = SETTLE_ROUND

    if TYPE_CHECKING:  # `ClusterSessionLocator` and `RegistryOwner` define them

        def evict(
            self, entries: dict[str, Stamp], winners: dict[str, str] | None = None
        ) -> int: ...
        def _evict_at(self, node: str, entries: dict[str, Stamp], winner: str) -> None: ...
        def _spawn(self, coro: Any) -> None: ...
        async def _send(self, node: str, method: str, args: dict[str, Any]) -> Any: ...

    def members_changed(self, node: str, kind: str) -> None:
        """A member event (`cluster.delegate.MemberEvent`): entries move after this loop turn."""
        if kind in ("join", "alive"):
            self._rejoined.add(node)
            self._gone.discard(node)
        elif kind in ("dead", "left"):
            self._gone.add(node)
            self._rejoined.discard(node)
        else:
            return
        if not self._rebalance_scheduled:
            self._rebalance_scheduled = True
            asyncio.get_running_loop().call_soon(self._rebalance)

    def _rebalance(self) -> None:
        self._rebalance_scheduled = False
        rejoined, self._rejoined = self._rejoined, set()
        gone, self._gone = self._gone, set()
        for node in gone:
            self.registry.drop_node(node)
        after = self.live_nodes()
        before, self._last_live = self._last_live, after
        for client_id in self.broker.sessions:
            self.held.setdefault(client_id, ZERO)  # restored from disk: any claim beats it
        for client_id in self.registry.not_owned(self.name, after):
            del self.registry.entries[client_id]  # its holder registers it with the new owner
        groups = moved(self.held, before, after, rejoined)
        mine = set(groups.get(self.name, ()))
        for client_id in self.held:  # ours to own, not in our table yet (restored, or alone)
            missing = client_id not in mine and self.registry.get(client_id) is None
            if missing and owner_of(client_id, after) == self.name:
                groups.setdefault(self.name, []).append(client_id)
        dirty, self._dirty = self._dirty, set()
        for client_id in dirty:
            if client_id in self.held:
                owner = owner_of(client_id, after)
                if client_id not in groups.get(owner, ()):
                    groups.setdefault(owner, []).append(client_id)
        self._register_groups(
            {o: {cid: self.held[cid] for cid in ids} for o, ids in groups.items()}, after
        )
        if self._settle is not None:
            self._settle.cancel()
        self._settle = asyncio.get_running_loop().call_later(self.settle_round, self._settled)

    def _settled(self) -> None:
        """The round after the member events (module docstring)."""
        self._settle = None
        self.reconcile()

    def reconcile(self) -> int:
        """The periodic round: register again the held ids whose registration is not confirmed
        by their owner under the current member view; returns how many were sent."""
        nodes = self.live_nodes()
        view = view_of(nodes)
        for client_id in [cid for cid in self._confirmed if cid not in self.held]:
            del self._confirmed[client_id]
        groups: dict[str, dict[str, Stamp]] = {}
        for client_id, stamp in self.held.items():
            if client_id not in self.broker.sessions:
                continue  # ended: the sweep releases it
            confirmed = self._confirmed.get(client_id)
            if confirmed is not None and confirmed[1] == view:
                continue  # confirmed under this very view (so by this owner): no hashing
            groups.setdefault(owner_of(client_id, nodes), {})[client_id] = stamp
        self._register_groups(groups, nodes)
        return sum(len(entries) for entries in groups.values())

    def register_soon(self, client_id: str) -> None:
        """Register one held id with its owner under the member view after this loop turn."""

        def register() -> None:
            stamp = self.held.get(client_id)
            if stamp is not None and client_id in self.broker.sessions:
                nodes = self.live_nodes()
                self._register_groups({owner_of(client_id, nodes): {client_id: stamp}}, nodes)

        asyncio.get_running_loop().call_soon(register)

    def _register_groups(self, groups: dict[str, dict[str, Stamp]], after: list[str]) -> None:
        """Register these held ids with their owners under the member list `after`."""
        view = view_of(after)
        for owner, entries in groups.items():
            self.stats["registered"] += len(entries)
            if owner == self.name:
                lose: dict[str, Stamp] = {}
                live = set(after)
                for client_id, stamp in entries.items():
                    evict = self.registry.register(client_id, self.name, stamp, live.__contains__)
                    if evict is not None and evict.node == self.name:
                        lose[client_id] = stamp
                        continue
                    if evict is not None:
                        self._evict_at(evict.node, {client_id: evict.stamp}, self.name)
                    self._confirmed[client_id] = (owner, view)
                self.evict(lose, self.registry.holders(lose))
            else:
                for chunk in chunks(entries):
                    self._spawn(self._register(owner, chunk, view))

    async def _register(self, owner: str, entries: dict[str, Stamp], view: tuple[str, ...]) -> None:
        answer = await self._send(owner, REGISTER_METHOD, {"entries": entries_wire(entries)})
        if isinstance(answer, dict):
            for client_id, stamp in entries.items():
                if self.held.get(client_id) == stamp:
                    self._confirmed[client_id] = (owner, view)
            self.evict(dict(parse_entries(answer.get("evict"))), parse_winners(answer.get("to")))
        elif answer is None:
            self._dirty.update(entries)  # try again at the next change, or the next round
            for client_id in entries:
                self._confirmed.pop(client_id, None)
