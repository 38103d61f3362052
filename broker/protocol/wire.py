"""The QoS 0 PUBLISH bytes of one message, shared by every subscriber: the codec's fast path.

Theory of operation
-------------------
A message fanned out to many subscribers at QoS 0 is the same packet for each subscriber of one
protocol version (and RETAIN flag), so it is encoded once: `Frames.qos0` keeps each encoding
by (is MQTT 5, retain) and the outgoing side (`broker.core.connection`) asks it for bytes.
The decoder goes one step further for a plain QoS 0 PUBLISH (no flags, no properties, a
minimal fixed header; `broker.protocol.decode`): it keeps the bytes as they arrived, which are
already that encoding for the publisher's protocol version (`Frames.received`).

Both fast paths are only right while the message is the one the bytes were made from, so a
`Frames` remembers the topic, payload and properties it stands for and is only used for a
message holding those very objects (`fits`, identity, not equality: a plugin that rewrites
the message makes a new one, a topic alias resolves to another topic string). Nothing outside
the codec and the outgoing encoder reads the bytes.
"""

from __future__ import annotations

from broker.protocol.encode import encode_publish
from broker.protocol.packets import Properties

_MQTT_5 = 5


class Frames:
    """Encoded QoS 0 PUBLISHes of one (topic, payload, properties), by (is_v5, retain)."""

    __slots__ = ("_by_key", "payload", "properties", "topic")

    def __init__(self, topic: str, payload: bytes, properties: Properties) -> None:
        self.topic = topic
        self.payload = payload
        self.properties = properties
        self._by_key: dict[tuple[bool, bool], bytes] = {}

    @classmethod
    def received(
        cls, data: bytes, version: int, topic: str, payload: bytes, properties: Properties
    ) -> Frames:
        """The bytes of a plain QoS 0 PUBLISH as the decoder read them."""
        frames = cls(topic, payload, properties)
        frames._by_key[(version == _MQTT_5, False)] = data
        return frames

    def fits(self, topic: str, payload: bytes, properties: Properties) -> bool:
        """True when these frames encode exactly these objects (see the module docstring)."""
        return topic is self.topic and payload is self.payload and properties is self.properties

    def qos0(self, retain: bool, version: int) -> bytes:
        """The QoS 0 PUBLISH for a client of `version`, encoded at most once."""
        is_v5 = version == _MQTT_5
        key = (is_v5, retain)
        data = self._by_key.get(key)
        if data is None:
            data = self._by_key[key] = encode_publish(
                self.topic, self.payload, 0, retain, False, None,
                self.properties if is_v5 else None, version,
            )  # fmt: skip
        return data
