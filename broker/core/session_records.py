"""The plain records a session holds: a client's `Subscription`, one `InflightEntry` of the
outgoing window, and the shape of a queued delivery (`QueuedDelivery`).

Why a module of its own: both the live session (`broker.core.session`, which builds an
`InflightEntry` on its hot delivery path) and its export/import (`broker.core.session_export`)
need these records; here they are apart from either, so neither of those has to import the other.
`broker.core.session` re-exports them (the import path the rest of the code and tests use) and
binds the names at import, so the delivery path looks them up exactly as before.
"""

from __future__ import annotations

from broker.core.message import Message

#: One queued delivery: (message, qos, retain, subscription identifiers).
QueuedDelivery = tuple[Message, int, bool, "list[int] | None"]


class Subscription:
    """One subscription of one client; `topic_filter` lacks any `$share/<g>/` prefix."""

    __slots__ = (
        "client_id",
        "filter",
        "identifier",
        "no_local",
        "qos",
        "retain_as_published",
        "retain_handling",
        "share_group",
        "topic_filter",
    )

    def __init__(
        self,
        client_id: str,
        filter: str,
        topic_filter: str,
        share_group: str | None,
        qos: int,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        identifier: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.filter = filter
        self.topic_filter = topic_filter
        self.share_group = share_group
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.identifier = identifier


class InflightEntry:
    """One outgoing QoS 1/2 PUBLISH in a session's window; `awaiting_comp` once PUBREC'd."""

    __slots__ = ("awaiting_comp", "message", "qos", "retain", "sent_at", "subscription_ids")

    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: list[int] | None,
        sent_at: float,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.subscription_ids = subscription_ids
        self.sent_at = sent_at
        self.awaiting_comp = False
