"""Node-local queries on the replicated tables (`broker.core.replicated`).

Registered in `management.queries.QUERIES` when this module is imported (the API's handlers
import it), so that remote nodes run them through the same RPC as every other query. A write
carries the row as the API node stamped it (key, value, `at`, and `hlc`, a stamp of its hybrid
clock from `hlc_now`), so every node stores the same row and applying it twice changes nothing.
"""

from __future__ import annotations

from typing import Any

from broker.core.hlc import Stamp, stamp_from_wire
from broker.core.replicated import valid_table_name
from management.queries import NodeContext, error, query


def _name(args: dict[str, Any]) -> str | None:
    name = args.get("table")
    return name if isinstance(name, str) and valid_table_name(name) else None


@query("table_dump")
async def table_dump(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """Every row of a table, tombstones included (the API merges the nodes' answers)."""
    name = _name(args)
    if name is None:
        return error("bad_table")
    return ctx.broker.replicated.table(name).dump()


@query("table_put")
async def table_put(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """Store `value` under `key` unless a newer row is there; True when taken."""
    name, key, value, at = _name(args), args.get("key"), args.get("value"), args.get("at")
    if name is None or not isinstance(key, str) or not key or not isinstance(value, dict):
        return error("bad_table")
    if isinstance(at, bool) or not isinstance(at, int | float):
        return error("bad_table")
    return ctx.broker.replicated.table(name).put(key, value, float(at), _stamp(ctx, args))


@query("table_delete")
async def table_delete(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """Delete `key` (a tombstone at `at`) unless a newer row is there; True when taken."""
    name, key, at = _name(args), args.get("key"), args.get("at")
    if name is None or not isinstance(key, str) or not key:
        return error("bad_table")
    if isinstance(at, bool) or not isinstance(at, int | float):
        return error("bad_table")
    return ctx.broker.replicated.table(name).delete(key, float(at), _stamp(ctx, args))


def _stamp(ctx: NodeContext, args: dict[str, Any]) -> Stamp | None:
    """The write's stamp (`hlc`), taken into this node's clock; None when the API node sent
    none (an older node: the row is ordered by `at`)."""
    stamp = stamp_from_wire(args.get("hlc"))
    if stamp is not None:
        ctx.broker.hlc.update(stamp)
    return stamp
