"""Packet objects: the events the codec produces on decode and consumes on encode.

Fields are protocol-version neutral. Version-specific parts (properties, reason codes) are simply
ignored when encoding for 3.1/3.1.1. Properties are a dict keyed by `PropertyId`; the two
properties that may repeat are lists: USER_PROPERTY -> list[tuple[str, str]],
SUBSCRIPTION_IDENTIFIER -> list[int].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from broker.protocol.constants import MQTT_3_1_1, PacketType

Properties = dict[int, Any]


def _props() -> Properties:
    return {}


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Connect:
    client_id: str
    protocol_level: int = MQTT_3_1_1
    protocol_name: str = "MQTT"
    clean_start: bool = True
    keepalive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = field(default_factory=_props)
    #: The bridge bit: protocol level sent as `0x80 | level` (RSMB/mosquitto `try_private`,
    #: EMQX `is_bridge`); `protocol_level` is then the real level 3, 4 or 5.
    bridge: bool = False
    packet_type = PacketType.CONNECT


@dataclass(slots=True)
class ConnAck:
    session_present: bool = False
    reason_code: int = 0  # 3.1.1 return code or 5.0 reason code, as on the wire
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.CONNACK


class EncodedPublish(Protocol):
    """The encoded QoS 0 PUBLISHes of one message (`broker.protocol.wire.Frames`)."""

    #: One encoding with RETAIN 0, for MQTT 5 clients if `raw_v5` (None = none yet).
    raw: bytes | None
    raw_v5: bool

    def fits(self, topic: str, payload: bytes, properties: Properties) -> bool: ...

    def qos0(self, retain: bool, version: int) -> bytes: ...


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present iff qos > 0
    properties: Properties = field(default_factory=_props)
    #: Set by the decoder on a QoS 0 PUBLISH without flags or properties: its own bytes, which
    #: are also what a subscriber of the same protocol version gets (`broker.protocol.wire`).
    frames: EncodedPublish | None = field(default=None, compare=False, repr=False)
    packet_type = PacketType.PUBLISH


@dataclass(slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.PUBACK


@dataclass(slots=True)
class PubRec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.PUBREC


@dataclass(slots=True)
class PubRel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.PUBREL


@dataclass(slots=True)
class PubComp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.PUBCOMP


@dataclass(slots=True)
class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE with its options byte unpacked."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    subscriptions: list[SubscriptionRequest]
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.SUBSCRIBE


@dataclass(slots=True)
class SubAck:
    packet_id: int
    reason_codes: list[int]  # granted QoS or failure code, one per requested filter
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.SUBACK


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list[str]
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.UNSUBSCRIBE


@dataclass(slots=True)
class UnsubAck:
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # 5.0 only; empty in 3.1.1
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.UNSUBACK


@dataclass(slots=True)
class PingReq:
    packet_type = PacketType.PINGREQ


@dataclass(slots=True)
class PingResp:
    packet_type = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    reason_code: int = 0  # 5.0 only
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.DISCONNECT


@dataclass(slots=True)
class Auth:
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)
    packet_type = PacketType.AUTH


Packet: TypeAlias = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)
