"""An in-memory cluster of `Broker`s for testing the cluster ports without the runtime.

`FakeCluster` wires N brokers the way `cluster.ports` does over the network, but by direct
calls: route tables kept in step synchronously, FORWARDs and shared deliveries through the real
wire encoding (msgpack frames), surrender through msgpack too. `FakeClient` is a `Channel` with an
in-memory link, driven with packets and reading back what the broker wrote.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.core.cluster_port import SessionState, TakeoverDone
from broker.core.message import Message
from broker.core.settings import Settings
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_5
from broker.protocol.packets import (
    ConnAck,
    Connect,
    Packet,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
)
from cluster.routes import RouteTable
from cluster.shared_dispatch import ClusterSharedDispatcher
from cluster.takeover import pick_state
from cluster.wire import FrameDecoder, MessageType, encode_frame, forward_body, parse_forward


class FakeLink:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def buffered(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FakeClient:
    """One client connection to one broker."""

    def __init__(self, broker: Broker, version: int = MQTT_5) -> None:
        self.broker = broker
        self.version = version
        self.link = FakeLink()
        self.channel = Channel(broker, self.link, "127.0.0.1", 50000)
        self.decoder = Decoder(version=version)
        self.inbox: list[Packet] = []
        self._ids = itertools.count(1)

    def send(self, *packets: Packet) -> None:
        """All the packets in one read, as a client that does not wait for answers."""
        self.channel.data_received(b"".join(encode(p, self.version) for p in packets))

    def received(self) -> list[Packet]:
        """Packets the broker wrote since the last call."""
        if self.link.out:
            self.inbox.extend(self.decoder.feed(bytes(self.link.out)))
            self.link.out.clear()
        out, self.inbox = self.inbox, []
        return out

    def connect(self, client_id: str, clean_start: bool = True, **fields: Any) -> None:
        if self.version == MQTT_5 and not clean_start and "properties" not in fields:
            fields["properties"] = {0x11: 3600}  # Session Expiry Interval
        self.send(
            Connect(client_id, protocol_level=self.version, clean_start=clean_start, **fields)
        )

    def connack(self) -> ConnAck:
        packets = self.received()
        assert packets and isinstance(packets[0], ConnAck), packets
        self.inbox = packets[1:] + self.inbox
        return packets[0]

    def subscribe_packet(self, *filters: str, qos: int = 1) -> Subscribe:
        requests = [SubscriptionRequest(f, qos) for f in filters]
        return Subscribe(next(self._ids), requests)

    def subscribe(self, *filters: str, qos: int = 1) -> None:
        self.send(self.subscribe_packet(*filters, qos=qos))
        self.received()  # the SUBACK

    def publishes(self, ack: bool = True) -> list[Publish]:
        """PUBLISHes received since the last call (QoS 1 ones acknowledged with `ack`)."""
        out = [p for p in self.received() if isinstance(p, Publish)]
        if ack:
            for p in out:
                if p.qos == 1 and p.packet_id is not None:
                    self.send(PubAck(p.packet_id))
        return out

    def drop(self) -> None:
        """The network connection is gone (no DISCONNECT)."""
        self.channel.connection_lost()


def _wire(body: dict[str, Any]) -> dict[str, Any]:
    """Through a real frame, as a FORWARD travels."""
    frames = FrameDecoder().feed(encode_frame(MessageType.FORWARD, body))
    assert len(frames) == 1
    return frames[0][2]


def msgpack_roundtrip(value: Any) -> Any:
    packed = msgpack.packb(value, use_bin_type=True)
    return msgpack.unpackb(packed, raw=False, strict_map_key=False, use_list=True)


class FakeLocator:
    """`SessionLocator` asking the other brokers directly; deferred until `run_pending` unless
    `immediate`."""

    def __init__(self, cluster: FakeCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    def takeover(self, client_id: str, clean_start: bool, done: TakeoverDone) -> bool:
        cluster = self.cluster
        peers = [n for n in cluster.brokers if n != self.name and n not in cluster.down]
        if not peers:
            return False

        def run() -> None:
            states: list[SessionState | None] = []
            for peer in peers:
                state = cluster.brokers[peer].surrender_session(
                    client_id, self.name, clean_start=clean_start
                )
                states.append(msgpack_roundtrip(state))
            done(pick_state(states))

        if cluster.immediate:
            run()
        else:
            cluster.pending.append(run)
        return True


class FakeCluster:
    """N brokers, each with its route table, shared dispatcher and session locator."""

    def __init__(
        self,
        names: list[str],
        *,
        strategy: str = "round_robin",
        immediate: bool = True,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> None:
        self.brokers: dict[str, Broker] = {}
        self.tables: dict[str, RouteTable] = {}
        self.dispatchers: dict[str, ClusterSharedDispatcher] = {}
        self.down: set[str] = set()
        self.immediate = immediate
        self.pending: list[Callable[[], None]] = []
        self.forwards = 0
        self.shared_sent = 0
        self.shared_dropped = 0
        for name in names:
            broker = Broker(
                Settings(node_name=name, shared_subscription_strategy=strategy, **settings),
                clock=clock or (lambda: 1000.0),
            )
            table = RouteTable(name, 1)
            self.brokers[name] = broker
            self.tables[name] = table
            broker.route_listeners.append(partial(self._route, name))
            broker.shared_route_listeners.append(partial(self._shared_route, name))
            broker.forward_hooks.append(partial(self._forward, name))
            dispatcher = ClusterSharedDispatcher(
                table,
                name,
                broker.deliver_shared_local,
                partial(self._send_shared, name),
                strategy=strategy,
                alive=lambda node: node not in self.down,
            )
            self.dispatchers[name] = dispatcher
            broker.shared_dispatcher = dispatcher
            broker.session_locator = FakeLocator(self, name)

    def __getitem__(self, name: str) -> Broker:
        return self.brokers[name]

    def run_pending(self) -> None:
        while self.pending:
            self.pending.pop(0)()

    def client(self, name: str, version: int = MQTT_5) -> FakeClient:
        return FakeClient(self.brokers[name], version)

    # -- what cluster.ports and the runtime do over the network ------------------------------

    def _route(self, origin: str, filt: str, present: bool) -> None:
        delta = self.tables[origin].local_update(filt, present)
        for name, table in self.tables.items():
            if name != origin:
                table.apply(delta)

    def _shared_route(self, origin: str, group: str, filt: str, present: bool) -> None:
        delta = self.tables[origin].local_shared_update(group, filt, present)
        for name, table in self.tables.items():
            if name != origin:
                table.apply(delta)

    def _forward(self, origin: str, message: Message) -> int:
        targets = self.tables[origin].match(message.topic) - {origin}
        for node in sorted(targets):
            if node in self.down:
                continue
            copy = parse_forward(_wire(forward_body(message, origin)))
            self.brokers[node].publish(copy, forward=False, shared=False)
            self.forwards += 1
        return len(targets)

    def _send_shared(self, origin: str, node: str, group: str, filt: str, message: Message) -> bool:
        if node in self.down:
            return False
        body = forward_body(message, origin)
        body["kind"] = "shared"
        body["shared"] = [group, filt]
        body = _wire(body)
        self.shared_sent += 1
        g, f = body["shared"]
        if not self.brokers[node].deliver_shared_local(parse_forward(body), g, f):
            self.shared_dropped += 1
        return True
