"""The inter-node wire format: length-prefixed frames of `[version][type][msgpack body]`.

Theory of operation
-------------------
Every message between two nodes is one frame::

    +----------------+---------+------+------------------------+
    | length (4, BE) | version | type | body (msgpack map)     |
    +----------------+---------+------+------------------------+
                     '--------------- length bytes -------------'

`length` counts the version byte, the type byte and the body, so a reader can skip a frame it
does not understand without decoding it. The body is always a msgpack map with string keys at the
top level (`use_bin_type=True`: `bytes` stay `bytes`, `str` stays `str`; maps nested inside, such
as MQTT properties, may have integer keys).

Versioning. `PROTOCOL_VERSION` is the version this code speaks; each `MessageType` records the
version that introduced it (`INTRODUCED_IN`). A frame is decoded as follows:

* version 0, or a version older than the one that introduced its type: `WireError`;
* a known type at our version or any *newer* version: decoded. Handlers read the fields they know
  and ignore any others, so a newer peer may add fields freely (forward compatible);
* an unknown type at our version or older: `WireError` (such a peer is broken);
* an unknown type at a newer version: skipped and counted in `FrameDecoder.skipped` (a newer peer
  may send new message types; we cannot answer them but need not drop the link).

A sender talks to a peer at `min(our version, the version in the peer's HELLO)`.

Versions. 1: the types up to RPC_RESPONSE. 2: FORWARD_BATCH. 3: FORWARD_ACK, and the `seq`
field of FORWARD_BATCH (reliable QoS 1/2 forwards, `cluster.outbox`): a node numbers batches
only on a link that negotiated 3, and acknowledges only numbered batches, so a version-2 peer
never sees either (it would ignore `seq` anyway). 4: run entries in FORWARD_BATCH (below;
`RUN_VERSION`), sent only on a link that negotiated 4. Compatibility rule: a node sends
a type only on a link whose handshake negotiated a version that has it, so it sends
FORWARD_BATCH only to peers whose HELLO_ACK said 2 or more; to a version-1 peer (and on a link
whose handshake is not done yet) every message goes as its own FORWARD. A version-2 node reads
both. Frames queued for a link that reconnects to an older peer are dropped and counted, never
sent to a peer that would skip them.

Errors. `FrameDecoder.feed` raises only `WireError`, whatever the bytes; after an error the decoder
stays failed (the connection must be closed). The length is checked against `max_frame` before any
body is buffered.

Handshake. The connecting node sends HELLO (cookie, name, epoch, address, version); the accepting
node checks the cookie with `check_hello` and answers HELLO_ACK (or HELLO_ACK with `error` and
closes). Nothing else is accepted on a link before the handshake. The cookie is a shared secret
that keeps strangers out; it is not encryption: with `[cluster] tls_enable` the link runs inside
mutual TLS (`cluster.tls`, `cluster.transport`) and the cookie is a second factor.

Message bodies (keys of the top-level map; `addr` is `[host, port]`):

==============  ===============================================================================
HELLO           cookie, name, epoch, addr, version
HELLO_ACK       name, epoch, addr, version, error (absent or None when accepted)
PING            seq, from, target, [updates], [deltas]
ACK             seq, from, [updates], [deltas]
PING_REQ        seq, from, target, target_addr, [updates], [deltas]
NACK            seq, from
GOSSIP          from, updates, [deltas]          (membership updates, piggybacked route deltas)
ROUTE_DELTA     from, deltas                     (route deltas only)
PUSH_PULL_REQ   from, join, members, state       (full membership + route state)
PUSH_PULL_RESP  from, join, members, state
LEAVE           from, updates                    (carries the `left` update of the sender)
FORWARD         topic, payload, qos, retain, props, publisher, origin, ts, [kind], [shared],
                [hlc] (kind publish | retain | shared; `shared: [group, filter]` with kind
                shared; `hlc: [ms, counter, node]`, the stamp of a retained write,
                `broker.core.hlc`: an optional field, so no new version; without it the
                receiver orders the write by its arrival time; on a QoS 2 message, its
                publish stamp: `Broker.late_for`, none from an older node: nothing skipped)
FORWARD_BATCH   origin, msgs (v2): the forwards of one loop turn to one peer, in order; each
                entry `[topic, payload, qos, retain, props, publisher, ts]`, plus an 8th element,
                a map of the other FORWARD fields (`kind`, `shared`, `hlc`) and of `raw`, when
                it has any. `raw: [is_v5, bytes]` is the QoS 0 PUBLISH as the client sent it
                (no flags, payload up to `RAW_MAX` bytes), or the first encoding the origin
                made: the receiver sends those bytes to its subscribers of that protocol
                version instead of encoding them again, as the origin does for its own
                (`Message.frames`)
                With `seq` (v3): the batch's link sequence number; the receiver skips a
                batch whose `seq` it processed already from that run of the sender and
                acknowledges it with FORWARD_ACK. With `live: true` (optional, no new
                version): the batch is going out as it was routed, on a link that was up,
                not held nor sent again; its QoS 2 messages are not checked against a session
                copy's arrival stamp (`Message.live`, `Broker.late_for`)
                Run entries (v4): `[topic, publisher, is_v5, count, frames]`, `count` plain
                QoS 0 PUBLISH frames to `topic` as client `publisher` sent them
                (`broker.protocol.runs`), one entry for the messages of a run; a receiver
                checks that the bytes frame such a run (else: malformed): the first frame
                whole, and in every frame the bytes that frame it (fixed header, topic
                length, 5.0 property length); the topic bytes of the later frames it takes
                on trust from the peer that found the run, as it takes a `raw` (measured:
                10 against 35 ns a frame for an 11-byte topic, `measure_framed_run`), and
                delivers them as it would the `count` messages. An older node would count
                the 5-element entry as malformed, never deliver it, but is never sent one
FORWARD_ACK     from, seq (v3): every numbered batch up to `seq` was processed (cumulative)
RPC_REQUEST     id, method, args
RPC_RESPONSE    id, ok, result | error
==============  ===============================================================================

A membership update is `[state, name, host, port, incarnation, epoch]` (see `cluster.members`); a
route delta is `[origin, epoch, seq, filter, present]` (see `cluster.routes`; `filter` may be a
shared route key `$share/<group>/<filter>`).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

from broker.core.hlc import stamp_from_wire
from broker.core.message import Message
from broker.protocol.constants import PropertyId
from broker.protocol.runs import PublishRun, measure_framed_run
from broker.protocol.wire import Frames

PROTOCOL_VERSION = 4
#: The version that has run entries in FORWARD_BATCH.
RUN_VERSION = 4
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HEADER_SIZE = 4

#: A node's cluster address as advertised in HELLO and membership: (host, port).
Address = tuple[str, int]
Body = dict[str, Any]

_LENGTH = struct.Struct(">I")


class WireError(Exception):
    """Bad bytes or a bad message on a cluster link; the link should be closed."""


class HandshakeError(WireError):
    """A HELLO that is malformed or does not present the cluster cookie."""


class MessageType(IntEnum):
    """Inter-node message types. Never renumber; add new types at the end."""

    HELLO = 1
    HELLO_ACK = 2
    PING = 3
    ACK = 4
    PING_REQ = 5
    NACK = 6
    GOSSIP = 7
    ROUTE_DELTA = 8
    PUSH_PULL_REQ = 9
    PUSH_PULL_RESP = 10
    LEAVE = 11
    FORWARD = 12
    RPC_REQUEST = 13
    RPC_RESPONSE = 14
    FORWARD_BATCH = 15
    FORWARD_ACK = 16


class Outgoing(NamedTuple):
    """A message the sans-IO parts ask their driver to send."""

    address: Address
    msg_type: MessageType
    body: Body


#: The protocol version that introduced each message type.
INTRODUCED_IN: dict[MessageType, int] = {
    **dict.fromkeys(MessageType, 1),
    MessageType.FORWARD_BATCH: 2,
    MessageType.FORWARD_ACK: 3,
}

_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


def negotiate(peer_version: int) -> int:
    """The version to speak to a peer that announced `peer_version` in its HELLO."""
    return max(1, min(PROTOCOL_VERSION, peer_version))


def encode_frame(
    msg_type: MessageType,
    body: Body,
    version: int = PROTOCOL_VERSION,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """One complete frame. Raises WireError if the body cannot be packed or is too large."""
    head, packed = encode_frame_parts(msg_type, body, version, max_frame)
    return head + packed


def encode_frame_parts(
    msg_type: MessageType,
    body: Body,
    version: int = PROTOCOL_VERSION,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> tuple[bytes, bytes]:
    """`encode_frame` as its header and its packed body, for a vectored write: a
    FORWARD_BATCH body runs to half a MiB, and joining the two copied all of it."""
    if not 1 <= version <= 255:
        raise WireError(f"bad protocol version {version}")
    if version < INTRODUCED_IN[msg_type]:
        raise WireError(f"{msg_type.name} does not exist in protocol version {version}")
    try:
        packed: bytes = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode {msg_type.name} body: {exc}") from exc
    length = len(packed) + 2
    if length > max_frame:
        raise WireError(f"{msg_type.name} frame of {length} bytes exceeds {max_frame}")
    return _LENGTH.pack(length) + bytes((version, int(msg_type))), packed


def decode_body(data: bytes | memoryview) -> Body:
    """Unpack one msgpack body; raises WireError unless it is a map with string keys."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises many kinds (ValueError, ExtraData, TypeError...)
        raise WireError(f"undecodable body: {exc!r}") from exc
    if not isinstance(body, dict):
        raise WireError(f"body is a {type(body).__name__}, not a map")
    for key in body:
        if not isinstance(key, str):
            raise WireError("body keys must be strings")
    return body


