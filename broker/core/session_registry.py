"""Who is connected and which sessions exist: the session registry half of `Broker`.

Why a module of its own: `broker.core.broker` keeps the per-message routing (`Broker.publish`)
and the state every part shares; this holds the operations that change who is here --
connections opening and closing, sessions opened, taken over, imported from or surrendered to
another node, kicked -- and the subscriptions that route messages to them (`subscribe` and
`unsubscribe`, which tell the route listeners). `Broker` inherits `SessionRegistry`, so each is
still one `Broker` method, called as before; this module never imports `broker.core.broker`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.core.banned import BannedTable
from broker.core.client_port import ClientPort
from broker.core.cluster_port import SessionState
from broker.core.commit_gate import DirtySessions
from broker.core.hlc import HybridClock, stamp_from_wire
from broker.core.hooks import ClientInfo, Hooks
from broker.core.late_hold import LateHold
from broker.core.metrics import Metrics
from broker.core.session import Session, Subscription
from broker.core.session_state import subscription_from_state
from broker.core.settings import Settings
from broker.core.shared import SharedGroupPicker
from broker.core.topics import parse_shared
from broker.core.trie import SubscriptionTrie
from broker.core.wills import WillTimers
from broker.protocol.packets import Will

log = logging.getLogger("broker.core.broker")


class SessionRegistry:
    """Connections, sessions and subscriptions of one node; mixed into `Broker`, whose
    `__init__` sets the attributes declared here."""

    settings: Settings
    clock: Callable[[], float]
    hooks: Hooks
    metrics: Metrics
    hlc: HybridClock
    router: SubscriptionTrie[Subscription]
    sessions: dict[str, Session]
    banned: BannedTable
    connected: dict[str, ClientPort]
    channels: set[ClientPort]
    picker: SharedGroupPicker
    route_listeners: list[Callable[[str, bool], None]]
    shared_route_listeners: list[Callable[[str, str, bool], None]]
    wills: WillTimers
    late_hold: LateHold
    dirty_sessions: DirtySessions | None
    clients_total: int
    route_count: int
    shared_count: int

    if TYPE_CHECKING:  # `Broker` defines these; declared for the type checker only

        def publish_will(self, info: ClientInfo, will: Will) -> int: ...
        def update_client_stats(self) -> None: ...
        def update_stats(self) -> None: ...

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
        if client_id in self.late_hold:  # what was parked for it goes with it (or ends)
            kept = None if clean_start else session
            self.metrics.counters["messages/dropped"] += self.late_hold.release(
                client_id, kept, self.clock()
            )[1]
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


def _takeover_ends_session(session: Session | None, clean_start: bool) -> bool:
    """Whether a takeover ends the old connection's session (so its will is due): the new
    connection starts clean, or the old session was to end with its connection (expiry 0:
    a 5.0 Session Expiry Interval 0 or a 3.x clean session)."""
    return clean_start or session is None or session.expiry_interval == 0
