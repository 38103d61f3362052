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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.message import Message
from broker.protocol.constants import PropertyId

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.core.hooks import ClientInfo
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

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: dict[str, PendingWill] = {}

    def add(self, client_id: str, info: ClientInfo, will: Will, deadline: float) -> None:
        self.pending[client_id] = PendingWill(client_id, info, will, deadline)

    def take(self, client_id: str) -> PendingWill | None:
        """Remove and return the pending will of `client_id`, if any."""
        return self.pending.pop(client_id, None) if self.pending else None

    def due(self, now: float) -> list[PendingWill]:
        """Remove and return every will whose deadline has come."""
        if not self.pending:
            return []
        ready = [p for p in self.pending.values() if p.deadline <= now]
        for pending in ready:
            del self.pending[pending.client_id]
        return ready

    def __len__(self) -> int:
        return len(self.pending)


def publish_will(broker: Broker, info: ClientInfo, will: Will) -> int:
    """Authorize, hook and route one will message now; the number of deliveries."""
    if not broker.hooks.run_authorize(info, "publish", will.topic):
        return 0
    properties = will.properties
    if _WILL_ONLY in properties:
        properties = {k: v for k, v in properties.items() if k != _WILL_ONLY}
    else:
        properties = dict(properties)
    message = Message(
        will.topic,
        will.payload,
        will.qos,
        will.retain,
        properties,
        info.client_id,
        broker.clock(),
        broker.node_name,
    )
    hooked = broker.hooks.run_message_publish(message)
    if hooked is None:
        return 0
    return broker.publish(hooked)
