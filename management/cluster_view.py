"""`ClusterView` over a running `cluster.runtime.ClusterNode`: the API of any node sees them all.

* `node_names()`: the live members (alive or suspect), this node first;
* `is_known(node)`: any member ever seen, running or not (dead and left ones until membership
  forgets them), so a dead node's `/nodes/<node>/...` is 503 `nodedown`, a stranger's 404;
* `call(node, query, args)`: this node runs the query table in-process (`run_query`); another
  node gets an RPC whose method is the query name (its `rpc_handler`, wired by `broker.app`,
  runs the same table). The cluster's `RpcError`s become `NodeDown` (503); a query that fails
  over there (a bug, or a node without that query) is an error (500), not a down node;
* `call_all(query, args)`: every live node at once; a node that does not answer is logged and
  skipped, so cluster-wide lists show what the running nodes have;
* `stopped_nodes()`: the members declared dead or left (`/nodes` shows them as Stopped);
* `route_rows()`: the replicated cluster route table (filter, node) for `/routes`;
* `admin`: the membership changes of `/cluster/join|leave|force_leave` (`cluster.admin`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from cluster.admin import ClusterAdmin
from cluster.rpc import RemoteError, RpcError
from cluster.runtime import ClusterNode
from management.view import NodeDown, UnknownNode, run_query

if TYPE_CHECKING:
    from management.queries import NodeContext

log = logging.getLogger(__name__)


class ClusterNodeView:
    """The management plane's window on a cluster, through `cluster`'s membership and RPC."""

    def __init__(
        self, ctx: NodeContext, cluster: ClusterNode, timeout: float | None = None
    ) -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.timeout = timeout
        #: join / leave / force-leave (`management.handlers_membership`)
        self.admin = ClusterAdmin(cluster)

    @property
    def local_node(self) -> str:
        return self.ctx.node_name

    def node_names(self) -> list[str]:
        return self.cluster.live_nodes()

    def is_known(self, node: str) -> bool:
        return node == self.local_node or self.cluster.knows(node)

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        if node == self.local_node:
            return await run_query(self.ctx, query, args)
        if not self.cluster.knows(node):
            raise UnknownNode(node)
        try:
            return await self.cluster.call(node, query, args, self.timeout)
        except RemoteError:
            raise
        except RpcError as exc:
            raise NodeDown(node) from exc

    async def call_all(self, query: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
        nodes = self.node_names()
        answers = await asyncio.gather(
            *(self.call(node, query, args) for node in nodes), return_exceptions=True
        )
        out: list[tuple[str, Any]] = []
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, NodeDown | UnknownNode):
                log.warning("management: node %s did not answer %s", node, query)
            elif isinstance(answer, BaseException):
                if node == self.local_node:
                    raise answer  # a bug here: a 500, as with a single node
                log.warning("management: %s failed on node %s: %r", query, node, answer)
            else:
                out.append((node, answer))
        return out

    def stopped_nodes(self) -> list[str]:
        """Members that are neither alive nor suspect (dead or left), by name."""
        members = self.cluster.membership.members
        return sorted(name for name in members if not self.cluster.is_live(name))

    def route_rows(self) -> list[tuple[str, str]]:
        """Every (filter, node) of the replicated route table."""
        return self.cluster.table.routes()
