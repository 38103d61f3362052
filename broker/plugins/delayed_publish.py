"""delayed_publish: ``$delayed/<seconds>/<topic>`` publishes `<topic>` after a delay (EMQX).

The message_publish hook swallows the `$delayed` message and schedules the real one with
``loop.call_later``. At most ``max_pending`` messages wait at once (default 10000); beyond
that, and for a malformed `$delayed` topic (delay not an integer in 0..4294967, or a target
topic that is empty, has wildcards, or starts with `$delayed` or `$SYS`), the message is
dropped, counted (`dropped_full`, `dropped_invalid` and the broker's ``messages/dropped``) and
logged.

Without persistence, pending messages live in memory only: unloading the plugin or stopping
the node discards them (counted in `discarded`). With persistence (`persistence = true`), each
one is also recorded, with its due time on the wall clock, in the node's `DelayedStore`
(`broker.server.persistence`), which writes it to the `delayed` table within
`persistence_interval` and in full at a graceful stop; a message that fires is deleted from it.
At start the stored messages come back through the store's `listener`: those already due are
published at once (after sessions and retained messages are loaded), the others rescheduled
(counted in `restored`). Unloading the plugin then keeps its messages in the store, for the next
load or start, instead of discarding them. `max_pending` counts restored messages too.
"""

from __future__ import annotations

import asyncio
import logging

from broker.core.message import Message
from broker.core.topics import validate_topic_name
from broker.plugins.base import Plugin, PluginContext
from broker.server.config import plugin_defaults
from broker.server.delayed_store import DelayedStore

__all__ = ["MAX_DELAY", "DelayedPublishPlugin", "parse_delayed"]

log = logging.getLogger(__name__)

PREFIX = "$delayed/"
MAX_DELAY = 4294967  # seconds, as EMQX
DEFAULT_MAX_PENDING: int = plugin_defaults("delayed_publish")["max_pending"]


def parse_delayed(topic: str) -> tuple[int, str] | None:
    """(delay, target topic) of a valid `$delayed/<seconds>/<topic>`; None otherwise."""
    if not topic.startswith(PREFIX):
        return None
    delay_text, sep, target = topic[len(PREFIX) :].partition("/")
    if not sep or not delay_text.isdigit() or not delay_text.isascii():
        return None
    delay = int(delay_text)
    if delay > MAX_DELAY or not validate_topic_name(target):
        return None
    if target.startswith(("$delayed/", "$SYS")):
        return None
    return delay, target


class DelayedPublishPlugin(Plugin):
    name = "delayed_publish"
    description = "Delayed publish: $delayed/<seconds>/<topic>"

    def __init__(self) -> None:
        super().__init__()
        self.max_pending = DEFAULT_MAX_PENDING
        self._pending: dict[int, asyncio.TimerHandle] = {}
        self._next_id = 0
        #: the node's persisted store; None without persistence (memory only)
        self._store: DelayedStore | None = None
        self.scheduled = 0
        self.published = 0
        self.dropped_full = 0
        self.dropped_invalid = 0
        self.discarded = 0
        self.restored = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        self.max_pending = int(ctx.config.get("max_pending", DEFAULT_MAX_PENDING))
        self.attach(ctx.broker.hooks.message_publish, self.on_message_publish)
        store = self._store = ctx.delayed_store
        if store is not None:
            # At start the store is still empty (it opens after the plugins load) and hands
            # its rows to the listener; on a runtime load it holds what a previous instance
            # left.
            store.listener = self._restore
            for key, (due, message) in sorted(store.pending.items()):
                self._restore(key, due, message)

    def unload(self) -> None:
        super().unload()
        store = self._store
        if store is not None:
            if store.listener == self._restore:
                store.listener = None
            if self._pending:  # they stay in the store (and on disk) for the next load
                log.info("delayed_publish: %d pending messages kept for the next load",
                         len(self._pending))  # fmt: skip
        else:
            self.discarded += len(self._pending)
            if self._pending:
                log.warning("delayed_publish: discarding %d pending messages", len(self._pending))
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        self._store = None

    def on_message_publish(self, message: Message) -> Message | None:
        if not message.topic.startswith(PREFIX):
            return message
        parsed = parse_delayed(message.topic)
        counters = self.broker.metrics.counters
        if parsed is None:
            self.dropped_invalid += 1
            counters["messages/dropped"] += 1
            log.info("delayed_publish: dropping malformed %r", message.topic)
            return None
        if len(self._pending) >= self.max_pending:
            self.dropped_full += 1
            counters["messages/dropped"] += 1
            log.warning(
                "delayed_publish: %d messages pending, dropping %r", self.max_pending, message.topic
            )
            return None
        delay, target = parsed
        broker = self.broker
        delayed = Message(
            target,
            message.payload,
            message.qos,
            message.retain,
            dict(message.properties),
            message.publisher,
            message.timestamp,
            message.node,
        )
        loop = asyncio.get_running_loop()
        if self._store is not None:
            key = self._store.add(broker.clock() + delay, delayed)  # wall clock: survives
        else:
            self._next_id += 1
            key = self._next_id
        self._pending[key] = loop.call_later(delay, self._fire, key, delayed)
        self.scheduled += 1
        return None

    def _restore(self, key: int, due: float, message: Message) -> None:
        """A stored message (loaded at start, or left by a previous load): schedule it for
        its due time, at once when that has passed."""
        if key in self._pending:
            return
        delay = max(0.0, due - self.broker.clock())
        self._pending[key] = asyncio.get_running_loop().call_later(delay, self._fire, key, message)
        self.restored += 1

    def _fire(self, key: int, message: Message) -> None:
        if self._pending.pop(key, None) is None:
            return
        broker = self.broker
        if self._store is not None:
            self._store.remove(key)  # its row goes at the next flush
        message.timestamp = broker.clock()
        broker.publish(message, hooks=True)  # web_hook etc. see it now
        self.published += 1
