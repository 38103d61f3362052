"""Membership changes by an operator: emqx_ctl's `cluster join | leave | force-leave`.

`ClusterAdmin(node)` (made by the composition root next to the `ClusterNode`) acts on the node
it runs on, as emqx_ctl does:

* `join(seed)`: join the cluster that `seed` (a peer's cluster address) belongs to; a node that
  left comes back alive (`Membership.rejoin`), one already in a cluster adds the seed;
* `leave()`: leave gracefully (LEAVE sent and flushed, so the others hear it at once), then
  stand alone while running (`Membership.isolate`): routes of the others purged, nothing
  forwarded, no reconnecting until `join`;
* `force_leave(name)`: a node that is alive is asked to leave (RPC `cluster_leave`, which runs
  its `leave()` right after answering); one that is dead or suspect is marked left on every node
  by gossip (it is no longer counted as failed and is forgotten after `left_reclaim_time`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cluster.members import MemberState
from cluster.runtime import ClusterNode
from cluster.wire import Address

__all__ = ["LEAVE_METHOD", "ClusterAdmin"]

log = logging.getLogger(__name__)

LEAVE_METHOD = "cluster_leave"


class ClusterAdmin:
    """See the module docstring."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._tasks: set[asyncio.Task[bool]] = set()
        node.register_rpc(LEAVE_METHOD, self._on_leave)

    async def join(self, seed: Address) -> None:
        node = self.node
        was_alone = node.membership.isolated
        node.send_outgoing(node.membership.rejoin([seed], node.now()))
        node.wake()
        log.info("cluster: %s through %s:%d", "rejoining" if was_alone else "joining", *seed)

    async def leave(self) -> bool:
        """False if this node has left already."""
        node = self.node
        membership = node.membership
        if membership.leaving:
            return False
        node.forwarder.flush()
        node.send_outgoing(membership.leave(node.now()))
        await node.transport.flush(node.config.leave_timeout)
        node.send_outgoing(membership.isolate(node.now()))
        log.warning("cluster: node %s left the cluster; it runs alone until joined", node.name)
        return True

    async def force_leave(self, name: str) -> str:
        """ "left" (the node was asked and left) or "removed" (marked left); raises LookupError
        for an unknown or left node, ValueError for this node, RpcError if it does not answer."""
        node = self.node
        if name == node.name:
            raise ValueError("use leave for this node")
        member = node.membership.get(name)
        if member is None or member.state is MemberState.LEFT:
            raise LookupError(name)
        if member.state is MemberState.ALIVE:
            await node.call(name, LEAVE_METHOD, {})
            return "left"
        if not node.membership.force_leave(name, node.now()):
            raise LookupError(name)
        node.send_outgoing([])
        node.wake()
        log.warning("cluster: node %s (%s) forced to leave", name, member.state.name.lower())
        return "removed"

    async def _on_leave(self, args: dict[str, Any], from_node: str) -> bool:
        """Answer first (the reply is queued when this returns), then leave."""
        log.warning("cluster: %s asks this node to leave the cluster", from_node)
        task = asyncio.get_running_loop().create_task(self.leave())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return not self.node.membership.leaving
