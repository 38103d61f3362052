"""Runs of plain QoS 0 PUBLISH frames: the bytes a publisher sent, passed on without packets.

Theory of operation
-------------------
A client that publishes fast sends many QoS 0 PUBLISHes to one topic back to back; one read
then holds hundreds of frames that differ only in their payload. `scan_run` finds, at a given
offset of the decoder's buffer, the longest run of frames that share their whole head: the
first byte 0x30 (PUBLISH, QoS 0, no DUP, no RETAIN), the same minimal Remaining Length (so the
same frame length), the same topic and, in MQTT 5, a property length of 0. Such frames are
exactly the ones the decoder would turn into equal `Publish` packets but for the payload, and
their bytes are already what a subscriber of the same protocol family gets for each.

Finding the run costs a few C-level operations per frame, not Python steps: after the first
frames (compared one by one with `startswith`), the head is checked column by column over
every frame left in the buffer at once (`buf[pos + j :: frame_len]` is byte `j` of every
frame, which must be the head's byte `j`; `lstrip` tells how many leading frames agree).
That is a dozen slices per run however long it is; a run that ends early pays for the frames
after it, but only a run of more than `_ONE_BY_ONE` frames gets there.

The frame at the offset is left to the decoder (None) when it is anything else: a retained
or flagged PUBLISH, properties, a topic that is not valid UTF-8 or holds U+0000, a non-minimal
or long (body of 16 KiB or more) header, a frame not complete yet or over `max_size`. So a
run never holds a frame the decoder would refuse or read differently, and falling back to
`broker.protocol.decode.expand_run` gives the same packets the decoder would have made.

A publisher cycling through many topics sends no run longer than one frame. `scan_frames`
(which the decoder tries first) takes such frames together: each frame with the same checks
as above, up to the first that is not one or that starts a run (left to `scan_run`), as one
`PublishFrames` (the bytes, each frame's topic and end); a lone frame stays a `PublishRun` of
one. `broker.core.frames_delivery` routes them frame by frame in one loop per read. A read
that is one whole frame and nothing else (a lone message, as at a low rate) is checked by
`lone_frame` instead, with the same checks and no buffer or copy.
"""

from __future__ import annotations

#: First byte of a PUBLISH with QoS 0 and neither DUP nor RETAIN.
PLAIN_QOS0 = 0x30
#: Frames compared one at a time before the column check takes over.
_ONE_BY_ONE = 8


class PublishRun:
    """`count` QoS 0 PUBLISH frames of `frame_len` bytes each to one topic, as received.

    `data` is the frames' bytes (one copy out of the read buffer), `v5` whether they are MQTT
    5 frames (a property length of 0 after the topic) or 3.x ones. Every frame has RETAIN 0 and
    no properties; only the payloads differ.
    """

    __slots__ = ("_other", "count", "data", "frame_len", "topic", "v5")
    packet_type = 3  # PacketType.PUBLISH: counted as that many PUBLISH packets

    def __init__(self, topic: str, data: bytes, count: int, frame_len: int, v5: bool) -> None:
        self.topic = topic
        self.data = data
        self.count = count
        self.frame_len = frame_len
        self.v5 = v5
        self._other: PublishRun | None = None

    def frame_len_for(self, v5: bool) -> int:
        """The length of each frame in the encoding for clients of MQTT 5 (`v5`) or 3.x."""
        if v5 is self.v5:
            return self.frame_len
        length = self.frame_len - _head_len(self.data) + (1 if v5 else -1)
        return 1 + len(encode_varint(length)) + length

    def for_family(self, v5: bool) -> PublishRun:
        """The same messages as the frames a client of MQTT 5 (`v5`) or 3.x is sent for them:
        this run, or its frames with the 5.0 property length (0) added or taken out, made at
        most once. These are the bytes the encoder gives each message (no properties, QoS 0,
        RETAIN 0) in that version."""
        if v5 is self.v5:
            return self
        other = self._other
        if other is None:
            other = self._other = _convert(self, v5)
        return other

    def __repr__(self) -> str:
        return f"PublishRun(topic={self.topic!r}, count={self.count}, frame_len={self.frame_len})"


