"""Packet dispatch: bytes in from a transport, to the handler of each packet (mosquitto's
`read_handle.c`), with every handler error turned into the disconnect here, in one place.

Theory of operation
-------------------
A transport (`broker.server.tcp`, `broker.server.websocket`) creates a `Channel` per accepted
connection and calls `data_received` with every chunk it reads and `connection_lost` once. The
sans-IO `Decoder` cuts the bytes into packets; `_dispatch` checks each against the state rules
of `broker.core.states` (before CONNECT only CONNECT and AUTH, MQTT-3.1.0-1) and calls its
handler from `HANDLERS`: one module per packet family, as mosquitto's `handle_*.c`
(`handle_connect`, `handle_publish`, `handle_subscribe`). A handler that finds bad input raises
`Violation`; a decoding error is a `ProtocolError`; both end here in `protocol_violation`, which
answers with the reason code where the spec asks for one (CONNACK before the session exists,
5.0 DISCONNECT after, a bare close in 3.x) and runs the one close sequence (`Connection.shut`).

Input that arrives while the CONNECT waits for other nodes (state TAKEOVER) is held and handled,
in order, once it goes on (`resume_input`). Everything else a connection is (its state, output,
timeouts, the close) lives in `broker.core.connection`, which the handlers see.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from broker.core.acked_runs import handle_acked_run
from broker.core.connection import Connection, Violation
from broker.core.frames_delivery import handle_publish_frames
from broker.core.handle_connect import (
    handle_auth,
    handle_connect,
    handle_disconnect,
    handle_pingreq,
    refuse_version,
)
from broker.core.handle_publish import (
    handle_puback,
    handle_pubcomp,
    handle_publish,
    handle_publish_run,
    handle_pubrec,
    handle_pubrel,
)
from broker.core.handle_subscribe import handle_subscribe, handle_unsubscribe
from broker.core.lone_publish import publish_lone
from broker.core.metrics import RECEIVED_COUNTER
from broker.core.states import BEFORE_CONNECT, CLOSED, CONNECTED, CONNECTING, TAKEOVER
from broker.protocol.acked_runs import AckedRun
from broker.protocol.constants import ReasonCode
from broker.protocol.decode import Run, expand_run
from broker.protocol.errors import ProtocolError, UnsupportedProtocolVersion
from broker.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Unsubscribe,
)
from broker.protocol.runs import PublishFrames, PublishRun

__all__ = ["CLOSED", "CONNECTED", "CONNECTING", "HANDLERS", "TAKEOVER", "Channel"]

Handler = Callable[[Connection, Any], None]

#: The handler of each packet a client may send; anything else is a protocol error.
HANDLERS: dict[type, Handler] = {
    Connect: handle_connect,
    Publish: handle_publish,
    PubAck: handle_puback,
    PubRec: handle_pubrec,
    PubRel: handle_pubrel,
    PubComp: handle_pubcomp,
    Subscribe: handle_subscribe,
    Unsubscribe: handle_unsubscribe,
    PingReq: handle_pingreq,
    Disconnect: handle_disconnect,
    Auth: handle_auth,
}


class Channel(Connection):
    """A `Connection` with its input side: what a transport drives. See the module docstring."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSED:
            if self.state == TAKEOVER:
                self._hold(data)
            return
        if self.state == CONNECTED and publish_lone(self, data):
            return  # one plain QoS 0 PUBLISH, the common case: in one call (a low rate)
        self.decode_read(data)

    def decode_read(self, data: bytes) -> None:
        """A read of a CONNECTING or CONNECTED channel that `publish_lone` did not take: counted,
        decoded and handled. (`broker.server.tcp.MqttConnection` calls `publish_lone` and then
        this itself for a CONNECTED channel: one call less per lone message.)"""
        counters = self.broker.metrics.counters
        self.recv_oct += len(data)
        self.recv_cnt += 1
        counters["bytes/received"] += len(data)
        try:
            # Once connected, plain QoS 0 and QoS 1 PUBLISHes come as runs of their bytes.
            if self.state == CONNECTED:
                packets = self.decoder.feed_runs(data)
            else:
                packets = self.decoder.feed(data)  # type: ignore[assignment]  # a subtype
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

    def _handle(self, packets: Sequence[Packet | Run]) -> None:
        if not packets:
            return
        try:
            self._dispatch(packets)
        except Violation as exc:
            if self.state != CLOSED:
                self.protocol_violation(exc.reason_code, exc.text, explain=True)

    def _dispatch(self, packets: Sequence[Packet | Run]) -> None:
        counters = self.broker.metrics.counters
        self.last_received = self.broker.clock()
        handlers = HANDLERS
        received_counter = RECEIVED_COUNTER
        if len(packets) == 1 and type(packets[0]) is PublishRun:
            # A read of one run (a lone message, at a low rate): what the loop below does
            # with it, without its queue and type tests.
            run = packets[0]
            if self.state == CONNECTED and handle_publish_run(self, run):
                count = run.count
                self.recv_pkt += count
                counters["packets/received"] += count
                counters["packets/publish/received"] += count
                return
            packets = expand_run(run)
        remaining = deque(packets)
        while remaining:
            packet = remaining.popleft()
            if isinstance(packet, PublishFrames):  # counted there, as far as it went
                remaining.extendleft(reversed(handle_publish_frames(self, packet)))
                continue
            if isinstance(packet, (PublishRun, AckedRun)):
                if self.state == CONNECTED and (
                    handle_acked_run(self, packet)
                    if isinstance(packet, AckedRun)
                    else handle_publish_run(self, packet)
                ):
                    count = packet.count
                    self.recv_pkt += count
                    counters["packets/received"] += count
                    counters["packets/publish/received"] += count
                else:  # not as bytes: the same frames as packets, one by one, as ever
                    remaining.extendleft(reversed(expand_run(packet)))
                continue
            state = self.state
            if state >= CLOSED:
                if state == TAKEOVER:  # the CONNECT waits for another node: keep the rest
                    held = self.held_packets
                    if held is None:
                        held = self.held_packets = []
                    held.append(packet)
                    for rest in remaining:  # runs only come once connected: never, in fact
                        runs = (PublishRun, AckedRun, PublishFrames)
                        held.extend(expand_run(rest) if isinstance(rest, runs) else [rest])
                return
            self.recv_pkt += 1
            counters["packets/received"] += 1
            name = received_counter.get(packet.packet_type)
            if name is not None:
                counters[name] += 1
            if state != CONNECTED and packet.packet_type not in BEFORE_CONNECT:
                raise Violation(ReasonCode.PROTOCOL_ERROR, "first packet must be CONNECT")
            handler = handlers.get(type(packet))
            if handler is None:
                raise Violation(
                    ReasonCode.PROTOCOL_ERROR, f"a client may not send {type(packet).__name__}"
                )
            handler(self, packet)

    def _hold(self, data: bytes) -> None:
        """Keep input that arrives during TAKEOVER; more than one maximum-size packet's worth
        (a client is to wait for CONNACK) closes the connection."""
        held = self.held_bytes
        if held is None:
            held = self.held_bytes = bytearray()
        if len(held) + len(data) > self.broker.settings.max_packet_size + 5:
            self.close(None, "takeover_overflow")
            return
        held += data

    def resume_input(self) -> None:
        """The CONNECT went on after TAKEOVER: handle what arrived meanwhile, in order."""
        packets, self.held_packets = self.held_packets or [], None
        data, self.held_bytes = bytes(self.held_bytes or b""), None
        self._handle(packets)
        if data:
            self.data_received(data)

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, error, or after our own close)."""
        self.shut(self.disconnect_reason or "closed", link_open=False)
