"""Plugs the broker's cluster ports into a `ClusterNode`: shared groups and client takeover.

`ClusterPorts(node, ...)` (created by `ClusterNode.__init__`) registers what the other nodes
call. It sees its node only through `PortsHost`, the few services it uses (`cluster.runtime`'s
`ClusterNode` provides them), so the runtime imports this module and not the reverse:

* FORWARD kind `shared` (body field `shared: [group, real filter]`): the origin's dispatcher
  chose this node for one member of the group (`Broker.deliver_shared_local`); when the group
  has no member here any more the message is counted in `messages/dropped` and
  `stats["shared/dropped"]`;
* the client-id registry (`cluster.takeover`): RPC `registry_claim`, `registry_register`,
  `registry_release` (this node as the owner of ids), `surrender_session` and `session_evict`
  (this node as a holder), and FORWARD kind `session` (`cluster.handoff`: messages for a
  session that moved, from the node it left).

`attach()` (from `ClusterNode.start`) sets the broker's ports: `shared_route_listeners` feed
`RouteSync.local_shared_update` (the groups that exist already are announced at once),
`shared_dispatcher` is a `ClusterSharedDispatcher` over the node's route table and
`session_locator` a `ClusterSessionLocator` over the registry, told of every disconnection
(`hooks.client_disconnected`) and, every 10 s, of sessions that ended otherwise (expiry).
`detach()` (from `stop`) undoes that. Normal FORWARDs must then be published with
`shared=False` by the receiver.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from broker.core.broker import Broker
from broker.core.message import Message
from cluster.handoff import SESSION_KIND, Handoff, deliver_to
from cluster.routes import RouteTable
from cluster.rpc import MethodHandler
from cluster.shared_dispatch import ClusterSharedDispatcher
from cluster.sync import RouteSync
from cluster.takeover import (
    CLAIM_METHOD,
    EVICT_METHOD,
    MAX_STATE_BYTES,
    REGISTER_METHOD,
    RELEASE_METHOD,
    SURRENDER_METHOD,
    ClusterSessionLocator,
)
from cluster.takeover_fold import COLLECT_METHOD
from cluster.takeover_park import CONFIRM_METHOD
from cluster.wire import Body, Hello

log = logging.getLogger(__name__)

#: The FORWARD `kind` of a message for one member of a shared group.
SHARED_KIND = "shared"
#: How long a CONNECT waits at most for the other nodes to give its client id up.
TAKEOVER_TIMEOUT = 3.0
#: Seconds between two looks for sessions that ended here without a disconnection.
SWEEP_INTERVAL = 10.0


#: A FORWARD variant's receiver: (message, the raw body, the sender's HELLO).
ForwardHandler = Callable[[Message, Body, Hello], None]


class PortsHost(Protocol):
    """What `ClusterPorts` uses of its cluster node (`cluster.runtime.ClusterNode`)."""

    @property
    def name(self) -> str: ...
    @property
    def broker(self) -> Broker: ...
    @property
    def table(self) -> RouteTable: ...
    @property
    def sync(self) -> RouteSync: ...
    @property
    def stats(self) -> Counter[str]: ...

    def is_live(self, node: str) -> bool: ...
    def live_nodes(self) -> list[str]: ...
    def linked_dead(self) -> list[str]: ...
    def apart_nodes(self) -> list[str]: ...
    async def call_linked(
        self, node: str, method: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any: ...
    def wake(self) -> None: ...
    def register_rpc(self, method: str, handler: MethodHandler) -> None: ...
    def register_forward_kind(self, kind: str, handler: ForwardHandler) -> None: ...
    async def call(
        self, node: str, method: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any: ...
    def send_forward(
        self,
        node: str,
        message: Message,
        kind: str = "publish",
        extra: dict[str, Any] | None = None,
    ) -> int: ...


def shared_extra(group: str, filt: str) -> dict[str, Any]:
    """The FORWARD body fields of a shared delivery."""
    return {"shared": [group, filt]}


def parse_shared_target(body: Body) -> tuple[str, str] | None:
    """(group, real filter) of a `shared` FORWARD body, None if malformed."""
    target = body.get("shared")
    if (
        isinstance(target, list)
        and len(target) == 2
        and isinstance(target[0], str)
        and isinstance(target[1], str)
        and target[0]
        and target[1]
    ):
        return target[0], target[1]
    return None


class ClusterPorts:
    """See the module docstring."""

    def __init__(self, node: PortsHost, *, rpc_timeout: float, max_frame: int) -> None:
        """`rpc_timeout` bounds the takeover question (with `TAKEOVER_TIMEOUT`); a surrendered
        session state is kept to half of `max_frame`, the cluster link's frame limit."""
        self.node = node
        self.max_state_bytes = min(MAX_STATE_BYTES, max_frame // 2)
        broker = node.broker
        self.dispatcher = ClusterSharedDispatcher(
            node.table,
            node.name,
            broker.deliver_shared_local,
            self._send_shared,
            strategy=broker.settings.shared_subscription_strategy,
            alive=node.is_live,
        )
        self.handoff = Handoff(node.name, self._send_session, functools.partial(deliver_to, broker))
        self.locator = ClusterSessionLocator(
            node.name,
            broker,
            node.live_nodes,
            node.call,
            self.handoff,
            timeout=min(rpc_timeout, TAKEOVER_TIMEOUT),
            max_state_bytes=self.max_state_bytes,
        )
        self.locator.linked_dead = node.linked_dead
        self.locator.apart_nodes = node.apart_nodes
        self.locator.call_linked = node.call_linked
        broker.metrics.cluster_parts["takeover"] = self.locator.stats  # shown on /metrics
        self._held_routes: set[str] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.attached = False
        locator = self.locator
        node.register_rpc(SURRENDER_METHOD, locator.serve_surrender)
        node.register_rpc(CLAIM_METHOD, locator.serve_claim)
        node.register_rpc(REGISTER_METHOD, locator.serve_register)
        node.register_rpc(RELEASE_METHOD, locator.serve_release)
        node.register_rpc(EVICT_METHOD, locator.serve_evict)
        node.register_rpc(COLLECT_METHOD, locator.serve_collect)
        node.register_rpc(CONFIRM_METHOD, locator.parking.serve_committed)
        node.register_forward_kind(SHARED_KIND, self._on_shared_forward)
        node.register_forward_kind(SESSION_KIND, self._on_session_forward)

    def attach(self) -> None:
        broker = self.node.broker
        existing: set[tuple[str, str]] = set()
        for session in broker.sessions.values():
            for sub in session.subscriptions.values():
                if sub.share_group is not None:
                    existing.add((sub.share_group, sub.topic_filter))
        for group, filt in sorted(existing):
            self._on_shared_route(group, filt, True)
        broker.shared_route_listeners.append(self._on_shared_route)
        broker.shared_dispatcher = self.dispatcher
        broker.session_locator = self.locator
        broker.hooks.client_disconnected.append(self.locator.client_gone)
        self.attached = True
        self._sweep_later()

    def detach(self) -> None:
        if not self.attached:
            return
        self.attached = False
        broker = self.node.broker
        if self._on_shared_route in broker.shared_route_listeners:
            broker.shared_route_listeners.remove(self._on_shared_route)
        if broker.shared_dispatcher is self.dispatcher:
            broker.shared_dispatcher = None
        if broker.session_locator is self.locator:
            broker.session_locator = None
        if self.locator.client_gone in broker.hooks.client_disconnected:
            broker.hooks.client_disconnected.remove(self.locator.client_gone)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.locator.close()

    def _sweep_later(self) -> None:
        """Every `SWEEP_INTERVAL` s: sessions that ended without their connection closing
        (expired, dropped through the API) are released at their owners, and held ids whose
        registration is not confirmed under the current members are registered again."""
        if self.attached:
            self.locator.sweep()
            self.locator.reconcile()
            self.locator.sweep_holds()
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep_later)

    # -- shared groups ---------------------------------------------------------------------

    def _on_shared_route(self, group: str, filt: str, present: bool) -> None:
        try:
            self.node.sync.local_shared_update(group, filt, present)
        except ValueError:
            log.warning("cluster: cannot route shared group %r on %r", group, filt)
            return
        self.node.wake()

    def _send_shared(self, node: str, group: str, filt: str, message: Message) -> bool:
        sent = self.node.send_forward(node, message, SHARED_KIND, shared_extra(group, filt))
        return sent == 1

    def _on_shared_forward(self, message: Message, body: Body, hello: Hello) -> None:
        stats = self.node.stats
        target = parse_shared_target(body)
        if target is None:
            stats["forward/malformed"] += 1
            return
        stats["shared/received"] += 1
        broker = self.node.broker
        if not broker.deliver_shared_local(message, *target):
            broker.metrics.counters["messages/dropped"] += 1
            stats["shared/dropped"] += 1

    # -- takeover ----------------------------------------------------------------------------

    def members_changed(self, node: str, kind: str) -> None:
        """A member joined, came back, died or left: registry entries move (`cluster.registry`)."""
        if self.attached:
            self.locator.parking.member_event(node, kind)  # before the entries move
            self.locator.members_changed(node, kind)

    def holds_route(self, filt: str, present: bool) -> bool:
        """The last local subscriber of `filt` left (`present` False): keep its route while a
        forwarding record needs it (`cluster.handoff`); it is withdrawn when the record ends."""
        if present:
            self._held_routes.discard(filt)  # a local subscriber again
            return False
        if not self.handoff.covers(filt, time.monotonic()):
            return False
        if filt not in self._held_routes:
            self._held_routes.add(filt)
            loop = asyncio.get_running_loop()
            loop.call_later(self.handoff.ttl + 0.1, self._release_routes)
        return True

    def _release_routes(self) -> None:
        now = time.monotonic()
        for filt in list(self._held_routes):
            if self.handoff.covers(filt, now):
                continue
            self._held_routes.discard(filt)
            if self.attached and not self.node.broker.router.has_filter(filt):
                self.node.sync.local_update(filt, False)
                self.node.wake()

    def _send_session(self, node: str, message: Message, extra: dict[str, Any]) -> int:
        return self.node.send_forward(node, message, SESSION_KIND, extra)

    def _on_session_forward(self, message: Message, body: Body, hello: Hello) -> None:
        self.node.stats["session/received"] += 1
        self.handoff.on_session_forward(message, body, time.monotonic())