def encode_varint(value: int) -> bytes:
    """A Remaining Length (Variable Byte Integer, 2.2.3/1.5.5) of a run's frame; written here,
    not imported, so that this module needs nothing from the codec (`errors` names it)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _head_len(data: bytes) -> int:
    """Fixed header length of the run's frames (all alike; at most 3 bytes, see `scan_run`)."""
    return 2 if data[1] < 0x80 else 3


def _convert(run: PublishRun, v5: bool) -> PublishRun:
    """`run`'s frames re-framed for the other protocol family: each frame's head (fixed header,
    topic, 5.0 property length) is made once, and the payloads are joined behind copies of it."""
    data = run.data
    frame_len = run.frame_len
    head = _head_len(data)
    topic_end = head + 2 + ((data[head] << 8) | data[head + 1])
    payload_at = topic_end + 1 if run.v5 else topic_end
    length = frame_len - head + (1 if v5 else -1)
    new_head = b"\x30" + encode_varint(length) + data[head:topic_end] + (b"\x00" if v5 else b"")
    view = memoryview(data)
    payloads = [view[at + payload_at : at + frame_len] for at in range(0, len(data), frame_len)]
    new_data = new_head + new_head.join(payloads)
    return PublishRun(run.topic, new_data, run.count, 1 + len(encode_varint(length)) + length, v5)


def scan_run(buf: bytearray, pos: int, n: int, v5: bool, max_size: int) -> PublishRun | None:
    """The run of plain QoS 0 PUBLISH frames starting at `pos` of `buf[:n]`, or None when the
    frame there is not one (see the module docstring). `buf[pos]` is PLAIN_QOS0."""
    found = measure_run(buf, pos, n, v5, max_size)
    if found is None:
        return None
    topic, count, frame_len = found
    with memoryview(buf) as view:  # one copy (a bytearray slice, then bytes, would be two)
        data = view[pos : pos + count * frame_len].tobytes()
    return PublishRun(topic, data, count, frame_len, v5)


def short_frame_size(buf: bytes | bytearray, pos: int, n: int) -> tuple[int, int] | None:
    """(fixed header length, remaining length) of the frame at `pos` of `buf[:n]` (at least
    two bytes there), or None when its length is cut off, not minimal (MQTT-1.5.5-1) or 16 KiB
    and over (runs stop there). `scan_frames` reads the same inline, once per frame."""
    length = buf[pos + 1]
    if length <= 0x7F:
        return 2, length
    if pos + 3 > n:
        return None
    second = buf[pos + 2]
    if second == 0 or second > 0x7F:
        return None
    return 3, (length & 0x7F) | (second << 7)


