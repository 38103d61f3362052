"""A lean MQTT 3.1.1 load client: one `asyncio.Protocol` per connection, built on our codec.

Theory of operation. The control packets (CONNECT, SUBSCRIBE, DISCONNECT) are encoded with
`broker.protocol.codec.encode`, and the rare packets a load client receives besides PUBLISH and
the acknowledgements (CONNACK, SUBACK, PINGRESP, DISCONNECT) are decoded with its `Decoder`. The
hot path does not build packet objects: `data_received` walks the fixed headers of the chunk,
counts PUBLISH frames (a run of plain QoS 0 frames with one head at a time, `measure_run`),
reads a timestamp out of the payload only when latency is measured, and
answers QoS 1/2 with 4-byte acknowledgements (the same bytes `encode(PubAck(pid))` gives; a unit
test checks it). Outgoing PUBLISH frames come from `FrameTemplate`, which takes
`encode_publish`'s output once and splices in the packet id and timestamp per message. That
keeps the generator far cheaper per message than the broker it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import cast

from benchmarks.stats import LatencySampler
from broker.protocol.codec import Decoder, encode, encode_publish
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.decode import DEFAULT_MAX_PACKET_SIZE
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Disconnect,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.protocol.runs import PLAIN_QOS0, measure_run

__all__ = ["BenchClient", "ConnectError", "FrameTemplate", "connect", "subscribe"]

VERSION = MQTT_3_1_1
PINGREQ = b"\xc0\x00"
DISCONNECT = encode(Disconnect(), VERSION)
#: SUBSCRIBE packets carry at most this many filters (brokers limit packet sizes).
FILTERS_PER_SUBSCRIBE = 100
TIMESTAMP_BYTES = 8
#: A chunk this large means more is waiting in the socket: read on instead of coalescing.
COALESCE_BELOW = 32 * 1024


class ConnectError(ConnectionError):
    """The broker refused or dropped a connection or a subscription."""


def _ack(first: int, packet_id: int) -> bytes:
    return bytes((first, 2, packet_id >> 8, packet_id & 0xFF))


class FrameTemplate:
    """PUBLISH frames for one topic, QoS and payload size, with packet id and timestamp spliced.

    With `timestamps`, the payload starts with the send time (`time.monotonic_ns()`, 8 bytes
    big-endian; the payload is grown to 8 bytes if smaller) so a subscriber can compute latency.
    """

    __slots__ = ("_pad", "_prefix", "fixed", "qos", "size", "timestamps")

    def __init__(self, topic: str, size: int, qos: int, timestamps: bool = False) -> None:
        if timestamps:
            size = max(size, TIMESTAMP_BYTES)
        self.size = size
        self.qos = qos
        self.timestamps = timestamps
        payload = b"x" * size
        frame = encode_publish(topic, payload, qos, False, False, 1 if qos else None, None, VERSION)
        head = len(frame) - size - (2 if qos else 0)
        self._prefix = frame[:head]
        self._pad = payload[TIMESTAMP_BYTES:] if timestamps else payload
        #: The whole frame when it never changes (QoS 0 without timestamps), else None.
        self.fixed: bytes | None = frame if not qos and not timestamps else None

    def frame(self, packet_id: int = 0, now_ns: int = 0) -> bytes:
        parts = [self._prefix]
        if self.qos:
            parts.append(packet_id.to_bytes(2, "big"))
        if self.timestamps:
            parts.append(now_ns.to_bytes(TIMESTAMP_BYTES, "big"))
        parts.append(self._pad)
        return b"".join(parts)


class BenchClient(asyncio.Protocol):
    """One MQTT connection with counters. Create it through `connect()`."""

    def __init__(self, latency: LatencySampler | None = None, coalesce: float = 0.0) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop = loop = asyncio.get_running_loop()
        #: Pause reading this long after each chunk, so that a broker writing one small segment
        #: per message costs the generator one read per batch, not per message (emqtt-bench's
        #: `active_n` plays the same role). 0 for latency runs. A chunk of `COALESCE_BELOW`
        #: bytes or more is not followed by a pause: the socket holds more already, and a
        #: pause would cap what a subscriber can read at one chunk per pause.
        self.coalesce = coalesce
        self._reading_paused = False
        self.connack: asyncio.Future[ConnAck] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._subacks: dict[int, asyncio.Future[SubAck]] = {}
        self._decoder = Decoder(version=VERSION)
        self._rest = b""
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._ack_waiter: asyncio.Future[None] | None = None
        self._ack_target = 0
        self.latency = latency
        self.received = 0
        self.rx_bytes = 0
        self.first_rx_ns = 0
        self.last_rx_ns = 0
        self.sent = 0
        self.acked = 0
        self.error: str | None = None
        self._next_id = 0

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=256 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = f"connection lost: {exc}"
        failure = ConnectError(self.error or "connection closed by the broker")
        if not self.connack.done():
            self.connack.set_exception(failure)
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(failure)
        self._subacks.clear()
        self._wake_writer()
        self._fail_acks()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def data_received(self, data: bytes) -> None:  # the hot path; see the module docstring
        if self._rest:
            data = self._rest + data
        n = len(data)
        pos = 0
        count = 0
        acked = 0
        replies: list[bytes] | None = None
        latency = self.latency
        now = time.monotonic_ns()
        while pos + 1 < n:
            first = data[pos]
            if first == PLAIN_QOS0 and latency is None:
                # Frames that differ only in payload: counted a run at a time, in C.
                found = measure_run(data, pos, n, False, DEFAULT_MAX_PACKET_SIZE)
                if found is not None:
                    count += found[1]
                    pos += found[1] * found[2]
                    continue
            length = data[pos + 1]
            i = pos + 2
            if length > 0x7F:  # Remaining Length continues (2.2.3)
                length &= 0x7F
                shift = 7
                while True:
                    if i >= n:
                        length = -1
                        break
                    byte = data[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                if length < 0:
                    break
            end = i + length
            if end > n:
                break
            ptype = first >> 4
            if ptype == 3:  # PUBLISH
                count += 1
                qos = (first >> 1) & 3
                if qos or latency is not None:
                    body = i + 2 + ((data[i] << 8) | data[i + 1])
                    if qos:
                        pid = (data[body] << 8) | data[body + 1]
                        body += 2
                        if replies is None:
                            replies = []
                        replies.append(_ack(0x40 if qos == 1 else 0x50, pid))
                    if latency is not None and end - body >= TIMESTAMP_BYTES:
                        sent_ns = int.from_bytes(data[body : body + TIMESTAMP_BYTES], "big")
                        latency.add(now - sent_ns)
            elif ptype == 4 or ptype == 7:  # PUBACK, PUBCOMP: one message done
                acked += 1
            elif ptype == 5:  # PUBREC -> PUBREL
                if replies is None:
                    replies = []
                replies.append(_ack(0x62, (data[i] << 8) | data[i + 1]))
            elif ptype == 6:  # PUBREL -> PUBCOMP
                if replies is None:
                    replies = []
                replies.append(_ack(0x70, (data[i] << 8) | data[i + 1]))
            else:
                self._control(data[pos:end])
            pos = end
        self._rest = data[pos:] if pos < n else b""
        if count:
            if not self.first_rx_ns:
                self.first_rx_ns = now
            self.last_rx_ns = now
            self.received += count
        self.rx_bytes += n - len(self._rest)
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
        if acked:
            self.acked += acked
            self._wake_acks()
        if (
            self.coalesce
            and n < COALESCE_BELOW
            and not self._reading_paused
            and self.transport is not None
        ):
            self._reading_paused = True
            self.transport.pause_reading()
            self._loop.call_later(self.coalesce, self._resume_reading)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- control packets (rare) ----------------------------------------------------------------
    def _control(self, frame: bytes) -> None:
        try:
            packets = self._decoder.feed(frame)
        except Exception as exc:  # our codec raises ProtocolError; report, do not crash
            self._fail(f"undecodable packet from the broker: {exc}")
            return
        for packet in packets:
            if isinstance(packet, ConnAck):
                if not self.connack.done():
                    self.connack.set_result(packet)
            elif isinstance(packet, SubAck):
                fut = self._subacks.pop(packet.packet_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(packet)
            elif isinstance(packet, Disconnect):
                self._fail(f"DISCONNECT from the broker (reason {packet.reason_code:#x})")

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        if self.transport is not None:
            self.transport.close()

    # -- sending ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` s) while the transport's buffer is above its high-water
        mark; when it is not, just yield once to the other clients of the loop."""
        if not self._paused:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._paused and self.is_open:
                    self._drain = asyncio.get_running_loop().create_future()
                    await self._drain

    async def wait_acks(self, until: int, timeout: float) -> None:
        """Wait until `acked` reaches `until` (or the connection closes, or `timeout` passes).

        Publishers refill their window by halves: one wake-up and one write per batch of
        acknowledgements, not per acknowledgement."""
        if not self.is_open or self.acked >= until:
            return
        self._ack_target = until
        self._ack_waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ack_waiter, timeout)

    def _wake_writer(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake_acks(self) -> None:
        waiter = self._ack_waiter
        if waiter is not None and not waiter.done() and self.acked >= self._ack_target:
            waiter.set_result(None)

    def _fail_acks(self) -> None:
        waiter = self._ack_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expect_suback(self, packet_id: int) -> asyncio.Future[SubAck]:
        fut: asyncio.Future[SubAck] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = fut
        return fut

    def close(self, graceful: bool = True) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if graceful:
            self.transport.write(DISCONNECT)
        self.transport.close()


async def connect(
    host: str,
    port: int,
    client_id: str,
    *,
    keepalive: int = 60,
    timeout: float = 10.0,
    latency: LatencySampler | None = None,
    coalesce: float = 0.0,
) -> BenchClient:
    """Open a TCP connection, send CONNECT (clean session) and wait for a successful CONNACK."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, client = await loop.create_connection(
            lambda: BenchClient(latency, coalesce), host, port
        )
        try:
            transport.write(encode(Connect(client_id, keepalive=keepalive), VERSION))
            ack = await client.connack
        except BaseException:
            transport.close()
            raise
    if ack.reason_code != 0:
        transport.close()
        raise ConnectError(f"{client_id}: CONNACK return code {ack.reason_code}")
    return client


async def subscribe(
    client: BenchClient, filters: list[str], qos: int, *, timeout: float = 30.0
) -> None:
    """Subscribe to every filter (in packets of up to 100) and wait for all SUBACKs."""
    waits: list[asyncio.Future[SubAck]] = []
    for start in range(0, len(filters), FILTERS_PER_SUBSCRIBE):
        chunk = filters[start : start + FILTERS_PER_SUBSCRIBE]
        packet_id = client.next_packet_id()
        waits.append(client.expect_suback(packet_id))
        requests = [SubscriptionRequest(f, qos) for f in chunk]
        client.write(encode(Subscribe(packet_id, requests), VERSION))
    async with asyncio.timeout(timeout):
        acks = await asyncio.gather(*waits)
    refused = sum(1 for ack in acks for code in ack.reason_codes if code >= 0x80)
    if refused:
        raise ConnectError(f"{refused} of {len(filters)} subscriptions refused")
