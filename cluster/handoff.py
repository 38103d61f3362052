"""Takeover without loss: both ends of a session that moved to another node.

Theory of operation
-------------------
When node H surrenders a session to node B, the other nodes' route tables still point at H for
a while (until B's route announcement and H's withdrawal spread), and a message can also reach B
before B has imported the session. EMQX keeps a "pending" buffer for this; here:

* **On the old node** (`surrendered`): a forwarding record `client id -> B` with the session's
  (non-shared) filters, for `ttl` seconds, at most `max_records` of them (the oldest go first).
  Every message that arrives at H or is published on H meanwhile (`on_message`, called by the
  runtime for forwarded copies and local publishes) and matches those filters is sent to B as
  FORWARD kind `session` for that one client id (a directed forward, not a route). H keeps
  announcing the routes of those filters until the record ends (`covers`; `cluster.ports`
  withdraws them then if nobody here subscribes): otherwise a publisher's node could learn
  H's withdrawal before B's announcement and send the message nowhere.
* **On the new node**, while its claim is in flight (`claim_started`), `session` forwards for
  the id are held (at most `max_pending` per id) and delivered right after the import
  (`claim_finished`), so nothing sent by H overtakes the session state. Then, for `ttl + 2`
  seconds, an **arrival window** remembers which messages reached the session (by origin,
  publisher, topic, payload and QoS), so a copy that H forwards as well is delivered once, not
  twice (QoS 2 stays exactly once when a publisher's node sent the message to both H and B, or
  when two earlier holders of a session that moved twice forward it). A forwarded copy of a
  message that reached B while the claim was in flight (so not delivered then) is delivered at
  once; any other waits `HOLD` seconds first, since the direct copy may still be on its way (B
  can read H's link before the publisher's node's, measured in the fault suite). A forward for
  an id whose session is not here (it moved on again) is dropped and counted: it is not passed
  on, since the node that holds the session now gets its own copy from its own previous holder.

A QoS 2 message published before the surrendered copy arrived on H (a copy held for H while
it was cut off, `cluster.dead_hold`) is not passed on: it reached the session where it was
then (`Broker.late_for`, the same rule for the copies routed to a node).

Limits: a message that reached H before its export *and* B directly after the import (a link
slower than the whole takeover) is delivered twice; a forwarded message identical (origin,
publisher, topic, payload, QoS) to one delivered in the window is taken for its copy; a forward
from H that arrives after a newer direct copy of the same publisher is delivered after it (an
order change inside the takeover).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from broker.core.broker import Broker
from broker.core.hlc import Stamp
from broker.core.message import Message
from broker.core.session import Session
from broker.core.topics import topic_matches

log = logging.getLogger(__name__)

#: The FORWARD `kind` of a message for one moved session; body fields `cid` (the client id)
#: and `org` (the node where it was published).
SESSION_KIND = "session"
#: Seconds a forwarding record lives on the old node: route changes spread by gossip within a
#: second or two (README "Convergence at scale"); a record outliving that costs little.
DEFAULT_TTL = 3.0

#: (node, message, extra FORWARD fields) -> 1 if sent, 0 if dropped.
SendSession = Callable[[str, Message, dict[str, Any]], int]
#: (client id, message) -> deliveries made (0: no such session or no subscription matches).
DeliverTo = Callable[[str, Message], int]

_Key = tuple[str, str, str, bytes, int]
#: (delay, callback): run the callback later on the event loop.
Later = Callable[[float, Callable[[], None]], Any]
#: Seconds a forwarded copy waits for a direct copy that may be overtaken (a loop turn or two).
HOLD = 0.2


def _call_later(delay: float, callback: Callable[[], None]) -> Any:
    return asyncio.get_running_loop().call_later(delay, callback)


class _Record:
    __slots__ = ("arrived", "expires", "filters", "target")

    def __init__(
        self, target: str, filters: list[str], expires: float, arrived: Stamp | None = None
    ) -> None:
        self.target = target
        self.filters = filters
        self.expires = expires
        #: When the surrendered copy had arrived here (`Session.arrived`): a QoS 2 message
        #: published before that was not this copy's to pass on (`Broker.late_for`).
        self.arrived = arrived


class _Window:
    __slots__ = ("early", "expires", "filters", "seen")

    def __init__(self, filters: list[str], expires: float, early: set[_Key]) -> None:
        self.filters = filters
        self.expires = expires
        #: Messages delivered to the session here since the import (directly or forwarded).
        self.seen: Counter[_Key] = Counter()
        #: Messages that arrived here while the claim was in flight (not delivered then).
        self.early = early


class Handoff:
    """See the module docstring. `now` is any monotonic clock in seconds."""

    def __init__(
        self,
        name: str,
        send: SendSession,
        deliver: DeliverTo,
        ttl: float = DEFAULT_TTL,
        max_records: int = 10_000,
        max_pending: int = 1_000,
        later: Later | None = None,
    ) -> None:
        self.name = name
        self.later = later or _call_later
        self.send = send
        self.deliver = deliver
        self.ttl = ttl
        self.max_records = max_records
        self.max_pending = max_pending
        self.records: OrderedDict[str, _Record] = OrderedDict()
        self.windows: OrderedDict[str, _Window] = OrderedDict()
        self.pending: dict[str, list[tuple[Message, str]]] = {}
        #: What arrived while claims were in flight (cleared when none is).
        self.early: list[_Key] = []
        self.stats: Counter[str] = Counter()

    @property
    def active(self) -> bool:
        """Anything to look at for a message (the runtime skips `on_message` otherwise)."""
        return bool(self.records or self.windows or self.pending)

    # -- the old node ------------------------------------------------------------------------

    def surrendered(
        self,
        client_id: str,
        target: str,
        filters: list[str],
        now: float,
        arrived: Stamp | None = None,
    ) -> None:
        if target == self.name or not filters:
            return
        self.records.pop(client_id, None)
        self.records[client_id] = _Record(target, filters, now + self.ttl, arrived)
        while len(self.records) > self.max_records:
            self.records.popitem(last=False)
            self.stats["records/evicted"] += 1

    def surrendered_session(self, session: Session, target: str) -> None:
        """`session` goes to `target` now (a surrender, a collected copy, an eviction): a
        forwarding record for its non-shared filters, from this moment, with its arrival."""
        filters = [s.filter for s in session.subscriptions.values() if s.share_group is None]
        self.surrendered(session.client_id, target, filters, time.monotonic(), session.arrived)

    def reclaimed(self, client_id: str) -> None:
        """The client came back here: nothing to forward for it any more."""
        self.records.pop(client_id, None)

    # -- both: every message that arrives or is published here --------------------------------

    def on_message(
        self, message: Message, now: float, sent_to: AbstractSet[str] = frozenset()
    ) -> None:
        """`message` arrived here or was published here (and routed to the nodes `sent_to`).

        A session that moved to one of the nodes `sent_to` is still sent its own copy: the
        routed one can reach that node before the session does (the claim's answer takes the
        longer way, through the id's owner, while a message published here just after the
        surrender goes straight there and finds no session yet); the new node delivers one of
        the two (the arrival window). Counted in `also_routed` (the traffic it costs)."""
        self._expire(now)
        topic = message.topic
        if self.records:
            stamp = message.stamp if message.qos == 2 else None
            for client_id, record in self.records.items():
                if _matches(record.filters, topic):
                    arrived = record.arrived
                    if stamp is not None and arrived is not None and stamp < arrived:
                        self.stats["late_skipped"] += 1  # it reached the session elsewhere
                        continue
                    if record.target in sent_to:
                        self.stats["also_routed"] += 1
                    self._send(record.target, client_id, message, message.node or self.name)
        if self.windows:
            for window in self.windows.values():
                if _matches(window.filters, topic):
                    window.seen[_key(message, message.node or self.name)] += 1
        if self.pending and len(self.early) < self.max_pending * 10:
            self.early.append(_key(message, message.node or self.name))

    def pass_on(self, target: str, client_id: str, message: Message) -> None:
        """Send `message` to the session `client_id` on `target` as a late copy (an evicted
        copy's queue): the new node delivers it unless the session accepted it already."""
        self._send(target, client_id, message, message.node or self.name)

    def _send(self, target: str, client_id: str, message: Message, origin: str) -> None:
        extra = {"kind": SESSION_KIND, "cid": client_id, "org": origin}
        if self.send(target, message, extra):
            self.stats["forwarded"] += 1
        else:
            self.stats["forward/dropped"] += 1

    def covers(self, filt: str, now: float) -> bool:
        """A forwarding record still needs the route of `filt` here (the node keeps announcing
        it until the record ends, so that publishers' nodes keep sending to this node)."""
        self._expire(now)
        return any(filt in record.filters for record in self.records.values())

    def _expire(self, now: float) -> None:
        records = self.records
        while records:
            client_id, record = next(iter(records.items()))
            if record.expires > now:
                break
            del records[client_id]
        windows = self.windows
        while windows:
            client_id, window = next(iter(windows.items()))
            if window.expires > now:
                break
            del windows[client_id]

    # -- the new node ------------------------------------------------------------------------

    def claim_started(self, client_id: str) -> None:
        self.pending.setdefault(client_id, [])
        self.records.pop(client_id, None)

    def claim_finished(self, client_id: str, filters: list[str] | None, now: float) -> None:
        """The claim answered; `filters` are the imported session's (None: nothing imported).
        The forwards held meanwhile are delivered now, before anything newer."""
        held = self.pending.pop(client_id, [])
        early = self.early
        if not self.pending:
            self.early = []
        if filters:
            self.windows.pop(client_id, None)
            arrived = {key for key in early if _matches(filters, key[2])}
            self.windows[client_id] = _Window(filters, now + self.ttl + 2.0, arrived)
        for message, origin in held:
            self._deliver(client_id, message, origin)

    def on_session_forward(self, message: Message, body: dict[str, Any], now: float) -> None:
        """A FORWARD kind `session` from the node that had the session."""
        client_id, origin = body.get("cid"), body.get("org")
        if not isinstance(client_id, str) or not isinstance(origin, str):
            self.stats["malformed"] += 1
            return
        self._expire(now)
        held = self.pending.get(client_id)
        if held is not None:
            if len(held) < self.max_pending:
                held.append((message, origin))
            else:
                self.stats["dropped"] += 1
            return
        self._deliver(client_id, message, origin)

    def _deliver(self, client_id: str, message: Message, origin: str, late: bool = False) -> None:
        """A forwarded copy: delivered unless the session got the message already. A copy of a
        message that did not come here during the claim may be overtaking the direct copy
        (the publisher's node sent both, and the old node's was read first): it waits `HOLD`
        seconds for it."""
        window = self.windows.get(client_id)
        if window is not None:
            key = _key(message, origin)
            if window.seen[key] > 0:  # it came directly, or from another old node already
                self.stats["duplicates"] += 1
                return
            if not late and key not in window.early:
                self.stats["held"] += 1
                self.later(HOLD, lambda: self._deliver(client_id, message, origin, True))
                return
            window.seen[key] += 1
        if self.deliver(client_id, message):
            self.stats["delivered"] += 1
        else:
            self.stats["dropped"] += 1


def deliver_to(broker: Broker, client_id: str, message: Message) -> int:
    """Deliver `message` to the session of `client_id` alone, as `Broker.publish` would through
    its matching non-shared subscriptions (one copy, the highest granted QoS, every
    identifier). 0 when there is no such session or no subscription matches."""
    session = broker.sessions.get(client_id)
    if session is None:
        return 0
    qos = -1
    retain = False
    ids: list[int] | None = None
    for sub in session.subscriptions.values():
        if sub.share_group is not None or not topic_matches(sub.topic_filter, message.topic):
            continue
        if sub.no_local and client_id == message.publisher:
            continue  # MQTT-3.8.3-3
        qos = max(qos, min(message.qos, sub.qos))
        retain = retain or (message.retain and sub.retain_as_published)
        if sub.identifier is not None:
            ids = [*(ids or ()), sub.identifier]
    if qos < 0:
        return 0
    stamp = message.stamp
    if stamp is not None and message.qos == 2 and not session.accept_qos2(stamp):
        broker.qos2_repeats += 1
        return 0  # it reached the session already (counted as dropped by the handoff)
    session.deliver(message, qos, retain, ids, broker.clock())
    return 1


def _matches(filters: list[str], topic: str) -> bool:
    return any(topic_matches(f, topic) for f in filters)


def _key(message: Message, origin: str) -> _Key:
    return (origin, message.publisher, message.topic, message.payload, message.qos)


def plain_filters(state: dict[str, Any] | None) -> list[str]:
    """The non-shared filters of an exported session state (`Session.export_state`)."""
    out: list[str] = []
    for item in (state or {}).get("subscriptions") or ():
        if (
            isinstance(item, list | tuple)
            and item
            and isinstance(item[0], str)
            and not item[0].startswith(("$share/", "$queue/"))
        ):
            out.append(item[0])
    return out