class FrameDecoder:
    """Incremental decoder: feed bytes, get `(version, type, body)` per complete frame."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.skipped = 0  # frames of unknown types from newer peers
        self._buffer = bytearray()
        self._failed: WireError | None = None

    def feed(self, data: bytes) -> list[tuple[int, MessageType, Body]]:
        if self._failed is not None:
            raise WireError(f"decoder failed earlier: {self._failed}")
        try:
            return self._feed(data)
        except WireError as exc:
            self._failed = exc
            self._buffer.clear()
            raise

    def _feed(self, data: bytes) -> list[tuple[int, MessageType, Body]]:
        # Frames are read in place: from `data` itself while nothing is held (the common
        # case), and each body is unpacked from a view, not a copy (a run entry's bytes are
        # copied once, by msgpack).
        held = self._buffer
        if held:
            held += data
            buf: bytes | bytearray = held
        else:
            buf = data
        out: list[tuple[int, MessageType, Body]] = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - pos >= HEADER_SIZE:
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length < 2:
                    raise WireError(f"frame length {length} is shorter than its header")
                if length > self.max_frame:
                    raise WireError(f"frame length {length} exceeds {self.max_frame}")
                if end - pos - HEADER_SIZE < length:
                    break
                start = pos + HEADER_SIZE
                version, type_byte = buf[start], buf[start + 1]
                pos = start + length
                if version == 0:
                    raise WireError("protocol version 0 does not exist")
                if type_byte not in _KNOWN_TYPES:
                    if version > PROTOCOL_VERSION:
                        self.skipped += 1
                        continue
                    raise WireError(f"unknown message type {type_byte} in version {version}")
                msg_type = MessageType(type_byte)
                if version < INTRODUCED_IN[msg_type]:
                    raise WireError(f"{msg_type.name} does not exist in version {version}")
                out.append((version, msg_type, decode_body(view[start + 2 : pos])))
        if held:
            if pos:
                del held[:pos]
        elif pos < end:
            held += data[pos:] if pos else data
        return out

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)


# -- field helpers ------------------------------------------------------------------------------


def get_str(body: Body, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise WireError(f"field {key!r} must be a string")
    return value


def get_int(body: Body, key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"field {key!r} must be an integer")
    return value


def to_address(value: Any) -> Address:
    """`[host, port]` from the wire; raises WireError."""
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] <= 65535
    ):
        return (value[0], value[1])
    raise WireError(f"bad address {value!r}")


# -- handshake ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """What a peer says about itself in HELLO / HELLO_ACK."""

    name: str
    epoch: int
    address: Address
    version: int


def hello_body(cookie: str, name: str, epoch: int, address: Address) -> Body:
    return {
        "cookie": cookie,
        "name": name,
        "epoch": epoch,
        "addr": list(address),
        "version": PROTOCOL_VERSION,
    }


def _parse_hello(body: Body) -> Hello:
    try:
        return Hello(
            get_str(body, "name"),
            get_int(body, "epoch"),
            to_address(body.get("addr")),
            get_int(body, "version"),
        )
    except WireError as exc:
        raise HandshakeError(f"malformed handshake: {exc}") from exc


def check_hello(body: Body, cookie: str) -> Hello:
    """Validate a HELLO against our cookie (constant-time compare); raises HandshakeError."""
    presented = body.get("cookie")
    if not isinstance(presented, str) or not hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), cookie.encode("utf-8", "surrogatepass")
    ):
        raise HandshakeError("peer did not present the cluster cookie")
    return _parse_hello(body)


def hello_ack_body(
    name: str, epoch: int, address: Address, peer_version: int, error: str | None = None
) -> Body:
    return {
        "name": name,
        "epoch": epoch,
        "addr": list(address),
        "version": negotiate(peer_version),
        "error": error,
    }


def parse_hello_ack(body: Body) -> Hello:
    """The acceptor's identity; raises HandshakeError if it refused us (`error` set)."""
    error = body.get("error")
    if error is not None:
        raise HandshakeError(f"peer refused the handshake: {error}")
    return _parse_hello(body)


