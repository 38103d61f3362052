"""How a connection ends: the one close sequence (`shut`), the ways to it (a broker-side
close, a refused CONNECT, a protocol violation, a takeover, a kick, a timeout) and what ending
does (the will, published now or after its delay, and the disconnected hooks).

Why a module of its own: `broker.core.connection` keeps a connection's state and its output
(the per-message paths); ending one is a separate job that every handler reaches through
`close`, `refuse` or `protocol_violation`. `Connection` inherits `Closing`, so these stay
`Connection` methods bound as before; this module never imports `broker.core.connection`
(`_Closable` says what it needs of one).
"""

from __future__ import annotations

import logging
from typing import Protocol

from broker.core.broker import Broker
from broker.core.client_port import ClientPort
from broker.core.hooks import ClientInfo
from broker.core.session import Session
from broker.core.states import CLOSE, CLOSED, CONNECTED, CONNECTING, TAKEOVER
from broker.protocol.codec import Decoder
from broker.protocol.constants import MQTT_5, PropertyId, ReasonCode, connack_code_for_version
from broker.protocol.packets import ConnAck, Disconnect, Packet, Properties, Will

log = logging.getLogger("broker.core.connection")

#: Seconds a new connection may take to send CONNECT before it is dropped.
CONNECT_TIMEOUT = 30.0

#: Seconds a connection's input stays held by flow control at most (`Connection.hold_input`).
MAX_HOLD = 5.0


class _LinkClose(Protocol):
    def close(self) -> None: ...


class _Closable(ClientPort, Protocol):
    """What closing uses of a connection (`broker.core.connection.Connection`)."""

    state: int
    version: int
    disconnect_reason: str
    _finished: bool
    publish_will: bool

    @property
    def broker(self) -> Broker: ...
    @property
    def link(self) -> _LinkClose: ...
    @property
    def decoder(self) -> Decoder: ...
    @property
    def will(self) -> Will | None: ...
    @property
    def session(self) -> Session | None: ...
    @property
    def held_at(self) -> float | None: ...
    @property
    def opened_at(self) -> float: ...
    @property
    def last_received(self) -> float: ...

    def send(self, packet: Packet) -> None: ...
    def reason_always(self, text: str) -> Properties: ...
    def release_input(self, hold: int = 0) -> None: ...
    def enter(self, event: str) -> None: ...
    def close(self, reason_code: int | None = None, reason: str = "", detail: str = "") -> None: ...
    def shut(self, reason: str, link_open: bool = True) -> None: ...
    def send_connack(self, present: bool, reason_code: int, properties: Properties) -> None: ...
    def finish(self) -> None: ...
    def _send_will(self, will: Will, info: ClientInfo) -> None: ...


class Closing:
    """The ways a connection ends; mixed into `Connection` (its state lives there)."""

    __slots__ = ()

    def close(
        self: _Closable, reason_code: int | None = None, reason: str = "", detail: str = ""
    ) -> None:
        """Close from the broker side, telling a 5.0 client why with DISCONNECT (and `detail`
        as its Reason String). A server DISCONNECT never carries a Session Expiry Interval."""
        if self.state == CLOSED:
            return
        if reason_code is not None and self.state == CONNECTED and self.version == MQTT_5:
            self.send(Disconnect(reason_code, self.reason_always(detail)))
        self.shut(reason or (f"reason_{reason_code:#04x}" if reason_code is not None else "closed"))

    def shut(self: _Closable, reason: str, link_open: bool = True) -> None:
        """The close sequence, the only one: state CLOSED, close the link (unless the transport
        is gone already), then `finish`. `reason` is what the disconnected hook is told."""
        if self.state == CLOSED:
            return
        self.disconnect_reason = reason
        self.enter(CLOSE)
        if link_open:
            self.link.close()
        self.finish()

    def refuse(
        self: _Closable,
        reason_code: int,
        reason: str,
        detail: str = "",
        who: tuple[str, str | None] = ("", None),
    ) -> None:
        """Refuse the CONNECT with a CONNACK carrying `reason_code`, then close; a refused
        login (`who`: client id, username) is logged as mosquitto does."""
        if who[0]:
            log.info("refused %s (username %r) from %s:%s: %s",
                     who[0], who[1], self.peer_host, self.peer_port, reason)  # fmt: skip
        self.send_connack(False, reason_code, self.reason_always(detail))
        self.shut(reason)

    def send_connack(
        self: _Closable, present: bool, reason_code: int, properties: Properties
    ) -> None:
        """CONNACK with `reason_code` mapped to 3.1.1's return codes for an old client."""
        code = connack_code_for_version(reason_code, self.version)
        self.send(ConnAck(present, code, properties if self.version == MQTT_5 else {}))

    def protocol_violation(
        self: _Closable, reason_code: int, message: str, explain: bool = False
    ) -> None:
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
                self.send_connack(False, reason_code, {})  # a broken CONNECT: code only
            self.shut("protocol_error")
        else:
            self.close(reason_code, "protocol_error", detail)

    def taken_over(self: _Closable, session_ends: bool = True) -> None:
        """Another connection CONNECTed with our client id (MQTT-3.1.4-3).

        The will goes out only if the session ends with this takeover (`session_ends`: either
        connection is clean / its session expiry 0): a session that continues on the new
        connection takes the will away, as mosquitto 2.0 does and as a 5.0 Will Delay Interval
        would (MQTT-3.1.3-9); a reconnect that resumes its session is not the client's death.
        """
        if not session_ends:
            self.publish_will = False
        self.close(ReasonCode.SESSION_TAKEN_OVER, "takeover")

    def kick(self: _Closable) -> None:
        """An operator disconnected this client (management API)."""
        self.close(ReasonCode.ADMINISTRATIVE_ACTION, "kicked")

    def check_timeouts(self: _Closable, now: float) -> None:
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

    def finish(self: _Closable) -> None:
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

    def _send_will(self: _Closable, will: Will, info: ClientInfo) -> None:
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
        broker.publish_will(info, will)


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
