"""A cluster view in which the workers of a node (`start --workers N --join ...`) are ONE node.

A node of N workers that joins a cluster takes part as N members, `<node>/w<index>` (each
worker has its own links, routes, sessions and takeover, exactly as between nodes), but the
API of every node shows it as the one node a user started: `node_names()` has `<node>` once,
and a query on it runs on each of its live workers and is merged as `WorkersView` merges
(`merge_worker_answers`; `node_info` gains `workers`, one row per worker seen). Members with
other names are nodes of their own, as in `ClusterNodeView`. The route table (filter, member)
is shown per node. Membership admin (`/cluster/leave`, `force_leave`) still names members.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from cluster.rpc import RemoteError, RpcError
from management.cluster_view import ClusterNodeView
from management.view import NodeDown, UnknownNode, run_query
from management.workers_view import LOCAL_ONLY, merge_worker_answers, workers_node_info

__all__ = ["GroupedClusterView", "split_member"]

log = logging.getLogger(__name__)

_WORKER_MEMBER = re.compile(r"^(?P<node>.+)/w(?P<index>\d+)$")


def split_member(member: str) -> tuple[str, int | None]:
    """(node, worker index) of a member name; a plain node's index is None."""
    match = _WORKER_MEMBER.match(member)
    if match is None:
        return member, None
    return match.group("node"), int(match.group("index"))


class GroupedClusterView(ClusterNodeView):
    """`ClusterNodeView` with each node's workers grouped into that node (module docstring)."""

    @property
    def local_node(self) -> str:
        return split_member(self.cluster.name)[0]

    def _workers(self, node: str) -> dict[int, str]:
        """Index -> member name of every worker of `node` ever seen (none for a plain node)."""
        names = [self.cluster.name, *self.cluster.membership.members]
        out: dict[int, str] = {}
        for name in names:
            group, index = split_member(name)
            if group == node and index is not None:
                out[index] = name
        return dict(sorted(out.items()))

    def node_names(self) -> list[str]:
        nodes = (split_member(member)[0] for member in self.cluster.live_nodes())
        return list(dict.fromkeys(nodes))  # this node first, each once

    def is_known(self, node: str) -> bool:
        if node == self.local_node:
            return True
        return any(split_member(m)[0] == node for m in self.cluster.membership.members)

    def stopped_nodes(self) -> list[str]:
        live = set(self.node_names())
        members = self.cluster.membership.members
        return sorted({split_member(m)[0] for m in members} - live)

    def route_rows(self) -> list[tuple[str, str]]:
        return sorted({(filt, split_member(member)[0]) for filt, member in super().route_rows()})

    async def _on_member(self, member: str, query: str, args: dict[str, Any]) -> Any:
        if member == self.cluster.name:
            return await run_query(self.ctx, query, args)
        return await self.cluster.call(member, query, args, self.timeout)

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        workers = self._workers(node)
        if not workers:  # a plain node (this one, when it has no workers)
            if node == self.local_node:
                return await run_query(self.ctx, query, args)
            return await super().call(node, query, args)
        return await self._call_workers(node, workers, query, args)

    async def _call_workers(
        self, node: str, workers: dict[int, str], query: str, args: dict[str, Any]
    ) -> Any:
        here = self.cluster.name
        live = {i: m for i, m in workers.items() if m == here or self.cluster.is_live(m)}
        if not live:
            raise NodeDown(node)
        order = sorted(live, key=lambda i: (live[i] != here, i))  # this worker first
        if query in LOCAL_ONLY:
            return await self._once(node, [live[i] for i in order], query, args)
        answers = await self._gather(node, {i: live[i] for i in order}, query, args)
        if query == "node_info":
            details = await self._gather(node, live, "worker_info", {})
            return workers_node_info(answers, dict(details), max(workers) + 1)
        return merge_worker_answers(query, answers)

    async def _once(self, node: str, members: list[str], query: str, args: dict[str, Any]) -> Any:
        """`query` on the first of `members` that answers (a replicated table, an action done
        once for the node)."""
        for member in members:
            try:
                return await self._on_member(member, query, args)
            except RemoteError:
                raise
            except RpcError:
                continue
        raise NodeDown(node)

    async def _gather(
        self, node: str, members: dict[int, str], query: str, args: dict[str, Any]
    ) -> list[tuple[int, Any]]:
        """`query` on every member at once: (index, answer) of those that answered."""
        results = await asyncio.gather(
            *(self._on_member(m, query, args) for m in members.values()), return_exceptions=True
        )
        out: list[tuple[int, Any]] = []
        for (index, member), result in zip(members.items(), results, strict=True):
            if isinstance(result, BaseException):
                if member == self.cluster.name or isinstance(result, RemoteError):
                    raise result  # a bug here or there: a 500, as with a single node
                if isinstance(result, RpcError | UnknownNode):
                    log.warning("management: %s (of %s) did not answer %s", member, node, query)
                    continue
                raise result
            out.append((index, result))
        if not out:
            raise NodeDown(node)
        return out