# -- forwarded messages and RPC -----------------------------------------------------------------


def forward_body(message: Message, origin: str) -> Body:
    """FORWARD body for one message published on node `origin` (a QoS 2 one with its
    publish stamp, `hlc`, when it has one)."""
    body: Body = {
        "topic": message.topic,
        "payload": message.payload,
        "qos": message.qos,
        "retain": message.retain,
        "props": message.properties,
        "publisher": message.publisher,
        "origin": origin,
        "ts": message.timestamp,
    }
    if message.qos == 2 and message.stamp is not None:
        body["hlc"] = message.stamp.to_wire()
    return body


def parse_forward(body: Body, now: float | None = None) -> Message:
    """The Message of a FORWARD body (node = origin); raises WireError.

    msgpack turns tuples into lists, so USER_PROPERTY pairs are turned back into tuples. With
    `now`, the message is stamped with the receiver's clock (its Message Expiry Interval then
    counts from its arrival here: the origin forwards as it routes, so only transit time is
    added, and clock skew between nodes does not matter); without, the origin's `ts` is kept.
    """
    message = _message(
        body.get("topic"),
        body.get("payload"),
        body.get("qos"),
        body.get("retain"),
        body.get("props", {}),
        body.get("publisher"),
        body.get("ts", 0.0),
        body.get("origin"),
        now,
    )
    if message.qos == 2 and "hlc" in body:
        message.stamp = stamp_from_wire(body["hlc"])
    return message


