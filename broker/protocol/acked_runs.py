"""Runs of plain QoS 1 PUBLISH frames: what a publisher waiting for PUBACKs sends in one read.

Theory of operation
-------------------
A client publishing at QoS 1 with a window of unacknowledged messages sends them back to back
to one topic; they differ only in packet id and payload. `scan_acked_run` finds, at a given
offset of the decoder's buffer, the longest run of such frames, as `broker.protocol.runs` does
for QoS 0: the same first byte 0x32 (PUBLISH, QoS 1, no DUP, no RETAIN), the same minimal
Remaining Length, the same topic and, in MQTT 5, a property length of 0 after the packet id.
The first frames are compared one by one (`startswith`), the rest of a long run column by
column over every frame at once (`buf[pos + j :: frame_len]` is byte `j` of every frame), so
finding a run is a few dozen C-level slices, not Python steps per frame. A packet id of 0
(MQTT-2.3.1-1) ends the run: the decoder refuses that frame. A run of one frame is left to the
decoder too: the packet path costs a lone message less than a run's once-per-run work.

An `AckedRun` then gives what the broker needs without a `Publish` per frame: the payloads,
the PUBACK of every frame in one `bytes` (`acks`), and the same messages as QoS 0 frames
(`as_qos0`, the bytes a QoS 0 subscriber is sent for each, as the encoder makes them).
Anything the decoder would refuse or read differently is left to the decoder (None), so
`broker.protocol.decode.expand_run` of a run gives the packets the decoder would have made.
"""

from __future__ import annotations

import re

from broker.protocol.runs import PublishRun, encode_varint, short_frame_size

#: First byte of a PUBLISH with QoS 1 and neither DUP nor RETAIN.
PLAIN_QOS1 = 0x32
#: Frames compared one at a time before the column check takes over.
_ONE_BY_ONE = 8
#: PUBACK's first byte (type 4, flags 0).
_PUBACK = 0x40


class AckedRun:
    """`count` QoS 1 PUBLISH frames of `frame_len` bytes each to one topic, as received.

    `data` is the frames' bytes, `v5` whether they are MQTT 5 frames; in each frame the packet
    id is at `id_at` and the payload starts at `payload_at` (offsets within the frame).
    """

    __slots__ = ("count", "data", "frame_len", "id_at", "payload_at", "topic", "v5")
    packet_type = 3  # PacketType.PUBLISH: counted as that many PUBLISH packets

    def __init__(
        self,
        topic: str,
        data: bytes,
        count: int,
        frame_len: int,
        v5: bool,
        id_at: int,
    ) -> None:
        self.topic = topic
        self.data = data
        self.count = count
        self.frame_len = frame_len
        self.v5 = v5
        self.id_at = id_at
        self.payload_at = id_at + 3 if v5 else id_at + 2

    def payload(self, index: int) -> bytes:
        """The payload of frame `index` (a copy, as the decoder makes it)."""
        at = index * self.frame_len
        return self.data[at + self.payload_at : at + self.frame_len]

    def packet_ids(self) -> list[int]:
        """Each frame's packet id, in order."""
        data = self.data
        at = self.id_at
        step = self.frame_len
        return [(data[i] << 8) | data[i + 1] for i in range(at, len(data), step)]

    def acks(self, reason_code: int = 0) -> bytes:
        """The PUBACK of every frame, in order, as the encoder writes `PubAck(packet_id,
        reason_code)` with no properties: 4 bytes each, 5 with a 5.0 reason code other than 0."""
        data = self.data
        count = self.count
        at = self.id_at
        step = self.frame_len
        size = 5 if reason_code and self.v5 else 4
        out = bytearray(size * count)
        out[0::size] = bytes((_PUBACK,)) * count
        out[1::size] = bytes((size - 2,)) * count
        out[2::size] = data[at::step]
        out[3::size] = data[at + 1 :: step]
        if size == 5:
            out[4::size] = bytes((reason_code,)) * count
        return bytes(out)

    def as_qos0(self) -> PublishRun:
        """The same messages as the QoS 0 frames the encoder makes for them (no packet id,
        no properties, RETAIN 0), in this run's protocol family."""
        data = self.data
        frame_len = self.frame_len
        head = 2 if data[1] < 0x80 else 3
        length = frame_len - head - 2
        topic = data[head : self.id_at]  # its length and itself
        new_head = b"\x30" + encode_varint(length) + topic + (b"\x00" if self.v5 else b"")
        view = memoryview(data)
        start = self.payload_at
        payloads = [view[at + start : at + frame_len] for at in range(0, len(data), frame_len)]
        new_len = 1 + len(encode_varint(length)) + length
        frames = new_head + new_head.join(payloads)
        return PublishRun(self.topic, frames, self.count, new_len, self.v5)

    def __repr__(self) -> str:
        return f"AckedRun(topic={self.topic!r}, count={self.count}, frame_len={self.frame_len})"