def measure_run(
    buf: bytes | bytearray, pos: int, n: int, v5: bool, max_size: int
) -> tuple[str, int, int] | None:
    """`scan_run` without the copy: (topic, number of frames, frame length) of the run at
    `pos`, or None. Also what a load client counts received frames with."""
    if pos + 2 > n or buf[pos] != PLAIN_QOS0:
        return None
    sized = short_frame_size(buf, pos, n)
    if sized is None:
        return None
    head, length = sized
    frame_len = head + length
    if pos + frame_len > n or frame_len > max_size:
        return None
    topic_at = pos + head + 2
    if length < 2:
        return None
    topic_end = topic_at + ((buf[topic_at - 2] << 8) | buf[topic_at - 1])
    prefix_end = topic_end + 1 if v5 else topic_end
    if prefix_end > pos + frame_len or (v5 and buf[topic_end] != 0):
        return None
    try:
        topic = str(buf[topic_at:topic_end], "utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in topic:
        return None
    prefix = bytes(buf[pos:prefix_end])
    count = 1
    at = pos + frame_len
    # The first frames one by one: a run of one or two costs no column work.
    while count < _ONE_BY_ONE and at + frame_len <= n and buf.startswith(prefix, at):
        count += 1
        at += frame_len
    if count == _ONE_BY_ONE:  # a long run, likely: the rest in C
        count = _count_by_columns(buf, pos, n, prefix, frame_len, count)
    return topic, count, frame_len


def _count_by_columns(
    buf: bytes | bytearray, pos: int, n: int, prefix: bytes, frame_len: int, count: int
) -> int:
    """How many frames from `pos` start with `prefix`, the first `count` known to: every frame
    left in the buffer is checked at once, byte column by byte column (module docstring)."""
    available = (n - pos) // frame_len
    if available <= count:
        return count
    start = pos + count * frame_len
    stop = pos + available * frame_len
    agree = available - count
    for j, byte in enumerate(_BYTES[b] for b in prefix):
        column = buf[start + j : stop : frame_len]
        same = len(column) - len(column.lstrip(byte))
        if same < agree:
            agree = same
            if not agree:
                break
    return count + agree


#: Each byte value as a one-byte `bytes`, made once.
_BYTES = [bytes([b]) for b in range(256)]


def measure_framed_run(data: bytes, count: int, v5: bool) -> tuple[str, int] | None:
    """(topic, frame length) when `data` is `count` frames of one length that any subscriber
    reads as `count` plain QoS 0 PUBLISHes, else None: the first frame passes every check of
    `measure_run`, and every frame has the first's fixed header, topic length and (5.0)
    property length. The topic bytes of the other frames are not compared: this is for bytes
    a cluster peer found to be a run with `measure_run` before it sent them
    (`cluster.wire`), and checks the few columns that frame the stream instead of all of the
    head's (about a third of the cost for a 11-byte topic, less for longer ones)."""
    size = len(data)
    if count < 1 or not size or size % count:
        return None
    frame_len = size // count
    first = measure_run(data, 0, frame_len, v5, frame_len)
    if first is None or first[2] != frame_len:
        return None
    head = _head_len(data)
    columns = list(range(head + 2))  # the fixed header and the topic's length
    if v5:
        columns.append(head + 2 + ((data[head] << 8) | data[head + 1]))  # property length
    for j in columns:
        if data[j::frame_len].lstrip(_BYTES[data[j]]):
            return None
    return first[0], frame_len


class PublishFrames:
    """Plain QoS 0 PUBLISH frames to changing topics, back to back as received: the frames
    `first` to `len(topics) - 1` of `data`, frame `i` being `data[ends[i - 1]:ends[i]]` (the
    first starts at 0) to `topics[i]`. No two neighbours form a run, and the decoder makes
    one of two frames or more (`scan_frames`).

    `longest` is the largest frame length. Every frame passes the checks of `measure_run`, so
    a frame made into a `PublishRun` of one (`run`) is what `scan_run` would have found.
    """

    __slots__ = ("data", "ends", "first", "longest", "topics", "v5")
    packet_type = 3  # PacketType.PUBLISH

    def __init__(
        self, data: bytes, topics: list[str], ends: list[int], longest: int, v5: bool, first: int
    ) -> None:
        self.data = data
        self.topics = topics
        self.ends = ends
        self.longest = longest
        self.v5 = v5
        self.first = first

    @property
    def count(self) -> int:
        """The number of frames (from `first` on)."""
        return len(self.topics) - self.first

    def start(self, i: int) -> int:
        """Where frame `i` starts in `data`."""
        return self.ends[i - 1] if i else 0

    def run(self, i: int) -> PublishRun:
        """Frame `i` alone, as the run of one that `scan_run` would have made of it."""
        start = self.start(i)
        end = self.ends[i]
        return PublishRun(self.topics[i], self.data[start:end], 1, end - start, self.v5)

    def rest(self, i: int) -> PublishFrames | None:
        """The frames from `i` on (sharing this object's lists), or None when there are none."""
        if i >= len(self.topics):
            return None
        return PublishFrames(self.data, self.topics, self.ends, self.longest, self.v5, i)

    def __repr__(self) -> str:
        return f"PublishFrames(count={self.count}, bytes={len(self.data)})"


def lone_frame(data: bytes, v5: bool, max_size: int) -> PublishRun | None:
    """`data` (a whole read, nothing buffered before it) as the `PublishRun` of one that
    `scan_frames` makes of it when it is exactly one plain QoS 0 PUBLISH frame, or None (the
    decoder then scans it as ever). The same checks as `scan_frames`, without its buffer, lists
    and copy: a read of one message, as at a low rate, is the latency of every message there
    (README "Latency of a lone message")."""
    n = len(data)
    if n < 4 or data[0] != PLAIN_QOS0:
        return None
    length = data[1]
    head = 2
    if length > 0x7F:
        second = data[2]
        if second == 0 or second > 0x7F:  # non-minimal (MQTT-1.5.5-1) or 16 KiB and over
            return None
        length = (length & 0x7F) | (second << 7)
        head = 3
    if head + length != n or n > max_size:
        return None
    topic_at = head + 2
    topic_end = topic_at + ((data[head] << 8) | data[head + 1])
    if v5:
        if topic_end >= n or data[topic_end] != 0:
            return None
    elif topic_end > n:
        return None
    try:
        topic = str(data[topic_at:topic_end], "utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in topic:
        return None
    return PublishRun(topic, data, 1, n, v5)


def scan_frames(
    buf: bytearray, pos: int, n: int, v5: bool, max_size: int
) -> PublishFrames | PublishRun | None:
    """The plain QoS 0 PUBLISH frames from `pos` of `buf[:n]` up to the first that is not
    one (the checks of `measure_run`), or that starts a run (its next frame has the same topic
    and length: `scan_run` passes such runs on whole); None when there is no such frame at
    `pos`; a `PublishRun` of one when there is only one (a read of one message, as at a low
    rate: `handle_publish_run` passes that on with less set-up). One loop of a few steps per
    frame and one copy of the bytes: what lets a read of always-new topics (each a run of
    one) pass as bytes too."""
    start = pos
    topics: list[str] = []
    ends: list[int] = []
    longest = 0
    last_topic = ""
    last_len = -1
    while pos + 2 <= n and buf[pos] == PLAIN_QOS0:
        length = buf[pos + 1]
        head = 2
        if length > 0x7F:
            if pos + 3 > n:
                break
            second = buf[pos + 2]
            if second == 0 or second > 0x7F:  # non-minimal (MQTT-1.5.5-1) or 16 KiB and over
                break
            length = (length & 0x7F) | (second << 7)
            head = 3
        frame_len = head + length
        end = pos + frame_len
        if end > n or frame_len > max_size or length < 2:
            break
        topic_at = pos + head + 2
        topic_end = topic_at + ((buf[topic_at - 2] << 8) | buf[topic_at - 1])
        if v5:
            if topic_end + 1 > end or buf[topic_end] != 0:
                break
        elif topic_end > end:
            break
        # The first frame's next one repeats its head: a run, `scan_run`'s (checked before
        # any decoding, as a one-topic stream meets this at every read).
        if (
            not topics
            and end + topic_end - pos <= n
            and buf[end : end + topic_end - pos] == buf[pos:topic_end]
        ):
            return None
        try:
            topic = str(buf[topic_at:topic_end], "utf-8")
        except UnicodeDecodeError:
            break
        if "\x00" in topic:
            break
        if frame_len == last_len and topic == last_topic:  # the previous frame starts a run
            topics.pop()
            ends.pop()
            pos -= frame_len
            break
        topics.append(topic)
        pos = end
        ends.append(pos - start)
        if frame_len > longest:
            longest = frame_len
        last_topic = topic
        last_len = frame_len
    if not topics:
        return None
    with memoryview(buf) as view:
        data = view[start:pos].tobytes()
    if len(topics) == 1:  # a lone frame: the run of one `scan_run` makes (cheaper to pass on)
        return PublishRun(topics[0], data, 1, len(data), v5)
    return PublishFrames(data, topics, ends, longest, v5, 0)
