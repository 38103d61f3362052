"""Random MQTT packets built from our packet classes, for the fuzz harnesses.

`Source` is whatever supplies the choices: `random.Random` (the plain loops), `ByteSource` (a
bytes blob read front to back, for hypothesis and atheris so that mutations of the input map to
small changes of the packets) or anything with `randint`/`randbytes`/`choice`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from broker.protocol.constants import PropertyId
from broker.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    SubscriptionRequest,
    Unsubscribe,
    Will,
)

T = TypeVar("T")


class Source(Protocol):
    def randint(self, a: int, b: int) -> int: ...

    def randbytes(self, n: int) -> bytes: ...

    def choice(self, seq: Sequence[T]) -> T: ...


class ByteSource:
    """Choices read from a bytes blob, front to back; zeros once it is used up."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def randint(self, a: int, b: int) -> int:
        span = b - a
        if span <= 0:
            return a
        value = 0
        bits = span.bit_length()
        for _ in range((bits + 7) // 8):
            value = (value << 8) | self._byte()
        return a + value % (span + 1)

    def randbytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out + bytes(n - len(out))

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.randint(0, len(seq) - 1)]

    def rest(self) -> bytes:
        return self.data[self.pos :]


# Topics and filters: valid, edge and invalid ones (the codec or the core must refuse the latter).
TOPICS = ("a/b", "a", "fuzz/x", "fuzz/x/y", "", "/", "a//b", "$SYS/x", "$share/g/fuzz/#",
          "$share//a", "$share/g", "a/+", "+", "#", "a/#/b", "a+", "x#", "a\x00b", "é/ü",
          "\U0001f600", "fuzz/" + "l/" * 40, "healthy-noise")  # fmt: skip
FILTERS = (*TOPICS, "fuzz/#", "+/+", "$share/g/+", "$SYS/#")
CLIENT_IDS = ("fuzz-a", "fuzz-b", "", "fuzz-" + "x" * 30, "fuzz-\u00e9")


def _text(src: Source, pool: Sequence[str]) -> str:
    if src.randint(0, 7) == 0:
        return src.randbytes(src.randint(0, 6)).decode("latin-1")
    return src.choice(pool)


def properties(src: Source, kind: str) -> dict[int, Any]:
    """A few 5.0 properties, most of them allowed for `kind`, some not, some out of range."""
    out: dict[int, Any] = {}
    for _ in range(src.randint(0, 3)):
        pid = src.choice(_PROPERTY_POOL[kind] + _PROPERTY_POOL["any"])
        out[pid] = _property_value(src, pid)
    return out


def _property_value(src: Source, pid: int) -> Any:
    if pid == PropertyId.USER_PROPERTY:
        return [(_text(src, ("k", "")), _text(src, ("v", "")))] * src.randint(1, 2)
    if pid == PropertyId.SUBSCRIPTION_IDENTIFIER:
        return [src.choice((0, 1, 7, 268_435_455))]
    if pid in _BINARY:
        return src.randbytes(src.randint(0, 8))
    if pid in _STRING:
        return _text(src, ("SCRAM-SHA-256", "text/plain", "fuzz/reply", "a/+", ""))
    if pid in _BYTE:
        return src.choice((0, 1, 2))
    if pid in _U16:
        return src.choice((0, 1, 2, 10, 65535))
    return src.choice((0, 1, 5, 3600, 0xFFFFFFFF))


_BINARY = {PropertyId.CORRELATION_DATA, PropertyId.AUTHENTICATION_DATA}
_STRING = {PropertyId.CONTENT_TYPE, PropertyId.RESPONSE_TOPIC, PropertyId.AUTHENTICATION_METHOD,
           PropertyId.REASON_STRING}  # fmt: skip
_BYTE = {PropertyId.PAYLOAD_FORMAT_INDICATOR, PropertyId.REQUEST_PROBLEM_INFORMATION,
         PropertyId.REQUEST_RESPONSE_INFORMATION}  # fmt: skip
