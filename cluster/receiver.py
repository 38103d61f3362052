"""Forwarded messages in: FORWARD and FORWARD_BATCH to the handler of their kind, and the
receiving half of reliable QoS 1/2 forwards (`cluster.outbox`): a numbered batch is processed
once per run of its sender (`Inbox`) and acknowledged with a cumulative FORWARD_ACK, one per
sender per loop turn, sent after the turn's batches were processed.

With persistence on, a batch that went into a persistent session is acknowledged only once the
commit that holds it is durable (`broker.core.commit_gate`): the sender keeps it until then, so
a SIGKILL of this node before the commit loses nothing (the sender sends it again to the next
run of this node). Acks are cumulative, so while one is held for a sender every later one of that
sender waits behind it, in order. Without persistence, or for a batch that changed no persistent
session, the ack goes at the end of the loop turn as before. The de-duplication record
(`Inbox`) is committed with the sessions too, so a batch resent after a restart of this node is
recognised and only acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable

from broker.core.commit_gate import CommitGate
from cluster.outbox import Inbox
from cluster.ports import ForwardHandler
from cluster.wire import (
    Address,
    Body,
    ForwardedRun,
    Hello,
    MessageType,
    WireError,
    batch_seq,
    forward_ack_body,
    parse_forward,
    parse_forward_batch,
)

__all__ = ["Receiver"]

log = logging.getLogger(__name__)


class Receiver:
    """See the module docstring. `kinds` is the runtime's table of FORWARD kinds (shared, so
    `register_forward_kind` reaches it); "publish" must be in it."""

    def __init__(
        self,
        name: str,
        stats: Counter[str],
        clock: Callable[[], float],
        send_frame: Callable[[Address, MessageType, Body], bool],
        kinds: dict[str, ForwardHandler],
        running: Callable[[], bool],
        commit_gate: Callable[[], CommitGate | None] = lambda: None,
    ) -> None:
        self.name = name
        self.stats = stats
        self.clock = clock
        self.send_frame = send_frame
        self.kinds = kinds
        self.running = running
        #: The broker's commit gate (None: no persistence, acks go at once).
        self.commit_gate = commit_gate
        #: Acks held for a commit, per sender (later acks of that sender wait behind them).
        self._held: dict[Address, int] = {}
        #: Numbered batches processed per sender (de-duplication of resends).
        self.inbox = Inbox()
        self._acks: dict[Address, int] = {}
        #: Run entries (v4) in: `cluster.runs.ClusterRuns.deliver`, set by the runtime.
        self.on_run: Callable[[ForwardedRun, Hello], None] | None = None

    def on_forward(self, hello: Hello, body: Body) -> None:
        kind = body.get("kind", "publish")
        handler = self.kinds.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.stats["forward/unknown_kind"] += 1
            return
        try:
            message = parse_forward(body, now=self.clock())
        except WireError as exc:
            self.stats["forward/malformed"] += 1
            log.warning("cluster: malformed FORWARD from %s: %s", hello.name, exc)
            return
        handler(message, body, hello)

    def on_forward_batch(self, hello: Hello, body: Body) -> None:
        """Each message of the batch, in order, to the handler of its kind. A numbered batch
        (`cluster.outbox`) is acknowledged (after the commit of what it changed, see the module
        docstring), and skipped if it was processed already."""
        try:
            seq = batch_seq(body)
        except WireError as exc:
            self.stats["forward/malformed"] += 1
            log.warning("cluster: malformed FORWARD_BATCH from %s: %s", hello.name, exc)
            return
        if seq is None:
            self._deliver_batch(hello, body)
            return
        gate = self.commit_gate()
        marks = gate.marks if gate is not None else 0
        try:
            kept = gate.kept if gate is not None else None
            if not self.inbox.accept(hello.name, hello.epoch, seq, kept):
                self.stats["forward/duplicate_batches"] += 1
                return
            self._deliver_batch(hello, body)
        finally:
            address = hello.address
            if gate is not None and (gate.marks != marks or address in self._held):
                self._held[address] = self._held.get(address, 0) + 1
                gate.hold(functools.partial(self._committed, address, seq))
            else:
                self._ack(address, seq)

    def _deliver_batch(self, hello: Hello, body: Body) -> None:
        try:
            messages, bad = parse_forward_batch(body, now=self.clock())
        except WireError as exc:
            self.stats["forward/malformed"] += 1
            log.warning("cluster: malformed FORWARD_BATCH from %s: %s", hello.name, exc)
            return
        if bad:
            self.stats["forward/malformed"] += bad
            log.warning("cluster: %d malformed messages in a batch from %s", bad, hello.name)
        kinds = self.kinds
        deliver = self.kinds["publish"]
        live = body.get("live") is True  # sent as routed, not held (`Message.live`)
        for item in messages:
            if isinstance(item, ForwardedRun):
                if self.on_run is None:  # (a runtime always sets it)
                    self.stats["forward/unknown_kind"] += item.run.count
                else:
                    self.on_run(item, hello)
                continue
            message, extra = item
            message.live = live
            if not extra:
                deliver(message, extra, hello)
                continue
            kind = extra.get("kind", "publish")
            handler = kinds.get(kind) if isinstance(kind, str) else None
            if handler is None:
                self.stats["forward/unknown_kind"] += 1
                continue
            handler(message, extra, hello)

    def _committed(self, address: Address, seq: int) -> None:
        """The commit holding batch `seq` from `address` is durable: acknowledge it."""
        left = self._held[address] - 1
        if left:
            self._held[address] = left
        else:
            del self._held[address]
        self.stats["forward/acks_after_commit"] += 1
        self._ack(address, seq)

    def _ack(self, address: Address, seq: int) -> None:
        """Acknowledge the numbered batch `seq` from `address`: one FORWARD_ACK per sender per
        loop turn, sent after the turn's batches were processed."""
        acks = self._acks
        if not acks:
            asyncio.get_running_loop().call_soon(self._send_acks)
        if seq > acks.get(address, 0):
            acks[address] = seq

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, {}
        if not self.running():
            return
        for address, seq in acks.items():
            self.send_frame(address, MessageType.FORWARD_ACK, forward_ack_body(self.name, seq))
