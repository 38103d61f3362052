"""One client connection: its per-connection state, its output, and how it closes.

Where each part lives: this module holds the state, flow control and the output (`send`,
`send_publish` and the QoS 0 run/frame paths); how a connection ends (`close`, `shut`,
`refuse`, `protocol_violation`, timeouts, the will) is `broker.core.connection_close`, and the
order of acks and onward deliveries (`hold_output`, commit-gated acks) is
`broker.core.ack_order`; `Connection` inherits both.

Theory of operation
-------------------
A transport creates a `Channel` (`broker.core.channel`, this class plus the input side) per
accepted connection with a `Link` (write/close/buffered) and feeds it bytes. The packet handlers
(`handle_connect`, `handle_publish`, `handle_subscribe`, one module per packet family as
mosquitto's `handle_*.c`) see a `Connection`: they change broker state through `Broker`
operations and write replies with `send`; they never await, and they report a protocol violation
by raising `Violation`, which the dispatch (`broker.core.channel`) turns into the disconnect.
The Broker sees this object only through `broker.core.client_port.ClientPort`.

States and their transitions: `broker.core.states` (every `state` change goes through `enter`).
Whatever way the connection ends, `shut` runs the one close sequence (state CLOSED, close the
link, `finish`), and `finish` runs once: the will is published (or, with a 5.0 Will Delay
Interval, scheduled: `broker.core.wills`) unless a DISCONNECT (without 0x04) arrived, and the
session is detached.

What a 5.0 client asked for in CONNECT is kept here and applied to everything sent:
`max_packet_out` (its Maximum Packet Size: a larger PUBLISH is dropped and counted, an ack loses
its Reason String and User Properties first, MQTT-3.1.2-24/25), `out_aliases` (its Topic Alias
Maximum: `broker.core.topic_alias`), `problem_info` (Request Problem Information, MQTT-3.1.2-29)
and `receive_maximum` (read by the session's window, MQTT-3.3.4-9).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Protocol

from broker.core.ack_order import AckOrder
from broker.core.broker import Broker
from broker.core.cluster_port import WaitDrained
from broker.core.connection_close import Closing
from broker.core.hooks import ClientInfo
from broker.core.message import Message, expiry_left
from broker.core.metrics import SENT_COUNTER
from broker.core.session import Session
from broker.core.states import (
    ACCEPT,
    AWAIT_TAKEOVER,
    CLOSED,
    CONNECTED,
    CONNECTING,
    TAKEOVER,
    next_state,
)
from broker.core.topic_alias import NO_ALIASES, OutgoingAliases
from broker.protocol.codec import DEFAULT_MAX_PACKET_SIZE, Decoder, encode, encode_publish
from broker.protocol.constants import (
    MQTT_5,
    PacketType,
    PropertyId,
)
from broker.protocol.packets import (
    Connect,
    Packet,
    Properties,
    Publish,
    Will,
)
from broker.protocol.runs import PublishRun
from broker.protocol.wire import Frames

if TYPE_CHECKING:
    from broker.core.enhanced_auth import Authenticator

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPT",
    "AWAIT_TAKEOVER",
    "CLOSED",
    "CONNECTED",
    "CONNECTING",
    "TAKEOVER",
    "Connection",
    "Link",
    "Violation",
]


class PendingConnect:
    """A CONNECT waiting for its enhanced authentication to finish (`pending_connect`)."""

    __slots__ = ("ack_props", "client_id", "keepalive", "packet")

    def __init__(
        self, packet: Connect, client_id: str, keepalive: int, ack_props: Properties
    ) -> None:
        self.packet = packet
        self.client_id = client_id
        self.keepalive = keepalive
        self.ack_props = ack_props


class Violation(Exception):
    """Raised by a packet handler for bad input: the dispatch closes the connection with
    `reason_code` (CONNACK before the session exists, 5.0 DISCONNECT after) and `text` as the
    Reason String where the code does not say it all (`Connection.protocol_violation`)."""

    def __init__(self, reason_code: int, text: str) -> None:
        super().__init__(text)
        self.reason_code = reason_code
        self.text = text


class Link(Protocol):
    """What a transport gives a channel."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def buffered(self) -> int: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Connection(AckOrder, Closing):
    """The MQTT side of one network connection, without its input. See the module docstring."""

    #: Slots for what every connection sets; one Channel per connection, and idle connections
    #: should be cheap. What most never change (enhanced authentication, takeover and
    #: flow-control holds, the publish rate bucket, a will, 5.0 problem information, topic
    #: aliases) is read from the class defaults below until a connection sets its own, which
    #: then lives in its `__dict__`: made on the first such write (about 100 bytes), not
    #: 8 bytes per field in every connection.
    __slots__ = (
        "__dict__",
        "_finished",
        "broker",
        "clean_start",
        "client_id",
        "connected_at",
        "decoder",
        "disconnect_reason",
        "held_out",
        "info",
        "keepalive",
        "last_received",
        "link",
        "listener",
        "max_packet_out",
        "opened_at",
        "out_aliases",
        "peer_host",
        "peer_port",
        "receive_maximum",
        "recv_cnt",
        "recv_msg",
        "recv_oct",
        "recv_pkt",
        "send_cnt",
        "send_msg",
        "send_oct",
        "send_pkt",
        "session",
        "state",
        "username",
        "version",
    )

    # The class defaults of the fields outside the slots (see above). Only immutable values
    # (or a shared empty that refuses writes): a default is every connection's until it sets
    # its own.
    #: Set by a TLS transport with `use_identity_as_username`: the certificate's CN, which
    #: replaces the CONNECT's username and stands for its authentication.
    cert_username: str | None = None
    #: The `publish_limit` token bucket (-1 = not used yet) and when it was last filled.
    pub_tokens = -1.0
    pub_stamp = 0.0
    proto_name = "MQTT"
    #: CONNECT came with the bridge bit (`Connect.bridge`): another broker bridging to us.
    is_bridge = False
    will: Will | None = None
    #: The last lone PUBLISH frame whose topic `broker.core.lone_publish` checked: (frame
    #: length, its bytes up to the payload, the topic). A frame of that length with that head
    #: has that topic and passes the same checks, whatever its payload.
    lone_head: tuple[int, bytes, str] | None = None
    #: Incoming topic aliases: the shared empty until the first alias.
    topic_aliases: dict[int, str] = NO_ALIASES
    #: Request Problem Information (MQTT-3.1.2-29), a 5.0 CONNECT property.
    problem_info = True
    dropped_too_large = 0
    #: Enhanced authentication: the method and the exchange in progress (CONNECT or re-auth).
    auth_method: str | None = None
    auth: Authenticator | None = None
    pending_connect: PendingConnect | None = None
    #: Input that arrived while in TAKEOVER, handled once the CONNECT goes on (None: none).
    held_packets: list[Packet] | None = None
    held_bytes: bytearray | None = None
    #: When flow control stopped reading this client (None = it is read), and how many
    #: holds there were: a release for an earlier hold does not end a later one.
    held_at: float | None = None
    hold_count = 0
    publish_will = True

    def __init__(
        self,
        broker: Broker,
        link: Link,
        peer_host: str = "",
        peer_port: int = 0,
        listener: str = "tcp",
    ) -> None:
        self.broker = broker
        self.link = link
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.listener = listener
        self.decoder = Decoder(max_packet_size=broker.settings.max_packet_size)
        self.state = CONNECTING
        self.version = 4
        self.client_id: str | None = None
        self.username: str | None = None
        self.clean_start = True
        self.keepalive = 0
        self.session: Session | None = None
        self.info: ClientInfo | None = None
        self.receive_maximum = 65535
        # What a 5.0 client asked for in CONNECT (module docstring).
        self.max_packet_out = DEFAULT_MAX_PACKET_SIZE
        self.out_aliases: OutgoingAliases | None = None
        #: PUBLISH bytes for this connection held back until the ack of the client's own
        #: PUBLISH that caused them has been written (`hold_output`); None = not holding.
        self.held_out: list[bytes] | None = None
        self.opened_at = self.last_received = broker.clock()
        self.connected_at = 0.0
        self.disconnect_reason = ""
        self._finished = False
        # Per-connection counters, named as EMQX's connection object fields.
        self.recv_oct = self.recv_cnt = self.recv_pkt = self.recv_msg = 0
        self.send_oct = self.send_cnt = self.send_pkt = self.send_msg = 0
        broker.channel_opened(self)

    # -- input ----------------------------------------------------------------------------
    # -- flow control ---------------------------------------------------------------------

    def hold_input(self) -> int:
        """Stop reading this client until `release_input` (at most `MAX_HOLD` seconds): flow
        control, for a node its messages go to that cannot take more yet. Returns the hold's
        number for `release_input`; 0 if it is held already or closed.

        What was read already is still handled; only further reads wait, so the client's own
        socket buffer, then its writes, absorb the wait as TCP backpressure.
        """
        if self.held_at is not None or self.state == CLOSED:
            return 0
        self.held_at = self.broker.clock()
        self.hold_count += 1
        self.link.pause_reading()
        return self.hold_count

    def release_input(self, hold: int = 0) -> None:
        """End the hold numbered `hold` (0: whichever hold there is)."""
        if self.held_at is not None and hold in (0, self.hold_count):
            self.held_at = None
            self.link.resume_reading()

    # -- output ---------------------------------------------------------------------------

    def send(self, packet: Packet) -> None:
        data = encode(packet, self.version)
        if len(data) > self.max_packet_out:
            data = self._shrink(packet)
            if not data:
                if packet.packet_type == PacketType.CONNACK:
                    self.close(None, "connack_too_large")  # the client would wait for ever
                return
        self._count_sent(packet.packet_type, len(data))
        self.link.write(data)

    def _shrink(self, packet: Packet) -> bytes:
        """Fit a packet to the client's Maximum Packet Size by leaving out its Reason String
        and User Properties (MQTT-3.1.2-24, 3.4.2-2/3 etc.); b"" (not sent) if it still does
        not fit."""
        properties: Properties | None = getattr(packet, "properties", None)
        if properties:
            kept = {
                k: v
                for k, v in properties.items()
                if k not in (PropertyId.REASON_STRING, PropertyId.USER_PROPERTY)
            }
            smaller: Packet = dataclasses.replace(packet, properties=kept)  # type: ignore[arg-type]
            data = encode(smaller, self.version)
            if len(data) <= self.max_packet_out:
                return data
        log.info("not sending %s to %s: larger than its Maximum Packet Size",
                 type(packet).__name__, self.client_id)  # fmt: skip
        return b""

    def reason(self, text: str) -> Properties:
        """A Reason String for an error ack (reason code 0x80 or above; success acks go
        bare), unless the client asked for no problem information (MQTT-3.1.2-29); `send`
        leaves it out when it would break the client's Maximum Packet Size (MQTT-3.1.2-25).
        CONNACK and DISCONNECT use `reason_always`."""
        if self.problem_info and self.version == MQTT_5 and text:
            return {PropertyId.REASON_STRING: text[:_REASON_MAX]}
        return {}

    def reason_always(self, text: str) -> Properties:
        """A Reason String for CONNACK/DISCONNECT, which MQTT-3.1.2-29 leaves allowed."""
        if self.version == MQTT_5 and text:
            return {PropertyId.REASON_STRING: text[:_REASON_MAX]}
        return {}

    def send_acks(self, data: bytes, count: int, packet_type: int) -> None:
        """`count` acks of one kind (each within the client's Maximum Packet Size) in one
        write, counted as `send` counts each (`broker.core.acked_runs`)."""
        size = len(data)
        counters = self.broker.metrics.counters
        self.send_oct += size
        self.send_cnt += count
        self.send_pkt += count
        counters["bytes/sent"] += size
        counters["packets/sent"] += count
        counters[SENT_COUNTER[packet_type]] += count
        self.link.write(data)

    def _count_sent(self, packet_type: int, size: int) -> None:
        counters = self.broker.metrics.counters
        self.send_oct += size
        self.send_cnt += 1
        self.send_pkt += 1
        counters["bytes/sent"] += size
        counters["packets/sent"] += 1
        counters[SENT_COUNTER[packet_type]] += 1

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        dup: bool,
        subscription_ids: list[int] | None,
    ) -> bool:
        """Write one PUBLISH; False if the delivery ends unsent (see `session.Outlet`).

        Unsent and counted: a QoS 0 one when the client is not reading, an expired message
        (MQTT-3.3.2-5) and one larger than the client's Maximum Packet Size (MQTT-3.1.2-25).
        The Message Expiry Interval sent is what is left of it (MQTT-3.3.2-6). QoS 0 bytes
        are shared between subscribers (`Message.frames`, `broker.protocol.wire`) unless this
        PUBLISH is per connection: subscription identifiers, an expiry interval already
        counting down, or topic aliases.
        """
        if self.state != CONNECTED:
            return qos > 0  # QoS 1/2 stays inflight for the resend on resume
        link = self.link
        if qos == 0 and link.buffered() > self.broker.settings.max_outgoing_buffer:
            self.broker.limits["max_outgoing_buffer"] += 1
            return False
        properties = message.properties
        shared = True
        if properties:
            interval = properties.get(PropertyId.MESSAGE_EXPIRY_INTERVAL)
            if interval:
                left = expiry_left(message, self.broker.clock())
                assert left is not None
                if left <= 0:
                    counters = self.broker.metrics.counters
                    counters["messages/expired"] += 1
                    if qos == 2:
                        counters["messages/qos2/expired"] += 1
                    return False
                if left != interval:
                    properties = {**properties, PropertyId.MESSAGE_EXPIRY_INTERVAL: left}
                    shared = False
        is_v5 = self.version == MQTT_5
        aliases = self.out_aliases
        alias = 0
        if qos == 0 and subscription_ids is None and shared and aliases is None:
            frames = message.frames
            if frames is None:
                frames = message.frames = Frames(message.topic, message.payload, message.properties)
            data = frames.raw  # the usual case, tested inline: the shared bytes
            if data is None or retain or is_v5 is not frames.raw_v5:
                data = frames.qos0(retain, self.version)
        else:
            topic = message.topic
            if is_v5:
                if subscription_ids:
                    properties = dict(properties)
                    properties[PropertyId.SUBSCRIPTION_IDENTIFIER] = subscription_ids
                if aliases is not None:
                    alias = aliases.lookup(topic)
                    if alias:
                        properties = {**properties, PropertyId.TOPIC_ALIAS: abs(alias)}
                        if alias > 0:
                            topic = ""  # the client knows the alias (3.3.2.3.4)
            data = encode_publish(
                topic, message.payload, qos, retain, dup, packet_id,
                properties if is_v5 else None, self.version,
            )  # fmt: skip
        if len(data) > self.max_packet_out:
            if alias < 0:
                assert aliases is not None
                aliases.forget(-alias)  # the client never learns this mapping
            self.dropped_too_large += 1
            return False
        self._count_sent(PacketType.PUBLISH, len(data))
        self.send_msg += 1
        counters = self.broker.metrics.counters
        counters["messages/sent"] += 1
        counters[_QOS_SENT[qos]] += 1
        held = self.held_out
        if held is None:
            link.write(data)
        else:
            held.append(data)
        return True

    def passes(self, run: PublishRun) -> bool:
        """`ClientPort.passes`: the frames of `run`, in this client's protocol family
        (`PublishRun.for_family`), are what `send_publish` would write for each of its
        messages (QoS 0, no subscription identifier: `runs_delivery.local_targets`)."""
        return (
            self.out_aliases is None
            and self.held_out is None
            and run.frame_len_for(self.version == MQTT_5) <= self.max_packet_out
        )

    def send_run(self, run: PublishRun) -> int:
        """`ClientPort.send_run`: the run's bytes, counted per message. In one write when even
        the last message would find at most `max_outgoing_buffer` bytes waiting (a write of n
        bytes adds at most n to `Link.buffered`); near the cap, frame by frame, each dropped
        where `send_publish` would drop it."""
        if self.state != CONNECTED:
            return 0
        run = run.for_family(self.version == MQTT_5)
        link = self.link
        count = run.count
        frame_len = run.frame_len
        data = run.data
        cap = self.broker.settings.max_outgoing_buffer
        if link.buffered() + (count - 1) * frame_len <= cap:
            link.write(data)
            sent = count
        else:
            sent = 0
            for start in range(0, count * frame_len, frame_len):
                if link.buffered() <= cap:
                    link.write(data[start : start + frame_len])
                    sent += 1
            self.broker.limits["max_outgoing_buffer"] += count - sent
        self._count_qos0(sent * frame_len, sent)
        return sent

    def frames_room(self, v5: bool, longest: int) -> int | None:
        """`ClientPort.frames_room`: None unless QoS 0 frames of family `v5`, up to `longest`
        bytes, are what `send_publish` writes; else the bytes left before QoS 0 drops."""
        if self.state != CONNECTED or self.out_aliases is not None or self.held_out is not None:
            return None
        if longest > self.max_packet_out or (self.version == MQTT_5) is not v5:
            return None
        return self.broker.settings.max_outgoing_buffer - self.link.buffered()

    def send_frames(self, data: bytes, count: int) -> None:
        """`ClientPort.send_frames`: `count` QoS 0 deliveries already framed, in one write."""
        self.link.write(data)
        self._count_qos0(len(data), count)

    def _count_qos0(self, size: int, sent: int) -> None:
        """`sent` QoS 0 PUBLISHes of `size` bytes in all went out as bytes, counted per message."""
        self.send_oct += size
        self.send_cnt += sent
        self.send_pkt += sent
        self.send_msg += sent
        counters = self.broker.metrics.counters
        counters["bytes/sent"] += size
        # Written out, not a loop over the names: this runs once per lone message.
        counters["packets/sent"] += sent
        counters["packets/publish/sent"] += sent
        counters["messages/sent"] += sent
        counters["messages/qos0/sent"] += sent

    # -- state and publishing -------------------------------------------------------------

    def enter(self, event: str) -> None:
        """Change state as the table in `broker.core.states` allows (nowhere else)."""
        self.state = next_state(self.state, event)

    def route(self, message: Message, packet: Publish | None = None) -> int:
        """Publish a message this client sent (`Broker.publish`, hooks included) and act on
        the back-pressure it reports: stop reading this client until the congested node has
        room (`hold_input`). Returns the deliveries.

        `packet`: the PUBLISH it came in; its bytes as received (`Publish.frames`) go on to the
        subscribers of the same protocol version when the message is still exactly what they
        encode (`broker.protocol.wire`; not after a topic alias or a hook's rewrite).
        """
        if packet is not None:
            frames = packet.frames
            if frames is not None and frames.fits(
                message.topic, message.payload, message.properties
            ):
                message.frames = frames
        published = self.broker.publish(message, hooks=True)
        if published.wait_drained is not None:
            self.wait_drained(published.wait_drained)
        return published.deliveries

    def wait_drained(self, wait_drained: WaitDrained) -> None:
        """Stop reading this client until the congested node its messages went to has room."""
        hold = self.hold_input()
        if hold and not wait_drained(functools.partial(self.release_input, hold)):
            self.release_input(hold)

    def resume_input(self) -> None:
        """The CONNECT went on after TAKEOVER: handle the input held meanwhile, in order.

        Input is the dispatch's business (`broker.core.channel.Channel` overrides this); a
        connection without an input side has nothing held."""


#: What a QoS 0 PUBLISH passed on as bytes counts, besides its bytes.
_QOS_SENT = ("messages/qos0/sent", "messages/qos1/sent", "messages/qos2/sent")
#: Longest Reason String sent, in characters (it is diagnostics, not data).
_REASON_MAX = 1000
