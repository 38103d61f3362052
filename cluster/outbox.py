"""Reliable QoS 1/2 forwards: the sender's per-peer buffer of unacknowledged batches, and the
receiver's de-duplication by (sender, link sequence number).

Why: a forward that the link drops (the peer was killed, the link was cut, a partition) is
lost even though its publisher already got PUBACK/PUBCOMP. TCP delivers in order on one
connection but says nothing about frames that were queued or in flight when it broke.

Theory of operation
-------------------
Only on a link whose handshake negotiated protocol version 3 (`cluster.wire`), and only for
plain publishes of QoS 1/2 (a message for the peer's own subscribers; retained replication and
shared-group dispatch keep their drop-at-once behaviour, which their callers rely on).

Sender (`Outbox`, one per peer address). Every FORWARD_BATCH that carries such entries gets the
next link sequence number `seq`, and those entries stay in the outbox (`Record`) until the
peer acknowledges them. While the link is not up (connecting, backing off, the peer suspect or
on the far side of a partition) new records are *parked* without a number. When a handshake
with the peer completes (`link_up`; after a reconnect, a heal, or a restart of the peer) the
records already numbered are sent again with their numbers, in order, and then the parked ones
get numbers. Numbers are given only to frames the transport queued, so the receiver sees them
increasing on every connection. The buffer is bounded (`max_messages`, `max_bytes`): an entry
that does not fit is sent without being held (as a QoS 0 one: dropped and counted by the
transport if the link cannot take it); when the peer is declared dead or leaves (`drop_all`),
everything still held is dropped and counted. Nothing is held without bound.

Receiver (`Inbox`). A batch with `seq` is processed only if `seq` is above the last one seen
from that sender's incarnation (its epoch); a resent batch it already processed is skipped and
acknowledged again, so a QoS 2 message is delivered once however often it was resent. The
acknowledgement (FORWARD_ACK `seq`) is cumulative and goes back once per loop turn per sender;
with persistence on, for a batch that went into a persistent session, only once the commit
that holds it is durable (`cluster.receiver`), so a receiver killed before then loses nothing.

With persistence on, the receiver's last (epoch, seq) per sender name is also committed, in the
same transaction as the sessions its batches changed (`broker.core.commit_gate.KeptRecords`,
one record per sender name, its latest epoch only), and read back at start: a batch that the
previous incarnation processed and committed but had not acknowledged is recognised when the
sender resends it, and only acknowledged. Without persistence the record lives in memory (a
restarted node has no sessions to queue a duplicate into anyway). What a crash still loses:
the sender's outbox lives in memory, so a sender that crashes loses what it held.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from broker.core.commit_gate import KeptRecords
from cluster.wire import Entry

__all__ = ["Inbox", "Outbox", "Record"]


@dataclass(slots=True)
class Record:
    """The reliable entries of one batch; `seq` None while parked (never sent)."""

    entries: list[Entry]
    size: int
    seq: int | None = None


@dataclass(slots=True)
class Outbox:
    """Unacknowledged QoS 1/2 forwards to one peer (see the module docstring).

    `records` is in sending order: the numbered records first (increasing), then the
    `unnumbered` parked ones (a suffix: numbers are given in order and only the newest one is
    ever taken back). `resend` holds the numbered records still to send again on the current
    connection, oldest first."""

    max_messages: int
    max_bytes: int
    records: deque[Record] = field(default_factory=deque)
    resend: deque[Record] = field(default_factory=deque)
    messages: int = 0
    size: int = 0
    unnumbered: int = 0
    next_seq: int = 1
    acked: int = 0

    def add(self, entries: list[Entry], size: int) -> tuple[Record | None, int]:
        """Hold as many of `entries` as fit (parked); returns the record (None if none fit)
        and how many entries did not fit (the caller sends those without holding them)."""
        room = self.max_messages - self.messages
        per_entry = size // len(entries) if entries else 0
        if per_entry:
            room = min(room, (self.max_bytes - self.size) // per_entry)
        if room <= 0 or not entries:
            return None, len(entries)
        left = max(0, len(entries) - room)
        if left:
            entries = entries[:room]
            size = per_entry * room
        record = Record(entries, size)
        self.records.append(record)
        self.messages += len(entries)
        self.size += size
        self.unnumbered += 1
        return record, left

    def parked(self) -> list[Record]:
        """The records never sent, in order."""
        n = self.unnumbered
        return list(itertools.islice(self.records, len(self.records) - n, None)) if n else []

    def number(self, record: Record) -> int:
        """Give the oldest parked record the next sequence number (it is being queued)."""
        record.seq = self.next_seq
        self.next_seq += 1
        self.unnumbered -= 1
        return record.seq

    def unnumber(self, record: Record) -> None:
        """The transport refused the frame of the record just numbered: parked again, and
        its number is taken back (the receiver never saw it)."""
        assert record.seq == self.next_seq - 1
        self.next_seq -= 1
        record.seq = None
        self.unnumbered += 1

    def numbered(self) -> list[Record]:
        n = len(self.records) - self.unnumbered
        return list(itertools.islice(self.records, 0, n))

    def ack(self, seq: int) -> int:
        """The peer processed every batch up to `seq`: forget them; returns messages freed."""
        if seq <= self.acked:
            return 0
        self.acked = seq
        freed = 0
        records = self.records
        while records and records[0].seq is not None and records[0].seq <= seq:
            record = records.popleft()
            self.messages -= len(record.entries)
            self.size -= record.size
            freed += len(record.entries)
        return freed

    def drop_all(self) -> int:
        """Everything held is given up (the peer is dead or left); returns the message count.
        The numbering goes on: the same run of the peer may come back (a healed partition)."""
        count = self.messages
        self.records.clear()
        self.resend.clear()
        self.messages = 0
        self.size = 0
        self.unnumbered = 0
        return count


class Inbox:
    """The last batch number processed per sender: name -> (epoch, seq). Kept when the
    sender is declared dead (it may come back with the same epoch, after a partition, and go
    on numbering where it stopped); one pair per node name ever seen. With `kept` (the commit
    gate's records, persistence on) every pair is recorded there too, and a sender not seen in
    this run is looked up there (what the previous run committed)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def accept(self, sender: str, epoch: int, seq: int, kept: KeptRecords | None = None) -> bool:
        """True if the batch `seq` from this run of `sender` is new (and records it)."""
        last = self._last.get(sender)
        key = KEPT_PREFIX + sender
        if last is None and kept is not None:
            last = _pair(kept.get(key))
        if last is not None:
            last_epoch, last_seq = last
            if epoch < last_epoch:
                return True  # a late frame of a previous run: nothing to compare it with
            if epoch == last_epoch and seq <= last_seq:
                return False
        self._last[sender] = (epoch, seq)
        if kept is not None:
            kept.put(key, [epoch, seq])
        return True


#: The key of a sender's record in `KeptRecords` (after it: the sender's node name).
KEPT_PREFIX = "forward_inbox/"


def _pair(value: object) -> tuple[int, int] | None:
    """A kept [epoch, seq] (None for a missing or malformed one: nothing to compare with)."""
    if isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        return value[0], value[1]
    return None
