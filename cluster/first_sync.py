"""The first route sync of a node that expects peers: what its MQTT listeners wait for.

Why: a node that (re)starts with seeds knows only its own routes until a peer's table arrives.
A client PUBLISH it acknowledged meanwhile would be delivered to this node's subscribers only:
acknowledged, and routed nowhere for a subscriber on another node (issue 14, measured in the
fault suite's kill_during_takeover: the restarted node acked 2 such messages). So the node
opens its MQTT listeners only once one peer's whole route table is merged (the push/pull of
the join, either way round: `RouteSync.on_full_state`), or after `[cluster] sync_timeout`
seconds: a node alone, or whose seeds are all down, must still start.

As EMQX does: its node refuses MQTT connections until it is ready (`emqx_node_readiness`, the
listeners start after the apps, whose route tables mria has loaded from the cluster, and they
are restarted after a cluster join). Closed listeners rather than CONNACKs held: a client
whose connection is refused retries as after any restart, and no connection exists that could
publish, or time out, in the meantime.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class FirstSync:
    """Set once the first peer's route table is merged; `wait` bounds the wait."""

    def __init__(self) -> None:
        self._done = asyncio.Event()
        self.merged = 0  # peers' tables merged so far (push/pull, both ways)

    def seen(self) -> None:
        """A peer's whole route table was merged (`RouteSync.on_full_state`)."""
        self.merged += 1
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self, timeout: float) -> bool:
        """Until the first merge, at most `timeout` seconds; True if it came. Logged."""
        start = time.monotonic()
        if timeout > 0 and not self._done.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._done.wait()
            except TimeoutError:
                pass
        took = time.monotonic() - start
        if self._done.is_set():
            log.info("cluster: a peer's routes merged after %.2f s: opening the listeners", took)
            return True
        log.warning(
            "cluster: no peer answered within sync_timeout (%.1f s): opening the listeners with "
            "this node's own routes only", timeout,
        )  # fmt: skip
        return False
