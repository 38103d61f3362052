"""The exported form of a session (`Session.export_state`) read back: its subscriptions.

Why a module of its own: it is the reading (and checking) of one exported format, the inverse
of `Session.export_state`, apart from what `Broker.import_session`
(`broker.core.session_registry`) does with the result.
"""

from __future__ import annotations

from broker.core.session import Subscription
from broker.core.topics import parse_shared, validate_topic_filter

__all__ = ["subscription_from_state"]


def subscription_from_state(client_id: str, item: object) -> Subscription:
    """A `Subscription` from its exported form (`Session.export_state`); raises ValueError."""
    if not isinstance(item, list | tuple) or len(item) < 6:
        raise ValueError(f"bad subscription {item!r:.200}")
    filt, qos, no_local, rap, handling, identifier = item[:6]
    if (
        not isinstance(filt, str)
        or not validate_topic_filter(filt)
        or qos not in (0, 1, 2)
        or not isinstance(no_local, bool)
        or not isinstance(rap, bool)
        or handling not in (0, 1, 2)
        or not (identifier is None or isinstance(identifier, int))
    ):
        raise ValueError(f"bad subscription {item!r:.200}")
    group, topic_filter = parse_shared(filt)
    return Subscription(
        client_id, filt, topic_filter, group, qos, no_local, rap, handling, identifier
    )
