"""Replicated tables: state every node keeps a full copy of (retained messages, bans, and the
last-writer-wins tables of `broker.core.replicated`: the API apps, auth_clientid, auth_username).

Why one mechanism: each such table needs the same two things from the cluster. A change is
written on every running node by whoever makes it (the management API runs an idempotent query
on each node); a node that was away pulls the table from a peer when it (re)joins. Only the
second part lives here, so that a table is added with one `add(name, dump, merge)` call.

* `add(name, dump, merge, resync=False)` serves RPC `<name>_dump` with `dump(args, from_node)`
  (what a peer pulls) and remembers `merge(answer) -> int` (how many entries it changed here).
* `pull(node, ...)` asks `node` for each table and merges the answers; an RPC failure of one
  table is logged and the others are still pulled. `pull_all` is the once-per-start sync (from
  the first peer met, every table); tables added with `resync=True` are small and mergeable in
  any order (last writer wins, tombstones for deletions), so they are pulled again from every
  node that joins or comes back (after a partition, or a restart of either side), which makes
  two sides that changed apart converge.

The RPC method names (`retained_dump`, `banned_dump`, `tables_dump`) are the wire contract.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cluster.rpc import MethodHandler, RpcError

__all__ = ["Replica", "ReplicaSet"]

log = logging.getLogger(__name__)

#: `call(node, method, args)`: one RPC (raises RpcError when the node does not answer).
CallFn = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
Merge = Callable[[Any], int]


@dataclass(frozen=True, slots=True)
class Replica:
    name: str
    dump: MethodHandler
    merge: Merge
    resync: bool


class ReplicaSet:
    """The node's replicated tables; see the module docstring."""

    def __init__(self, call: CallFn, register_rpc: Callable[[str, MethodHandler], None]) -> None:
        self._call = call
        self._register_rpc = register_rpc
        self.tables: dict[str, Replica] = {}

    def add(self, name: str, dump: MethodHandler, merge: Merge, *, resync: bool = False) -> None:
        self.tables[name] = Replica(name, dump, merge, resync)
        self._register_rpc(f"{name}_dump", dump)

    async def pull(self, node: str, *, resync_only: bool = False) -> dict[str, int]:
        """Pull the tables from `node` and merge them: name -> entries changed here.

        Raises RpcError when `node` answered none of them (so the caller may try another).
        """
        changed: dict[str, int] = {}
        failures = 0
        tables = [t for t in self.tables.values() if t.resync or not resync_only]
        for table in tables:
            try:
                answer = await self._call(node, f"{table.name}_dump", {})
            except RpcError as exc:
                failures += 1
                log.info("cluster: pulling %s from %s failed: %s", table.name, node, exc)
                if failures == len(tables):
                    raise
                continue
            try:
                changed[table.name] = table.merge(answer)
            except Exception:  # a malformed answer must not stop the other tables
                log.exception("cluster: cannot merge %s pulled from %s", table.name, node)
        level = logging.INFO if any(changed.values()) else logging.DEBUG
        summary = ", ".join(f"{n} {name}" for name, n in changed.items()) or "nothing"
        log.log(level, "cluster: pulled from %s: %s", node, summary)
        return changed

    async def pull_all(self, candidates: list[str]) -> str | None:
        """Every table from the first candidate that answers; returns its name (None: none)."""
        for node in candidates:
            try:
                await self.pull(node)
            except RpcError:
                continue
            return node
        return None
