"""Replicated tables (`broker.core.replicated`) brought into line when a node joins.

Writes reach every running node directly (the management API applies each one on all of
them). What that cannot cover is a node that was down or cut off: when it joins, it sends its
whole dump to one live peer (RPC `tables_sync`), the peer merges it and answers with its own
dump (after the merge), and the joining node merges that. Both then hold the newer row of
every key, deletions included (they are tombstones with a time). The runtime also runs the
exchange with a member that joins later or comes back from the dead (a healed partition), so
both sides of a split converge once they see each other again. The tables are small
(credentials), so the whole dump travels each time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from broker.core.replicated import ReplicatedTables
from cluster.rpc import RpcError

__all__ = ["METHOD", "TableSync"]

log = logging.getLogger(__name__)

METHOD = "tables_sync"

Call = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


class TableSync:
    """Both sides of the exchange for one node's tables."""

    def __init__(self, tables: ReplicatedTables) -> None:
        self.tables = tables

    async def serve(self, args: dict[str, Any], from_node: str) -> dict[str, Any]:
        """The peer's side: merge what the joining node sent, answer with our dump."""
        changed = self.tables.merge_all(args.get("tables"))
        if changed:
            log.info("cluster: %d replicated rows taken from %s", changed, from_node)
        return {"tables": self.tables.dump_all()}

    async def pull(self, call: Call, node: str) -> int:
        """The joining node's side; returns the rows changed here (RpcError propagates)."""
        answer = await call(node, METHOD, {"tables": self.tables.dump_all()})
        tables = answer.get("tables") if isinstance(answer, dict) else None
        return self.tables.merge_all(tables)

    async def exchange(self, call: Call, node: str) -> int:
        """`pull`, logged; a peer that cannot answer (an older version, gone again) is only
        logged: the API's writes still reach every running node."""
        try:
            changed = await self.pull(call, node)
        except RpcError as exc:
            log.warning("cluster: replicated tables not synced with %s: %s", node, exc)
            return 0
        log.log(logging.INFO if changed else logging.DEBUG,
                "cluster: %d replicated rows taken from %s", changed, node)  # fmt: skip
        return changed
