"""`ClusterView` of `minibroker start --workers N`: N processes shown as ONE node.

The workers form a cluster among themselves (over Unix sockets, `broker.app`), but the API must
not show N nodes: a user started one node that happens to use N cores. So this view has one node
name (the configured one); each query on it runs on every live worker (this one in-process, the
others over the cluster RPC) and the answers are merged into what one node would answer:

* row lists (clients, sessions, subscriptions, alarms, plugins) are concatenated; client,
  session and subscription rows gain `worker` (the worker's index), the per-worker detail that
  matters when one asks where a client landed;
* listeners are merged per listener (current connections summed): they are the same sockets;
* counters (`metrics`, `stats`) are summed, except the retained figures, which every worker
  holds in full (retained messages are replicated) and are taken from this worker;
* `node_info` is this worker's row with the node-wide connections, memory and open files, plus
  `workers`: one row per worker (index, pid, status, connections, memory);
* actions: `kick`, `session_drop`, `retained_delete`, `subscribe`/`unsubscribe` succeed if
  any worker did;
  `kick_banned` counts over all; `publish` runs here only (the cluster delivers it to the other
  workers' subscribers, as between nodes); replicated tables (`retained`, `banned`,
  `table_dump`) and the configuration (`configs`) are read here only (each worker holds the
  whole table; the workers share one configuration).

A worker that does not answer (dead, or too slow) is left out of the merge and shown as
`Stopped` in `workers`; the parent process reports its death in its log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.rpc import RemoteError, RpcError
from cluster.runtime import ClusterNode
from management.queries import query
from management.view import LocalView, NodeDown, UnknownNode, run_query

if TYPE_CHECKING:
    from management.queries import NodeContext

__all__ = [
    "LOCAL_ONLY",
    "WorkersView",
    "merge_worker_answers",
    "worker_member_name",
    "workers_node_info",
]

log = logging.getLogger(__name__)

#: Queries answered by this worker alone: actions done once for the node, and tables that
#: every worker holds in full.
LOCAL_ONLY = frozenset({"publish", "retained", "banned", "table_dump", "broker_info", "configs"})
#: Row lists whose rows say which worker holds them.
_PER_WORKER_ROWS = frozenset(
    {"connections", "connections_by_username", "sessions", "subscriptions"}
)
#: Actions that succeed when any worker did ("ok", or True).
_ANY_OK = frozenset({"kick", "retained_delete", "session_drop", "subscribe", "unsubscribe"})
#: Per-worker summed node figures in `node_info`.
_NODE_SUMS = ("connections", "memory_used", "process_used")


def worker_member_name(node: str, index: int) -> str:
    """The cluster member name of worker `index` of `node` (unique among the workers)."""
    return f"{node}/w{index}"


@query("worker_info")
async def worker_info(ctx: NodeContext, args: dict[str, Any]) -> dict[str, int]:
    """This worker process: its pid and its connections (the parent's `workers` rows)."""
    return {"pid": os.getpid(), "connections": len(ctx.broker.connected)}


def _sum_counters(answers: list[dict[str, int]], keep_local: Callable[[str], bool]) -> Any:
    out = dict(answers[0])
    for answer in answers[1:]:
        for key, value in answer.items():
            if keep_local(key):
                continue
            out[key] = out.get(key, 0) + value
    return out


def _merge_listeners(answers: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in answers:
        for row in rows:
            key = (str(row["protocol"]), str(row["listen_on"]))
            have = merged.get(key)
            if have is None:
                merged[key] = {**row, "shutdown_count": dict(row["shutdown_count"])}
                continue
            have["current_conns"] += row["current_conns"]
            have["acceptors"] += row["acceptors"]
            for reason, count in row["shutdown_count"].items():
                have["shutdown_count"][reason] = have["shutdown_count"].get(reason, 0) + count
    return list(merged.values())


def merge_worker_answers(name: str, answers: list[tuple[int, Any]]) -> Any:
    """What one node answers to query `name`, from its workers' (index, answer) pairs (the
    first is the worker that asked): see the module docstring."""
    values = [answer for _index, answer in answers]
    first = values[0]
    if name in _PER_WORKER_ROWS:
        return [{**row, "worker": index} for index, rows in answers for row in rows]
    if name == "listeners":
        return _merge_listeners(values)
    if name == "local_routes":
        return sorted({filt for routes in values for filt in routes})
    if name in ("metrics", "stats"):
        return _sum_counters(values, lambda key: key.startswith("retained/"))
    if name in _ANY_OK:
        good = [v for v in values if v is True or v == "ok"]
        return good[0] if good else first
    if name == "kick_banned":
        return sum(int(v) for v in values)
    if all(isinstance(v, list) for v in values):
        return [row for rows in values for row in rows]
    return first  # plugin actions, log level, ban add/delete: what this worker did


def workers_node_info(
    answers: list[tuple[int, Any]], details: dict[int, Any], count: int
) -> dict[str, Any]:
    """`node_info` of a node of `count` workers: the first answer's row with the node-wide
    sums, plus `workers` (one row per worker; `details`: index -> `worker_info`)."""
    info = dict(answers[0][1])
    for key in _NODE_SUMS:
        info[key] = sum(int(answer.get(key, 0)) for _i, answer in answers)
    by_index = dict(answers)
    rows = []
    for index in range(count):
        answer = by_index.get(index)
        detail = details.get(index)
        running = answer is not None and detail is not None
        rows.append(
            {
                "worker": index,
                "pid": int(detail["pid"]) if detail is not None else None,
                "node_status": "Running" if running else "Stopped",
                "connections": int(answer["connections"]) if answer is not None else 0,
                "memory_used": int(answer["memory_used"]) if answer is not None else 0,
            }
        )
    info["workers"] = rows
    return info


class WorkersView(LocalView):
    """The node's workers seen as one node (see the module docstring): a `LocalView` whose
    queries are answered by every worker."""

    def __init__(
        self,
        ctx: NodeContext,
        cluster: ClusterNode,
        index: int,
        count: int,
        timeout: float | None = None,
    ) -> None:
        super().__init__(ctx)
        self.cluster = cluster
        self.index = index
        self.count = count
        self.timeout = timeout

    async def _on_worker(self, index: int, name: str, args: dict[str, Any]) -> Any:
        if index == self.index:
            return await run_query(self.ctx, name, args)
        member = worker_member_name(self.local_node, index)
        return await self.cluster.call(member, name, args, self.timeout)

    async def per_worker(self, name: str, args: dict[str, Any]) -> list[tuple[int, Any]]:
        """`name` on every worker at once: (index, answer) of those that answered, this one
        first. A query that fails on this worker raises (a bug, a 500 as on one node)."""
        order = [self.index, *(i for i in range(self.count) if i != self.index)]
        live = [i for i in order if i == self.index or self._is_live(i)]
        answers = await asyncio.gather(
            *(self._on_worker(i, name, args) for i in live), return_exceptions=True
        )
        out: list[tuple[int, Any]] = []
        for index, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                if index == self.index:
                    raise answer
                level = logging.WARNING if isinstance(answer, RpcError) else logging.ERROR
                if isinstance(answer, RemoteError):
                    level = logging.ERROR
                log.log(level, "management: worker %d failed on %s: %r", index, name, answer)
                continue
            out.append((index, answer))
        return out

    def _is_live(self, index: int) -> bool:
        return self.cluster.is_live(worker_member_name(self.local_node, index))

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        if node != self.local_node:
            raise UnknownNode(node)
        if query in LOCAL_ONLY:
            return await run_query(self.ctx, query, args)
        try:
            answers = await self.per_worker(query, args)
        except RpcError as exc:  # (only this worker's own failure is raised)
            raise NodeDown(node) from exc
        if query == "node_info":
            return await self._node_info(answers)
        return merge_worker_answers(query, answers)

    async def call_all(self, query: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(self.local_node, await self.call(self.local_node, query, args))]

    async def _node_info(self, answers: list[tuple[int, Any]]) -> dict[str, Any]:
        details = dict(await self.per_worker("worker_info", {}))
        return workers_node_info(answers, details, self.count)
