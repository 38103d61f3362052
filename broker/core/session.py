"""Session state: what survives a connection (subscriptions, inflight window, offline queue).

Theory of operation
-------------------
A session exists per client id. While a connection is attached (`outlet` is set), QoS 1/2
deliveries go straight out as long as the inflight window has room (`max_inflight_messages`,
narrowed by the client's 5.0 Receive Maximum); beyond it they wait in `queue`. The queue is
bounded (`max_queued_messages`, and `max_queued_bytes` of payload when set): an arriving message
that does not fit is dropped and counted (also in `metrics.limits`), as mosquitto does.
QoS 0 messages are sent immediately when online (dropped and counted if the
client's outgoing buffer is over its cap) and, by default, not queued while offline.

Outgoing QoS 1: PUBLISH -> PUBACK frees the slot. Outgoing QoS 2: PUBLISH -> PUBREC, we answer
PUBREL and keep the slot until PUBCOMP. On reconnect of a persistent session, every inflight
entry is resent in its original order: unacknowledged PUBLISHes with DUP=1, and PUBREL for the
ones already PUBREC'd (MQTT-4.4.0-1); then the queue drains into the freed window.

A delivery can also end unsent: `send_publish` returns False for an expired message (MQTT-3.3.2-5)
or one larger than the client's Maximum Packet Size. A QoS 1/2 one then never enters the window
(MQTT-3.1.2-25: "as if it had completed sending"); an inflight one being resent on reconnect that
has expired meanwhile leaves the window the same way. A full queue first sheds its expired
messages before it drops the newcomer.

Memory: a session that has no subscription and nothing inflight, queued or awaiting PUBREL holds
no structure for them. `subscriptions`, `inflight`, `queue` and `awaiting_rel` then are shared
empty stand-ins (`_NO_SUBSCRIPTIONS`, `_NO_INFLIGHT`, `_NO_QUEUE`, `_NO_RELS`) that refuse to be
written to; the first write gives the session its own (`add_subscription`, `_own_inflight`,
`_own_queue`, `await_rel`) and an emptied inflight window, queue or `awaiting_rel` is given back.
An empty deque costs 760 bytes and an empty dict 64: most of an idle connection's cost otherwise.

Incoming QoS 2 uses `awaiting_rel`: the message is routed once, when its PUBLISH first arrives;
a resent PUBLISH with a packet id still awaiting PUBREL is acknowledged but not routed again,
which gives exactly-once delivery.

Elsewhere: the records a session holds (`Subscription`, `InflightEntry`) are
`broker.core.session_records`, and its export for a move or a restore (`export_state`,
`load_deliveries`, inherited from `SessionExport`) is `broker.core.session_export`; both are
re-exported here.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from broker.core.commit_gate import DirtySessions
from broker.core.hlc import Stamp
from broker.core.message import Message, expiry_left, is_expired
from broker.core.metrics import Metrics
from broker.core.qos2_once import Seen
from broker.core.session_export import SessionExport, SessionState
from broker.core.session_records import InflightEntry, QueuedDelivery, Subscription
from broker.core.shared_empty import SharedEmptyDeque, SharedEmptyDict

__all__ = [
    "InflightEntry",
    "Outlet",
    "QueuedDelivery",
    "Session",
    "SessionLimits",
    "SessionState",
    "Subscription",
]


class Outlet(Protocol):
    """The connection side of a session: implemented by `Channel`.

    `send_publish` returns False when the delivery ended without being written (a QoS 0 one to a
    client that is not reading, an expired message, one too large for the client); a QoS 1/2 one
    for a connection that is closing returns True: it stays inflight and is resent on resume.
    """

    receive_maximum: int

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        dup: bool,
        subscription_ids: list[int] | None,
    ) -> bool: ...

    def send_pubrel(self, packet_id: int) -> None: ...


_NEVER = float("inf")


_NO_INFLIGHT: dict[int, InflightEntry] = SharedEmptyDict()
_NO_RELS: dict[int, float] = SharedEmptyDict()
_NO_SUBSCRIPTIONS: dict[str, Subscription] = SharedEmptyDict()

_NO_QUEUE: deque[QueuedDelivery] = SharedEmptyDeque()


class SessionLimits:
    """What every session of a broker shares (its limits and metrics): one object, not five
    slots in each session. Read-only once made; `_shared_limits` hands out one per setting."""

    __slots__ = ("max_inflight", "max_queued", "max_queued_bytes", "metrics", "queue_qos0")

    def __init__(
        self,
        max_inflight: int,
        max_queued: int,
        max_queued_bytes: int,
        queue_qos0: bool,
        metrics: Metrics,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.queue_qos0 = queue_qos0
        self.metrics = metrics


_LIMITS: dict[tuple[int, int, int, bool, int], SessionLimits] = {}


def _shared_limits(
    max_inflight: int, max_queued: int, max_queued_bytes: int, queue_qos0: bool, metrics: Metrics
) -> SessionLimits:
    """The one `SessionLimits` of these values (made the first time; a few per process)."""
    key = (max_inflight, max_queued, max_queued_bytes, queue_qos0, id(metrics))
    limits = _LIMITS.get(key)
    if limits is None or limits.metrics is not metrics:  # an id reused by another Metrics
        if len(_LIMITS) >= 64:  # bounded: many brokers in one process (tests)
            _LIMITS.clear()
        limits = _LIMITS[key] = SessionLimits(
            max_inflight, max_queued, max_queued_bytes, queue_qos0, metrics
        )
    return limits


class Session(SessionExport):
    """The per-client-id state of the broker; see the module docstring for the flows."""

    __slots__ = (
        "_earliest_expiry",
        "_next_packet_id",
        "arrived",
        "awaiting_rel",
        "clean_start",
        "client_id",
        "created_at",
        "deliver_msg",
        "dirty",
        "disconnected_at",
        "enqueue_msg",
        "expiry_interval",
        "inflight",
        "limits",
        "mqueue_dropped",
        "outlet",
        "qos2_seen",
        "queue",
        "queued_bytes",
        "subscriptions",
        "username",
    )

    def __init__(
        self,
        client_id: str,
        *,
        clean_start: bool,
        expiry_interval: int,
        max_inflight: int,
        max_queued: int,
        metrics: Metrics,
        now: float,
        queue_qos0: bool = False,
        username: str | None = None,
        max_queued_bytes: int = 0,
    ) -> None:
        self.client_id = client_id
        self.clean_start = clean_start
        self.expiry_interval = expiry_interval
        self.limits = _shared_limits(
            max_inflight, max_queued, max_queued_bytes, queue_qos0, metrics
        )
        self.queued_bytes = 0  # payload bytes in `queue`
        self.created_at = now
        self.username = username
        #: The hybrid-clock stamp of this copy's arrival on this node (`Broker.open_session`,
        #: `Broker.import_session`): a QoS 2 message published before it is not routed to it
        #: (`Broker.publish`). Restored from disk, it keeps the saved one (None: nothing is
        #: skipped; an older data file, or built directly).
        self.arrived: Stamp | None = None
        #: The QoS 2 messages it accepted (`accept_qos2`), moved and persisted with it.
        self.qos2_seen: Seen | None = None
        self.subscriptions: dict[str, Subscription] = _NO_SUBSCRIPTIONS
        # Shared empty stand-ins until first used (module docstring).
        self.inflight: dict[int, InflightEntry] = _NO_INFLIGHT
        self.queue: deque[QueuedDelivery] = _NO_QUEUE
        self.awaiting_rel: dict[int, float] = _NO_RELS
        self.outlet: Outlet | None = None
        self.disconnected_at: float | None = None
        #: The broker's set of changed client ids (persistence), None when nothing is persisted;
        #: a change to a persistent session also moves its `marks` (`broker.core.commit_gate`).
        self.dirty: DirtySessions | None = None
        self.mqueue_dropped = 0
        self.deliver_msg = 0
        self.enqueue_msg = 0
        self._next_packet_id = 1
        #: A lower bound of when a queued message can first expire: a full queue is scanned
        #: for expired messages only after it, so a full queue without expiring messages costs
        #: O(1) per refused message instead of a scan of the whole queue.
        self._earliest_expiry = _NEVER

    @property
    def max_inflight(self) -> int:
        return self.limits.max_inflight

    @property
    def max_queued(self) -> int:
        return self.limits.max_queued

    @property
    def metrics(self) -> Metrics:
        return self.limits.metrics

    # -- connection lifecycle -------------------------------------------------------------

    def touch(self) -> None:
        """Record that the persisted state changed (a set.add; nothing when not persisting)."""
        dirty = self.dirty
        if dirty is not None:
            dirty.add(self.client_id)
            if self.expiry_interval:
                dirty.marks += 1

    def attach(self, outlet: Outlet) -> None:
        self.outlet = outlet
        self.disconnected_at = None
        self.touch()

    def detach(self, now: float) -> None:
        self.outlet = None
        self.disconnected_at = now
        self.touch()

    def resume(self, now: float) -> None:
        """Resend the inflight window in order, then fill it from the queue (MQTT-4.4.0-1)."""
        outlet = self.outlet
        if outlet is None:
            return
        self.touch()
        if not self.inflight and not self.queue:
            return  # a new or idle session (every connect): nothing to resend
        for packet_id, entry in list(self.inflight.items()):
            entry.sent_at = now
            if entry.awaiting_comp:
                outlet.send_pubrel(packet_id)
            elif not outlet.send_publish(
                entry.message, entry.qos, entry.retain, packet_id, True, entry.subscription_ids
            ):
                del self.inflight[packet_id]  # expired meanwhile, or too large: as completed
                self._drop()
        self._drain(now)
        self._release()

    def expired(self, now: float) -> bool:
        """An offline session past its expiry interval (0xFFFFFFFF never expires)."""
        if self.outlet is not None or self.disconnected_at is None:
            return False
        if self.expiry_interval == 0xFFFFFFFF:
            return False
        return now - self.disconnected_at >= self.expiry_interval

    # -- outgoing messages ----------------------------------------------------------------

    def window(self) -> int:
        outlet = self.outlet
        if outlet is None:
            return 0
        return min(self.limits.max_inflight, outlet.receive_maximum)

    def deliver(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: list[int] | None,
        now: float,
    ) -> None:
        """Send or queue one delivery of `message` at the (already downgraded) `qos`."""
        outlet = self.outlet
        if qos or outlet is None:
            dirty = self.dirty
            if dirty is not None:
                dirty.add(self.client_id)
                if self.expiry_interval:
                    dirty.marks += 1
        if qos == 0:
            if outlet is not None:
                if outlet.send_publish(message, 0, retain, None, False, subscription_ids):
                    self.deliver_msg += 1
                else:
                    self._drop()
            elif self.limits.queue_qos0:
                self._enqueue((message, 0, retain, subscription_ids), now)
            else:
                self._drop()  # QoS 0 is not queued for an offline client, but it is counted
            return
        if outlet is not None and not self.queue and len(self.inflight) < self.window():
            self._send_new(message, qos, retain, subscription_ids, now)
        else:
            self._enqueue((message, qos, retain, subscription_ids), now)

    def accept_qos2(self, stamp: Stamp) -> bool:
        """False for a QoS 2 message this persistent session accepted already
        (`broker.core.qos2_once`); a session without expiry keeps no record."""
        if not self.expiry_interval:
            return True
        seen = self.qos2_seen
        if seen is None:
            seen = self.qos2_seen = Seen()
        return seen.accept(stamp)

    def count_passed(self, sent: int, dropped: int) -> None:
        """QoS 0 deliveries made as a run's bytes (`broker.core.runs_delivery`), counted as
        `deliver` counts them: `sent` went out, `dropped` did not."""
        self.deliver_msg += sent
        if dropped:
            self.mqueue_dropped += dropped
            self.limits.metrics.counters["messages/dropped"] += dropped

    def refuses(self, now: float) -> bool:
        """True when `deliver` would drop any QoS 1/2 delivery now, whatever its message: the
        queue ahead of it is full (`max_queued_messages`) and nothing in it can expire yet.
        Nothing changes meanwhile but what is delivered (`broker.core.acked_runs`)."""
        return len(self.queue) >= self.limits.max_queued and now < self._earliest_expiry

    def count_refused(self, count: int) -> None:
        """`count` QoS 1 deliveries dropped as `deliver` drops each one `refuses`."""
        dirty = self.dirty
        if dirty is not None:
            dirty.add(self.client_id)
        self.mqueue_dropped += count
        metrics = self.limits.metrics
        metrics.counters["messages/dropped"] += count
        metrics.limits["max_queued_messages"] += count

    def _enqueue(self, item: QueuedDelivery, now: float) -> None:
        size = len(item[0].payload)
        limit = self._full(size)
        if limit and self._shed_expired(now):
            limit = self._full(size)
        if limit:
            self._drop()
            self.limits.metrics.limits[limit] += 1
            if item[1] == 2:
                self.limits.metrics.counters["messages/qos2/dropped"] += 1
            return
        self._own_queue().append(item)
        self.queued_bytes += size
        self.enqueue_msg += 1
        message = item[0]
        if message.properties:
            left = expiry_left(message, now)
            if left is not None and now + left < self._earliest_expiry:
                self._earliest_expiry = now + left

    def _full(self, size: int) -> str:
        """The limit that one more queued delivery of `size` payload bytes breaks, or ""."""
        limits = self.limits
        if len(self.queue) >= limits.max_queued:
            return "max_queued_messages"
        cap = limits.max_queued_bytes
        if cap and self.queued_bytes + size > cap:
            return "max_queued_bytes"
        return ""

    def _shed_expired(self, now: float) -> bool:
        """Drop the expired messages of a full queue; True if that made room."""
        if now < self._earliest_expiry:
            return False
        queue = self.queue
        kept = [item for item in queue if not is_expired(item[0], now)]
        earliest = _NEVER
        for message, *_ in kept:
            if message.properties:
                left = expiry_left(message, now)
                if left is not None and now + left < earliest:
                    earliest = now + left
        self._earliest_expiry = earliest
        shed = len(queue) - len(kept)
        if not shed:
            return False
        self.queue = deque(kept) if kept else _NO_QUEUE
        self.queued_bytes = sum(len(item[0].payload) for item in kept)
        self.limits.metrics.counters["messages/expired"] += shed
        for _ in range(shed):
            self._drop()
        return True

    def _drop(self) -> None:
        self.mqueue_dropped += 1
        self.limits.metrics.counters["messages/dropped"] += 1

    def _send_new(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: list[int] | None,
        now: float,
    ) -> None:
        packet_id = self.next_packet_id()
        assert self.outlet is not None
        if self.outlet.send_publish(message, qos, retain, packet_id, False, subscription_ids):
            entry = InflightEntry(message, qos, retain, subscription_ids, now)
            self._own_inflight()[packet_id] = entry
            self.deliver_msg += 1
        else:
            self._drop()  # expired or too large: as if completed, no window slot (MQTT-3.1.2-25)

    def _drain(self, now: float) -> None:
        """Move queued deliveries into the inflight window while it has room."""
        outlet = self.outlet
        queue = self.queue
        while outlet is not None and queue:
            message, qos, retain, subscription_ids = queue[0]
            if qos == 0:
                queue.popleft()
                self.queued_bytes -= len(message.payload)
                if outlet.send_publish(message, 0, retain, None, False, subscription_ids):
                    self.deliver_msg += 1
                else:
                    self._drop()
                continue
            if len(self.inflight) >= self.window():
                return
            queue.popleft()
            self.queued_bytes -= len(message.payload)
            self._send_new(message, qos, retain, subscription_ids, now)
        if not queue and queue is not _NO_QUEUE:
            self.queue = _NO_QUEUE  # an emptied deque keeps a 760-byte block: give it back

    def _own_queue(self) -> deque[QueuedDelivery]:
        queue = self.queue
        if queue is _NO_QUEUE:
            queue = self.queue = deque()
        return queue

    def _own_inflight(self) -> dict[int, InflightEntry]:
        inflight = self.inflight
        if inflight is _NO_INFLIGHT:
            inflight = self.inflight = {}
        return inflight

    def _release(self) -> None:
        """Give emptied structures back for the shared empty ones (module docstring)."""
        if not self.inflight:
            self.inflight = _NO_INFLIGHT
        if not self.queue:
            self.queue = _NO_QUEUE
        if not self.awaiting_rel:
            self.awaiting_rel = _NO_RELS

    def add_subscription(self, subscription: Subscription) -> None:
        """Add or replace the subscription of its filter (`Broker.subscribe` does the routes)."""
        subscriptions = self.subscriptions
        if subscriptions is _NO_SUBSCRIPTIONS:
            subscriptions = self.subscriptions = {}
        subscriptions[subscription.filter] = subscription

    def await_rel(self, packet_id: int, now: float) -> None:
        """An incoming QoS 2 PUBLISH was routed; it awaits its PUBREL (module docstring)."""
        rels = self.awaiting_rel
        if rels is _NO_RELS:
            rels = self.awaiting_rel = {}
        rels[packet_id] = now

    def release_rel(self, packet_id: int) -> bool:
        """The PUBREL for `packet_id` arrived: False if it was not awaited."""
        rels = self.awaiting_rel
        if rels.pop(packet_id, None) is None:
            return False
        if not rels:
            self.awaiting_rel = _NO_RELS
        return True

    def take_queued_qos2(self) -> list[QueuedDelivery]:
        """Take the queued QoS 2 deliveries that carry a publish stamp out of the queue, in
        order (`broker.core.late_hold.LateHold.hold_queue`: held until another copy of the
        session is folded in); the rest stay queued."""
        taken: list[QueuedDelivery] = []
        kept: list[QueuedDelivery] = []
        for item in self.queue:
            (taken if item[1] == 2 and item[0].stamp is not None else kept).append(item)
        if not taken:
            return []
        self.queue = deque(kept) if kept else _NO_QUEUE
        self.queued_bytes = sum(len(item[0].payload) for item in kept)
        self.touch()
        return taken

    def start_packet_ids_at(self, packet_id: int) -> None:
        """A fresh copy of a session whose old copy may live on elsewhere (a cluster claim
        that could not take it): its packet ids start away from the old copy's, whose
        half-done QoS 2 exchanges the client may still hold (`adopt_released`)."""
        self._next_packet_id = (packet_id - 1) % 65535 + 1

    def adopt_released(
        self,
        packet_id: int,
        message: Message,
        retain: bool,
        subscription_ids: list[int] | None,
        now: float,
    ) -> bool:
        """Another copy of this session released a QoS 2 message (its PUBREL committed) and
        went before the PUBCOMP: the exchange goes on here, and its PUBREL is sent (again)
        from here. A client that completed it answers PUBCOMP; one that still holds the
        message (the PUBREL never reached it) delivers it then (MQTT-4.3.3, method A). False
        when `packet_id` is in use here (the client's state for it is this copy's now)."""
        if packet_id in self.inflight or not 1 <= packet_id <= 65535:
            return False
        entry = InflightEntry(message, 2, retain, subscription_ids, now)
        entry.awaiting_comp = True
        self._own_inflight()[packet_id] = entry
        self.touch()
        if self.outlet is not None:
            self.outlet.send_pubrel(packet_id)
        return True

    def next_packet_id(self) -> int:
        """Next free packet id in 1..65535, skipping ids still inflight (MQTT-2.2.1-3)."""
        packet_id = self._next_packet_id
        inflight = self.inflight
        for _ in range(65535):
            if packet_id not in inflight:
                break
            packet_id = packet_id % 65535 + 1
        else:  # pragma: no cover - the window is always smaller than the id space
            raise RuntimeError("no free packet identifier")
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    # -- acknowledgements from the client -------------------------------------------------

    def _complete(self, packet_id: int, now: float) -> None:
        """The flow of `packet_id` is over: free its window slot for the queue, and give the
        window back to the shared empty one when nothing is left in flight."""
        del self.inflight[packet_id]
        self.touch()
        self._drain(now)
        if not self.inflight:
            self.inflight = _NO_INFLIGHT

    def on_puback(self, packet_id: int, now: float) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 1:
            return False
        self._complete(packet_id, now)
        return True

    def on_pubrec(self, packet_id: int, now: float) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
        entry.awaiting_comp = True
        entry.sent_at = now
        self.touch()
        return True

    def on_pubcomp(self, packet_id: int, now: float) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or not entry.awaiting_comp:
            return False
        self._complete(packet_id, now)
        return True

    def on_pubrec_error(self, packet_id: int, now: float) -> bool:
        """A 5.0 PUBREC with a failure code ends the QoS 2 flow for that id (MQTT-4.3.3);
        False if no QoS 2 PUBLISH awaits a PUBREC under that id."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2 or entry.awaiting_comp:
            return False
        self._complete(packet_id, now)
        return True
