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
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import NamedTuple

from broker.core.banned import BannedTable
from broker.core.client_port import ClientPort
from broker.core.cluster_port import (
    RunForwarder,
    SessionLocator,
    SessionState,
    SharedDispatcher,
    WaitDrained,
)
from broker.core.commit_gate import CommitGate, DirtySessions
from broker.core.hlc import HybridClock, Stamp, stamp_from_wire
from broker.core.hooks import ClientInfo, Hooks
from broker.core.message import Message, is_expired, retained_stamp
from broker.core.metrics import Metrics, Stats
from broker.core.qos2_once import is_late
from broker.core.replicated import ReplicatedTables
from broker.core.retained import RetainedStore
from broker.core.session import Session, Subscription
from broker.core.session_state import subscription_from_state
from broker.core.settings import Settings
from broker.core.shared import SharedGroupPicker
from broker.core.topics import parse_shared
from broker.core.trie import SubscriptionTrie
from broker.core.wills import WillTimers, will_message
from broker.protocol.packets import Will

log = logging.getLogger(__name__)

#: Clears of retained topics remembered (their stamps), so that an older write of the topic
#: arriving later (a heal, a slow link, a node restarted with the old value) does not bring the
#: message back; at most this many (the oldest go first), each for `retained_tombstone_ttl`.
RETAINED_TOMBSTONES = 10_000

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


