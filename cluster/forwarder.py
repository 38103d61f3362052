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
data), so a batch holds what one turn produced. A batch that reaches `max_batch` entries or
`max_batch_bytes` is sent at once (a frame stays far below the frame limit). Order is kept: a
peer gets its messages in the order they were routed.

Compatibility (`cluster.wire`): only a peer whose handshake negotiated version 2 gets batches;
before the first handshake with it, or for a version-1 peer, each message goes as a FORWARD at
once. A peer whose link cannot take a frame now (backoff, queue full) gets the single FORWARD,
which the transport drops and counts at once, so the caller learns of the drop synchronously
(shared-group dispatch relies on that), as before batching.

Reliable QoS 1/2 (`cluster.outbox`): on a link that negotiated version 3, the plain publishes of
QoS 1/2 in a batch are also held in that peer's `Outbox` until the peer acknowledges the batch's
sequence number (FORWARD_ACK); they are parked while the link is down and sent again, in
order, when a handshake with the peer completes (`link_up`). `forget` (the peer left, or its
grace after a dead verdict ended: `cluster.dead_hold`) drops and counts what is still held.
Within that grace the peer has no link (closed at the verdict): its outbox alone says it takes
numbered batches, new ones are parked, and the link is dialled until it is up again.

Runs (`send_run`, `cluster.runs`): a run of plain QoS 0 frames from one client goes as ONE
entry (`wire.run_entry`) of the peer's batch, in order with the other forwards, only on a link
that negotiated version 4 (`wire.RUN_VERSION`). `max_batch` bounds a batch's entries (the
work per entry, encoding and parsing it, is what it limits), so a run counts there as one,
and a turn's runs share frames of up to `max_batch_bytes` (with the count of messages as
the bound, a batch was sent for every 1,000 messages, about two runs, and each frame cost
both ends a fixed amount); it counts as its number of messages in every count below, and
is never held (QoS 0).

