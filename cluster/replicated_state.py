"""The broker's replicated state as the cluster exchanges it: retained messages, bans and the
last-writer-wins tables, each with its dump (what a peer pulls), merge and digest
(`cluster.replicas`).

Why here and not in the runtime: these are the rules of convergence, apart from the driving of
links and timers. Every table is ordered by hybrid-clock stamps (`broker.core.hlc`), so a
merge in any order, any number of times, leaves every node with the same contents:

* **retained**: a message carries the stamp of its write (`Message.stamp`); a clear leaves a
  tombstone stamp (`Broker.retained_gone`). The dump holds both (bounded); the merge passes
  each through `Broker.retain`, where the larger stamp wins. A message from an older node has
  no stamp: it is ordered by its wall time (`hlc.legacy_stamp`).
* **banned**: each ban carries the stamp of the API call that made it, a removal leaves a
  tombstone stamp (`BannedTable.gone`); the later of the two wins (`BannedTable.merge`). A
  ban from an older node has no stamp: it is ordered by its `at`.
* **tables**: `broker.core.replicated` (rows stamped, tombstones for deletions).

Every table is pulled from a node that joins or comes back from the dead, and from a peer
whose digest differs (the periodic anti-entropy round of `cluster.replicas`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from broker.core.banned import BanEntry
from broker.core.broker import Broker
from broker.core.hlc import legacy_stamp, stamp_from_wire
from broker.core.message import Message, is_expired, retained_stamp
from cluster.replicas import ReplicaSet
from cluster.wire import Body, WireError, forward_body, parse_forward

__all__ = ["BrokerState", "stamp_retained"]

log = logging.getLogger(__name__)


def stamp_retained(message: Message, body: Body) -> None:
    """Give a retained message received from a peer the stamp it was written with (`hlc` in
    the FORWARD fields); a peer without a clock sent none: its arrival wall time, counter 0."""
    stamp = stamp_from_wire(body.get("hlc"))
    message.stamp = stamp if stamp is not None else legacy_stamp(int(message.timestamp * 1000))


class BrokerState:
    """Registers the broker's tables with `replicas`; see the module docstring."""

    def __init__(
        self, broker: Broker, replicas: ReplicaSet, max_messages: int, max_bytes: int
    ) -> None:
        self.broker = broker
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        replicas.add(
            "retained",
            self.retained_dump,
            self.merge_retained,
            resync=True,
            digest=self.retained_digest,
        )
        replicas.add(
            "banned",
            self.banned_dump,
            self.merge_banned,
            resync=True,
            digest=self.banned_digest,
            args={"gone": True},
        )
        replicas.add(
            "tables", self.tables_dump, self.merge_tables, resync=True, digest=self.tables_digest
        )

    # -- retained --------------------------------------------------------------------------

    async def retained_dump(self, args: dict[str, Any], from_node: str) -> dict[str, Any]:
        out: list[Body] = []
        size = 0
        truncated = False
        origin = self.broker.node_name
        for _topic, message in self.broker.retained.match("#"):
            if len(out) >= self.max_messages or size >= self.max_bytes:
                truncated = True
                break
            body = forward_body(message, message.node or origin)
            body["hlc"] = retained_stamp(message).to_wire()
            out.append(body)
            size += len(message.payload) + len(message.topic) + 64
        if truncated:
            log.warning(
                "cluster: retained_dump for %s truncated at %d messages", from_node, len(out)
            )
        gone = [[topic, stamp.to_wire()] for topic, stamp in self.broker.retained_gone.items()]
        return {"messages": out, "truncated": truncated, "gone": gone[-self.max_messages :]}

    def merge_retained(self, answer: Any) -> int:
        """Each write of the peer's dump through the last-writer rule; returns how many won."""
        broker = self.broker
        messages = answer.get("messages") if isinstance(answer, dict) else None
        if not isinstance(messages, list) or not broker.settings.retain_available:
            return 0
        changed = 0
        now = broker.clock()
        for body in messages:
            try:
                message = parse_forward(body) if isinstance(body, dict) else None
            except WireError:
                message = None
            if message is None or not message.payload:
                continue
            if message.properties and is_expired(message, now):
                continue
            stamp_retained(message, body)
            changed += broker.retain(message)
        gone = answer.get("gone")
        for item in gone if isinstance(gone, list) else ():
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
                continue
            stamp = stamp_from_wire(item[1])
            if stamp is None:
                continue
            clear = Message(item[0], b"", 0, True, timestamp=now)
            clear.stamp = stamp
            changed += broker.retain(clear)
        return changed

    def retained_digest(self) -> str:
        """What a peer must hold the same: each retained topic and the stamp of its write
        (`$SYS/...` topics are each node's own: `#` does not match them, as in the dump)."""
        digest = hashlib.blake2b(digest_size=16)
        for topic, message in sorted(self.broker.retained.match("#"), key=lambda item: item[0]):
            stamp = retained_stamp(message)
            digest.update(f"{topic}\0{stamp.ms}\0{stamp.counter}\0{stamp.node}\n".encode())
        return digest.hexdigest()

    # -- banned ----------------------------------------------------------------------------

    async def banned_dump(self, args: dict[str, Any], from_node: str) -> Any:
        """The bans; asked with `gone` (this version), also the removals remembered, as
        `{"entries", "gone"}` (an older node asks without and gets the bare list)."""
        entries = [entry.to_dict() for entry in self.broker.banned.entries()]
        if not args.get("gone"):
            return entries
        gone = [[k, w, s.to_wire()] for (k, w), s in self.broker.banned.gone.items()]
        return {"entries": entries, "gone": gone}

    def merge_banned(self, answer: Any) -> int:
        """The later write of each ban wins (`BannedTable.merge`, `merge_gone`); clients a
        ban taken here matches are disconnected."""
        if isinstance(answer, dict):
            items, gone = answer.get("entries"), answer.get("gone")
        else:
            items, gone = answer, None
        table = self.broker.banned
        clock = self.broker.hlc
        added = changed = 0
        for item in items if isinstance(items, list) else ():
            try:
                entry = BanEntry.from_dict(item)
                if entry.stamp is not None:
                    clock.update(entry.stamp)
                added += table.merge(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        for item in gone if isinstance(gone, list) else ():
            stamp = stamp_from_wire(item[2]) if isinstance(item, list) and len(item) == 3 else None
            if stamp is None or not isinstance(item[0], str) or not isinstance(item[1], str):
                continue
            clock.update(stamp)
            changed += table.merge_gone(item[0], item[1], stamp)
        if added:
            self.broker.kick_banned()
        return added + changed

    def banned_digest(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        rows = sorted((e.kind, e.who, e.order()) for e in self.broker.banned.entries())
        for kind, who, stamp in rows:
            digest.update(f"{kind}\0{who}\0{stamp.ms}\0{stamp.counter}\0{stamp.node}\n".encode())
        return digest.hexdigest()

    # -- the last-writer-wins tables -------------------------------------------------------

    async def tables_dump(self, args: dict[str, Any], from_node: str) -> dict[str, Any]:
        return self.broker.replicated.dump_all()

    def merge_tables(self, answer: Any) -> int:
        """The peer's rows, newer row of each key winning (`ReplicatedTables.merge_all`);
        their stamps move our clock first, so our next write is ordered after them."""
        clock = self.broker.hlc
        if isinstance(answer, dict):
            for rows in answer.values():
                for row in rows if isinstance(rows, list) else ():
                    stamp = stamp_from_wire(row.get("hlc")) if isinstance(row, dict) else None
                    if stamp is not None:
                        clock.update(stamp)
        return self.broker.replicated.merge_all(answer)

    def tables_digest(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for name, rows in self.broker.replicated.dump_all().items():
            for row in rows:
                digest.update(f"{name}\0{row['key']}\0{row.get('hlc') or row['at']}\n".encode())
        return digest.hexdigest()
