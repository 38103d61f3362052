"""`ClusterConfig`: the settings of one node's cluster runtime (`cluster.runtime.ClusterNode`).

Why a module of its own: the runtime's parts (`cluster.runtime`, `cluster.node_discovery`,
`cluster.node_membership`, `cluster.node_rpc`) all read it, and none of them may import the
runtime; `cluster.runtime` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.membership_config import MembershipConfig
from cluster.transport import TransportConfig


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    rpc_timeout: float = 5.0
    #: Bounds of one `retained_dump` answer (what a joining node pulls).
    retained_dump_max: int = 10_000
    retained_dump_bytes: int = 8 * 1024 * 1024
    #: How long `stop()` waits for the LEAVE to go out.
    leave_timeout: float = 1.0
    #: QoS 1/2 forwards held per peer until it acknowledges them (`cluster.outbox`).
    forward_buffer: int = 50_000
    forward_buffer_bytes: int = 16 * 1024 * 1024
    #: Seconds a peer declared dead keeps its routes and held forwards (`cluster.dead_hold`);
    #: 0: purged and dropped at the verdict.
    dead_hold: float = 60.0
    #: Seconds between two resolutions of the DNS seeds (`dns:NAME:PORT`), and the bound of one.
    dns_refresh_interval: float = 30.0
    dns_timeout: float = 5.0
