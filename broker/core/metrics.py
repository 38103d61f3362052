"""Counters (the 43 EMQX 3.x metrics) and gauges with high-water marks (the 18 stats).

Counters are plain dict entries bumped on the event loop; nothing here is shared across threads.
"""

from __future__ import annotations

from broker.protocol.constants import PacketType

METRIC_NAMES: tuple[str, ...] = (
    "bytes/received",
    "bytes/sent",
    "packets/received",
    "packets/sent",
    "packets/connect",
    "packets/connack",
    "packets/publish/received",
    "packets/publish/sent",
    "packets/puback/received",
    "packets/puback/sent",
    "packets/puback/missed",
    "packets/pubrec/received",
    "packets/pubrec/sent",
    "packets/pubrec/missed",
    "packets/pubrel/received",
    "packets/pubrel/sent",
    "packets/pubrel/missed",
    "packets/pubcomp/received",
    "packets/pubcomp/sent",
    "packets/pubcomp/missed",
    "packets/subscribe",
    "packets/suback",
    "packets/unsubscribe",
    "packets/unsuback",
    "packets/pingreq",
    "packets/pingresp",
    "packets/disconnect/received",
    "packets/disconnect/sent",
    "packets/auth",
    "messages/received",
    "messages/sent",
    "messages/qos0/received",
    "messages/qos0/sent",
    "messages/qos1/received",
    "messages/qos1/sent",
    "messages/qos2/received",
    "messages/qos2/expired",
    "messages/qos2/sent",
    "messages/qos2/dropped",
    "messages/retained",
    "messages/dropped",
    "messages/expired",
    "messages/forward",
)

STAT_NAMES: tuple[str, ...] = (
    "connections/count",
    "connections/max",
    "sessions/count",
    "sessions/max",
    "sessions/persistent/count",
    "sessions/persistent/max",
    "topics/count",
    "topics/max",
    "subscribers/count",
    "subscribers/max",
    "subscriptions/count",
    "subscriptions/max",
    "subscriptions/shared/count",
    "subscriptions/shared/max",
    "routes/count",
    "routes/max",
    "retained/count",
    "retained/max",
)

#: Per packet type: the counter bumped when one is received / sent (None = no such counter).
RECEIVED_COUNTER: dict[int, str] = {
    PacketType.CONNECT: "packets/connect",
    PacketType.PUBLISH: "packets/publish/received",
    PacketType.PUBACK: "packets/puback/received",
    PacketType.PUBREC: "packets/pubrec/received",
    PacketType.PUBREL: "packets/pubrel/received",
    PacketType.PUBCOMP: "packets/pubcomp/received",
    PacketType.SUBSCRIBE: "packets/subscribe",
    PacketType.UNSUBSCRIBE: "packets/unsubscribe",
    PacketType.PINGREQ: "packets/pingreq",
    PacketType.DISCONNECT: "packets/disconnect/received",
    PacketType.AUTH: "packets/auth",
}
SENT_COUNTER: dict[int, str] = {
    PacketType.CONNACK: "packets/connack",
    PacketType.PUBLISH: "packets/publish/sent",
    PacketType.PUBACK: "packets/puback/sent",
    PacketType.PUBREC: "packets/pubrec/sent",
    PacketType.PUBREL: "packets/pubrel/sent",
    PacketType.PUBCOMP: "packets/pubcomp/sent",
    PacketType.SUBACK: "packets/suback",
    PacketType.UNSUBACK: "packets/unsuback",
    PacketType.PINGRESP: "packets/pingresp",
    PacketType.DISCONNECT: "packets/disconnect/sent",
    PacketType.AUTH: "packets/auth",
}


#: What happened at each configured limit (README "Security and limits"), kept apart from the
#: EMQX counters; published as `$SYS/broker/limits/<name>`.
LIMIT_NAMES: tuple[str, ...] = (
    "max_connections",  # total connections: refused at accept
    "max_listener_connections",  # a listener's max_connections: refused at accept
    "max_connection_rate",  # a listener's max_connection_rate: refused at accept
    "max_open_files",  # out of file descriptors (EMFILE/ENFILE): a listener paused accepting
    "max_packet_size",  # an incoming packet too large: connection closed
    "max_queued_messages",  # a delivery dropped: the session's queue was full
    "max_queued_bytes",  # a delivery dropped: the session's queued payload bytes were full
    "max_outgoing_buffer",  # a QoS 0 delivery dropped: the client does not read
    "max_topic_levels",  # a PUBLISH or SUBSCRIBE refused
    "max_topic_length",  # a PUBLISH or SUBSCRIBE refused
    "max_subscriptions",  # a SUBSCRIBE filter refused (quota exceeded)
    "publish_limit",  # a client over its publish rate: disconnected
)


class Metrics:
    """Monotonic counters by EMQX name; a plain dict so hot paths can bump it directly.

    `limits` counts the limit hits by `LIMIT_NAMES` (not EMQX metrics: a separate dict).
    `cluster` is the cluster runtime's own counters (`forward/held_dropped`, `dead_hold/...`;
    the runtime puts its dict here), so the management layer can show why a message was
    dropped beyond EMQX's one `messages/dropped`; empty on a node without a cluster.
    `cluster_parts` holds the counters of the cluster's other parts by name (`takeover`: the
    session locator's claims, folds, holds and evictions), shown as `<part>/<counter>`."""

    __slots__ = ("cluster", "cluster_parts", "counters", "limits")

    def __init__(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(METRIC_NAMES, 0)
        self.limits: dict[str, int] = dict.fromkeys(LIMIT_NAMES, 0)
        self.cluster: dict[str, int] = {}
        self.cluster_parts: dict[str, dict[str, int]] = {}

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def get(self, name: str) -> int:
        return self.counters[name]

    def snapshot(self) -> dict[str, int]:
        return dict(self.counters)


#: `<x>/count` -> `<x>/max`, built once: `set` runs several times for every connect and close.
_MAX_NAMES = {name: name[: -len("count")] + "max" for name in STAT_NAMES if name.endswith("count")}


class Stats:
    """Gauges set by the registry owner; `*/max` keeps the high-water mark."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    def set(self, name: str, value: int) -> None:
        """Set `<x>/count` and raise `<x>/max` when exceeded."""
        values = self.values
        values[name] = value
        max_name = _MAX_NAMES.get(name) or name[: -len("count")] + "max"
        if value > values[max_name]:
            values[max_name] = value

    def snapshot(self) -> dict[str, int]:
        return dict(self.values)