def _message(
    topic: Any,
    payload: Any,
    qos: Any,
    retain: Any,
    props: Any,
    publisher: Any,
    ts: Any,
    origin: Any,
    now: float | None,
) -> Message:
    """A forwarded Message from its wire fields, each checked; raises WireError."""
    for name, value in (("topic", topic), ("publisher", publisher), ("origin", origin)):
        if not isinstance(value, str):
            raise WireError(f"field {name!r} must be a string")
    if not isinstance(payload, bytes):
        raise WireError("field 'payload' must be bytes")
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise WireError(f"bad qos {qos!r}")
    if not isinstance(retain, bool):
        raise WireError("field 'retain' must be a boolean")
    if not isinstance(props, dict) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in props
    ):
        raise WireError("field 'props' must be a map with integer keys")
    pairs = props.get(PropertyId.USER_PROPERTY)
    if pairs is not None:
        if not isinstance(pairs, list) or not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in pairs
        ):
            raise WireError("bad user properties")
        props = {**props, int(PropertyId.USER_PROPERTY): [(p[0], p[1]) for p in pairs]}
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise WireError("field 'ts' must be a number")
    return Message(
        topic, payload, qos, retain, props, publisher, float(ts) if now is None else now, origin
    )


#: One message of a FORWARD_BATCH: the FORWARD fields as a list (see the module docstring).
Entry = list[Any]


#: The largest payload whose client PUBLISH bytes travel with it (`raw`): above, the copy
#: would cost the link more than encoding it again costs the receiver.
RAW_MAX = 1024


def forward_entry(message: Message, extra: Body | None = None) -> Entry:
    """The batch entry of `message`; `extra` holds the other FORWARD fields (kind, shared)."""
    entry: Entry = [
        message.topic,
        message.payload,
        message.qos,
        message.retain,
        message.properties,
        message.publisher,
        message.timestamp,
    ]
    frames = message.frames
    if frames is not None and not message.qos and len(message.payload) <= RAW_MAX:
        raw = frames.raw
        if raw is not None and frames.fits(message.topic, message.payload, message.properties):
            pair = [frames.raw_v5, raw]
            extra = {**extra, "raw": pair} if extra else {"raw": pair}
    stamp = message.stamp
    if stamp is not None and message.qos == 2 and not (extra and "hlc" in extra):
        # Its publish stamp (`Broker.late_for`), in the field a retained write's stamp uses.
        extra = {**extra, "hlc": stamp.to_wire()} if extra else {"hlc": stamp.to_wire()}
    if extra:
        entry.append(extra)
    return entry


def _take_raw(message: Message, raw: Any) -> bool:
    """Attach a batch entry's `raw` to its message; False if it is malformed."""
    if (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], bool)
        and isinstance(raw[1], bytes)
        and not message.qos
    ):
        message.frames = Frames(message.topic, message.payload, message.properties, raw[1], raw[0])
        return True
    return False


