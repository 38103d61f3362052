"""An in-memory harness for the broker core: bytes in, bytes out, a fake clock, no sockets.

`MemBroker` builds a `Broker` with the settings a node derives from its configuration (the same
`settings_from_config` the node uses, so the defaults are the node's) and a clock the test moves
(`advance`, which also runs the broker's periodic `tick`). `MemClient` is one connection: what
it `send`s goes straight into a `Channel` as the bytes a socket would deliver, and what the
channel writes is decoded again on `recv`. Everything happens synchronously, inside the call
that caused it, so "nothing else arrives" is simply an empty outbox: protocol-rule tests that
need no real socket run in milliseconds here. Real clients over real sockets stay in
tests/integration.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, TypeVar

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.config import BrokerConfig
from broker.server.node import settings_from_config

P = TypeVar("P")


class FakeClock:
    """The broker's clock; only the test moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemLink:
    """The transport side of one in-memory connection (`broker.core.connection.Link`)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def buffered(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class MemClient:
    """One client connection: `send` packets (or raw bytes) in, `recv` what the broker wrote."""

    def __init__(self, broker: Broker, version: int, peer: tuple[str, int]) -> None:
        self.version = version
        self.link = MemLink()
        self.channel = Channel(broker, self.link, peer[0], peer[1])
        self.decoder = Decoder(version=version)
        self.pending: list[Packet] = []

    def send(self, *packets: Packet) -> None:
        """The packets in one read, as a client that does not wait for answers."""
        self.send_raw(b"".join(encode(p, self.version) for p in packets))

    def send_raw(self, data: bytes) -> None:
        if not self.link.closed:  # a closed socket delivers nothing more
            self.channel.data_received(data)

    def _pull(self) -> None:
        if self.link.out:
            data, self.link.out = bytes(self.link.out), bytearray()
            self.pending.extend(self.decoder.feed(data))

    def received(self) -> list[Packet]:
        """Every packet written since the last call."""
        self._pull()
        out, self.pending = self.pending, []
        return out

    def recv(self) -> Packet:
        """The next packet written; AssertionError if there is none (nothing is in flight)."""
        self._pull()
        assert self.pending, "the broker wrote nothing more"
        return self.pending.pop(0)

    def expect(self, kind: type[P]) -> P:
        packet = self.recv()
        assert isinstance(packet, kind), packet
        return packet

    @property
    def closed(self) -> bool:
        """The broker closed this connection (the packets written before stay readable)."""
        return self.link.closed

    def lose(self) -> None:
        """The network connection is gone, as a socket's `connection_lost`."""
        self.link.closed = True
        self.channel.connection_lost()

    # -- the raw-client helpers of tests/integration/test_core_support.py, synchronous --------

    def subscribe(self, *filters: tuple[str, int], packet_id: int = 1) -> list[int]:
        """SUBSCRIBE and return the SUBACK's codes."""
        requests = [SubscriptionRequest(f, qos) for f, qos in filters]
        self.send(Subscribe(packet_id, requests))
        ack = self.expect(SubAck)
        assert ack.packet_id == packet_id
        return list(ack.reason_codes)

    def publish_qos1(self, topic: str, payload: bytes, packet_id: int) -> None:
        self.send(Publish(topic, payload, qos=1, packet_id=packet_id))
        assert self.expect(PubAck).packet_id == packet_id

    def ping_barrier(self) -> list[Packet]:
        """Every packet written before the broker answered a PINGREQ."""
        self.send(PingReq())
        packets = self.received()
        assert packets and isinstance(packets[-1], PingResp), packets
        return packets[:-1]


class MemBroker:
    """A broker with a fake clock and in-memory connections. See the module docstring."""

    def __init__(self, **config: Any) -> None:
        cfg = dataclasses.replace(BrokerConfig(node_name="mem@127.0.0.1", sys_interval=0), **config)
        self.clock = FakeClock()
        self.broker = Broker(settings_from_config(cfg), clock=self.clock)
        self._ports = itertools.count(40000)

    def open(self, version: int = MQTT_3_1_1) -> MemClient:
        return MemClient(self.broker, version, ("127.0.0.1", next(self._ports)))

    def connect(
        self, client_id: str, version: int = MQTT_3_1_1, **fields: Any
    ) -> tuple[MemClient, ConnAck]:
        """Open a connection, send CONNECT, return the client and the CONNACK."""
        client = self.open(version)
        client.send(Connect(client_id, protocol_level=version, **fields))
        return client, client.expect(ConnAck)

    def advance(self, seconds: float) -> None:
        """Move the clock and run the broker's periodic work, as the node's timer does."""
        self.clock.now += seconds
        self.broker.tick()
