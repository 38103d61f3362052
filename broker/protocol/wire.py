"""The QoS 0 PUBLISH bytes of one message, shared by every subscriber: the codec's fast path.

Theory of operation
-------------------
A message fanned out to many subscribers at QoS 0 is the same packet for each subscriber of one
protocol version (and RETAIN flag), so it is encoded once: `Frames.qos0` keeps each encoding
by (is MQTT 5, retain) and the outgoing side (`broker.core.connection`) asks it for bytes.
The decoder goes one step further for a plain QoS 0 PUBLISH (no flags, no properties, a
minimal fixed header; `broker.protocol.decode`): it keeps the bytes as they arrived, which are
already that encoding for the publisher's protocol version (`Frames.raw`).

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

    __slots__ = ("_by_key", "payload", "properties", "raw", "raw_v5", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        properties: Properties,
        raw: bytes | None = None,
        raw_v5: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.properties = properties
        #: One encoding with RETAIN 0, for clients of MQTT 5 if `raw_v5`, else of 3.x: the
        #: bytes the PUBLISH arrived in, or the first one `qos0` made. Kept apart from
        #: `_by_key` so that the decoder allocates nothing more and the sender can test it
        #: inline (`Connection.send_publish`).
        self.raw = raw
        self.raw_v5 = raw_v5
        self._by_key: dict[tuple[bool, bool], bytes] | None = None

    def fits(self, topic: str, payload: bytes, properties: Properties) -> bool:
        """True when these frames encode exactly these objects (see the module docstring)."""
        return topic is self.topic and payload is self.payload and properties is self.properties

    def qos0(self, retain: bool, version: int) -> bytes:
        """The QoS 0 PUBLISH for a client of `version`, encoded at most once."""
        is_v5 = version == _MQTT_5
        raw = self.raw
        if raw is None and not retain:  # the first encoding takes the fast slot
            raw = self.raw = encode_publish(
                self.topic, self.payload, 0, False, False, None,
                self.properties if is_v5 else None, version,
            )  # fmt: skip
            self.raw_v5 = is_v5
            return raw
        if raw is not None and not retain and is_v5 is self.raw_v5:
            return raw
        by_key = self._by_key
        if by_key is None:
            by_key = self._by_key = {}
        key = (is_v5, retain)
        data = by_key.get(key)
        if data is None:
            data = by_key[key] = encode_publish(
                self.topic, self.payload, 0, retain, False, None,
                self.properties if is_v5 else None, version,
            )  # fmt: skip
        return data