class Broker:
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

    # -- connections ----------------------------------------------------------------------

    def channel_opened(self, channel: ClientPort) -> None:
        self.channels.add(channel)

    def channel_closed(self, channel: ClientPort) -> None:
        self.channels.discard(channel)
        client_id = channel.client_id
        if client_id is not None and self.connected.get(client_id) is channel:
            del self.connected[client_id]
            session = self.sessions.get(client_id)
            if session is not None and session.outlet is channel:
                session.detach(self.clock())
                if session.expiry_interval == 0:
                    self.discard_session(client_id)
        self.update_client_stats()

    def accepting(self) -> bool:
        """False when `max_connections` is reached: the listener refuses new clients."""
        limit = self.settings.max_connections
        return limit <= 0 or len(self.channels) < limit

    def assign_client_id(self) -> str:
        return "auto-" + secrets.token_hex(8)

    def open_session(
        self, channel: ClientPort, client_id: str, clean_start: bool, expiry_interval: int
    ) -> tuple[Session, bool]:
        """Bind `channel` to the session of `client_id`, taking over any existing connection.

        Returns the session and `session_present` (MQTT-3.2.2-2/3).
        """
        now = self.clock()
        previous = self.connected.get(client_id)
        session = self.sessions.get(client_id)
        if previous is not None and previous is not channel:
            # MQTT-3.1.4-3: disconnect the existing client; its will only if the session ends.
            previous.taken_over(_takeover_ends_session(session, clean_start))
            session = self.sessions.get(client_id)  # gone if its expiry was 0
        present = False
        if session is not None and clean_start:
            self.discard_session(client_id)
            session = None
        if session is None:
            session = self._new_session(client_id, clean_start, expiry_interval, now)
            session.arrived = self.hlc.now()
            self.sessions[client_id] = session
        else:
            present = True
            session.clean_start = clean_start
            session.expiry_interval = expiry_interval
        session.attach(channel)
        self.connected[client_id] = channel
        self.clients_total += 1
        self.update_client_stats()
        return session, present

    def _new_session(
        self,
        client_id: str,
        clean_start: bool,
        expiry_interval: int,
        now: float,
        username: str | None = None,
    ) -> Session:
        """A session with this node's limits, tracked for persistence when that is on."""
        settings = self.settings
        session = Session(
            client_id,
            clean_start=clean_start,
            expiry_interval=expiry_interval,
            max_inflight=settings.max_inflight_messages,
            max_queued=settings.max_queued_messages,
            metrics=self.metrics,
            now=now,
            queue_qos0=settings.queue_qos0_messages,
            max_queued_bytes=settings.max_queued_bytes,
            username=username,
        )
        session.dirty = self.dirty_sessions
        return session

    def discard_session(self, client_id: str) -> None:
        """Drop a session and all its subscriptions (clean start, expiry, or clean disconnect)."""
        session = self.sessions.pop(client_id, None)
        if session is None:
            return
        session.touch()
        for filt in list(session.subscriptions):
            self.unsubscribe(session, filt)  # each refreshes the subscription gauges
        self.update_client_stats()

    def drop_session(self, client_id: str) -> bool:
        """An operator ends the session of `client_id` (EMQX's clean_session): a connected
        client is disconnected (0x98, its will published as for any kick) and the session,
        online or offline, is discarded with its subscriptions. A delayed will still pending is
        published now, since the session ends (MQTT-3.1.3-9). False when there is no session."""
        kicked = self.kick(client_id)
        pending = self.wills.take(client_id)
        if pending is not None:
            self.publish_will(pending.info, pending.will)
        if client_id not in self.sessions:
            return kicked
        self.discard_session(client_id)
        return True

    # -- moving sessions between nodes (cluster takeover, broker.core.cluster_port) ---------

    def import_session(self, state: SessionState, *, moved: bool = False) -> Session:
        """Install a session that another node surrendered (`Session.export_state`), offline.

        Its subscriptions go through `subscribe`, so routes are announced; its inflight window
        is resent when a connection resumes it. A local session of the same client id (only
        after a partition can there be two) is replaced. Raises ValueError on malformed state,
        before anything is changed. `moved` (a takeover): the copy arrives here now
        (`Session.arrived`); else (restored from disk) it keeps the arrival it was saved with.
        """
        client_id = state.get("client_id")
        username = state.get("username")
        clean_start = state.get("clean_start", False)
        expiry = state.get("expiry_interval", 0)
        if (
            not isinstance(client_id, str)
            or not client_id
            or not (username is None or isinstance(username, str))
            or not isinstance(clean_start, bool)
            or not isinstance(expiry, int)
            or isinstance(expiry, bool)
            or not 0 <= expiry <= 0xFFFFFFFF
        ):
            raise ValueError("malformed session state")
        subscriptions = [subscription_from_state(client_id, item)
                         for item in state.get("subscriptions") or []]  # fmt: skip
        now = self.clock()
        session = self._new_session(client_id, clean_start, expiry, now, username)
        session.arrived = self.hlc.now() if moved else stamp_from_wire(state.get("arrived"))
        session.load_deliveries(state, now)
        created_at = state.get("created_at")
        if isinstance(created_at, int | float) and not isinstance(created_at, bool):
            session.created_at = float(created_at)
        disconnected_at = state.get("disconnected_at")
        session.disconnected_at = (
            float(disconnected_at)
            if isinstance(disconnected_at, int | float) and not isinstance(disconnected_at, bool)
            else now
        )
        previous = self.connected.get(client_id)
        if previous is not None:
            previous.taken_over()
        self.discard_session(client_id)
        self.sessions[client_id] = session
        for subscription in subscriptions:
            self.subscribe(session, subscription)
        self.update_stats()
        return session

    def surrender_session(
        self, client_id: str, new_node: str = "", *, clean_start: bool = False
    ) -> SessionState | None:
        """`client_id` connected on node `new_node`: give it up here.

        A connection is closed with 0x8E (Session taken over), its will handled as for a local
        takeover. A delayed will still pending is published now if the new connection starts
        clean (that ends the session, MQTT-3.1.2-8) and dropped otherwise (the session goes on
        there, MQTT-3.1.3-9). Then the session is exported and discarded here (its routes
        withdrawn); the state is returned, or None when there is none or `clean_start`.
        """
        channel = self.connected.get(client_id)
        if channel is not None:
            log.info("client %s connected on %s: taking it over", client_id, new_node or "?")
            channel.taken_over(_takeover_ends_session(self.sessions.get(client_id), clean_start))
        pending = self.wills.take(client_id)
        if pending is not None and clean_start:
            self.publish_will(pending.info, pending.will)
        session = self.sessions.get(client_id)
        if session is None:
            return None
        state = None if clean_start else session.export_state()
        self.discard_session(client_id)
        return state

    def kick(self, client_id: str) -> bool:
        """Disconnect the client connected here as `client_id` (0x98, Administrative action);
        False when it is not connected here."""
        client = self.connected.get(client_id)
        if client is None:
            return False
        client.kick()
        return True

    def kick_banned(self) -> int:
        """Disconnect every connected client that the banned list now refuses."""
        now = self.clock()
        kicked = 0
        for channel in list(self.connected.values()):
            if self.banned.check(channel.client_id, channel.username, channel.peer_host, now):
                channel.kick()
                kicked += 1
        return kicked

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(
        self, session: Session, subscription: Subscription, info: ClientInfo | None = None
    ) -> bool:
        """Add or replace a subscription (MQTT-3.8.4-3), whatever its origin (a SUBSCRIBE, the
        REST API, a session imported from another node), and tell the `session_subscribed`
        hooks when the client is known (`info`). Returns True if it already existed. The
        retained messages follow with `send_retained`, once the caller has acknowledged."""
        previous = session.subscriptions.get(subscription.filter)
        session.add_subscription(subscription)
        session.touch()
        group = subscription.share_group
        new_group = False
        if group is not None and previous is None:
            self.shared_count += 1
            new_group = not self.router.has_filter(subscription.filter)
        if self.router.add(subscription.filter, session.client_id, subscription):
            self.route_count += 1
            for listener in self.route_listeners:
                listener(subscription.topic_filter, True)
        if new_group:
            assert group is not None
            for shared_listener in self.shared_route_listeners:
                shared_listener(group, subscription.topic_filter, True)
        self.update_stats()
        if info is not None:
            for hook in self.hooks.session_subscribed:
                hook(info, subscription.filter, subscription.qos)
        return previous is not None

    def send_retained(self, session: Session, subscription: Subscription, existed: bool) -> None:
        """Deliver the retained messages a new subscription asks for: none for a shared one
        (MQTT 5 4.8.2); Retain Handling 0 always, 1 only if it did not exist, 2 never
        (MQTT-3.3.1-9..11); each with RETAIN=1 (MQTT-3.3.1-8) at most the granted QoS."""
        handling = subscription.retain_handling
        if subscription.share_group is not None or handling == 2 or (handling == 1 and existed):
            return
        now = self.clock()
        sub_ids = [subscription.identifier] if subscription.identifier is not None else None
        for message in self.retained_for(subscription.topic_filter):
            session.deliver(message, min(message.qos, subscription.qos), True, sub_ids, now)

    def unsubscribe(self, session: Session, filt: str) -> bool:
        subscription = session.subscriptions.pop(filt, None)
        if subscription is None:
            return False
        session.touch()
        if subscription.share_group is not None:
            self.shared_count -= 1
        self._unroute(session.client_id, filt)
        self.update_stats()
        return True

    def _unroute(self, client_id: str, filt: str) -> None:
        removed, last = self.router.remove(filt, client_id)
        if not removed:
            return
        group, topic_filter = parse_shared(filt)
        if group is not None and not self.router.has_filter(filt):
            self.picker.forget(group, topic_filter)  # the group is gone: drop its cursor
            for shared_listener in self.shared_route_listeners:
                shared_listener(group, topic_filter, False)
        if last:
            self.route_count -= 1
            for listener in self.route_listeners:
                listener(topic_filter, False)

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
            if (
                session is not None
                and not (sub.no_local and client_id == publisher)
                and (stamp is None or not self.late_for(session, stamp, message.live))
            ):
                qos = message.qos if message.qos < sub.qos else sub.qos
                retain = message.retain and sub.retain_as_published
                ids = [sub.identifier] if sub.identifier is not None else None
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
                    if stamp is not None and self.late_for(session, stamp, message.live):
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

    def late_for(self, session: Session, stamp: Stamp, live: bool = False) -> bool:
        """True (counted as dropped) when a QoS 2 message stamped `stamp` predates this session
        copy's arrival here (not asked of a `live` one) or was accepted by it already."""
        if not live and is_late(session.arrived, stamp):
            self.late_skipped += 1
        elif session.accept_qos2(stamp):
            return False
        else:
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

    def retain(self, message: Message) -> bool:
        """Store, replace or clear (empty payload) the retained message of a topic if it is the
        last write of it: the larger hybrid-clock stamp wins (`broker.core.hlc`), so every node
        keeps the same value whatever order the writes reach it in. A write without a stamp is
        taken here and stamped now (`message.stamp`, which the cluster forwards with it); one
        with a stamp came from another node and moves our clock. False: a later write (or
        clear) of the topic is held, or the stamp is beyond the clock's drift bound; this one
        changes nothing."""
        topic = message.topic
        held = self.retained.get(topic)
        old = retained_stamp(held) if held is not None else self.retained_gone.get(topic)
        stamp = message.stamp
        if stamp is None:
            stamp = message.stamp = self.hlc.now()
        elif not self.hlc.update(stamp):
            # beyond the drift bound (`broker.core.hlc`, counted in `hlc.rejected`): refused;
            # anti-entropy offers it again, taken once our wall clock is within the bound
            log.warning("retained %s: stamp %s is beyond the clock's drift bound: refused",
                        topic, stamp)  # fmt: skip
            return False
        if old is not None and stamp <= old:
            return False
        if self.dirty_retained is not None:
            self.dirty_retained.add(topic)
        gone = self.retained_gone
        if not message.payload:
            self.retained.delete(topic)
            gone.pop(topic, None)  # the newest last: expiry and the bound take the oldest first
            ttl_ms = self.settings.retained_tombstone_ttl * 1000
            if stamp.ms >= int(self.clock() * 1000) - ttl_ms:  # (an expired one is not kept)
                gone[topic] = stamp  # a tombstone: an older write arriving later must not win
            if len(gone) > RETAINED_TOMBSTONES:
                oldest = next(iter(gone))
                del gone[oldest]
                if self.dirty_retained is not None:
                    self.dirty_retained.add(oldest)
        else:
            if held is None:
                self.metrics.counters["messages/retained"] += 1
                gone.pop(topic, None)
            stored = Message(
                topic,
                message.payload,
                message.qos,
                True,
                message.properties,
                message.publisher,
                message.timestamp,
                message.node,
            )
            stored.stamp = stamp
            self.retained.set(topic, stored)
        self.stats.set("retained/count", len(self.retained))
        return True

    def retained_for(self, topic_filter: str) -> Iterator[Message]:
        now = self.clock()
        for topic, message in self.retained.match(topic_filter):
            if message.properties and is_expired(message, now):
                self.retained.delete(topic)  # MQTT-3.3.2-5: an expired one is never sent
                if self.dirty_retained is not None:
                    self.dirty_retained.add(topic)
                self.metrics.counters["messages/expired"] += 1
                self.stats.set("retained/count", len(self.retained))
                continue
            yield message

    def expire_tombstones(self, now: float) -> int:
        """Forget the clears of retained topics made more than `retained_tombstone_ttl` seconds
        ago (by their stamp's wall time); the table is in about the order of the clears, so
        this stops at the first young one. Returns how many went."""
        gone = self.retained_gone
        limit = int((now - self.settings.retained_tombstone_ttl) * 1000)
        expired = 0
        while gone:
            topic, stamp = next(iter(gone.items()))
            if stamp.ms >= limit:
                break
            del gone[topic]
            if self.dirty_retained is not None:
                self.dirty_retained.add(topic)
            expired += 1
        return expired

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


def _takeover_ends_session(session: Session | None, clean_start: bool) -> bool:
    """Whether a takeover ends the old connection's session (so its will is due): the new
    connection starts clean, or the old session was to end with its connection (expiry 0:
    a 5.0 Session Expiry Interval 0 or a 3.x clean session)."""
    return clean_start or session is None or session.expiry_interval == 0