def entry_size(entry: Entry) -> int:
    """Roughly the bytes `entry` takes on the wire (what bounds a batch)."""
    if len(entry) == _RUN_ENTRY_LEN:
        return len(entry[0]) + len(entry[1]) + len(entry[4]) + 32
    return len(entry[0]) + len(entry[1]) + 32


def run_entry(run: PublishRun, publisher: str) -> Entry:
    """The batch entry (v4) of the messages of `run`, published by client `publisher`."""
    return [run.topic, publisher, run.v5, run.count, run.data]


def entry_weight(entry: Entry) -> int:
    """The number of messages `entry` carries: a run's count, else 1."""
    return int(entry[3]) if len(entry) == _RUN_ENTRY_LEN else 1


class ForwardedRun:
    """A run entry of a FORWARD_BATCH: the run and who published it."""

    __slots__ = ("publisher", "run")

    def __init__(self, run: PublishRun, publisher: str) -> None:
        self.run = run
        self.publisher = publisher


_RUN_ENTRY_LEN = 5


def _parse_run(entry: Entry) -> ForwardedRun | None:
    """The run of a run entry, None if malformed: the bytes must frame exactly `count` plain
    QoS 0 PUBLISH frames of one length, the first to `topic`
    (`broker.protocol.runs.measure_framed_run`; the module docstring says what is trusted)."""
    topic, publisher, v5, count, data = entry
    if (
        not isinstance(topic, str)
        or not isinstance(publisher, str)
        or not isinstance(v5, bool)
        or not isinstance(count, int)
        or isinstance(count, bool)
        or count < 1
        or not isinstance(data, bytes)
        or len(data) % count
    ):
        return None
    found = measure_framed_run(data, count, v5)
    if found is None or found[0] != topic:
        return None
    return ForwardedRun(PublishRun(topic, data, count, found[1], v5), publisher)


def forward_batch_body(origin: str, entries: list[Entry]) -> Body:
    return {"origin": origin, "msgs": entries}


def forward_ack_body(origin: str, seq: int) -> Body:
    return {"from": origin, "seq": seq}


def batch_seq(body: Body) -> int | None:
    """The `seq` of a FORWARD_BATCH (v3), None when it has none; raises WireError if bad."""
    seq = body.get("seq")
    if seq is None:
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise WireError("field 'seq' must be a positive integer")
    return seq


_NO_EXTRA: Body = {}


def parse_forward_batch(
    body: Body, now: float | None = None
) -> tuple[list[tuple[Message, Body] | ForwardedRun], int]:
    """The messages of a FORWARD_BATCH, each with its extra fields (an empty map for a plain
    publish), or a `ForwardedRun` for a run entry (v4), in order, and the number of malformed
    entries skipped; raises WireError if the batch itself is malformed. `now` stamps the
    messages as in `parse_forward`."""
    origin = get_str(body, "origin")
    entries = body.get("msgs")
    if not isinstance(entries, list):
        raise WireError("field 'msgs' must be a list")
    out: list[tuple[Message, Body] | ForwardedRun] = []
    bad = 0
    for entry in entries:
        if isinstance(entry, list) and len(entry) == _RUN_ENTRY_LEN:
            forwarded = _parse_run(entry)
            if forwarded is None:
                bad += 1
            else:
                out.append(forwarded)
            continue
        if not isinstance(entry, list) or len(entry) not in (7, 8):
            bad += 1
            continue
        extra = entry[7] if len(entry) == 8 else _NO_EXTRA
        if not isinstance(extra, dict):
            bad += 1
            continue
        try:
            topic, payload, qos, retain, props, publisher, ts = entry[:7]
            message = _message(topic, payload, qos, retain, props, publisher, ts, origin, now)
        except WireError:
            bad += 1
            continue
        if extra:
            if qos == 2 and "hlc" in extra:
                message.stamp = stamp_from_wire(extra["hlc"])
            raw = extra.get("raw")
            if raw is not None:
                if not _take_raw(message, raw):
                    bad += 1
                    continue
                if len(extra) == 1:
                    extra = _NO_EXTRA
                else:
                    extra = {k: v for k, v in extra.items() if k != "raw"}
        out.append((message, extra))
    return out, bad


def rpc_request_body(request_id: int, method: str, args: Body) -> Body:
    return {"id": request_id, "method": method, "args": args}


def rpc_response_body(request_id: int, result: Any = None, error: str | None = None) -> Body:
    if error is not None:
        return {"id": request_id, "ok": False, "error": error}
    return {"id": request_id, "ok": True, "result": result}
