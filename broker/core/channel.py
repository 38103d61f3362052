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

States: CONNECTING (only CONNECT allowed, MQTT-3.1.0-1) -> CONNECTED (a second CONNECT is a
protocol error, MQTT-3.1.0-2) -> CLOSED. Whatever way the connection ends, `finish` runs once:
the will is published unless a DISCONNECT (without 0x04) arrived, and the session is detached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from broker.core.conn_state import CLOSED, CONNECTED, CONNECTING
from broker.core.handle_connect import (
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
from broker.core.message import Message
from broker.core.metrics import RECEIVED_COUNTER, SENT_COUNTER
from broker.core.session import Session
from broker.protocol.codec import Decoder, encode, encode_publish
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

log = logging.getLogger(__name__)

__all__ = ["CLOSED", "CONNECTED", "CONNECTING", "Channel", "Link"]

#: Seconds a new connection may take to send CONNECT before it is dropped.
CONNECT_TIMEOUT = 30.0


class Link(Protocol):
    """What a transport gives a channel."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def buffered(self) -> int: ...


class Channel:
    """The MQTT side of one network connection. See the module docstring."""

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
        self.proto_name = "MQTT"
        self.clean_start = True
        self.keepalive = 0
        self.session: Session | None = None
        self.will: Will | None = None
        self.info: ClientInfo | None = None
        self.receive_maximum = 65535
        self.topic_aliases: dict[int, str] = {}
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
        if self.state == CLOSED:
            return
        counters = self.broker.metrics.counters
        self.recv_oct += len(data)
        self.recv_cnt += 1
        counters["bytes/received"] += len(data)
        try:
            packets = self.decoder.feed(data)
        except UnsupportedProtocolVersion as exc:
            refuse_version(self, exc)
            return
        except ProtocolError as exc:
            # Packets that were complete before the bad bytes are handled first: a client's
            # valid PUBLISH is not lost because garbage followed it in the same read.
            self._handle(exc.packets)
            if self.state != CLOSED:
                self.protocol_violation(exc.reason_code, str(exc))
            return
        if packets:
            self._handle(packets)

    def _handle(self, packets: list[Packet]) -> None:
        if not packets:
            return
        counters = self.broker.metrics.counters
        self.last_received = self.broker.clock()
        handlers = self._handlers
        for packet in packets:
            if self.state == CLOSED:
                return
            self.recv_pkt += 1
            counters["packets/received"] += 1
            name = RECEIVED_COUNTER.get(packet.packet_type)
            if name is not None:
                counters[name] += 1
            handler = handlers.get(type(packet))
            if handler is None:
                self.protocol_violation(
                    ReasonCode.PROTOCOL_ERROR, f"a client may not send {type(packet).__name__}"
                )
                return
            handler(self, packet)

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, error, or after our own close)."""
        if not self.disconnect_reason:
            self.disconnect_reason = "closed"
        self.state = CLOSED
        self.finish()

    # -- output ---------------------------------------------------------------------------

    def send(self, packet: Packet) -> None:
        data = encode(packet, self.version)
        self._count_sent(packet.packet_type, len(data))
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
        """Write one PUBLISH; a QoS 0 one is dropped (False) when the client is not reading."""
        if self.state != CONNECTED:
            return False
        link = self.link
        if qos == 0 and link.buffered() > self.broker.settings.max_outgoing_buffer:
            return False
        is_v5 = self.version == MQTT_5
        if qos == 0 and subscription_ids is None:
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
            properties: Properties | None = None
            if is_v5:
                properties = message.properties
                if subscription_ids:
                    properties = dict(properties)
                    properties[PropertyId.SUBSCRIPTION_IDENTIFIER] = subscription_ids
            data = encode_publish(
                message.topic, message.payload, qos, retain, dup, packet_id, properties,
                self.version,
            )  # fmt: skip
        self._count_sent(PacketType.PUBLISH, len(data))
        self.send_msg += 1
        counters = self.broker.metrics.counters
        counters["messages/sent"] += 1
        counters[_QOS_SENT[qos]] += 1
        link.write(data)
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self.send(PubRel(packet_id))

    # -- closing --------------------------------------------------------------------------

    def close(self, reason_code: int | None = None, reason: str = "") -> None:
        """Close from the broker side, telling a 5.0 client why with DISCONNECT."""
        if self.state == CLOSED:
            return
        if reason_code is not None and self.state == CONNECTED and self.version == MQTT_5:
            self.send(Disconnect(reason_code))
        self.disconnect_reason = reason or (
            f"reason_{reason_code:#04x}" if reason_code is not None else "closed"
        )
        self.state = CLOSED
        self.link.close()
        self.finish()

    def protocol_violation(self, reason_code: int, message: str) -> None:
        """Bad input: answer with the reason code where the spec asks for one, then close."""
        log.info("closing %s (%s:%s): %s", self.client_id, self.peer_host, self.peer_port, message)
        if self.state == CONNECTING:
            if self.decoder.version == MQTT_5:
                self.version = MQTT_5  # a 5.0 CONNACK, not the 3.1.1 default's mapped code
                send_connack(self, False, reason_code, {})
            self.disconnect_reason = "protocol_error"
            self.state = CLOSED
            self.link.close()
            self.finish()
        else:
            self.close(reason_code, "protocol_error")

    def taken_over(self) -> None:
        """Another connection CONNECTed with our client id (MQTT-3.1.4-3)."""
        self.close(ReasonCode.SESSION_TAKEN_OVER, "takeover")

    def kick(self) -> None:
        """An operator disconnected this client (management API)."""
        self.close(ReasonCode.ADMINISTRATIVE_ACTION, "kicked")

    def check_timeouts(self, now: float) -> None:
        if self.state == CONNECTING:
            if now - self.opened_at > CONNECT_TIMEOUT:
                self.close(None, "connect_timeout")
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
                self._send_will(self.will)
            broker.channel_closed(self)
            for hook in broker.hooks.client_disconnected:
                hook(self.info, self.disconnect_reason)
        else:
            broker.channel_closed(self)

    def _send_will(self, will: Will) -> None:
        assert self.info is not None
        if not self.broker.hooks.run_authorize(self.info, "publish", will.topic):
            return
        message = Message(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            dict(will.properties),
            self.client_id or "",
            self.broker.clock(),
            self.broker.node_name,
        )
        self.route(message)

    def route(self, message: Message) -> int:
        """Run the publish hooks (plugins may rewrite or swallow it), then route it."""
        hooked = self.broker.hooks.run_message_publish(message)
        if hooked is None:
            return 0
        return self.broker.publish(hooked)

    _handlers: dict[type, Handler]


Handler = Callable[[Channel, Any], None]


def _connected_only(handler: Handler) -> Handler:
    """Wrap a handler so that it runs only after CONNECT (MQTT-3.1.0-1)."""

    def guarded(channel: Channel, packet: Packet) -> None:
        if channel.state != CONNECTED:
            channel.protocol_violation(ReasonCode.PROTOCOL_ERROR, "first packet must be CONNECT")
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
    Auth: _connected_only(handle_auth),
}
_QOS_SENT = ("messages/qos0/sent", "messages/qos1/sent", "messages/qos2/sent")
