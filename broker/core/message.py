"""The application message as the broker routes it, independent of any one connection."""

from __future__ import annotations

from broker.protocol.packets import Properties


class Message:
    """One published application message; immutable by convention, as deliveries share it."""

    __slots__ = (
        "encoded",
        "node",
        "payload",
        "properties",
        "publisher",
        "qos",
        "retain",
        "timestamp",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        publisher: str = "",
        timestamp: float = 0.0,
        node: str = "",
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties: Properties = properties if properties is not None else {}
        self.publisher = publisher
        self.timestamp = timestamp
        self.node = node
        #: QoS 0 wire bytes by (is_v5, retain flag): a message fanned out to many subscribers
        #: of the same protocol version is encoded once.
        self.encoded: dict[tuple[bool, bool], bytes] | None = None

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}, qos={self.qos}, "
            f"retain={self.retain}, publisher={self.publisher!r})"
        )
