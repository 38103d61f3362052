"""One client connection's MQTT state machine, shared by the TCP and WebSocket transports.

Theory of operation
-------------------
A transport creates a `Channel` per accepted connection with a `Link` (write/close/buffered) and
feeds it every chunk of bytes it reads. The channel decodes packets with the sans-IO `Decoder`
and dispatches each one to a handler function, one module per packet family as mosquitto's
`handle_*.c`: `handle_connect`, `handle_publish`, `handle_subscribe`.
Handlers change broker state through `Broker` methods and write replies through the link; they
never await. A protocol violation closes only this connection: with a CONNACK (before the
session exists) or a DISCONNECT (after) carrying the 5.0 reason code, or a bare close in 3.x.

States: CONNECTING (only CONNECT allowed, MQTT-3.1.0-1; then only AUTH while an enhanced
authentication is in progress, `auth` set) -> [TAKEOVER, in a cluster only: other nodes give
the client id up; input is held, then handled in order; `broker.core.cluster_port`] ->
CONNECTED (a second CONNECT is a protocol error, MQTT-3.1.0-2) -> CLOSED. Whatever way the
connection ends, `finish` runs once: the will is published (or, with a 5.0 Will Delay Interval,
scheduled: `broker.core.wills`) unless a DISCONNECT (without 0x04) arrived, and the session is
detached.

What a 5.0 client asked for in CONNECT is kept here and applied to everything sent:
`max_packet_out` (its Maximum Packet Size: a larger PUBLISH is dropped and counted, an ack loses
its Reason String and User Properties first, MQTT-3.1.2-24/25), `out_aliases` (its Topic Alias
Maximum: `broker.core.topic_alias`), `problem_info` (Request Problem Information, MQTT-3.1.2-29)
and `receive_maximum` (read by the session's window, MQTT-3.3.4-9).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from broker.core.conn_state import CLOSED, CONNECTED, CONNECTING, TAKEOVER
from broker.core.handle_connect import (
    PendingConnect,
    handle_auth,
    handle_connect,
    handle_disconnect,
    handle_pingreq,
    refuse_version,
    send_connack,
)
from broker.core.handle_publish import (
    handle_puback,
    handle_pubcomp,
    handle_publish,
    handle_pubrec,
    handle_pubrel,
)
from broker.core.handle_subscribe import handle_subscribe, handle_unsubscribe
from broker.core.hooks import ClientInfo
from broker.core.message import Message, expiry_left
from broker.core.metrics import RECEIVED_COUNTER, SENT_COUNTER
from broker.core.session import Session
from broker.core.topic_alias import OutgoingAliases
from broker.core.wills import publish_will
from broker.protocol.codec import DEFAULT_MAX_PACKET_SIZE, Decoder, encode, encode_publish
from broker.protocol.constants import (
    MQTT_5,
    PacketType,
    PropertyId,
    ReasonCode,
)
from broker.protocol.errors import ProtocolError, UnsupportedProtocolVersion
from broker.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Unsubscribe,
    Will,
)

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.core.enhanced_auth import Authenticator

log = logging.getLogger(__name__)

__all__ = ["CLOSED", "CONNECTED", "CONNECTING", "TAKEOVER", "Channel", "Link"]

#: Seconds a new connection may take to send CONNECT before it is dropped.
CONNECT_TIMEOUT = 30.0


#: Seconds a channel's input stays held by flow control at most (`Channel.hold_input`).
MAX_HOLD = 5.0


class Link(Protocol):
    """What a transport gives a channel."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def buffered(self) -> int: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Channel:
    """The MQTT side of one network connection. See the module docstring."""

    #: Slots, not a __dict__: one Channel per connection, and idle connections should be cheap.
    __slots__ = (
        "_finished",
        "auth",
        "auth_method",
        "broker",
        "cert_username",
        "clean_start",
        "client_id",
        "connected_at",
        "decoder",
        "disconnect_reason",
        "dropped_too_large",
        "held_at",
        "held_bytes",
        "held_out",
        "held_packets",
        "hold_count",
        "info",
        "is_bridge",
        "keepalive",
        "last_received",
        "link",
        "listener",
        "max_packet_out",
        "opened_at",
        "out_aliases",
        "peer_host",
        "peer_port",
        "pending_connect",
        "problem_info",
        "proto_name",
        "pub_stamp",
        "pub_tokens",
        "publish_will",
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
        "topic_aliases",
        "username",
        "version",
        "will",
    )

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
        #: Set by a TLS transport with `use_identity_as_username`: the certificate's CN, which
        #: replaces the CONNECT's username and stands for its authentication.
        self.cert_username: str | None = None
        #: The `publish_limit` token bucket (-1 = not used yet) and when it was last filled.
        self.pub_tokens = -1.0
        self.pub_stamp = 0.0
        self.proto_name = "MQTT"
        self.clean_start = True
        #: CONNECT came with the bridge bit (`Connect.bridge`): another broker bridging to us.
        self.is_bridge = False
        self.keepalive = 0
        self.session: Session | None = None
        self.will: Will | None = None
        self.info: ClientInfo | None = None
        self.receive_maximum = 65535
        self.topic_aliases: dict[int, str] = {}
        # What a 5.0 client asked for in CONNECT (module docstring).
        self.max_packet_out = DEFAULT_MAX_PACKET_SIZE
        self.out_aliases: OutgoingAliases | None = None
        self.problem_info = True
        self.dropped_too_large = 0
        #: Enhanced authentication: the method and the exchange in progress (CONNECT or re-auth).
        self.auth_method: str | None = None
        self.auth: Authenticator | None = None
        self.pending_connect: PendingConnect | None = None
        #: Input that arrived while in TAKEOVER, handled once the CONNECT goes on.
        self.held_packets: list[Packet] = []
        self.held_bytes = bytearray()
        #: When flow control stopped reading this client (None = it is read), and how many
        #: holds there were: a release for an earlier hold does not end a later one.
        self.held_at: float | None = None
        self.hold_count = 0
        #: PUBLISH bytes for this connection held back until the ack of the client's own
        #: PUBLISH that caused them has been written (`hold_output`); None = not holding.
        self.held_out: list[bytes] | None = None
        self.opened_at = self.last_received = broker.clock()
        self.connected_at = 0.0
        self.disconnect_reason = ""
        self.publish_will = True
        self._finished = False
        # Per-connection counters, named as EMQX's connection object fields.
        self.recv_oct = self.recv_cnt = self.recv_pkt = self.recv_msg = 0
        self.send_oct = self.send_cnt = self.send_pkt = self.send_msg = 0
        broker.channel_opened(self)

    # -- input ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSED:
            if self.state == TAKEOVER:
                self._hold(data)
            return
        counters = self.broker.metrics.counters
        self.recv_oct += len(data)
        self.recv_cnt += 1
        counters["bytes/received"] += len(data)
        try:
            packets = self.decoder.feed(data)
        except UnsupportedProtocolVersion as exc:
            if self.state == CONNECTING and not exc.packets:
                refuse_version(self, exc)
                return
            # A CONNECT of an unknown version after the first one is a second CONNECT
            # (MQTT-3.1.0-2), not one to answer with a CONNACK (fuzz finding).
            self._handle(exc.packets)
            if self.state != CLOSED:
                self.protocol_violation(ReasonCode.PROTOCOL_ERROR, str(exc), explain=True)
            return
        except ProtocolError as exc:
            # Packets that were complete before the bad bytes are handled first: a client's
            # valid PUBLISH is not lost because garbage followed it in the same read.
            self._handle(exc.packets)
            if exc.reason_code == ReasonCode.PACKET_TOO_LARGE:
                self.broker.limits["max_packet_size"] += 1
            if self.state != CLOSED:
                self.protocol_violation(exc.reason_code, str(exc), explain=True)
            return
        if packets:
            self._handle(packets)

    def _handle(self, packets: list[Packet]) -> None:
        if not packets:
            return
        broker = self.broker
        broker.reading = self
        try:
            self._dispatch(packets)
        finally:
            broker.reading = None

    def _dispatch(self, packets: list[Packet]) -> None:
        counters = self.broker.metrics.counters
        self.last_received = self.broker.clock()
        handlers = self._handlers
        remaining = iter(packets)
        for packet in remaining:
            if self.state >= CLOSED:
                if self.state == TAKEOVER:  # the CONNECT waits for another node: keep the rest
                    self.held_packets.append(packet)
                    self.held_packets.extend(remaining)
                return
            self.recv_pkt += 1
            counters["packets/received"] += 1
            name = RECEIVED_COUNTER.get(packet.packet_type)
            if name is not None:
                counters[name] += 1
            handler = handlers.get(type(packet))
            if handler is None:
                self.protocol_violation(
                    ReasonCode.PROTOCOL_ERROR,
                    f"a client may not send {type(packet).__name__}",
                    explain=True,
                )
                return
            handler(self, packet)

    def _hold(self, data: bytes) -> None:
        """Keep input that arrives during TAKEOVER; more than one maximum-size packet's worth
        (a client is to wait for CONNACK) closes the connection."""
        held = self.held_bytes
        if len(held) + len(data) > self.broker.settings.max_packet_size + 5:
            self.close(None, "takeover_overflow")
            return
        held += data

    def resume_input(self) -> None:
        """The CONNECT went on after TAKEOVER: handle what arrived meanwhile, in order."""
        packets, self.held_packets = self.held_packets, []
        data, self.held_bytes = bytes(self.held_bytes), bytearray()
        self._handle(packets)
        if data:
            self.data_received(data)

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

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, error, or after our own close)."""
        if not self.disconnect_reason:
            self.disconnect_reason = "closed"
        self.state = CLOSED
        self.finish()

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
        The Message Expiry Interval sent is what is left of it (MQTT-3.3.2-6). QoS 0 bytes are
        shared between subscribers (`Message.encoded`) unless this PUBLISH is per connection:
        subscription identifiers, an expiry interval already counting down, or topic aliases.
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
            cache = message.encoded
            if cache is None:
                cache = message.encoded = {}
            key = (is_v5, retain)
            data = cache.get(key)
            if data is None:
                data = cache[key] = encode_publish(
                    message.topic, message.payload, 0, retain, False, None,
                    message.properties if is_v5 else None, self.version,
                )  # fmt: skip
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

    def hold_output(self) -> None:
        """Hold PUBLISHes to this connection until `release_output`: a client's own QoS 1/2
        message comes back to it (it subscribes to what it publishes) only after its
        PUBACK/PUBREC, so the client sees its publish acknowledged before onward delivery
        (as mosquitto and EMQX order it)."""
        self.held_out = []

    def release_output(self) -> None:
        held, self.held_out = self.held_out, None
        if held:
            self.link.write(b"".join(held))

    def send_pubrel(self, packet_id: int) -> None:
        self.send(PubRel(packet_id))

    # -- closing --------------------------------------------------------------------------

    def close(self, reason_code: int | None = None, reason: str = "", detail: str = "") -> None:
        """Close from the broker side, telling a 5.0 client why with DISCONNECT (and `detail`
        as its Reason String). A server DISCONNECT never carries a Session Expiry Interval."""
        if self.state == CLOSED:
            return
        if reason_code is not None and self.state == CONNECTED and self.version == MQTT_5:
            self.send(Disconnect(reason_code, self.reason_always(detail)))
        self.disconnect_reason = reason or (
            f"reason_{reason_code:#04x}" if reason_code is not None else "closed"
        )
        self.state = CLOSED
        self.link.close()
        self.finish()

    def protocol_violation(self, reason_code: int, message: str, explain: bool = False) -> None:
        """Bad input: answer with the reason code where the spec asks for one, then close.

        With `explain`, a 5.0 DISCONNECT carries `message` as its Reason String (not for the
        codes that say it all, `_SELF_EXPLANATORY`); a CONNACK refusing a broken CONNECT never.
        """
        log.info("closing %s (%s:%s): %s", self.client_id, self.peer_host, self.peer_port, message)
        # Codes that say it all go out bare; the others carry the message as Reason String.
        detail = message if explain and reason_code not in _SELF_EXPLANATORY else ""
        if self.state == CONNECTING:
            if self.decoder.version == MQTT_5:
                self.version = MQTT_5  # a 5.0 CONNACK, not the 3.1.1 default's mapped code
                send_connack(self, False, reason_code, {})  # a broken CONNECT: code only
            self.disconnect_reason = "protocol_error"
            self.state = CLOSED
            self.link.close()
            self.finish()
        else:
            self.close(reason_code, "protocol_error", detail)

    def taken_over(self, session_ends: bool = True) -> None:
        """Another connection CONNECTed with our client id (MQTT-3.1.4-3).

        The will goes out only if the session ends with this takeover (`session_ends`: either
        connection is clean / its session expiry 0): a session that continues on the new
        connection takes the will away, as mosquitto 2.0 does and as a 5.0 Will Delay Interval
        would (MQTT-3.1.3-9); a reconnect that resumes its session is not the client's death.
        """
        if not session_ends:
            self.publish_will = False
        self.close(ReasonCode.SESSION_TAKEN_OVER, "takeover")

    def kick(self) -> None:
        """An operator disconnected this client (management API)."""
        self.close(ReasonCode.ADMINISTRATIVE_ACTION, "kicked")

    def check_timeouts(self, now: float) -> None:
        if self.held_at is not None and now - self.held_at > MAX_HOLD:
            self.release_input()  # a safety net: whoever held it did not release it
        if self.state == CONNECTING:
            if now - self.opened_at > CONNECT_TIMEOUT:
                self.close(None, "connect_timeout")
        elif self.state == TAKEOVER:  # a safety net: the locator always answers, even failing
            if now - self.last_received > CONNECT_TIMEOUT:
                self.close(None, "takeover_timeout")
        elif (
            self.state == CONNECTED
            and self.keepalive
            and now - self.last_received > self.keepalive * 1.5  # MQTT-3.1.2-24
        ):
            self.close(ReasonCode.KEEP_ALIVE_TIMEOUT, "keepalive_timeout")

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        broker = self.broker
        if self.info is not None:
            if self.will is not None and self.publish_will:
                self._send_will(self.will, self.info)
            broker.channel_closed(self)
            for hook in broker.hooks.client_disconnected:
                hook(self.info, self.disconnect_reason)
        else:
            broker.channel_closed(self)

    def _send_will(self, will: Will, info: ClientInfo) -> None:
        """Publish the will now, or schedule it after its Will Delay Interval: at the earlier
        of the delay and the end of the session (MQTT-3.1.2-8, MQTT-3.1.3-9; `core.wills`)."""
        broker = self.broker
        if will.properties and self.version == MQTT_5:
            delay = will.properties.get(PropertyId.WILL_DELAY_INTERVAL, 0)
            session = self.session
            if delay and session is not None and session.expiry_interval > 0:
                wait = min(delay, session.expiry_interval)
                broker.wills.add(info.client_id, info, will, broker.clock() + wait)
                return
        publish_will(broker, info, will)

    def route(self, message: Message, raw: bytes | None = None) -> int:
        """Run the publish hooks (plugins may rewrite or swallow it), then route it.

        `raw`: the PUBLISH as received (`Publish.raw`), which is also the QoS 0 PUBLISH of the
        message for subscribers of this client's protocol version; used unless a hook replaced
        the message (hooks return a new Message to change one, never edit it in place).
        """
        hooked = self.broker.hooks.run_message_publish(message)
        if hooked is None:
            return 0
        if raw is not None and hooked is message:
            message.encoded = {(self.version == MQTT_5, False): raw}
        return self.broker.publish(hooked)

    _handlers: dict[type, Handler]


Handler = Callable[[Channel, Any], None]


def _connected_only(handler: Handler) -> Handler:
    """Wrap a handler so that it runs only after CONNECT (MQTT-3.1.0-1)."""

    def guarded(channel: Channel, packet: Packet) -> None:
        if channel.state != CONNECTED:
            channel.protocol_violation(
                ReasonCode.PROTOCOL_ERROR, "first packet must be CONNECT", explain=True
            )
            return
        handler(channel, packet)

    return guarded


Channel._handlers = {
    Connect: handle_connect,
    Publish: _connected_only(handle_publish),
    PubAck: _connected_only(handle_puback),
    PubRec: _connected_only(handle_pubrec),
    PubRel: _connected_only(handle_pubrel),
    PubComp: _connected_only(handle_pubcomp),
    Subscribe: _connected_only(handle_subscribe),
    Unsubscribe: _connected_only(handle_unsubscribe),
    PingReq: _connected_only(handle_pingreq),
    Disconnect: _connected_only(handle_disconnect),
    Auth: handle_auth,  # also during CONNECTING: the enhanced authentication exchange
}
_QOS_SENT = ("messages/qos0/sent", "messages/qos1/sent", "messages/qos2/sent")
#: Longest Reason String sent, in characters (it is diagnostics, not data).
_REASON_MAX = 1000
#: Server DISCONNECT/CONNACK codes sent without a Reason String: the code is the whole story.
_SELF_EXPLANATORY = frozenset(
    {
        ReasonCode.SERVER_SHUTTING_DOWN,
        ReasonCode.SESSION_TAKEN_OVER,
        ReasonCode.KEEP_ALIVE_TIMEOUT,
        ReasonCode.PACKET_TOO_LARGE,
        ReasonCode.ADMINISTRATIVE_ACTION,
    }
)
