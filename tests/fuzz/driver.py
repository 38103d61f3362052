"""A live connection driver for fuzzing: a `Broker` and `Channel`s over fake links, no sockets.

`Driver.run(src)` plays one input: a new connection is fed a random packet sequence (built from
our packet classes by `fuzz_corpus`, encoded, sometimes mutated byte-wise) in random chunks, with
the clock moving and `Broker.tick` running in between; then the transport goes away as a real one
would. The rule checked after every input (`FuzzFailure` otherwise):

- `Channel.data_received` raises nothing: input is accepted or rejected with our ProtocolError,
  which the channel turns into a CONNACK/DISCONNECT and a close;
- everything the broker wrote to the connection decodes as valid MQTT, and nothing is written
  after the link was closed;
- the connection is gone from the broker's registries (`channels`, `connected`);
- a healthy publisher/subscriber pair on the same broker still works: a QoS 1 PUBLISH is
  acknowledged and delivered, in order, with nothing lost.

Used by `fuzz_driver.py` (atheris / plain loop) and `tests/unit/test_fuzz_channel.py` (hypothesis).
"""

from __future__ import annotations

from typing import Any

from fuzz_corpus import Source, connect, packet

from broker.core.broker import Broker
from broker.core.channel import CLOSED, CONNECTED, Channel
from broker.core.enhanced_auth import scram_credential
from broker.core.settings import Settings
from broker.protocol.codec import Decoder, encode
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Packet,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
)

HEALTHY_TOPIC = "healthy/stream"
_SCRAM = scram_credential("pw", salt=b"0123456789abcdef", iterations=1)


class FuzzFailure(AssertionError):
    pass


class FakeLink:
    """A Link that keeps what is written; `close` only marks it (the transport would then call
    `connection_lost`)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.late_writes = 0

    def write(self, data: bytes) -> None:
        if self.closed:
            self.late_writes += 1
        self.out += data

    def close(self) -> None:
        self.closed = True

    def buffered(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self, version: int) -> list[Packet]:
        data, self.out = bytes(self.out), bytearray()
        try:
            return Decoder(version=version).feed(data)
        except ProtocolError as exc:
            raise FuzzFailure(f"the broker wrote invalid MQTT: {exc}: {data!r}") from exc


def mutate(src: Source, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(src.randint(1, 4)):
        op = src.randint(0, 4)
        i = src.randint(0, len(buf))
        if op == 0 and i < len(buf):
            buf[i] = src.randint(0, 255)
        elif op == 1:
            buf.insert(i, src.randint(0, 255))
        elif op == 2:
            del buf[i : i + src.randint(1, 4)]
        elif op == 3 and i < len(buf):
            buf[i] ^= 1 << src.randint(0, 7)
        else:
            buf[i:i] = src.choice((b"\xff\xff\xff\xff", b"\x00\x00", b"\xc0\x00", b"\xe0\x00"))
    return bytes(buf)


class Driver:
    def __init__(self, **settings: Any) -> None:
        self.now = 1_000.0
        self.inputs = 0
        self.accepted = self.rejected = self.connected = 0
        defaults: dict[str, Any] = {"max_packet_size": 65_536, "scram_credentials": {"u": _SCRAM}}
        self.broker = Broker(Settings(**{**defaults, **settings}), clock=lambda: self.now)
        self.seq = 0
        self.sub_link, self.sub = self._healthy("healthy-sub")
        self.pub_link, self.pub = self._healthy("healthy-pub")
        self.sub.data_received(encode(Subscribe(1, [SubscriptionRequest(HEALTHY_TOPIC, 1)]), 5))
        self.sub_link.take(5)  # the SUBACK

    def _healthy(self, client_id: str) -> tuple[FakeLink, Channel]:
        link = FakeLink()
        channel = Channel(self.broker, link, "127.0.0.1", 1)
        channel.data_received(encode(Connect(client_id, 5, keepalive=0), 5))
        got = link.take(5)
        if not (got and isinstance(got[0], ConnAck) and got[0].reason_code == 0):
            raise FuzzFailure(f"healthy client {client_id} not connected: {got}")
        return link, channel

    # -- one input --------------------------------------------------------------------------

    def run(self, src: Source) -> None:
        self.inputs += 1
        version = src.choice((3, 4, 5, 5))
        packets: list[Packet] = []
        if src.randint(0, 9):
            packets.append(connect(src, version))
        packets += [packet(src, version) for _ in range(src.randint(0, 6))]
        parts = []
        for p in packets:
            try:
                parts.append(encode(p, version))
            except ProtocolError:
                continue  # the codec refuses to write it: fine
        data = b"".join(parts)
        if src.randint(0, 2) == 0:
            data = mutate(src, data)
        link = FakeLink()
        channel = Channel(self.broker, link, "10.0.0.1", 1000 + self.inputs % 50000)
        pos = 0
        while pos < len(data):
            step = src.randint(1, len(data) - pos) if src.randint(0, 1) else len(data) - pos
            try:
                channel.data_received(data[pos : pos + step])
            except Exception as exc:
                raise FuzzFailure(f"data_received raised {exc!r} on {data!r}") from exc
            pos += step
            if src.randint(0, 7) == 0:
                self.now += src.choice((0.5, 2.0, 100.0))
                self.broker.tick()
        if channel.state == CONNECTED:
            self.connected += 1
        self.rejected += channel.state == CLOSED
        self.accepted += channel.state != CLOSED
        out_version = channel.version if channel.version in (3, 4, 5) else 4
        link.take(out_version)
        if link.late_writes:
            raise FuzzFailure(f"{link.late_writes} writes after close on {data!r}")
        channel.connection_lost()  # the transport goes away (after our close, or a drop)
        if channel in self.broker.channels:
            raise FuzzFailure(f"a closed channel stays registered: {data!r}")
        if any(c is channel for c in self.broker.connected.values()):
            raise FuzzFailure(f"a closed channel stays connected: {data!r}")
        self.check_healthy(data)

    def check_healthy(self, data: bytes) -> None:
        for name, ch in (("healthy-sub", self.sub), ("healthy-pub", self.pub)):
            if ch.state != CONNECTED or self.broker.connected.get(name) is not ch:
                raise FuzzFailure(f"{name} was disturbed by {data!r}")
        self.seq += 1
        payload = b"h%d" % self.seq
        pid = self.seq % 65535 + 1
        self.pub.data_received(encode(Publish(HEALTHY_TOPIC, payload, 1, packet_id=pid), 5))
        acks = self.pub_link.take(5)
        if acks != [PubAck(pid)]:
            raise FuzzFailure(f"healthy publisher got {acks} after {data!r}")
        got = [p for p in self.sub_link.take(5) if isinstance(p, Publish)]
        mine = [p for p in got if p.topic == HEALTHY_TOPIC]
        if [p.payload for p in mine] != [payload]:
            raise FuzzFailure(f"healthy subscriber got {mine} after {data!r}")
        for p in got:
            if p.qos and p.packet_id is not None:
                self.sub.data_received(encode(PubAck(p.packet_id), 5))
