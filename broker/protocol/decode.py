"""Decoding: bytes in, packets out.

Theory of operation
-------------------
A `Decoder` owns one `bytearray` of not-yet-decoded bytes. `feed(data)` appends `data` to it and
then walks it with an offset `pos`, one packet per step:

1. First byte: packet type and flags. Reserved types and wrong fixed-header flags are rejected
   here, before anything else is buffered (MQTT-2.2.2-1/2).
2. Remaining Length (1-4 byte Variable Byte Integer). If it is not complete yet, stop and wait.
   A fifth length byte is MalformedPacket. As soon as the length is known, the whole packet size
   `1 + len(varint) + remaining_length` is checked against `max_packet_size` and PacketTooLarge
   is raised, even though none of the body has arrived: a huge packet is never buffered.
3. If the whole body is in the buffer, the body decoder for that type reads it in place through
   `buf` (single bytes) and a memoryview `mv` (slices copied out exactly once: a PUBLISH payload
   is one `bytes(mv[a:b])`). Each body decoder must consume exactly `[start, end)`: trailing bytes
   or a field crossing `end` is MalformedPacket. Then `pos` moves to `end`.

A QoS 0 PUBLISH with no flags, no properties and a body under 16 KiB also keeps its own bytes
(`Publish.frames`, `broker.protocol.wire`; one more copy of a small packet): the broker sends
them unchanged to the subscribers of the same protocol version instead of encoding the same
packet again.

When no further packet is complete, the consumed prefix is dropped with one `del buf[:pos]` (O(1)
for a bytearray) and the list of packets is returned; the partial rest waits for the next feed.
When nothing is left, the buffer itself is dropped (an idle connection holds none; the next feed
copies its data into a new one, as appending it would have).
There is no other state: the header is re-parsed (at most 5 bytes) when more data arrives.

`version` decides how bodies are read. It starts as given (None: not known yet, and non-CONNECT
packets are then read as 3.1.1). A CONNECT sets it from its own protocol level as soon as the
level has been read and found valid, so that a CONNECT malformed further on still tells the broker
which dialect to answer in; an unknown name/level raises UnsupportedProtocolVersion carrying
`protocol_level`.

Only ProtocolError (and subclasses) leave `feed`; the exception's `packets` holds the packets
decoded before it in the same call. After an error the decoder is not meant to be used again.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.protocol.acked_runs import PLAIN_QOS1, AckedRun, scan_acked_run
from broker.protocol.constants import MQTT_3_1, MQTT_3_1_1, MQTT_5, PacketType
from broker.protocol.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from broker.protocol.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    Will,
)
from broker.protocol.properties import (
    CONNACK_CODES_3,
    REASON_CODES_5,
    SUBACK_CODES_3,
    WILL,
    decode_properties,
    read_binary,
    read_packet_id,
    read_utf8,
)
from broker.protocol.runs import (
    PLAIN_QOS0,
    PublishFrames,
    PublishRun,
    lone_frame,
    scan_frames,
    scan_run,
)
from broker.protocol.wire import Frames

#: What `feed_runs` gives for frames it did not turn into packets.
Run = PublishRun | AckedRun | PublishFrames
BodyDecoder = Callable[[int, bytearray, memoryview, int, int, int], Packet]

DEFAULT_MAX_PACKET_SIZE = 268_435_460  # 1 type byte + 4 length bytes + 268,435,455
#: The known (name, level) pairs, each to one shared name string (kept by every connection).
_PROTOCOLS = {
    (name, level): name
    for name, level in (("MQIsdp", MQTT_3_1), ("MQTT", MQTT_3_1_1), ("MQTT", MQTT_5))
}
# Required fixed-header flags per type (MQTT-2.2.2-1/2, 3.1.1 table 2.2 / 5.0 table 2-2);
# None: reserved type (0), or PUBLISH whose flags are checked by its decoder.
_FLAGS: tuple[int | None, ...] = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
# MQTT 3.1 (MQIsdp) sends PUBREL, SUBSCRIBE and UNSUBSCRIBE "at QoS 1" and sets DUP on a resend:
# flags 0b1010 are theirs. The fixed rule (MQTT-3.6.1-1, 3.8.1-1, 3.10.1-1) starts with 3.1.1.
_QOS1_DUP = 0x0A


def _end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{end - pos} unexpected bytes at the end of {what}")


def _protocol(buf: bytearray, mv: memoryview, pos: int, end: int) -> tuple[str, int, int]:
    """Protocol name and level of a CONNECT body (3.1.2.1/3.1.2.2), without the bridge bit
    (0x80: a broker bridging to us, RSMB's private extension that mosquitto and EMQX keep)."""
    name, pos = read_utf8(buf, mv, pos, end)
    if pos >= end:
        raise MalformedPacket("CONNECT without protocol level")
    level = buf[pos] & 0x7F
    known = _PROTOCOLS.get((name, level))
    if known is None:  # MQTT-3.1.2-1/2
        raise UnsupportedProtocolVersion(
            f"unsupported protocol {name!r} level {buf[pos]}", protocol_level=buf[pos]
        )
    return known, level, pos + 1


def _connect(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, _: int) -> Connect:
    name, level, pos = _protocol(buf, mv, pos, end)
    bridge = buf[pos - 1] >= 0x80  # the level byte
    if pos + 3 > end:
        raise MalformedPacket("truncated CONNECT variable header")
    cflags = buf[pos]
    keepalive = (buf[pos + 1] << 8) | buf[pos + 2]
    pos += 3
    if cflags & 0x01:  # MQTT-3.1.2-3: reserved flag must be 0
        raise MalformedPacket("CONNECT reserved flag is set")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 0x03
    will_retain = cflags & 0x20
    if not will_flag and (will_qos or will_retain):  # MQTT-3.1.2-11/13/15
        raise MalformedPacket("will QoS/retain set without the will flag")
    if will_qos == 3:  # MQTT-3.1.2-14 (3.1.1) / MQTT-3.1.2-12 (5.0)
        raise MalformedPacket("will QoS 3")
    has_password = cflags & 0x40
    has_username = cflags & 0x80
    if has_password and not has_username and level != MQTT_5:  # MQTT-3.1.2-22
        raise MalformedPacket("password flag set without user name flag")
    props: Properties = {}
    if level == MQTT_5:
        props, pos = decode_properties(buf, mv, pos, end, PacketType.CONNECT)
    client_id, pos = read_utf8(buf, mv, pos, end)
    will = None
    if will_flag:
        will_props: Properties = {}
        if level == MQTT_5:
            will_props, pos = decode_properties(buf, mv, pos, end, WILL)
        will_topic, pos = read_utf8(buf, mv, pos, end)
        will_payload, pos = read_binary(buf, mv, pos, end)
        will = Will(will_topic, will_payload, will_qos, bool(will_retain), will_props)
    username = password = None
    if has_username:
        username, pos = read_utf8(buf, mv, pos, end)
    if has_password:
        password, pos = read_binary(buf, mv, pos, end)
    _end(pos, end, "CONNECT")
    return Connect(
        client_id, level, name, bool(cflags & 0x02), keepalive, will, username, password, props,
        bridge,
    )  # fmt: skip


def _connack(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> ConnAck:
    if pos + 2 > end:
        raise MalformedPacket("truncated CONNACK")
    ack_flags = buf[pos]
    code = buf[pos + 1]
    pos += 2
    if ack_flags & 0xFE:  # MQTT-3.2.2-1 (3.1.1) / 5.0 3.2.2.1: reserved bits
        raise MalformedPacket("CONNACK reserved flags set")
    props: Properties = {}
    if v == MQTT_5:
        if code not in REASON_CODES_5[PacketType.CONNACK]:
            raise ProtocolError(f"invalid CONNACK reason code 0x{code:02x}")
        if pos < end:  # tolerate a missing property length
            props, pos = decode_properties(buf, mv, pos, end, PacketType.CONNACK)
    elif code not in CONNACK_CODES_3:  # 3.1.1 3.2.2.3: 6-255 reserved
        raise ProtocolError(f"invalid CONNACK return code 0x{code:02x}")
    _end(pos, end, "CONNACK")
    return ConnAck(bool(ack_flags), code, props)


def _publish(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:  # MQTT-3.3.1-4
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = flags & 0x08
    if dup and not qos:  # MQTT-3.3.1-2
        raise MalformedPacket("PUBLISH with DUP=1 and QoS 0")
    if pos + 2 > end:
        raise MalformedPacket("truncated PUBLISH topic length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("PUBLISH topic runs past the end of the packet")
    try:
        topic = str(mv[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError as exc:  # MQTT-1.5.3-1
        raise MalformedPacket("PUBLISH topic is not valid UTF-8") from exc
    if "\x00" in topic:  # MQTT-1.5.3-2
        raise MalformedPacket("PUBLISH topic contains U+0000")
    pos = stop
    packet_id = None
    if qos:
        packet_id, pos = read_packet_id(buf, pos, end)
    props: Properties = {}
    if v == MQTT_5:
        if pos < end and buf[pos] == 0:
            pos += 1
        else:
            props, pos = decode_properties(buf, mv, pos, end, PacketType.PUBLISH)
    return Publish(topic, bytes(mv[pos:end]), qos, bool(flags & 0x01), bool(dup), packet_id, props)


_PUBLISH = PacketType.PUBLISH
#: Fixed header sizes with a minimal Remaining Length for bodies under 128 and 16,384 bytes:
#: `Publish.frames` is kept only for those (a longer or non-minimal header is rare; re-encode it).
_MINIMAL_HEADER = (2, 3)


def _make_ack(cls: type[PubAck | PubRec | PubRel | PubComp], ptype: PacketType) -> BodyDecoder:
    codes = REASON_CODES_5[ptype]

    def decode_ack(
        flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int
    ) -> Packet:
        packet_id, pos = read_packet_id(buf, pos, end)
        code = 0
        props: Properties = {}
        if v == MQTT_5 and pos < end:  # 5.0 3.4.2.1: reason and properties may be omitted
            code = buf[pos]
            pos += 1
            if code not in codes:
                raise ProtocolError(f"invalid {ptype.name} reason code 0x{code:02x}")
            if pos < end:
                props, pos = decode_properties(buf, mv, pos, end, ptype)
        _end(pos, end, ptype.name)
        return cls(packet_id, code, props)

    return decode_ack


def _subscribe(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> Subscribe:
    packet_id, pos = read_packet_id(buf, pos, end)
    props: Properties = {}
    if v == MQTT_5:
        props, pos = decode_properties(buf, mv, pos, end, PacketType.SUBSCRIBE)
    subs = []
    while pos < end:
        topic_filter, pos = read_utf8(buf, mv, pos, end)
        if pos >= end:
            raise MalformedPacket("topic filter without subscription options")
        options = buf[pos]
        pos += 1
        qos = options & 0x03
        if v == MQTT_5:
            if options & 0xC0:  # MQTT-3.8.3-5
                raise MalformedPacket("SUBSCRIBE options reserved bits set")
            if qos == 3:  # 5.0 3.8.3.1: "It is a Protocol Error if the Maximum QoS ... is 3"
                raise ProtocolError("SUBSCRIBE with QoS 3")
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:  # 5.0 3.8.3.1: "Protocol Error to send ... value of 3"
                raise ProtocolError("SUBSCRIBE with retain handling 3")
            subs.append(
                SubscriptionRequest(
                    topic_filter, qos, bool(options & 0x04), bool(options & 0x08), retain_handling
                )
            )
        else:
            if options & 0xFC or qos == 3:  # MQTT-3-8.3-4
                raise MalformedPacket("SUBSCRIBE reserved bits set or QoS 3")
            subs.append(SubscriptionRequest(topic_filter, qos))
    if not subs:  # MQTT-3.8.3-3 (3.1.1) / MQTT-3.8.3-2 (5.0)
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, subs, props)


def _suback(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> SubAck:
    packet_id, pos = read_packet_id(buf, pos, end)
    props: Properties = {}
    allowed = SUBACK_CODES_3
    if v == MQTT_5:
        props, pos = decode_properties(buf, mv, pos, end, PacketType.SUBACK)
        allowed = REASON_CODES_5[PacketType.SUBACK]
    codes = list(buf[pos:end])
    for code in codes:
        if code not in allowed:  # MQTT-3.9.3-2 (3.1.1) / 5.0 3.9.3
            raise ProtocolError(f"invalid SUBACK code 0x{code:02x}")
    return SubAck(packet_id, codes, props)


def _unsubscribe(
    flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int
) -> Unsubscribe:
    packet_id, pos = read_packet_id(buf, pos, end)
    props: Properties = {}
    if v == MQTT_5:
        props, pos = decode_properties(buf, mv, pos, end, PacketType.UNSUBSCRIBE)
    filters = []
    while pos < end:
        topic_filter, pos = read_utf8(buf, mv, pos, end)
        filters.append(topic_filter)
    if not filters:  # MQTT-3.10.3-2
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, filters, props)


def _unsuback(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> UnsubAck:
    packet_id, pos = read_packet_id(buf, pos, end)
    if v != MQTT_5:
        _end(pos, end, "UNSUBACK")
        return UnsubAck(packet_id)
    props, pos = decode_properties(buf, mv, pos, end, PacketType.UNSUBACK)
    codes = list(buf[pos:end])
    allowed = REASON_CODES_5[PacketType.UNSUBACK]
    for code in codes:
        if code not in allowed:
            raise ProtocolError(f"invalid UNSUBACK reason code 0x{code:02x}")
    return UnsubAck(packet_id, codes, props)


def _pingreq(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> PingReq:
    _end(pos, end, "PINGREQ")
    return PingReq()


def _pingresp(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> PingResp:
    _end(pos, end, "PINGRESP")
    return PingResp()


def _reason_and_props(
    buf: bytearray, mv: memoryview, pos: int, end: int, ptype: PacketType
) -> tuple[int, Properties]:
    """DISCONNECT/AUTH 5.0 body: empty (reason 0), reason only, or reason + properties."""
    code = 0
    props: Properties = {}
    if pos < end:
        code = buf[pos]
        pos += 1
        if code not in REASON_CODES_5[ptype]:
            raise ProtocolError(f"invalid {ptype.name} reason code 0x{code:02x}")
        if pos < end:
            props, pos = decode_properties(buf, mv, pos, end, ptype)
    _end(pos, end, ptype.name)
    return code, props


def _disconnect(
    flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int
) -> Disconnect:
    if v != MQTT_5:
        _end(pos, end, "DISCONNECT")
        return Disconnect()
    return Disconnect(*_reason_and_props(buf, mv, pos, end, PacketType.DISCONNECT))


def _auth(flags: int, buf: bytearray, mv: memoryview, pos: int, end: int, v: int) -> Auth:
    return Auth(*_reason_and_props(buf, mv, pos, end, PacketType.AUTH))


_DECODERS: dict[int, BodyDecoder] = {
    PacketType.CONNECT: _connect,
    PacketType.CONNACK: _connack,
    PacketType.PUBLISH: _publish,
    PacketType.PUBACK: _make_ack(PubAck, PacketType.PUBACK),
    PacketType.PUBREC: _make_ack(PubRec, PacketType.PUBREC),
    PacketType.PUBREL: _make_ack(PubRel, PacketType.PUBREL),
    PacketType.PUBCOMP: _make_ack(PubComp, PacketType.PUBCOMP),
    PacketType.SUBSCRIBE: _subscribe,
    PacketType.SUBACK: _suback,
    PacketType.UNSUBSCRIBE: _unsubscribe,
    PacketType.UNSUBACK: _unsuback,
    PacketType.PINGREQ: _pingreq,
    PacketType.PINGRESP: _pingresp,
    PacketType.DISCONNECT: _disconnect,
    PacketType.AUTH: _auth,
}


class Decoder:
    """Incremental MQTT packet decoder for one connection (either side). See module docstring."""

    __slots__ = ("_buf", "max_packet_size", "version")

    def __init__(
        self, *, version: int | None = None, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    ) -> None:
        self.version: int | None = version
        self.max_packet_size: int = max_packet_size
        #: Bytes of a packet not complete yet; None when there are none (an idle connection
        #: holds no buffer between reads).
        self._buf: bytearray | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add `data`; return every packet now complete, in order. Raises only ProtocolError."""
        return self._feed(data, False)  # type: ignore[return-value]  # no runs asked for

    def feed_runs(self, data: bytes | bytearray | memoryview) -> list[Packet | Run]:
        """As `feed`, but plain QoS 0 PUBLISHes come as `PublishRun`s of their bytes, or as
        `PublishFrames` when their topics change from frame to frame (`broker.protocol.runs`):
        what the broker passes on without making packets; plain QoS 1 ones as `AckedRun`s
        (`broker.protocol.acked_runs`)."""
        if self._buf is None and type(data) is bytes and data and data[0] == PLAIN_QOS0:
            # One whole frame in the read (a lone message): no buffer, no scan, no copy.
            run = lone_frame(data, self.version == MQTT_5, self.max_packet_size)
            if run is not None:
                return [run]
        return self._feed(data, True)

    def _feed(self, data: bytes | bytearray | memoryview, runs: bool) -> list[Packet | Run]:
        buf = self._buf
        if buf is None:
            buf = bytearray(data)
        else:
            buf += data
        n = len(buf)
        out: list[Packet | Run] = []
        pos = 0
        mv = memoryview(buf)
        try:
            while pos < n:
                first = buf[pos]
                if first == PLAIN_QOS0 and runs:
                    v5 = self.version == MQTT_5
                    frames = scan_frames(buf, pos, n, v5, self.max_packet_size)
                    if frames is not None:
                        out.append(frames)
                        pos += len(frames.data)
                        continue
                    run = scan_run(buf, pos, n, v5, self.max_packet_size)
                    if run is not None:
                        out.append(run)
                        pos += len(run.data)
                        continue
                elif first == PLAIN_QOS1 and runs:
                    acked = scan_acked_run(
                        buf, pos, n, self.version == MQTT_5, self.max_packet_size
                    )
                    if acked is not None:
                        out.append(acked)
                        pos += len(acked.data)
                        continue
                ptype = first >> 4
                flags = first & 0x0F
                version = MQTT_3_1_1 if self.version is None else self.version
                if (
                    flags != _FLAGS[ptype]
                    and ptype != PacketType.PUBLISH
                    and not (flags == _QOS1_DUP and version == MQTT_3_1 and _FLAGS[ptype] == 2)
                ):
                    if ptype == 0:  # 3.1.1/5.0 table 2.1: type 0 is reserved
                        raise MalformedPacket("reserved packet type 0")
                    raise MalformedPacket(  # MQTT-2.2.2-1/2
                        f"{PacketType(ptype).name} with invalid fixed header flags {flags:#06b}"
                    )
                if ptype == PacketType.AUTH and version != MQTT_5:  # reserved in 3.1.1
                    raise MalformedPacket("reserved packet type 15 before MQTT 5.0")
                # Remaining Length (section 2.2.3 / 2.1.4): at most 4 bytes.
                i = pos + 1
                length = 0
                shift = 0
                while i < n:
                    byte = buf[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift == 28:
                        raise MalformedPacket("remaining length longer than 4 bytes")
                else:
                    break  # fixed header incomplete: wait for more data
                end = i + length
                if end - pos > self.max_packet_size:
                    raise PacketTooLarge(
                        f"packet of {end - pos} bytes exceeds maximum of {self.max_packet_size}"
                    )
                if end > n:
                    break  # body incomplete
                if ptype == PacketType.CONNECT:
                    # The level is committed before the rest is parsed (see module docstring).
                    self.version = version = _protocol(buf, mv, i, end)[1]
                packet = _DECODERS[ptype](flags, buf, mv, i, end, version)
                if not flags and ptype == _PUBLISH and i - pos == _MINIMAL_HEADER[length > 127]:
                    assert isinstance(packet, Publish)
                    if not packet.properties:
                        packet.frames = Frames(
                            packet.topic, packet.payload, packet.properties,
                            bytes(mv[pos:end]), version == MQTT_5,
                        )  # fmt: skip
                out.append(packet)
                pos = end
        except ProtocolError as exc:
            exc.packets = out
            raise
        except (IndexError, ValueError) as exc:  # defence in depth; should be unreachable
            err = MalformedPacket(f"undecodable packet: {exc}")
            err.packets = out
            raise err from exc
        finally:
            mv.release()
        if pos == n:
            self._buf = None
        else:
            if pos:
                del buf[:pos]
            self._buf = buf
        return out


def expand_run(run: Run) -> list[Packet]:
    """The PUBLISH packets of a run (or of `PublishFrames` from its `first` frame on), exactly
    as `feed` makes them from the same bytes (each with its own `frames`): the way back to the
    packet path when a run cannot pass as it is."""
    data = run.data if not isinstance(run, PublishFrames) else run.data[run.start(run.first) :]
    return Decoder(version=MQTT_5 if run.v5 else MQTT_3_1_1).feed(data)