def scan_acked_run(buf: bytearray, pos: int, n: int, v5: bool, max_size: int) -> AckedRun | None:
    """The run of plain QoS 1 PUBLISH frames starting at `pos` of `buf[:n]`, or None when the
    frame there is not one (module docstring). `buf[pos]` is PLAIN_QOS1."""
    if pos + 2 > n:
        return None
    sized = short_frame_size(buf, pos, n)
    if sized is None:
        return None
    head, length = sized
    frame_len = head + length
    # A run of one is the decoder's: the packet path costs it less than a run would.
    if pos + 2 * frame_len > n or frame_len > max_size or length < 4:
        return None
    topic_at = pos + head + 2
    topic_end = topic_at + ((buf[topic_at - 2] << 8) | buf[topic_at - 1])
    if topic_end + (3 if v5 else 2) > pos + frame_len:
        return None
    prefix = bytes(buf[pos:topic_end])  # everything up to the packet id
    at = pos + frame_len
    if not buf.startswith(prefix, at):
        return None
    try:
        topic = str(buf[topic_at:topic_end], "utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in topic:
        return None
    # The first frames one by one; a long run's rest byte column by byte column, at once.
    count = 2
    at += frame_len
    while count < _ONE_BY_ONE and at + frame_len <= n and buf.startswith(prefix, at):
        count += 1
        at += frame_len
    if count == _ONE_BY_ONE:  # a long run, likely: the rest in C
        count += _count_rest(buf, at - frame_len, n, prefix, frame_len) - 1
    end = pos + count * frame_len
    id_at = topic_end - pos
    if v5:  # a property length of 0: anything else is for the decoder to read
        column = buf[topic_end + 2 : end : frame_len]
        count = len(column) - len(column.lstrip(b"\x00"))
        end = pos + count * frame_len
    if count:  # a packet id of 0 is refused by the decoder (MQTT-2.3.1-1)
        ids = bytearray(2 * count)  # every packet id, big-endian, back to back
        ids[0::2] = buf[topic_end:end:frame_len]
        ids[1::2] = buf[topic_end + 1 : end : frame_len]
        zero = ids.find(b"\x00\x00")
        while zero > 0 and zero & 1:  # the low byte of one id and the high byte of the next
            zero = ids.find(b"\x00\x00", zero + 1)
        if zero >= 0:
            count = zero // 2
    if count < 2:
        return None
    with memoryview(buf) as view:
        data = view[pos : pos + count * frame_len].tobytes()
    return AckedRun(topic, data, count, frame_len, v5, id_at)


def _count_rest(buf: bytearray, pos: int, n: int, prefix: bytes, frame_len: int) -> int:
    """How many whole frames from `pos` on begin with `prefix`, the one at `pos` known to.
    One regular-expression match in C: the head of the frame at `pos`, then (payload, the
    same head again) as often as it repeats (`_repeats`). Without a pattern (too many
    shapes seen), byte column by byte column."""
    available = (n - pos) // frame_len
    stop = pos + available * frame_len
    pattern = _repeats(len(prefix), frame_len)
    if pattern is not None:
        found = pattern.match(buf, pos, stop)
        assert found is not None  # the frame at `pos` has the head
        return 1 + (found.end() - pos - len(prefix)) // frame_len
    agree = available - 1
    for j, byte in enumerate(prefix):
        if agree <= 0:
            break
        column = buf[pos + frame_len + j : stop : frame_len]
        agree = min(agree, len(column) - len(column.lstrip(_BYTES[byte])))
    return 1 + agree


def _repeats(head: int, frame_len: int) -> re.Pattern[bytes] | None:
    """`(head bytes)(?:(the rest of a frame)(the same head bytes))*`, compiled once per
    shape (head and frame length); None once `_MAX_PATTERNS` shapes are held (a client that
    varies its sizes gets the column check rather than a compile per run)."""
    key = (head, frame_len)
    pattern = _PATTERNS.get(key)
    if pattern is None and len(_PATTERNS) < _MAX_PATTERNS:
        source = b"(.{%d})(?:.{%d}\\1)*" % (head, frame_len - head)
        pattern = _PATTERNS[key] = re.compile(source, re.DOTALL)
    return pattern


#: Compiled `_repeats` patterns by (head length, frame length).
_PATTERNS: dict[tuple[int, int], re.Pattern[bytes]] = {}
_MAX_PATTERNS = 256
#: Each byte value as a one-byte `bytes`, made once.
_BYTES = [bytes([b]) for b in range(256)]
