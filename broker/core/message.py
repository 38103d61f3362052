"""The application message as the broker routes it, independent of any one connection."""

from __future__ import annotations

from typing import Any

from broker.core.hlc import Stamp, legacy_stamp, stamp_from_wire
from broker.protocol.constants import PropertyId
from broker.protocol.packets import EncodedPublish, Properties

_EXPIRY = PropertyId.MESSAGE_EXPIRY_INTERVAL
_USER_PROPERTY = int(PropertyId.USER_PROPERTY)


class Message:
    """One published application message; immutable by convention, as deliveries share it."""

    __slots__ = (
        "frames",
        "live",
        "node",
        "payload",
        "properties",
        "publisher",
        "qos",
        "retain",
        "stamp",
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
        #: The hybrid-clock stamp of a retained write (`broker.core.hlc`): set by the node that
        #: took the write (`Broker.retain`), carried with it to every node, compared there.
        self.stamp: Stamp | None = None
        #: True: it came from a peer in a FORWARD_BATCH sent as it was routed, on a link that
        #: was up (not held across a cut, not sent again): `Broker.late_for` does not compare
        #: its publish stamp with a session copy's arrival stamp, which two clocks made (a
        #: peer's wall clock behind or ahead would make a live message look late).
        self.live = False
        #: Its QoS 0 PUBLISH bytes, encoded once for all subscribers (`broker.protocol.wire`);
        #: only the outgoing encoder (`Connection.send_publish`) reads them.
        self.frames: EncodedPublish | None = None

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}, qos={self.qos}, "
            f"retain={self.retain}, publisher={self.publisher!r})"
        )


def expiry_left(message: Message, now: float) -> int | None:
    """Seconds left of the message's Message Expiry Interval, None if it has none (or 0).

    The interval runs from `timestamp`, the arrival at the broker; whole seconds waited are
    taken off (MQTT-3.3.2-6), so a message forwarded within its first second keeps its value
    and its encode-once cache. A result <= 0 means expired: never delivered (MQTT-3.3.2-5).
    An interval of 0 is taken as "no expiry", as mosquitto does.
    """
    interval = message.properties.get(_EXPIRY)
    if not interval:
        return None
    waited = now - message.timestamp
    left: int = interval - int(waited) if waited > 0 else interval
    return left


def is_expired(message: Message, now: float) -> bool:
    """True for a message whose Message Expiry Interval has passed."""
    if not message.properties:
        return False
    left = expiry_left(message, now)
    return left is not None and left <= 0


def message_to_dict(message: Message) -> dict[str, Any]:
    """A plain dict of the message (str keys; bytes, ints, lists: msgpack-able as it is).

    Used to carry messages inside exported session state (`Session.export_state`). The wire
    turns tuples into lists; `message_from_dict` turns User Property pairs back into tuples.
    """
    data: dict[str, Any] = {
        "topic": message.topic,
        "payload": message.payload,
        "qos": message.qos,
        "retain": message.retain,
        "props": message.properties,
        "publisher": message.publisher,
        "ts": message.timestamp,
        "node": message.node,
    }
    if message.stamp is not None:
        data["hlc"] = message.stamp.to_wire()
    return data


def message_from_dict(data: Any) -> Message:
    """The inverse of `message_to_dict`; raises ValueError on anything malformed."""
    if not isinstance(data, dict):
        raise ValueError("a message must be a map")
    topic, payload, qos = data.get("topic"), data.get("payload"), data.get("qos")
    retain, props = data.get("retain", False), data.get("props") or {}
    publisher, ts, node = data.get("publisher", ""), data.get("ts", 0.0), data.get("node", "")
    if (
        not isinstance(topic, str)
        or not isinstance(payload, bytes)
        or qos not in (0, 1, 2)
        or isinstance(qos, bool)
        or not isinstance(retain, bool)
        or not isinstance(props, dict)
        or not all(isinstance(k, int) and not isinstance(k, bool) for k in props)
        or not isinstance(publisher, str)
        or not isinstance(ts, int | float)
        or isinstance(ts, bool)
        or not isinstance(node, str)
    ):
        raise ValueError(f"malformed message {data!r:.200}")
    pairs = props.get(_USER_PROPERTY)
    if pairs is not None:
        if not isinstance(pairs, list | tuple) or not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in pairs
        ):
            raise ValueError("malformed user properties")
        props = {**props, _USER_PROPERTY: [(p[0], p[1]) for p in pairs]}
    message = Message(topic, payload, qos, retain, props, publisher, float(ts), node)
    if "hlc" in data:
        message.stamp = stamp_from_wire(data["hlc"])
    return message


def retained_stamp(message: Message) -> Stamp:
    """The order of a retained write: its stamp, or for one stored or sent without a stamp
    (an older node, an older data file) its arrival wall time (`hlc.legacy_stamp`)."""
    stamp = message.stamp
    return stamp if stamp is not None else legacy_stamp(int(message.timestamp * 1000))
