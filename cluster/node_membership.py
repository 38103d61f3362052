"""Driving membership: the timer that ticks `cluster.membership`, sending what it returns,
acting on its events (links, routes, the forward hook, grace of dead peers) and pulling the
replicated tables from peers that join or come back.

Why a module of its own: the runtime (`cluster.runtime`) wires the parts and carries messages;
this is the glue between the pure membership state machine and the rest, which runs on
membership changes and timers, not per message. `ClusterNode` inherits `MembershipDriver`;
this module never imports `cluster.runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from broker.core.broker import Broker, Forwarded
from broker.core.message import Message
from cluster.dead_hold import PeerGrace
from cluster.delegate import MemberEvent
from cluster.forwarder import Forwarder
from cluster.members import MemberState
from cluster.membership import Membership
from cluster.node_config import ClusterConfig
from cluster.ports import ClusterPorts
from cluster.replicas import ReplicaSet
from cluster.rpc import RpcEndpoint, RpcError
from cluster.sync import RouteSync
from cluster.transport import Transport
from cluster.wire import Address, Body, MessageType, Outgoing, WireError

log = logging.getLogger("cluster.runtime")

_MAX_TIMER_SLEEP = 1.0


class MembershipDriver:
    """Membership timer, events and state pulls; mixed into `ClusterNode`, whose `__init__`
    sets the attributes declared here."""

    name: str
    broker: Broker
    config: ClusterConfig
    sync: RouteSync
    stats: Counter[str]
    transport: Transport
    forwarder: Forwarder
    grace: PeerGrace
    rpc: RpcEndpoint
    replicas: ReplicaSet
    ports: ClusterPorts
    _membership: Membership | None
    _addresses: dict[str, Address]
    _wake: asyncio.Event
    _tasks: set[asyncio.Task[None]]
    _synced: bool
    _syncing: bool
    _running: bool

    if TYPE_CHECKING:  # `ClusterNode` and `NodeRpc` define these

        @property
        def membership(self) -> Membership: ...
        def forward(self, message: Message) -> int | Forwarded: ...
        def live_nodes(self) -> list[str]: ...

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
        wanted = self._running and (self.membership.live_count > 1 or self.grace.active())
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
