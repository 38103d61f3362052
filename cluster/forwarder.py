"""Forwarded messages to each peer, sent as one FORWARD_BATCH per peer per loop turn.

Why: a message forwarded on its own costs a msgpack map, a frame, a wake of the link's writer
and, on the receiving node, a frame decode and a handler call; together that was more than the
client PUBLISH it came from, so a second node added less than it cost. Batched, a loop turn's
forwards to one peer (all the PUBLISHes read from every client in that turn) become one list of
compact entries in one frame, and the receiver decodes them with one `msgpack` call.

Theory of operation
-------------------
`send(address, message, extra)` appends the message's entry (`wire.forward_entry`) to that
peer's pending batch and, for the first message of a turn, schedules `flush` with `call_soon`:
it runs after every callback already ready in this turn (the reads of all the clients that had
data), so a batch holds what one turn produced. A batch that reaches `max_batch` messages or
`max_batch_bytes` is sent at once (a frame stays far below the frame limit). Order is kept: a
peer gets its messages in the order they were routed.

Compatibility (`cluster.wire`): only a peer whose handshake negotiated version 2 gets batches;
before the first handshake with it, or for a version-1 peer, each message goes as a FORWARD at
once. A peer whose link cannot take a frame now (backoff, queue full) gets the single FORWARD,
which the transport drops and counts at once, so the caller learns of the drop synchronously
(shared-group dispatch relies on that), as before batching.

Accounting: a batch that the transport drops is reported to `on_drop` as that many messages
(`Transport.send(weight=...)`). A batch that cannot be encoded (one bad entry) is resent as
single FORWARDs, so only the bad message is lost (`on_unencodable`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from broker.core.message import Message
from cluster.transport import Transport
from cluster.wire import (
    INTRODUCED_IN,
    Address,
    Body,
    Entry,
    MessageType,
    WireError,
    entry_size,
    forward_batch_body,
    forward_body,
    forward_entry,
)

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

_BATCH_VERSION = INTRODUCED_IN[MessageType.FORWARD_BATCH]


class _Batch:
    __slots__ = ("entries", "messages", "size")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.messages: list[tuple[Message, Body | None]] = []  # for the unencodable fallback
        self.size = 0


class Forwarder:
    """See the module docstring."""

    def __init__(
        self,
        transport: Transport,
        origin: str,
        stats: Counter[str],
        on_unencodable: Callable[[int], None],
        max_batch: int = 1000,
        max_batch_bytes: int = 512 * 1024,
    ) -> None:
        self.transport = transport
        self.origin = origin
        self.stats = stats
        self.on_unencodable = on_unencodable
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._batches: dict[Address, _Batch] = {}
        self._scheduled = False

    def send(self, address: Address, message: Message, extra: Body | None = None) -> bool:
        """Forward `message` (FORWARD fields `extra`: kind, shared) to `address`; False if it
        was dropped at once (counted by the transport)."""
        transport = self.transport
        version = transport.peer_version(address)
        if version is None or version < _BATCH_VERSION or not transport.accepting(address):
            return self.send_single(address, message, extra)
        batch = self._batches.get(address)
        if batch is None:
            batch = self._batches[address] = _Batch()
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        entry_ = forward_entry(message, extra)
        batch.entries.append(entry_)
        batch.messages.append((message, extra))
        batch.size += entry_size(entry_)
        if len(batch.entries) >= self.max_batch or batch.size >= self.max_batch_bytes:
            del self._batches[address]
            self._send_batch(address, batch)
        return True

    def send_single(self, address: Address, message: Message, extra: Body | None = None) -> bool:
        """One FORWARD frame now (version 1), after whatever is pending for `address`."""
        pending = self._batches.pop(address, None)
        if pending is not None:
            self._send_batch(address, pending)
        body = forward_body(message, self.origin)
        if extra:
            body.update(extra)
        try:
            return self.transport.send(address, MessageType.FORWARD, body)
        except WireError as exc:
            self.stats["send/unencodable"] += 1
            log.error("cluster: cannot forward a message on %r: %s", message.topic, exc)
            self.on_unencodable(1)
            return False

    def flush(self) -> None:
        """Send every pending batch (end of the loop turn, or before leaving)."""
        self._scheduled = False
        batches, self._batches = self._batches, {}
        for address, batch in batches.items():
            self._send_batch(address, batch)

    def pending(self) -> int:
        return sum(len(b.entries) for b in self._batches.values())

    def _send_batch(self, address: Address, batch: _Batch) -> None:
        count = len(batch.entries)
        body = forward_batch_body(self.origin, batch.entries)
        try:
            self.transport.send(address, MessageType.FORWARD_BATCH, body, weight=count)
        except WireError:
            # One entry cannot be packed (or the batch outgrew the frame limit): one by one,
            # so that only what cannot be sent is lost.
            self.stats["forward/batch_split"] += 1
            for message, extra in batch.messages:
                self.send_single(address, message, extra)
            return
        self.stats["forward/batches"] += 1
        self.stats["forward/batched"] += count
