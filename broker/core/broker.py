"""The `Broker`: owner of every registry (sessions, connections, routes, retained messages).

All state changes happen on one thread through these methods; the transports (`broker.server`)
only feed bytes into channels and write what channels hand them. Packet handling per client lives
in `broker.core.channel` (dispatch) and the `handle_*` modules; this module holds what is shared
between clients: routing a message to sessions, session lookup/takeover, subscriptions and the
periodic housekeeping.

The operations are one method each, whatever their origin (`docs/architecture.md`): `publish`
(clients, wills through `publish_will`, REST, plugins, `$SYS`, copies from other nodes; it runs
the publish hooks when asked and reports back-pressure in its `Published` result), `subscribe`
and `send_retained` (a SUBSCRIBE, the REST API, a session imported from another node),
`unsubscribe`, `kick`. The connections are seen only as `ClientPort`s
(`broker.core.client_port`): this module never imports them.

Where each part lives: this module holds the state, the per-message routing (`publish`,
`late_for`, shared delivery) and the housekeeping tick; the session registry (connections,
sessions, takeover, subscriptions) is `broker.core.session_registry` and the retained messages
(last write wins, tombstones) are `broker.core.retention`, both mixed into `Broker`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from broker.core.banned import BannedTable
from broker.core.client_port import ClientPort
from broker.core.cluster_port import (
    RunForwarder,
    SessionLocator,
    SharedDispatcher,
    WaitDrained,
)
from broker.core.commit_gate import CommitGate, DirtySessions
from broker.core.hlc import HybridClock, Stamp
from broker.core.hooks import ClientInfo, Hooks
from broker.core.late_hold import LateHold
from broker.core.message import Message
from broker.core.metrics import Metrics, Stats
from broker.core.qos2_once import is_late
from broker.core.replicated import ReplicatedTables
from broker.core.retained import RetainedStore
from broker.core.retention import Retention
from broker.core.session import Session, Subscription
from broker.core.session_registry import SessionRegistry
from broker.core.settings import Settings
from broker.core.shared import SharedGroupPicker
from broker.core.trie import SubscriptionTrie
from broker.core.wills import WillTimers, will_message
from broker.protocol.packets import Will

#: Told about route changes: (real topic filter, True = first subscriber / False = last gone).
RouteListener = Callable[[str, bool], None]
#: Told about shared groups: (group, real filter, True = first local member / False = last gone).
SharedRouteListener = Callable[[str, str, bool], None]
#: Callback given every message routed from a local publisher (the cluster forwards it);
#: returns the number of nodes it went to (a message forwarded is not counted as dropped), or a
#: `Forwarded` when a node it went to cannot take more yet.
ForwardHook = Callable[[Message], "int | Forwarded | None"]


class Forwarded(NamedTuple):
    """What a forward hook did: the nodes it sent to, and how to wait for a congested one."""

    nodes: int
    wait_drained: WaitDrained | None = None


class Published(NamedTuple):
    """What `Broker.publish` did, for the caller to act on.

    `deliveries`: local deliveries plus remote nodes (0 = nobody matched: 5.0 PUBACK 0x10).
    `wait_drained`: set when a node the message went to cannot take more yet (back-pressure):
    a client publisher stops reading and passes its resume callback (`Connection.route`);
    other origins (REST, wills, plugins) have nothing to pause and ignore it.
    """

    deliveries: int
    wait_drained: WaitDrained | None = None


#: The usual answers, made once: a PUBLISH does not allocate its result.
_PUBLISHED = [Published(n) for n in range(64)]


class Broker(SessionRegistry, Retention):
    """One node's broker state. See the module docstring."""

    def __init__(
        self,
        settings: Settings | None = None,
        clock: Callable[[], float] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.clock: Callable[[], float] = clock or (lambda: 0.0)
        self.hooks = hooks or Hooks()
        self.metrics = Metrics()
        #: Limit hits by name (`broker.core.metrics.LIMIT_NAMES`); shared with the sessions.
        self.limits = self.metrics.limits
        self.stats = Stats()
        self.router: SubscriptionTrie[Subscription] = SubscriptionTrie()
        self.retained: RetainedStore[Message] = RetainedStore()
        #: The order of replicated writes (retained messages, tables); the cluster names it
        #: after its member and moves it with every stamp it receives.
        self.hlc = HybridClock(self.settings.node_name, lambda: self.clock())
        #: topic -> stamp of the clear of a retained topic (bounded: RETAINED_TOMBSTONES)
        self.retained_gone: dict[str, Stamp] = {}
        self.sessions: dict[str, Session] = {}
        self.banned = BannedTable()
        #: tables kept the same on every node (auth_clientid/auth_username credentials)
        self.replicated = ReplicatedTables()
        self.connected: dict[str, ClientPort] = {}
        self.channels: set[ClientPort] = set()
        self.picker = SharedGroupPicker(self.settings.shared_subscription_strategy)
        self.route_listeners: list[RouteListener] = []
        self.shared_route_listeners: list[SharedRouteListener] = []
        self.forward_hooks: list[ForwardHook] = []
        # Cluster ports (broker.core.cluster_port); None on a single node.
        self.shared_dispatcher: SharedDispatcher | None = None
        self.session_locator: SessionLocator | None = None
        #: QoS 2 copies not routed to a session (`late_for`): late ones, and repeats.
        self.late_skipped = self.qos2_repeats = 0
        #: Session copies resumed behind a partition: their late QoS 2 copies wait here.
        self.late_hold = LateHold()
        self.run_forwarder: RunForwarder | None = None
        self.wills = WillTimers()  # 5.0 wills waiting for their Will Delay Interval
        # Persistence (broker.server.persistence) sets these: the client ids and retained topics
        # changed since its last flush. None = nothing is persisted (no bookkeeping at all).
        self.dirty_sessions: DirtySessions | None = None
        self.dirty_retained: set[str] | None = None
        #: Acks held until the commit of what they acknowledge (`broker.core.commit_gate`);
        #: persistence sets it, None = nothing waits.
        self.commit_gate: CommitGate | None = None
        self.started_at = self.clock()
        self.clients_total = 0
        self.route_count = 0
        self.shared_count = 0

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    # -- routing --------------------------------------------------------------------------

    def publish(
        self, message: Message, *, hooks: bool = False, forward: bool = True, shared: bool = True
    ) -> Published:
        """Publish one message, whatever its origin: the one place that runs the publish hooks
        (`hooks=True`: clients, wills, REST, delayed publish; plugins may rewrite or swallow
        it, and a hook returns a new Message to change one, never edits it in place), then
        routes it to every matching session and forwards it to other nodes. See `Published`.

        Retained state is updated first (MQTT-3.3.1-5/10/11). A client with several matching
        subscriptions gets one copy at the highest granted QoS (MQTT-3.3.5-1), with every
        matching subscription identifier. Each shared group gets one copy, for one member:
        here, or in a cluster by the `shared_dispatcher` for the groups of the whole cluster.
        `shared=False` (a copy forwarded by another node, whose groups that node served)
        leaves shared groups out; `forward=False` does not give it to the `forward_hooks`.
        """
        if hooks and self.hooks.message_publish:
            hooked = self.hooks.run_message_publish(message)
            if hooked is None:
                return _PUBLISHED[0]
            message = hooked
            frames = message.frames
            if frames is not None and not frames.fits(
                message.topic, message.payload, message.properties
            ):
                message.frames = None  # a hook changed it in place: its bytes are stale
        counters = self.metrics.counters
        if message.retain:
            self.retain(message)
        # QoS 2: stamped at its origin (a copy from a peer brings its stamp), for `late_for`.
        stamp = message.stamp if message.qos == 2 else None
        if stamp is None and message.qos == 2 and forward:
            stamp = message.stamp = self.hlc.now()
        normal, groups = self.router.match_all(message.topic)
        now = self.clock()
        sessions = self.sessions
        delivered = 0
        if self.shared_dispatcher is not None or not shared:
            groups = []
            if shared and self.shared_dispatcher is not None:
                delivered = self.shared_dispatcher.dispatch(message)
        publisher = message.publisher
        if len(normal) == 1 and not groups:
            client_id, sub = normal[0]
            session = sessions.get(client_id)
            if session is not None and not (sub.no_local and client_id == publisher):
                qos = message.qos if message.qos < sub.qos else sub.qos
                retain = message.retain and sub.retain_as_published
                ids = [sub.identifier] if sub.identifier is not None else None
                if stamp is None or not self.late_for(session, stamp, message, qos, retain, ids):
                    session.deliver(message, qos, retain, ids, now)
                    delivered += 1
        else:
            merged: dict[str, tuple[int, bool, list[int] | None]] = {}
            for client_id, sub in normal:
                if sub.no_local and client_id == publisher:
                    continue  # MQTT-3.8.3-3
                qos = message.qos if message.qos < sub.qos else sub.qos
                retain = message.retain and sub.retain_as_published
                previous = merged.get(client_id)
                if previous is None:
                    ids = [sub.identifier] if sub.identifier is not None else None
                    merged[client_id] = (qos, retain, ids)
                else:
                    ids = previous[2]
                    if sub.identifier is not None:
                        ids = [*(ids or ()), sub.identifier]
                    merged[client_id] = (max(qos, previous[0]), retain or previous[1], ids)
            for client_id, (qos, retain, ids) in merged.items():
                session = sessions.get(client_id)
                if session is not None:
                    late = stamp is not None and self.late_for(
                        session, stamp, message, qos, retain, ids
                    )
                    if late:
                        continue
                    session.deliver(message, qos, retain, ids, now)
                    delivered += 1
            for group, topic_filter, members in groups:
                delivered += self._deliver_shared(message, group, topic_filter, members, now)
        forwarded = 0
        wait_drained = None
        if forward and self.forward_hooks:
            for hook in self.forward_hooks:
                result = hook(message)
                if isinstance(result, tuple):
                    forwarded += result.nodes
                    wait_drained = result.wait_drained or wait_drained
                else:
                    forwarded += result or 0
        if delivered == 0 and not forwarded and shared and not message.topic.startswith("$SYS/"):
            # EMQX counts "no subscribers" as dropped; not for a forwarded copy (`shared=False`),
            # which a node also gets for a route that only its shared groups make.
            counters["messages/dropped"] += 1
        count = delivered + forwarded
        if wait_drained is not None or count >= 64:
            return Published(count, wait_drained)
        return _PUBLISHED[count]

    def late_for(
        self,
        session: Session,
        stamp: Stamp,
        message: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
    ) -> bool:
        """True when the QoS 2 `message` stamped `stamp` is not delivered to `session` now:
        it predates this session copy's arrival here (not asked of a `live` one) or was
        accepted by it already (both counted as dropped), or, late from a peer and for a held
        copy, it is parked until the other copies are folded in (`broker.core.late_hold`)."""
        if not message.live:
            if is_late(session.arrived, stamp):
                self.late_skipped += 1
                self.metrics.counters["messages/dropped"] += 1
                return True
            hold = self.late_hold
            if (
                hold.waiting
                and stamp.node != self.node_name  # from a peer, held or sent again
                and hold.park(session, message, qos, retain, ids)
            ):
                return True
        if session.accept_qos2(stamp):
            return False
        self.qos2_repeats += 1
        self.metrics.counters["messages/dropped"] += 1
        return True

    def publish_will(self, info: ClientInfo, will: Will) -> int:
        """Authorize, hook and route one will message now (`broker.core.wills`); the number of
        deliveries."""
        if not self.hooks.run_authorize(info, "publish", will.topic):
            return 0
        message = will_message(info, will, self.clock(), self.node_name)
        return self.publish(message, hooks=True).deliveries

    def deliver_shared_local(self, message: Message, group: str, topic_filter: str) -> int:
        """Give `message` to one local member of `group` on the real filter `topic_filter`
        (the cluster's shared dispatch chose this node). 0 when the group has no member here
        any more: the caller counts that drop (the dispatcher may try another node first)."""
        members = self.router.shared_members(group, topic_filter)
        if not members:
            return 0
        return self._deliver_shared(message, group, topic_filter, members, self.clock())

    def _deliver_shared(
        self,
        message: Message,
        group: str,
        topic_filter: str,
        members: dict[str, Subscription],
        now: float,
    ) -> int:
        """One member of the group gets the message; online members are preferred."""
        sessions = self.sessions
        online = [cid for cid in members if cid in self.connected]
        candidates = online or list(members)
        chosen = self.picker.pick(group, topic_filter, candidates, message.publisher, message.topic)
        if chosen is None:
            return 0
        session = sessions.get(chosen)
        if session is None:
            return 0
        sub = members[chosen]
        qos = message.qos if message.qos < sub.qos else sub.qos
        ids = [sub.identifier] if sub.identifier is not None else None
        session.deliver(message, qos, False, ids, now)
        return 1

    # -- housekeeping ---------------------------------------------------------------------

    def tick(self) -> None:
        """Called about once a second: keepalive and connect timeouts, expired sessions."""
        now = self.clock()
        self.banned.expire(now)
        self.expire_tombstones(now)
        for channel in list(self.channels):
            channel.check_timeouts(now)
        expired = [cid for cid, s in self.sessions.items() if s.expired(now)]
        for client_id in expired:
            self.discard_session(client_id)
        for pending in self.wills.due(now):  # delayed wills (broker.core.wills)
            self.publish_will(pending.info, pending.will)
        self.update_stats()  # once per tick too: a gauge moved by anything else is fresh here
        self.update_slow_stats()

    def update_client_stats(self) -> None:
        """Refresh the two gauges a connect or a close changes (the rest cannot have moved:
        subscriptions refresh them through `update_stats`); on every connect, so kept short."""
        stats = self.stats
        stats.set("connections/count", len(self.connected))
        stats.set("sessions/count", len(self.sessions))

    def update_stats(self) -> None:
        """Refresh the gauges that are cheap to read; called on every other registry change."""
        stats = self.stats
        stats.set("connections/count", len(self.connected))
        stats.set("sessions/count", len(self.sessions))
        subscriptions = len(self.router)
        stats.set("subscriptions/count", subscriptions)
        stats.set("subscribers/count", subscriptions)
        stats.set("subscriptions/shared/count", self.shared_count)
        stats.set("routes/count", self.route_count)
        stats.set("topics/count", self.route_count)
        stats.set("retained/count", len(self.retained))

    def update_slow_stats(self) -> None:
        """Gauges that need a scan; refreshed once per tick."""
        persistent = sum(1 for s in self.sessions.values() if s.expiry_interval > 0)
        self.stats.set("sessions/persistent/count", persistent)
