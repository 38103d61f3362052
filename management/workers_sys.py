"""`$SYS` of `minibroker start --workers N`: the figures of ONE node, published on every worker.

Each worker is a broker of its own, so its `sys_counts` are its own clients, sessions and
messages; a `$SYS` subscriber (who lands on any worker) must see the node's. So the live worker
with the lowest index (worker 0 while it runs) is the gatherer: every `sys_interval` it asks
every live worker for its counts (`sys_counts`, over the workers' cluster RPC, this worker
in-process), merges them (`broker.server.systopics.merge_counts`), and has every live worker
publish the same figures as its retained `$SYS` messages (`sys_publish`). The other workers
publish nothing of their own. Should the gatherer die, the next worker in line takes over at
its next interval (it sees the gatherer no longer live in the membership).

A worker that does not answer in time is left out of that round's sums (logged by
`WorkersView.per_worker`); `clients/maximum` is the largest node-wide count the gatherer
has seen (or any worker's own peak, if larger), not an exact node-wide peak between rounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from broker.server.systopics import format_figures, merge_counts, publish_figures, sys_counts
from management.queries import query
from management.workers_view import WorkersView, worker_member_name

if TYPE_CHECKING:
    from management.queries import NodeContext

__all__ = ["WorkersSys"]

log = logging.getLogger(__name__)


@query("sys_counts")
async def sys_counts_query(ctx: NodeContext, args: dict[str, Any]) -> dict[str, int]:
    """This worker's numbers behind the `$SYS` figures."""
    return sys_counts(ctx.broker, time.time())


@query("sys_publish")
async def sys_publish_query(ctx: NodeContext, args: dict[str, Any]) -> int:
    """Publish the node-wide `$SYS` figures the gatherer sent (`figures`: topic -> payload)."""
    figures = {str(topic): str(payload) for topic, payload in dict(args["figures"]).items()}
    return publish_figures(ctx.broker, figures, time.time())


class WorkersSys:
    """The `Node.sys_publisher` of one worker (see the module docstring)."""

    def __init__(self, view: WorkersView) -> None:
        self.view = view
        #: The largest node-wide count of connected clients seen by this gatherer.
        self.peak = 0

    def is_gatherer(self) -> bool:
        """True when no worker with a lower index is live."""
        view = self.view
        lower = (worker_member_name(view.local_node, i) for i in range(view.index))
        return not any(view.cluster.is_live(member) for member in lower)

    async def publish_round(self) -> None:
        """One `sys_interval`: gather, merge and publish on every live worker (the gatherer
        only; the others return at once)."""
        if not self.is_gatherer():
            return
        view = self.view
        answers = await view.per_worker("sys_counts", {})
        counts = merge_counts(answer for _index, answer in answers)
        self.peak = max(self.peak, counts["maximum"])
        counts["maximum"] = self.peak
        figures = format_figures(counts, view.ctx.version)
        publish_figures(view.ctx.broker, figures, time.time())
        others = [index for index, _answer in answers if index != view.index]
        results = await asyncio.gather(
            *(
                view.cluster.call(
                    worker_member_name(view.local_node, index),
                    "sys_publish",
                    {"figures": figures},
                    view.timeout,
                )
                for index in others
            ),
            return_exceptions=True,
        )
        for index, result in zip(others, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("$SYS: worker %d did not take the figures: %r", index, result)
