"""Will messages: published when a connection ends badly, possibly after a delay (MQTT 5 3.1.3.2.2).

Theory of operation
-------------------
When a connection ends without a DISCONNECT that discards the will (`Channel.finish`), its will
is published now, or, for a 5.0 will with a Will Delay Interval, at the earlier of the delay and
the end of the session (MQTT-3.1.2-8): the deadline `now + min(delay, session expiry)` goes into
`WillTimers`, which the broker checks on every `tick()` (about once a second). A new connection
for the same client id before the deadline (`Channel` after CONNECT) takes the pending will out:
it is dropped when the session continues (MQTT-3.1.3-9) and published at once when the new
connection starts a clean session, because that ends the old session.

The will is authorized and passed through the publish hooks at the moment it is published, as a
message that arrives then (its Message Expiry Interval starts then); the Will Delay Interval is
a will property only and is never forwarded in the PUBLISH.

Persistence (`broker.server.persistence`) keeps pending wills across a restart: it sets
`WillTimers.dirty`, a set of the client ids whose pending will was added or removed since its
last flush, and stores each one with `pending_will_to_dict`. The deadline is the broker's clock,
which is the wall clock on a node, so it keeps its meaning after a restart.
"""

from __future__ import annotations

from typing import Any

from broker.core.hooks import ClientInfo
from broker.core.message import Message, message_from_dict, message_to_dict
from broker.protocol.constants import PropertyId
from broker.protocol.packets import Will

_WILL_ONLY = PropertyId.WILL_DELAY_INTERVAL


class PendingWill:
    __slots__ = ("client_id", "deadline", "info", "will")

    def __init__(self, client_id: str, info: ClientInfo, will: Will, deadline: float) -> None:
        self.client_id = client_id
        self.info = info
        self.will = will
        self.deadline = deadline


class WillTimers:
    """Wills waiting for their delay, by client id (at most one per client id)."""

    __slots__ = ("dirty", "pending")

    def __init__(self) -> None:
        self.pending: dict[str, PendingWill] = {}
        #: Set by persistence: client ids whose pending will changed since its last flush.
        #: None = nothing is persisted (no bookkeeping).
        self.dirty: set[str] | None = None

    def add(self, client_id: str, info: ClientInfo, will: Will, deadline: float) -> None:
        self.pending[client_id] = PendingWill(client_id, info, will, deadline)
        if self.dirty is not None:
            self.dirty.add(client_id)

    def take(self, client_id: str) -> PendingWill | None:
        """Remove and return the pending will of `client_id`, if any."""
        if not self.pending:  # every CONNECT asks: the common answer stays cheap
            return None
        pending = self.pending.pop(client_id, None)
        if pending is not None and self.dirty is not None:
            self.dirty.add(client_id)
        return pending

    def due(self, now: float) -> list[PendingWill]:
        """Remove and return every will whose deadline has come."""
        if not self.pending:
            return []
        ready = [p for p in self.pending.values() if p.deadline <= now]
        for pending in ready:
            del self.pending[pending.client_id]
            if self.dirty is not None:
                self.dirty.add(pending.client_id)
        return ready

    def __len__(self) -> int:
        return len(self.pending)


def pending_will_to_dict(pending: PendingWill) -> dict[str, Any]:
    """A plain dict of a pending will (deadline, client, will as a message dict) to store."""
    info = pending.info
    will = pending.will
    client = [
        info.client_id,
        info.username,
        info.peer_host,
        info.peer_port,
        info.protocol_level,
        info.listener,
    ]
    message = Message(will.topic, will.payload, will.qos, will.retain, will.properties)
    return {"deadline": pending.deadline, "info": client, "will": message_to_dict(message)}


def pending_will_from_dict(client_id: str, data: Any) -> PendingWill:
    """The inverse of `pending_will_to_dict`; raises ValueError on anything malformed."""
    if not isinstance(data, dict):
        raise ValueError("a pending will must be a map")
    deadline, info = data.get("deadline"), data.get("info")
    if not isinstance(deadline, int | float) or isinstance(deadline, bool):
        raise ValueError(f"bad will deadline {deadline!r:.100}")
    if not isinstance(info, list) or len(info) != 6:
        raise ValueError(f"bad will client {info!r:.200}")
    cid, username, host, port, level, listener = info
    if (
        cid != client_id
        or not (username is None or isinstance(username, str))
        or not isinstance(host, str)
        or not isinstance(port, int)
        or not isinstance(level, int)
        or not isinstance(listener, str)
    ):
        raise ValueError(f"bad will client {info!r:.200}")
    message = message_from_dict(data.get("will"))
    will = Will(message.topic, message.payload, message.qos, message.retain, message.properties)
    client = ClientInfo(client_id, username, host, port, level, listener)
    return PendingWill(client_id, client, will, float(deadline))


def will_message(info: ClientInfo, will: Will, now: float, node: str) -> Message:
    """The message a will becomes when it is published at `now` (without its Will Delay)."""
    properties = will.properties
    if _WILL_ONLY in properties:
        properties = {k: v for k, v in properties.items() if k != _WILL_ONLY}
    else:
        properties = dict(properties)
    return Message(
        will.topic, will.payload, will.qos, will.retain, properties, info.client_id, now, node
    )
