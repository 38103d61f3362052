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
  dropped and counted only when that grace ends or the peer leaves.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from broker.core.broker import Broker, Forwarded
from broker.core.cluster_port import WaitDrained
from broker.core.message import Message
from cluster.dead_hold import PeerGrace
from cluster.delegate import MemberEvent
from cluster.first_sync import FirstSync
from cluster.forwarder import Forwarder
from cluster.members import LIVE_STATES, MemberState
from cluster.membership import Membership
from cluster.membership_config import MembershipConfig
from cluster.ports import ClusterPorts, ForwardHandler
from cluster.receiver import Receiver
from cluster.replicas import ReplicaSet
from cluster.replicated_state import BrokerState, stamp_retained
from cluster.routes import RouteTable
from cluster.rpc import MethodHandler, NodeUnreachable, RpcEndpoint, RpcError, RpcHandler
from cluster.runs import ClusterRuns
from cluster.sync import RouteSync
from cluster.transport import Transport, TransportConfig
from cluster.wire import (
    Address,
    Body,
    Hello,
    MessageType,
    Outgoing,
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
_MAX_TIMER_SLEEP = 1.0
_RETAIN_EXTRA: Body = {"kind": "retain"}


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


class ClusterNode:
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
        self.transport.on_link_up = self.forwarder.link_up
        #: Dead peers within their grace (`[cluster] dead_hold`).
        self.grace = PeerGrace(
            self.config.dead_hold, self.sync, self.forwarder, self.transport, self.stats
        )
        self._addresses: dict[str, Address] = {}  # the last address of every member seen
        self.rpc = RpcEndpoint(name, self.transport.send, rpc_handler)
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

    # -- DNS discovery ---------------------------------------------------------------------

    def _all_seeds(self) -> list[Address]:
        out: list[Address] = []
        for seed in [*self.seeds, *self.resolved]:
            if seed != self.address and seed not in out:
                out.append(seed)
        return out

    def _is_self(self, address: Address) -> bool:
        """Our own record in the DNS answer (a pod resolving its headless service)."""
        host, port = address
        own_host = self.name.rpartition("@")[2]
        return port == self.port and host in (self.address[0], own_host)

    async def resolve_dns_seeds(self) -> list[Address]:
        """Every A/AAAA address of the DNS seeds (names that do not resolve are logged)."""
        loop = asyncio.get_running_loop()
        out: list[Address] = []
        for name, port in self.dns_seeds:
            try:
                async with asyncio.timeout(self.config.dns_timeout):
                    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as exc:
                self.stats["dns/failed"] += 1
                log.warning("cluster: cannot resolve %s: %s", name, exc)
                continue
            for _family, _type, _proto, _canon, sockaddr in infos:
                address: Address = (str(sockaddr[0]), int(sockaddr[1]))
                if address not in out and not self._is_self(address):
                    out.append(address)
        self.stats["dns/resolved"] += 1
        return out

    async def _refresh_dns(self) -> None:
        """Re-resolve the DNS seeds periodically; join addresses that are not members yet."""
        while self._running:
            await asyncio.sleep(self.config.dns_refresh_interval)
            if not self._running:
                return
            resolved = await self.resolve_dns_seeds()
            members = {m.address for m in self.membership.live_members()}
            new = [a for a in resolved if a not in members and a != self.address]
            changed = resolved != self.resolved
            self.resolved = resolved
            if new or changed:
                if new:
                    log.info("cluster: DNS discovery: joining %s",
                             ", ".join(f"{h}:{p}" for h, p in new))  # fmt: skip
                self.send_outgoing(self.membership.join(self._all_seeds(), self.now()))
                self._wake.set()

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

    # -- queries ---------------------------------------------------------------------------

    def live_nodes(self) -> list[str]:
        """Members alive or suspect: this node first, then the others by name."""
        others = sorted(m.name for m in self.membership.live_members())
        return [self.name, *others]

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
        # A dead peer within its grace gets what its outbox holds (QoS 1/2 plain publishes).
        tried = member is not None and (
            member.state in LIVE_STATES
            or (message.qos > 0 and not extra and self.grace.holds(node))
        )
        ok = tried and member is not None and self.forwarder.send(member.address, message, extra)
        if ok:
            self.broker.metrics.counters["messages/forward"] += 1
            self.stats["forward/sent"] += 1
            return 1
        if not tried:
            self._count_forward_dropped(1)  # (a queue drop is counted by _on_drop)
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

    # -- membership driving ----------------------------------------------------------------

    def now(self) -> float:
        """The membership clock: the event loop's monotonic time."""
        return asyncio.get_running_loop().time()

    def wake(self) -> None:
        """Run the timer now: something to gossip was queued (a route change)."""
        self._wake.set()

    def _on_route(self, filt: str, present: bool) -> None:
        if self.ports.holds_route(filt, present):
            return  # a session moved away: withdrawn later (`cluster.handoff`)
        try:
            self.sync.local_update(filt, present)
        except ValueError:
            log.warning("cluster: cannot route filter %r", filt)
            return
        self._wake.set()

    async def _run_timer(self) -> None:
        membership = self.membership
        while self._running:
            try:
                self.grace.expire(self.now())  # (`send_outgoing` updates the forward hook)
                self.send_outgoing(membership.tick(self.now()))
            except Exception:  # a bug must not stop failure detection for good
                log.exception("cluster: membership tick failed")
            self._wake.clear()
            grace_end = self.grace.next_deadline()
            deadline = membership.next_deadline()
            if grace_end is not None:
                deadline = min(deadline, grace_end)
            delay = deadline - self.now()
            if delay > 0:
                # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, _MAX_TIMER_SLEEP)):
                        await self._wake.wait()
            else:
                await asyncio.sleep(0)

    def send_outgoing(self, out: list[Outgoing]) -> None:
        """Send what membership returned, then act on its events (links, routes, hook)."""
        for address, msg_type, body in out:
            self._send_frame(address, msg_type, body)
        if self._membership is not None:
            for event in self._membership.take_events():
                self._on_event(event)
            self._sync_forward_hook()

    def _sync_forward_hook(self) -> None:
        """Keep `forward` on the broker's publish path only while another node is alive or
        suspect: a node alone (most deployments) pays nothing per message for the cluster.
        Runs after every membership change; a joining node has no routes to forward to before
        its join is known here."""
        hooks = self.broker.forward_hooks
        wanted = self._running and (self.membership.live_count > 1 or len(self.grace.hold) > 0)
        present = self.forward in hooks
        if wanted and not present:
            hooks.append(self.forward)
        elif present and not wanted:
            hooks.remove(self.forward)

    def _send_frame(self, address: Address, msg_type: MessageType, body: Body) -> bool:
        try:
            return self.transport.send(address, msg_type, body)
        except WireError as exc:
            self.stats["send/unencodable"] += 1
            log.error("cluster: cannot send %s to %s:%d: %s", msg_type.name, *address, exc)
            return False

    def _on_event(self, event: MemberEvent) -> None:
        name = event.name
        if name == self.name:
            return
        self.stats["events/" + event.kind] += 1
        self.ports.members_changed(name, event.kind)
        host, port = event.address
        previous = self._addresses.get(name)
        if previous is not None and previous != event.address:  # a restart on a new address
            self.forwarder.move(previous, event.address)
        self._addresses[name] = event.address
        if event.kind in ("join", "alive"):
            self.grace.back(name, event.address)  # what was held for it goes now
        if event.kind == "join":
            log.info("cluster: node %s joined (%s:%d)", name, host, port)
            if not self._synced and not self._syncing and self._running:
                self._syncing = True
                self._spawn(self._initial_sync(name))
            else:
                self._resync(name)
        elif event.kind == "alive":
            log.info("cluster: node %s is alive again", name)
            self._resync(name)
        elif event.kind == "suspect":
            log.info("cluster: node %s is suspect", name)
        elif event.kind == "dead":  # routes and held forwards kept for `dead_hold` seconds
            if not self.config.dead_hold:
                log.warning("cluster: node %s is dead; its routes are purged", name)
            self.rpc.fail_node(name)
            self.grace.dead(name, event.epoch, event.address, self.now())
        elif event.kind == "left":
            log.info("cluster: node %s left; its routes are purged", name)
            self.rpc.fail_node(name)
            self.grace.left(name, event.address)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- state pulled by a joining node ----------------------------------------------------

    async def _initial_sync(self, first: str) -> None:
        """Pull every replicated table from one live peer (the first that answers)."""
        try:
            candidates = [first, *(n for n in self.live_nodes()[1:] if n != first)]
            if await self.replicas.pull_all(candidates) is not None:
                self._synced = True
        finally:
            self._syncing = False

    def _resync(self, node: str) -> None:
        """A node joined or came back after the initial sync: pull the resync tables from it
        (both sides do, so changes made apart during a partition converge)."""
        tables = self.replicas.tables.values()
        if self._synced and self._running and any(t.resync for t in tables):
            self._spawn(self._pull_resync(node))

    def _anti_entropy_peers(self) -> list[str]:
        """Peers for the anti-entropy round: alive ones, once our initial pull is done."""
        if not self._synced:
            return []
        return [m.name for m in self.membership.live_members() if m.state is MemberState.ALIVE]

    def _anti_entropy_period(self) -> float:
        return self.config.membership.push_pull_period(self.membership.live_count)

    async def _pull_resync(self, node: str) -> None:
        try:
            await self.replicas.pull(node, resync_only=True)
        except RpcError as exc:
            log.info("cluster: resync from %s failed: %s", node, exc)
