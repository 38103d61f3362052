"""Forwarded messages in: FORWARD and FORWARD_BATCH to the handler of their kind, and the
receiving half of reliable QoS 1/2 forwards (`cluster.outbox`): a numbered batch is processed
once per run of its sender (`Inbox`) and acknowledged with a cumulative FORWARD_ACK, one per
sender per loop turn, sent after the turn's batches were processed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from cluster.outbox import Inbox
from cluster.ports import ForwardHandler
from cluster.wire import (
    Address,
    Body,
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
    ) -> None:
        self.name = name
        self.stats = stats
        self.clock = clock
        self.send_frame = send_frame
        self.kinds = kinds
        self.running = running
        #: Numbered batches processed per sender (de-duplication of resends).
        self.inbox = Inbox()
        self._acks: dict[Address, int] = {}

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
        (`cluster.outbox`) is acknowledged, and skipped if it was processed already."""
        try:
            seq = batch_seq(body)
        except WireError as exc:
            self.stats["forward/malformed"] += 1
            log.warning("cluster: malformed FORWARD_BATCH from %s: %s", hello.name, exc)
            return
        if seq is not None:
            self._ack(hello.address, seq)
            if not self.inbox.accept(hello.name, hello.epoch, seq):
                self.stats["forward/duplicate_batches"] += 1
                return
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
        for message, extra in messages:
            if not extra:
                deliver(message, extra, hello)
                continue
            kind = extra.get("kind", "publish")
            handler = kinds.get(kind) if isinstance(kind, str) else None
            if handler is None:
                self.stats["forward/unknown_kind"] += 1
                continue
            handler(message, extra, hello)

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
