"""What management asks of the cluster: which nodes are live, and RPC to one node or to all.

Why a module of its own: these are the queries management and the cluster ports use
(`cluster.ports.PortsHost`), apart from the wiring and message forwarding of
`cluster.runtime`. `ClusterNode` inherits `NodeRpc`; this module never imports
`cluster.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from cluster.members import LIVE_STATES, MemberState
from cluster.membership import Membership
from cluster.node_config import ClusterConfig
from cluster.rpc import MethodHandler, NodeUnreachable, RpcEndpoint, RpcError
from cluster.transport import Transport

log = logging.getLogger("cluster.runtime")


class NodeRpc:
    """Live-node queries and RPC; mixed into `ClusterNode`, whose `__init__` sets the
    attributes declared here."""

    name: str
    config: ClusterConfig
    rpc: RpcEndpoint
    transport: Transport

    if TYPE_CHECKING:  # `ClusterNode` defines it

        @property
        def membership(self) -> Membership: ...

    # -- queries ---------------------------------------------------------------------------

    def live_nodes(self) -> list[str]:
        """Members alive or suspect: this node first, then the others by name."""
        others = sorted(m.name for m in self.membership.live_members())
        return [self.name, *others]

    def apart_nodes(self) -> list[str]:
        """Members suspect or dead (not left): a session resumed here now may have a copy over
        there that its client used meanwhile (`cluster.takeover_heal`)."""
        return sorted(
            m.name
            for m in self.membership.members.values()
            if m.name != self.name and m.state in (MemberState.SUSPECT, MemberState.DEAD)
        )

    def linked_dead(self) -> list[str]:
        """Members the membership does not count live whose cluster link is up again: a heal
        the transport saw before the membership did (what was held for them flows already).
        A takeover's gather asks them for their copy too (`cluster.takeover_fold`)."""
        transport = self.transport
        return sorted(
            m.name
            for m in self.membership.members.values()
            if m.name != self.name and m.state not in LIVE_STATES and transport.is_up(m.address)
        )

    async def call_linked(
        self, node: str, method: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """`call` to a member over a link that is up, whatever the membership says of it."""
        member = self.membership.get(node)
        if member is None or not self.transport.is_up(member.address):
            raise NodeUnreachable(node)
        wait = self.config.rpc_timeout if timeout is None else timeout
        return await self.rpc.call(node, member.address, method, args, wait)

    def is_live(self, node: str) -> bool:
        member = self.membership.get(node)
        return member is not None and member.state in LIVE_STATES

    def knows(self, node: str) -> bool:
        """Any member ever seen (alive, suspect, dead or left, until reaped)."""
        return self.membership.get(node) is not None

    # -- RPC -------------------------------------------------------------------------------

    def register_rpc(self, method: str, handler: MethodHandler) -> None:
        """Serve `method` with `async handler(args, from_node)`."""
        self.rpc.register(method, handler)

    async def call(
        self, node: str, method: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """Run `method` on `node` (this node too); raises NodeUnreachable/RpcTimeout/RemoteError."""
        if node == self.name:
            return await self.rpc.dispatch(method, args, self.name)
        member = self.membership.get(node)
        if member is None or member.state not in LIVE_STATES:
            raise NodeUnreachable(node)
        wait = self.config.rpc_timeout if timeout is None else timeout
        return await self.rpc.call(node, member.address, method, args, wait)

    async def call_all(
        self, method: str, args: dict[str, Any], timeout: float | None = None
    ) -> list[tuple[str, Any]]:
        """Run `method` on every live node (this one first) at once; failures are logged and
        skipped."""
        nodes = self.live_nodes()
        results = await asyncio.gather(
            *(self.call(node, method, args, timeout) for node in nodes), return_exceptions=True
        )
        out: list[tuple[str, Any]] = []
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, RpcError):
                log.warning("cluster: %s did not answer %s: %s", node, method, result)
            elif isinstance(result, BaseException):
                log.warning("cluster: %s failed on %s: %r", method, node, result)
            else:
                out.append((node, result))
        return out