Accounting: a batch that the transport drops is reported to `on_drop` as that many messages
(`Transport.send(weight=...)`). A batch that cannot be encoded (one bad entry) is resent as
single FORWARDs, so only the bad message is lost (`on_unencodable`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable

from broker.core.message import Message
from broker.core.runs_delivery import run_messages
from cluster.outbox import Outbox, Record
from cluster.transport import Transport
from cluster.wire import (
    INTRODUCED_IN,
    RUN_VERSION,
    Address,
    Body,
    Entry,
    ForwardedRun,
    Hello,
    MessageType,
    WireError,
    entry_size,
    entry_weight,
    forward_batch_body,
    forward_body,
    forward_entry,
    run_entry,
)

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

_BATCH_VERSION = INTRODUCED_IN[MessageType.FORWARD_BATCH]
_RELIABLE_VERSION = INTRODUCED_IN[MessageType.FORWARD_ACK]


class _Batch:
    __slots__ = ("count", "entries", "messages", "reliable", "reliable_size", "size")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        #: per entry, for the unencodable fallback
        self.messages: list[tuple[Message, Body | None] | ForwardedRun] = []
        self.count = 0  # messages (a run entry counts its frames)
        self.size = 0
        self.reliable: list[Entry] = []  # the QoS 1/2 plain publishes (held until acked)
        self.reliable_size = 0


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
        max_held: int = 50_000,
        max_held_bytes: int = 16 * 1024 * 1024,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.transport = transport
        self.origin = origin
        self.stats = stats
        self.on_unencodable = on_unencodable
        #: Held messages given up (buffer full, the peer dead): counted as dropped.
        self.on_dropped = on_dropped or on_unencodable
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._batches: dict[Address, _Batch] = {}
        self._boxes: dict[Address, Outbox] = {}
        self._redialling: set[Address] = set()
        #: Seconds between two dials of a peer we hold messages for while its link is down.
        self.redial_interval = 0.25
        self._scheduled = False

    def send(self, address: Address, message: Message, extra: Body | None = None) -> bool:
        """Forward `message` (FORWARD fields `extra`: kind, shared) to `address`; False if it
        was dropped at once (counted by the transport). A QoS 1/2 publish to a version-3 peer
        is held (`cluster.outbox`) even while its link is down."""
        transport = self.transport
        version = transport.peer_version(address)
        reliable = bool(message.qos) and not extra and self._reliable(address, version)
        if not reliable and (
            version is None or version < _BATCH_VERSION or not transport.accepting(address)
        ):
            return self.send_single(address, message, extra)
        batch = self._batch(address)
        entry_ = forward_entry(message, extra)
        size = entry_size(entry_)
        batch.entries.append(entry_)
        batch.messages.append((message, extra))
        batch.count += 1
        batch.size += size
        if reliable:
            batch.reliable.append(entry_)
            batch.reliable_size += size
        if len(batch.entries) >= self.max_batch or batch.size >= self.max_batch_bytes:
            del self._batches[address]
            self._send_batch(address, batch)
        return True

    def send_run(self, address: Address, forwarded: ForwardedRun) -> bool:
        """Forward a run of QoS 0 messages as one entry of `address`'s batch; False (nothing
        done) when that peer cannot take it now (its link did not negotiate `RUN_VERSION`, or
        cannot take a frame): the caller sends the messages one by one."""
        transport = self.transport
        version = transport.peer_version(address)
        if version is None or version < RUN_VERSION or not transport.accepting(address):
            return False
        batch = self._batch(address)
        entry_ = run_entry(forwarded.run, forwarded.publisher)
        batch.entries.append(entry_)
        batch.messages.append(forwarded)
        batch.count += forwarded.run.count
        batch.size += entry_size(entry_)
        self.stats["forward/runs"] += 1
        if len(batch.entries) >= self.max_batch or batch.size >= self.max_batch_bytes:
            del self._batches[address]
            self._send_batch(address, batch)
        return True

    def _reliable(self, address: Address, version: int | None) -> bool:
        """The peer at `address` takes numbered batches: its last handshake negotiated version
        3, or, with no link now (a peer declared dead, whose link was closed, or one that moved
        to a new address), we hold messages for it (only ever done for a version-3 peer; a
        handshake with an older one drops them, `link_up`)."""
        if version is not None:
            return version >= _RELIABLE_VERSION
        return address in self._boxes

    def _batch(self, address: Address) -> _Batch:
        """The pending batch of `address`, new (and a flush scheduled) if there is none."""
        batch = self._batches.get(address)
        if batch is None:
            batch = self._batches[address] = _Batch()
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        return batch

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
        return sum(b.count for b in self._batches.values())

    def held(self) -> int:
        """QoS 1/2 messages waiting for a peer's acknowledgement (sent or parked)."""
        return sum(box.messages for box in self._boxes.values())

    # -- reliable forwards (cluster.outbox) ------------------------------------------------

    def ack(self, address: Address, seq: int) -> None:
        """FORWARD_ACK from the peer at `address`: it processed every batch up to `seq`."""
        box = self._boxes.get(address)
        if box is not None:
            self.stats["forward/acked"] += box.ack(seq)

    def link_up(self, address: Address, peer: Hello) -> None:
        """A handshake with `address` completed: what it has not acknowledged goes again, in
        order (a new run of the peer gets it too: its clients' sessions came back with it),
        then what was parked. A version-3 peer gets its (empty) outbox now: with the link
        closed later (a dead verdict), it is what says the peer takes numbered batches."""
        box = self._boxes.get(address)
        version = self.transport.peer_version(address)
        reliable = version is not None and version >= _RELIABLE_VERSION
        if box is None and reliable:
            box = self._box(address)
        if box is None or not box.records:
            return
        if not reliable:
            self._give_up(address, "peer_version")  # the peer was replaced by an older node
            return
        box.resend = deque(box.numbered())
        self._pump(address, box)

    def resume(self, address: Address) -> None:
        """Hold on for `address` (a peer declared dead, within its grace, or back from it):
        what is held goes out now if its link is up, else the link is dialled until it is
        (`_redial`)."""
        box = self._boxes.get(address)
        if box is not None and box.records:
            self._pump(address, box)

    def forget(self, address: Address) -> None:
        """The peer is dead or left: what is held for it is dropped and counted. (The outbox
        keeps its numbering: the same run of the peer may come back after a partition.)"""
        self._give_up(address, "peer_gone")

    def move(self, old: Address, new: Address) -> None:
        """The peer came back on another address (a new pod IP): what it has not
        acknowledged waits for a link to the new one."""
        box = self._boxes.pop(old, None)
        if box is None:
            return
        if new in self._boxes:  # (two names swapped addresses: not worth merging)
            self._boxes[old] = box
            self._give_up(old, "peer_moved")
            del self._boxes[old]
            return
        self._boxes[new] = box
        if box.records:
            self._redial(new)

    def _give_up(self, address: Address, why: str) -> None:
        box = self._boxes.get(address)
        if box is None:
            return
        count = box.drop_all()
        if count:
            self.stats["forward/held_dropped"] += count
            self.stats["forward/held_dropped/" + why] += count
            self.on_dropped(count)
            log.info("cluster: %d held messages for %s:%d dropped (%s)", count, *address, why)

    def _box(self, address: Address) -> Outbox:
        box = self._boxes.get(address)
        if box is None:
            box = self._boxes[address] = Outbox(self.max_held, self.max_held_bytes)
        return box

    def _send_record(self, address: Address, record: Record) -> bool:
        body = forward_batch_body(self.origin, record.entries)
        body["seq"] = record.seq
        try:
            return self.transport.send(address, MessageType.FORWARD_BATCH, body, weight=0)
        except WireError as exc:  # the entries were packed once: cannot happen
            log.error("cluster: cannot send a held batch to %s:%d: %s", *address, exc)
            return False

    def _pump(self, address: Address, box: Outbox) -> None:
        """Send what is due on the link, in order: the resends of this connection, then the
        parked records; stop at the first frame the transport refuses (a full queue), which
        waits for the next call. A link that is down is dialled instead."""
        if not self.transport.is_up(address):
            self._redial(address)
            return
        resend = box.resend
        while resend:
            record = resend[0]
            if record.seq is not None and record.seq > box.acked:  # (else freed meanwhile)
                if not self._send_record(address, record):
                    return
                self.stats["forward/resent"] += len(record.entries)
            resend.popleft()
        for record in box.parked():
            box.number(record)
            if not self._send_record(address, record):
                box.unnumber(record)
                return

    def _send_reliable(self, address: Address, batch: _Batch) -> bool:
        """The batch to a version-3 peer; False if it must go the old way (unencodable)."""
        box = self._box(address)
        record, left = box.add(batch.reliable, batch.reliable_size)
        if left:
            self.stats["forward/not_held"] += left  # sent below as a QoS 0 one would be
        transport = self.transport
        count = batch.count
        if (
            record is not None
            and box.unnumbered == 1
            and not box.resend
            and transport.is_up(address)
        ):
            # The usual case: nothing else waits, one frame with every entry of the batch.
            body = forward_batch_body(self.origin, batch.entries)
            body["seq"] = box.number(record)
            body["live"] = True  # as routed, link up: not held (`Message.live`)
            try:
                ok = transport.send(
                    address, MessageType.FORWARD_BATCH, body, weight=count - len(record.entries)
                )
            except WireError:
                box.unnumber(record)
                box.records.pop()  # the newest; the old way sends the batch one by one
                box.unnumbered -= 1
                box.messages -= len(record.entries)
                box.size -= record.size
                return False
            if not ok:
                box.unnumber(record)
            self.stats["forward/batches"] += 1
            self.stats["forward/batched"] += count
            return True
        kept = {id(e) for e in record.entries} if record is not None else set()
        others = [i for i, e in enumerate(batch.entries) if id(e) not in kept]
        if others:
            self._send_plain(address, batch, others)
        if record is not None and not transport.is_up(address):
            self.stats["forward/parked"] += len(record.entries)
        self._pump(address, box)
        return True

    def _redial(self, address: Address) -> None:
        """Dial a peer we hold messages for, again every `redial_interval`, until its link is
        up or nothing is held (a peer declared dead has them dropped): links otherwise
        reconnect only when some frame is sent to them."""
        if address in self._redialling:
            return
        self._redialling.add(address)
        self.transport.connect(address)
        asyncio.get_running_loop().call_later(self.redial_interval, self._redial_tick, address)

    def _redial_tick(self, address: Address) -> None:
        self._redialling.discard(address)
        box = self._boxes.get(address)
        if box is not None and box.records and not self.transport.is_up(address):
            self._redial(address)

    def _send_plain(self, address: Address, batch: _Batch, indexes: list[int]) -> None:
        """The entries of `batch` at `indexes` without a number (not held)."""
        entries = [batch.entries[i] for i in indexes]
        body = forward_batch_body(self.origin, entries)
        weight = sum(entry_weight(e) for e in entries)
        try:
            self.transport.send(address, MessageType.FORWARD_BATCH, body, weight=weight)
        except WireError:
            self.stats["forward/batch_split"] += 1
            for i in indexes:
                self._one_by_one(address, batch.messages[i])
            return
        self.stats["forward/batches"] += 1
        self.stats["forward/batched"] += weight

    def _one_by_one(
        self, address: Address, item: tuple[Message, Body | None] | ForwardedRun
    ) -> None:
        """One entry of a batch that cannot be packed, as single FORWARDs (a run's messages
        each; stamped 0: a receiver stamps a forward with its own clock)."""
        if isinstance(item, ForwardedRun):
            for message in run_messages(item.run, item.publisher, 0.0, self.origin):
                self.send_single(address, message)
        else:
            self.send_single(address, *item)

    def _send_batch(self, address: Address, batch: _Batch) -> None:
        count = batch.count
        version = self.transport.peer_version(address)
        if (
            batch.reliable
            and self._reliable(address, version)
            and self._send_reliable(address, batch)
        ):
            return
        body = forward_batch_body(self.origin, batch.entries)
        try:
            self.transport.send(address, MessageType.FORWARD_BATCH, body, weight=count)
        except WireError:
            # One entry cannot be packed (or the batch outgrew the frame limit): one by one,
            # so that only what cannot be sent is lost.
            self.stats["forward/batch_split"] += 1
            for item in batch.messages:
                self._one_by_one(address, item)
            return
        self.stats["forward/batches"] += 1
        self.stats["forward/batched"] += count
