"""The timings and limits of SWIM membership (memberlist's config.go), and its formulas.

Apart from `Membership` so that its parts (`cluster.probe`) read the same settings without
importing the state machine that owns them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.transmit import retransmit_limit


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timings (seconds) and limits. The defaults suit a LAN or loopback."""

    probe_interval: float = 0.5
    probe_timeout: float = 0.2
    indirect_checks: int = 3
    suspicion_mult: float = 4.0
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 10.0
    push_pull_interval: float = 10.0
    join_retry_interval: float = 1.0
    reconnect_interval: float = 10.0
    dead_reclaim_time: float = 3600.0
    left_reclaim_time: float = 300.0
    leave_fanout: int = 8
    max_piggyback_bytes: int = 4096
    max_piggyback_items: int = 128

    def suspicion_timeout(self, n: int) -> float:
        """memberlist: `suspicion_mult * max(1, log10(n)) * probe_interval`."""
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval

    def retransmit_limit(self, n: int) -> int:
        return retransmit_limit(self.retransmit_mult, n)

    def push_pull_period(self, n: int) -> float:
        """memberlist's pushPullScale: one more interval per doubling of the cluster above 32."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def detection_bound(self, n: int) -> float:
        """Worst case from a node's death until all `n - 1` others hold it dead (no loss).

        The first probe of the dead node comes within `2(n-2)+1` probe intervals (the worst
        place in two consecutive shuffles of one prober's round robin), the probe itself takes one
        interval, then the suspicion timeout runs; the suspect/dead news spreads within a few
        gossip intervals (allowed: 5).
        """
        first_probe = (2 * max(0, n - 2) + 1) * self.probe_interval
        return (
            first_probe + self.probe_interval + self.suspicion_timeout(n) + 5 * self.gossip_interval
        )
