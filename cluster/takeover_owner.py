"""The owner side of the client-id registry: a CONNECT's claim (`registry_claim`, one per id at
a time, the previous holder made to surrender), holders registering their ids again
(`registry_register`) and sessions that ended (`registry_release`).

Why a module of its own: this is what a node does for the ids it owns, for any claimant,
apart from what it does for its own clients' CONNECTs and sessions (`cluster.takeover`).
`ClusterSessionLocator` inherits `RegistryOwner`, so these stay its methods, bound as before;
this module never imports `cluster.takeover` (the attributes and methods it uses of the
locator are declared below).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from cluster.registry import ZERO, Registry, Stamp, entries_wire, parse_entries, parse_stamp
from cluster.rpc import RpcError
from cluster.takeover_wire import (
    EVICT_METHOD,
    STALE_CLAIMS,
    SURRENDER_METHOD,
    Call,
    surrender_args,
)

log = logging.getLogger("cluster.takeover")


class RegistryOwner:
    """The registry's owner side; mixed into `ClusterSessionLocator`, whose `__init__` sets
    the attributes declared here."""

    name: str
    broker: Broker
    live_nodes: Callable[[], list[str]]
    call: Call
    timeout: float
    registry: Registry
    stats: dict[str, int]
    _locks: dict[str, tuple[asyncio.Lock, int]]

    if TYPE_CHECKING:  # `ClusterSessionLocator` defines them

        def _now(self) -> Stamp: ...
        def _observe(self, stamp: Stamp, node: str) -> bool: ...
        def evict(
            self, entries: dict[str, Stamp], winners: dict[str, str] | None = None
        ) -> int: ...
        def _spawn(self, coro: Any) -> None: ...
        async def _send(self, node: str, method: str, args: dict[str, Any]) -> Any: ...

    async def serve_claim(self, args: dict[str, Any], from_node: str) -> dict[str, Any]:
        """`registry_claim`: `from_node` takes the client over; one claim per id at a time."""
        client_id = args.get("client_id")
        clean_start = args.get("clean_start", False)
        stamp = parse_stamp(args.get("stamp"))
        if not isinstance(client_id, str) or not client_id or not isinstance(clean_start, bool):
            raise ValueError("registry_claim needs client_id (str), clean_start (bool), stamp")
        if stamp is None:
            raise ValueError("registry_claim needs a stamp [ms, n]")
        age = self.broker.hlc.wall() - stamp[0] / 1000
        if age > STALE_CLAIMS * self.timeout and stamp != ZERO:
            # Its caller went on alone long ago (a request held in a cut TCP link, delivered by
            # a retransmit after the heal): served now, it would move the live session to the
            # caller's stale copy. The next round registers the caller's copy instead.
            self.stats["stale_claims"] += 1
            raise ValueError(f"registry_claim of {client_id} is {age:.1f} s old")
        if not self._observe(stamp, from_node):
            stamp = self._now()  # the claimant's clock is too far ahead: ordered by ours
        lock, users = self._locks.get(client_id) or (asyncio.Lock(), 0)
        self._locks[client_id] = (lock, users + 1)
        try:
            async with lock:
                previous, stamp = self.registry.claim(client_id, from_node, stamp)
                state = None
                holder = previous.node if previous is not None else from_node
                if previous is not None and holder != from_node and holder in self.live_nodes():
                    ok, state = await self._surrender_at(
                        holder, client_id, clean_start, from_node, stamp
                    )
                    if not ok:  # it may still hold the id: evict it once it can be reached
                        self._evict_at(holder, {client_id: previous.stamp}, from_node)
                        # (and the claimant holds its fresh copy for it, `cluster.takeover_heal`)
                        return {"state": None, "stamp": list(stamp), "unreachable": holder}
                return {"state": state, "stamp": list(stamp)}
        finally:
            lock, users = self._locks[client_id]
            if users <= 1:
                del self._locks[client_id]
            else:
                self._locks[client_id] = (lock, users - 1)

    async def _surrender_at(
        self, holder: str, client_id: str, clean_start: bool, new_node: str, stamp: Stamp
    ) -> tuple[bool, SessionState | None]:
        """(answered, the state) of the holder's `surrender_session`; `stamp` is the new
        node's claim (the holder keeps its copy parked under it, `cluster.takeover_park`)."""
        args = {**surrender_args(client_id, clean_start), "node": new_node, "stamp": list(stamp)}
        try:
            # Shorter than the claim's own timeout: the claim still answers in time.
            answer = await self.call(holder, SURRENDER_METHOD, args, self.timeout * 2 / 3)
        except RpcError as exc:
            self.stats["failures"] += 1
            log.info("takeover of %s: holder %s did not answer: %s", client_id, holder, exc)
            return False, None
        return True, answer if isinstance(answer, dict) else None

    async def serve_register(self, args: dict[str, Any], from_node: str) -> dict[str, Any]:
        """`registry_register`: `from_node` holds these ids; answers the ones it must drop."""
        lose: dict[str, Stamp] = {}
        nodes = set(self.live_nodes())
        for client_id, stamp in parse_entries(args.get("entries")):
            if not self._observe(stamp, from_node):
                stamp = ZERO  # too far ahead to trust: loses to any other holder
            evict = self.registry.register(client_id, from_node, stamp, nodes.__contains__)
            if evict is None:
                continue
            if evict.node == from_node:
                lose[client_id] = evict.stamp
            else:
                self._evict_at(evict.node, {client_id: evict.stamp}, from_node)
        # `to`: who holds each lost id now, where the loser's queue goes (`evict`)
        return {"evict": entries_wire(lose), "to": self.registry.holders(lose)}

    async def serve_release(self, args: dict[str, Any], from_node: str) -> int:
        """`registry_release`: sessions of `from_node` that ended."""
        released = 0
        for client_id, stamp in parse_entries(args.get("entries")):
            released += self.registry.release(client_id, from_node, stamp)
        return released

    def _evict_at(self, node: str, entries: dict[str, Stamp], winner: str) -> None:
        """`node` drops these ids; `winner` holds them now (their queues go there)."""
        if node == self.name:
            self.evict(entries, dict.fromkeys(entries, winner))
        else:
            args = {"entries": entries_wire(entries), "to": dict.fromkeys(entries, winner)}
            self._spawn(self._send(node, EVICT_METHOD, args))
