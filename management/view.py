"""How the management API sees the cluster: node names plus one call per node-local query.

Every handler of `/api/v3` asks the nodes through a `ClusterView` and never touches a broker
directly. `LocalView` is the one-node implementation: it runs the query table
(`management.queries.QUERIES`) against this node's `NodeContext`. The cluster provides another
implementation that sends `(query, args)` over its RPC channel and, on the remote node, runs the
same table; that is why every query's arguments and result are plain msgpack-able data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from management.queries import NodeContext

log = logging.getLogger(__name__)


class UnknownNode(Exception):
    """The node name is not a member of the cluster (HTTP 404 `not_found`)."""


class NodeDown(Exception):
    """A known node did not answer in time (HTTP 503 `nodedown`)."""


class UnknownQuery(Exception):
    """The node has no query of that name (for example a node of an older version)."""


class ClusterView(Protocol):
    """The management plane's window on the cluster."""

    @property
    def local_node(self) -> str:
        """This node's name (an implementation may use a plain attribute)."""
        ...

    def node_names(self) -> list[str]:
        """Running nodes, the local node first."""
        ...

    def is_known(self, node: str) -> bool:
        """True for a member of the cluster, running or not."""
        ...

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        """Run one query on one node; raises UnknownNode / NodeDown."""
        ...

    async def call_all(self, query: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
        """Run one query on every running node, local first; a node that fails is skipped."""
        ...


@runtime_checkable
class RouteSource(Protocol):
    """A view that holds the replicated cluster route table (`/routes` reads it directly)."""

    def route_rows(self) -> list[tuple[str, str]]:
        """Every (filter, node) pair of the cluster."""
        ...


@runtime_checkable
class MemberSource(Protocol):
    """A view that remembers members that are not running (`/nodes` lists them as Stopped)."""

    def stopped_nodes(self) -> list[str]:
        """Members declared dead or gone (left), by name, until membership forgets them."""
        ...


async def run_query(ctx: NodeContext, query: str, args: dict[str, Any]) -> Any:
    """Run `query` of the table against one node's context (what the RPC server side calls)."""
    from management import queries_admin  # noqa: F401 (registers its queries)
    from management.queries import QUERIES

    fn = QUERIES.get(query)
    if fn is None:
        raise UnknownQuery(query)
    return await fn(ctx, args)


class LocalView:
    """A cluster of one: every call runs the query table in-process."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    @property
    def local_node(self) -> str:
        return self.ctx.node_name

    def node_names(self) -> list[str]:
        return [self.local_node]

    def is_known(self, node: str) -> bool:
        return node == self.local_node

    async def call(self, node: str, query: str, args: dict[str, Any]) -> Any:
        if node != self.local_node:
            raise UnknownNode(node)
        return await run_query(self.ctx, query, args)

    async def call_all(self, query: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(self.local_node, await run_query(self.ctx, query, args))]