_U16 = {PropertyId.RECEIVE_MAXIMUM, PropertyId.TOPIC_ALIAS_MAXIMUM, PropertyId.TOPIC_ALIAS}
_PROPERTY_POOL: dict[str, list[int]] = {
    "connect": [PropertyId.SESSION_EXPIRY_INTERVAL, PropertyId.RECEIVE_MAXIMUM,
                PropertyId.MAXIMUM_PACKET_SIZE, PropertyId.TOPIC_ALIAS_MAXIMUM,
                PropertyId.REQUEST_PROBLEM_INFORMATION, PropertyId.REQUEST_RESPONSE_INFORMATION,
                PropertyId.AUTHENTICATION_METHOD, PropertyId.AUTHENTICATION_DATA],
    "will": [PropertyId.WILL_DELAY_INTERVAL, PropertyId.MESSAGE_EXPIRY_INTERVAL,
             PropertyId.PAYLOAD_FORMAT_INDICATOR, PropertyId.RESPONSE_TOPIC],
    "publish": [PropertyId.TOPIC_ALIAS, PropertyId.MESSAGE_EXPIRY_INTERVAL,
                PropertyId.PAYLOAD_FORMAT_INDICATOR, PropertyId.RESPONSE_TOPIC,
                PropertyId.CORRELATION_DATA, PropertyId.CONTENT_TYPE,
                PropertyId.SUBSCRIPTION_IDENTIFIER],
    "subscribe": [PropertyId.SUBSCRIPTION_IDENTIFIER],
    "ack": [PropertyId.REASON_STRING],
    "disconnect": [PropertyId.SESSION_EXPIRY_INTERVAL, PropertyId.REASON_STRING],
    "auth": [PropertyId.AUTHENTICATION_METHOD, PropertyId.AUTHENTICATION_DATA],
    "any": [PropertyId.USER_PROPERTY, PropertyId.SERVER_KEEP_ALIVE],
}  # fmt: skip


def connect(src: Source, version: int) -> Connect:
    will = None
    if src.randint(0, 2) == 0:
        props = properties(src, "will") if version == 5 else {}
        will = Will(_text(src, TOPICS), src.randbytes(src.randint(0, 4)), src.randint(0, 2),
                    bool(src.randint(0, 1)), props)  # fmt: skip
    username = password = None
    if src.randint(0, 3) == 0:
        username = _text(src, ("user", ""))
        password = src.randbytes(src.randint(0, 4)) if src.randint(0, 1) else None
    return Connect(
        client_id=_text(src, CLIENT_IDS),
        protocol_level=version,
        protocol_name="MQIsdp" if version == 3 else "MQTT",
        clean_start=bool(src.randint(0, 1)),
        keepalive=src.choice((0, 1, 60, 65535)),
        will=will,
        username=username,
        password=password,
        properties=properties(src, "connect") if version == 5 else {},
    )


def packet(src: Source, version: int) -> Packet:
    """Any client-to-server packet (and sometimes one a client may not send)."""
    kind = src.randint(0, 12)
    v5 = version == 5
    pid = src.choice((1, 2, 3, 0, 65535))
    if kind <= 3:
        qos = src.randint(0, 2)
        return Publish(_text(src, TOPICS), src.randbytes(src.randint(0, 16)), qos,
                       bool(src.randint(0, 1)), bool(src.randint(0, 1)) and qos > 0,
                       pid if qos else None, properties(src, "publish") if v5 else {})  # fmt: skip
    if kind == 4:
        subs = [SubscriptionRequest(_text(src, FILTERS), src.randint(0, 2), bool(src.randint(0, 1)),
                                    bool(src.randint(0, 1)), src.randint(0, 2))
                for _ in range(src.randint(1, 3))]  # fmt: skip
        return Subscribe(pid, subs, properties(src, "subscribe") if v5 else {})
    if kind == 5:
        filters = [_text(src, FILTERS) for _ in range(src.randint(1, 2))]
        return Unsubscribe(pid, filters, properties(src, "any") if v5 else {})
    if kind <= 9:
        cls = (PubAck, PubRec, PubRel, PubComp)[kind - 6]
        code = src.choice((0, 0x10, 0x80, 0x92)) if v5 else 0
        return cls(pid, code, properties(src, "ack") if v5 else {})
    if kind == 10:
        return PingReq()
    if kind == 11:
        return Disconnect(src.choice((0, 4, 0x80)), properties(src, "disconnect") if v5 else {})
    if src.randint(0, 1):
        return Auth(src.choice((0, 0x18, 0x19)), properties(src, "auth"))
    return connect(src, version)


def seed_packets() -> list[tuple[Packet, int]]:
    """Valid-ish packets of every type in every version, for the codec's mutation loop."""
    import random

    rng = random.Random(1234)
    out: list[tuple[Packet, int]] = []
    for version in (3, 4, 5):
        for _ in range(60):
            out.append((connect(rng, version), version))
            out.append((packet(rng, version), version))
    from broker.protocol.codec import encode
    from broker.protocol.errors import ProtocolError

    kept = []
    for p, v in out:
        try:
            encode(p, v)
        except ProtocolError:
            continue
        kept.append((p, v))
    return kept
