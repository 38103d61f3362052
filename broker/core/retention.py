"""Retained messages: which write of a topic wins, what a new subscription is sent, and the
tombstones of cleared topics -- the retained half of `Broker`.

Why a module of its own: the last-write-wins rule (hybrid-clock stamps, `broker.core.hlc`) and
its tombstones are one job, which the cluster's anti-entropy and persistence rely on; the store
itself is `broker.core.retained`. `Broker` inherits `Retention`, so `Broker.publish` calls
`self.retain` as before; this module never imports `broker.core.broker`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from broker.core.hlc import HybridClock, Stamp
from broker.core.message import Message, is_expired, retained_stamp
from broker.core.metrics import Metrics, Stats
from broker.core.retained import RetainedStore
from broker.core.session import Session, Subscription
from broker.core.settings import Settings

log = logging.getLogger("broker.core.broker")

#: Clears of retained topics remembered (their stamps), so that an older write of the topic
#: arriving later (a heal, a slow link, a node restarted with the old value) does not bring the
#: message back; at most this many (the oldest go first), each for `retained_tombstone_ttl`.
RETAINED_TOMBSTONES = 10_000


class Retention:
    """Retained writes, reads and tombstones; mixed into `Broker`, whose `__init__` sets the
    attributes declared here."""

    settings: Settings
    clock: Callable[[], float]
    metrics: Metrics
    stats: Stats
    hlc: HybridClock
    retained: RetainedStore[Message]
    #: topic -> stamp of the clear of a retained topic (bounded: RETAINED_TOMBSTONES)
    retained_gone: dict[str, Stamp]
    dirty_retained: set[str] | None

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
