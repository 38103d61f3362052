"""The cluster runtime of one node: drives membership and route sync, forwards messages, RPC.

Theory of operation
-------------------
`ClusterNode` is the asyncio driver of the pure parts (`cluster.membership`, `cluster.sync`) and
the broker's port (`Broker.route_listeners`, `Broker.forward_hooks`, `Broker.publish`):

* **Timer.** One task calls `Membership.tick(now)` at `next_deadline()` (the clock is the event
  loop's monotonic time) and sends what it returns over `cluster.transport`. Anything that may
  bring the deadline forward (a frame handled, a route change) wakes it.
* **Frames in.** Membership types go to `Membership.handle(sender's advertised address, ...)`;
  FORWARD is delivered locally (below); RPC_REQUEST/RESPONSE go to `cluster.rpc`.
* **Routes.** The broker tells us when a filter gets its first local subscriber or loses its
  last (`route_listeners`); `RouteSync.local_update` records it and membership gossips it. At
  start the broker's existing filters are announced. A member that leaves, or stays dead for
  `dead_hold` seconds, has its routes purged by `RouteSync`.
* **Forwarding.** Every message published on this node passes `forward()` (a forward hook, on
  the broker's publish path only while another node is alive: `_sync_forward_hook`): the
  route table is matched and the message goes ONCE to each remote node with a matching route
  (never once per subscriber), in that node's FORWARD_BATCH of this loop turn
  (`cluster.forwarder`; a version-1 peer gets one FORWARD per message). The receiver calls
  `Broker.publish(message, forward=False, shared=False)`: it delivers to its own subscribers
  (QoS min(pub, sub), the message keeps its QoS) and never forwards again.
  Shared groups are not served from forwarded copies: the origin dispatches each
  message to one member per group in the whole cluster (`cluster.ports`, FORWARD kind `shared`).
* **Takeover.** A CONNECT asks its client id's owner in the registry, which makes the holder
  give it up (`cluster.takeover`); messages still reaching the old node follow (`cluster.handoff`).
  A FORWARD that cannot be queued (peer down, queue full) or that its link drops later is counted
  in `messages/dropped` and `stats["forward/dropped"]`; each one sent counts `messages/forward`.
  Except QoS 1/2 publishes to a version-3 peer: those are held until the peer acknowledges them
  and sent again after a reconnect (`cluster.outbox`, `cluster.receiver`), even to a peer
  declared dead within its grace (`cluster.dead_hold`, whose routes stay until then); they are
  dropped and counted only when that grace ends or the peer leaves (past the grace its routes
  stay, frozen, and what is sent for it is dropped and counted as `forward/held_dropped`).
  Before that, a congested link holds back the publishing client until it drains (flow
  control, `cluster.transport`; `stats["forward/held"]`), so a slower peer slows publishers
  down rather than losing their messages.
  `$SYS/` topics are node-local and never forwarded.
* **Retained messages** are replicated to every node: a retained publish (a clear too) goes to
  every live member with the hybrid-clock stamp of its write (FORWARD field `hlc`); those
  without a matching route get it as FORWARD kind `retain` (stored, not delivered), and each
  node keeps the write with the larger stamp. The retained set, the banned table and the
  last-writer-wins tables (`cluster.replicated_state`) are pulled from the first live peer
  met, again from every member that joins later or comes back from the dead (both sides of a
  healed partition pull), and from a peer whose digest differs in the anti-entropy round
  every push/pull interval (`cluster.replicas`).

Extension points (for features built on top): `register_rpc(method, handler)` adds an RPC method;
`register_forward_kind(kind, handler)` adds a FORWARD variant (body field `kind`) and
`send_forward(node, message, kind, extra)` sends one; `forward_targets(message)` decides which
nodes get a message and may be overridden.

Where each part lives: this module wires the parts (`ClusterNode.__init__`, `start`, `stop`)
and carries messages (forwarding, frames in); driving membership (the timer, member events,
the forward hook, state pulls) is `cluster.node_membership`, DNS seeds are
`cluster.node_discovery`, live-node queries and RPC are `cluster.node_rpc`, and the settings
are `cluster.node_config`; `ClusterNode` inherits the three parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from broker.core.broker import Broker, Forwarded
from broker.core.cluster_port import WaitDrained
from broker.core.message import Message
from cluster.dead_hold import PeerGrace
from cluster.first_sync import FirstSync
from cluster.forwarder import Forwarder
from cluster.link_loss import LinkLoss
from cluster.members import LIVE_STATES
from cluster.membership import Membership
from cluster.node_config import ClusterConfig
from cluster.node_discovery import DnsDiscovery
from cluster.node_membership import MembershipDriver
from cluster.node_rpc import NodeRpc
from cluster.ports import ClusterPorts, ForwardHandler
from cluster.receiver import Receiver
from cluster.replicas import ReplicaSet
from cluster.replicated_state import BrokerState, stamp_retained
from cluster.routes import RouteTable
from cluster.rpc import RpcEndpoint, RpcHandler
from cluster.runs import ClusterRuns
from cluster.sync import RouteSync
from cluster.transport import Transport
from cluster.wire import (
    Address,
    Body,
    Hello,
    MessageType,
    WireError,
    get_int,
)

__all__ = ["ClusterConfig", "ClusterNode", "ForwardHandler"]

log = logging.getLogger(__name__)

_MEMBERSHIP_TYPES = frozenset(
    {
        MessageType.PING,
        MessageType.ACK,
        MessageType.PING_REQ,
        MessageType.NACK,
        MessageType.GOSSIP,
        MessageType.ROUTE_DELTA,
        MessageType.PUSH_PULL_REQ,
        MessageType.PUSH_PULL_RESP,
        MessageType.LEAVE,
    }
)
_RETAIN_EXTRA: Body = {"kind": "retain"}


class ClusterNode(DnsDiscovery, NodeRpc, MembershipDriver):
    """One node's membership in the cluster. See the module docstring."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        bind_addr: Address,
        advertise_addr: Address | None,
        seeds: list[Address],
        cookie: str,
        rpc_handler: RpcHandler | None,
        config: ClusterConfig | None = None,
        dns_seeds: list[Address] | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self.bind_addr = bind_addr
        #: None: the bind host (127.0.0.1 for a wildcard bind); port 0: the bound port.
        self.advertise_addr = advertise_addr
        self.seeds = list(seeds)
        #: (name, port) looked up (A/AAAA) at start and every `dns_refresh_interval` seconds;
        #: what they resolve to is joined (Kubernetes headless services).
        self.dns_seeds = list(dns_seeds or [])
        self.resolved: list[Address] = []
        self.config = config or ClusterConfig()
        self.epoch = int(time.time() * 1000)  # grows across restarts (cluster.membership)
        self.table = RouteTable(name, self.epoch)
        self.sync = RouteSync(self.table)
        self.first_sync = FirstSync()  # what the MQTT listeners wait for (`cluster.first_sync`)
        self.sync.on_full_state = self.first_sync.seen
        self.stats: Counter[str] = Counter()
        broker.metrics.cluster = self.stats  # shown by the management layer (Prometheus)
        self.transport = Transport(
            name, self.epoch, cookie, self._on_frame, self._on_drop, self.config.transport
        )
        self.transport.on_heard = self._on_heard
        self.forwarder = Forwarder(
            self.transport,
            broker.node_name,
            self.stats,
            self._count_forward_dropped,
            max_held=self.config.forward_buffer,
            max_held_bytes=self.config.forward_buffer_bytes,
        )
        self.transport.on_link_up = self._link_up
        #: Dead peers within their grace (`[cluster] dead_hold`).
        self.grace = PeerGrace(self.config.dead_hold, self.sync, self.forwarder, self.transport,
                               self.stats, self.config.membership.dead_reclaim_time)  # fmt: skip
        self._addresses: dict[str, Address] = {}  # the last address of every member seen
        self.rpc = RpcEndpoint(name, self.transport.send, rpc_handler)
        #: Pending calls to a peer whose process is gone fail at once (`cluster.link_loss`).
        self.link_loss = LinkLoss(self.transport, self.rpc, self.stats)
        self.transport.on_link_down = self.link_loss.down
        #: Tables every node holds a copy of (retained, banned, the last-writer-wins tables;
        #: the app adds its own).
        self.replicas = ReplicaSet(self.call, self.rpc.register)
        self.state = BrokerState(
            broker, self.replicas, self.config.retained_dump_max, self.config.retained_dump_bytes
        )
        broker.hlc.node = name  # unique per member (the workers of one node share its name)
        self.port = 0
        self.address: Address = ("127.0.0.1", 0)
        self._membership: Membership | None = None
        self._forward_kinds: dict[str, ForwardHandler] = {
            "publish": self._deliver,
            "retain": self._store_retained,
        }
        #: FORWARD / FORWARD_BATCH in: the handlers above, de-duplication and FORWARD_ACK.
        self.receiver = Receiver(
            name,
            self.stats,
            broker.clock,
            self._send_frame,
            self._forward_kinds,
            lambda: self._running,
            lambda: broker.commit_gate,
        )
        #: Runs of QoS 0 frames forwarded as one entry (`cluster.runs`): the broker's port.
        self.runs = ClusterRuns(
            broker,
            self.table,
            self.transport,
            self.forwarder,
            self.stats,
            lambda node: self.membership.get(node),
            self.send_forward,
            self._congestion,
            lambda: self.ports.handoff.active,
            self._deliver,
        )
        self.receiver.on_run = self.runs.deliver
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._synced = False
        self._syncing = False
        self._running = False
        #: Shared groups cluster-wide and client takeover: the broker's cluster ports.
        self.ports = ClusterPorts(
            self,
            rpc_timeout=self.config.rpc_timeout,
            max_frame=self.config.transport.max_frame,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        if self._membership is None:
            raise RuntimeError("the cluster node is not started")
        return self._membership

    async def start(self) -> None:
        host, port = self.bind_addr
        self.port = await self.transport.listen(host, port)
        adv_host, adv_port = self.advertise_addr or ("", 0)
        if not adv_host:
            adv_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.address = (adv_host, adv_port or self.port)
        self.transport.address = self.address
        self._membership = Membership(
            self.name,
            self.address,
            self.epoch,
            self.config.membership,
            random.Random(),
            delegate=self.sync,
        )
        self._running = True
        for filt in sorted(self.broker.router.filters()):
            self._on_route(filt, True)
        self.broker.route_listeners.append(self._on_route)
        self._sync_forward_hook()
        self.ports.attach()
        if type(self).forward_targets is ClusterNode.forward_targets:  # (else: its own choice)
            self.broker.run_forwarder = self.runs
        if self.dns_seeds:
            self.resolved = await self.resolve_dns_seeds()
        seeds = self._all_seeds()
        self.send_outgoing(self.membership.join(seeds, self.now()))
        self._timer = asyncio.get_running_loop().create_task(self._run_timer())
        if self.dns_seeds:
            self._spawn(self._refresh_dns())
        self._spawn(self.replicas.run(self._anti_entropy_peers, self._anti_entropy_period))
        log.info(
            "cluster: node %s listening on %s:%d (advertised %s:%d), seeds %s",
            self.name, host, self.port, *self.address,
            ", ".join(f"{h}:{p}" for h, p in seeds) or "none",
        )  # fmt: skip

    async def stop(self) -> None:
        """Leave gracefully (the LEAVE goes out, bounded), then close every link."""
        if not self._running:
            return
        self._running = False
        with contextlib.suppress(ValueError):
            self.broker.route_listeners.remove(self._on_route)
        with contextlib.suppress(ValueError):
            self.broker.forward_hooks.remove(self.forward)
        self.ports.detach()
        if self.broker.run_forwarder is self.runs:
            self.broker.run_forwarder = None
        self.replicas.close()
        if self._timer is not None:
            self._wake.set()  # the timer sees `_running` is False and returns
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        self.forwarder.flush()
        self.send_outgoing(self.membership.leave(self.now()))
        await self.transport.flush(self.config.leave_timeout)
        await self.rpc.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.close()
        log.info("cluster: node %s left", self.name)

    # -- forwarding ------------------------------------------------------------------------

    def register_forward_kind(self, kind: str, handler: ForwardHandler) -> None:
        """Receive FORWARD frames whose body has `kind` with `handler(message, body, hello)`."""
        self._forward_kinds[kind] = handler

    def forward_targets(self, message: Message) -> AbstractSet[str]:
        """The remote nodes with a route matching the message's topic (do not change it)."""
        return self.table.remote_match(message.topic)

    def forward(self, message: Message) -> int | Forwarded:
        """The broker's forward hook; returns the number of remote nodes the message was routed
        to (sent, or counted as dropped here: the broker then does not count it again), with
        how to wait when a link it went on is congested (`Broker.publish` hands that to the
        publisher, who stops reading meanwhile)."""
        if message.topic.startswith("$SYS/"):
            return 0
        targets = self.forward_targets(message)
        wait_drained = None
        # A retained write goes with its hybrid-clock stamp (`Broker.retain` gave it one).
        stamp = message.stamp.to_wire() if message.retain and message.stamp is not None else None
        if targets:
            extra = None if stamp is None else {"hlc": stamp}
            for node in targets:
                self.send_forward(node, message, extra=extra)
            wait_drained = self._congestion(targets)
        if self.ports.handoff.active:  # a session moved lately: after the copies it may get
            self.ports.handoff.on_message(message, time.monotonic(), targets)
        if message.retain:  # replicated everywhere: a new subscriber on any node gets it
            retain_extra = _RETAIN_EXTRA if stamp is None else {**_RETAIN_EXTRA, "hlc": stamp}
            for member in self.membership.live_members():
                if member.name not in targets:
                    self.stats["retained/replicated"] += 1
                    self.forwarder.send(member.address, message, retain_extra)
        if wait_drained is not None:
            return Forwarded(len(targets), wait_drained)
        return len(targets)

    def _congestion(self, targets: AbstractSet[str]) -> WaitDrained | None:
        """Flow control: how to wait for the first congested link among `targets`
        (`cluster.transport`), so a slower node slows its publishers instead of losing
        FORWARDs; None when every link has room."""
        for node in targets:
            member = self.membership.get(node)
            if member is not None and self.transport.congested(member.address):
                return functools.partial(self._wait_drained, member.address)
        return None

    def _wait_drained(self, address: Address, resume: Callable[[], None]) -> bool:
        if self.transport.hold_until_drained(address, resume):
            self.stats["forward/held"] += 1
            return True
        return False

    def send_forward(
        self,
        node: str,
        message: Message,
        kind: str = "publish",
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Forward `message` to `node` (batched, `cluster.forwarder`); 1 if queued, 0 if
        dropped (counted)."""
        if kind != "publish":
            extra = {"kind": kind, **(extra or {})}
        member = self.membership.get(node)
        # A dead peer within its grace gets what its outbox holds (QoS 1/2 plain publishes);
        # so does one past it whose link is up again: a heal the links saw before the
        # membership (measured, long_partition: 8-32 acknowledged messages per run dropped
        # and counted between the heal and the sides seeing each other alive).
        tried = member is not None and (
            member.state in LIVE_STATES
            or (
                message.qos > 0
                and not extra
                and (self.grace.holds(node) or self.transport.is_up(member.address))
            )
        )
        ok = tried and member is not None and self.forwarder.send(member.address, message, extra)
        if ok:
            self.broker.metrics.counters["messages/forward"] += 1
            self.stats["forward/sent"] += 1
            return 1
        if not tried:
            self._count_forward_dropped(1)  # (a queue drop is counted by _on_drop)
            self.grace.dropped(node, 0 if extra else message.qos)  # a plain QoS 1/2 publish
        log.debug("cluster: message on %r to %s dropped", message.topic, node)
        return 0

    def _count_forward_dropped(self, count: int) -> None:
        self.broker.metrics.counters["messages/dropped"] += count
        self.stats["forward/dropped"] += count

    def _deliver(self, message: Message, body: Body, hello: Hello) -> None:
        self.stats["forward/received"] += 1
        if message.retain:
            stamp_retained(message, body)
        self.broker.publish(message, forward=False, shared=False)
        if self.ports.handoff.active:
            self.ports.handoff.on_message(message, time.monotonic())

    def _store_retained(self, message: Message, body: Body, hello: Hello) -> None:
        self.stats["retained/received"] += 1
        if self.broker.settings.retain_available:
            stamp_retained(message, body)
            if not self.broker.retain(message):
                self.stats["retained/stale"] += 1

    # -- frames in -------------------------------------------------------------------------

    def _link_up(self, address: Address, peer: Hello) -> None:
        self.link_loss.up(address, peer)
        self.forwarder.link_up(address, peer)

    def _on_heard(self, hello: Hello) -> None:
        """Frames from `hello` arrived (once per read, not per frame: FORWARDs come by the
        thousand): they answer our probe of it (`cluster.probe`)."""
        if self._running:
            self.membership.heard_from(hello.name, self.now())

    def _on_frame(self, hello: Hello, msg_type: MessageType, body: Body) -> None:
        if not self._running:
            return
        if msg_type in _MEMBERSHIP_TYPES:
            self.send_outgoing(self.membership.handle(hello.address, msg_type, body, self.now()))
            self._wake.set()
        elif msg_type is MessageType.FORWARD_BATCH:
            self.receiver.on_forward_batch(hello, body)
        elif msg_type is MessageType.FORWARD:
            self.receiver.on_forward(hello, body)
        elif msg_type is MessageType.FORWARD_ACK:
            try:
                self.forwarder.ack(hello.address, get_int(body, "seq"))
            except WireError:
                self.stats["forward/malformed_ack"] += 1
        elif msg_type is MessageType.RPC_REQUEST:
            self.rpc.handle_request(hello.name, hello.address, body)
        elif msg_type is MessageType.RPC_RESPONSE:
            self.rpc.handle_response(hello.name, body)
        else:
            self.stats["frames/unexpected"] += 1

    def _on_drop(self, address: Address, msg_type: MessageType, count: int) -> None:
        if msg_type is MessageType.FORWARD or msg_type is MessageType.FORWARD_BATCH:
            self._count_forward_dropped(count)
