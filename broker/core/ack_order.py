"""The order of acks and onward deliveries for one connection: a client's own QoS 1/2 message
comes back to it only after its ack (`hold_output`), and with `durable_acks` an ack waits for
the commit of what it acknowledges (`broker.core.commit_gate`).

Why a module of its own: it is one rule about ordering, apart from how a packet is encoded and
counted (`broker.core.connection`). `Connection` inherits `AckOrder`, so these stay
`Connection` methods bound as before; this module never imports `broker.core.connection`
(`_Acking` says what it needs of one).
"""

from __future__ import annotations

import functools
from typing import Protocol

from broker.core.broker import Broker
from broker.core.commit_gate import CommitGate
from broker.core.session import Session
from broker.core.states import CONNECTED
from broker.protocol.packets import Packet, PubRel


class _LinkWrite(Protocol):
    def write(self, data: bytes) -> None: ...


class _Acking(Protocol):
    """What ack ordering uses of a connection (`broker.core.connection.Connection`)."""

    held_out: list[bytes] | None

    @property
    def broker(self) -> Broker: ...
    @property
    def link(self) -> _LinkWrite: ...
    @property
    def session(self) -> Session | None: ...
    @property
    def client_id(self) -> str | None: ...
    @property
    def state(self) -> int: ...

    def send(self, packet: Packet) -> None: ...
    def ack_gate(self) -> CommitGate | None: ...
    def send_after_commit(self, packet: Packet, gate: CommitGate) -> None: ...
    def _send_committed(self, packet: Packet, held: list[bytes] | None) -> None: ...


class AckOrder:
    """Held output and commit-gated acks; mixed into `Connection` (`held_out` lives there)."""

    __slots__ = ()

    def hold_output(self: _Acking) -> None:
        """Hold PUBLISHes to this connection until `release_output`: a client's own QoS 1/2
        message comes back to it (it subscribes to what it publishes) only after its
        PUBACK/PUBREC, so the client sees its publish acknowledged before onward delivery
        (as mosquitto and EMQX order it)."""
        self.held_out: list[bytes] | None = []

    def release_output(self: _Acking) -> None:
        held, self.held_out = self.held_out, None
        if held:
            self.link.write(b"".join(held))

    def send_pubrel(self: _Acking, packet_id: int) -> None:
        """PUBREL for an outgoing QoS 2 message; with `durable_acks`, for a persistent session
        whose state is not committed yet, only after the commit (`ack_gate`)."""
        gate = self.ack_gate()
        if gate is not None and self.client_id in gate.dirty:
            self.send_after_commit(PubRel(packet_id), gate)
        else:
            self.send(PubRel(packet_id))

    def ack_gate(self: _Acking) -> CommitGate | None:
        """The commit gate when acks to this client wait for commits (`durable_acks`, and
        its session is persistent); None: acks go at once."""
        gate = self.broker.commit_gate
        session = self.session
        if gate is None or not gate.client_acks or session is None:
            return None
        return gate if session.expiry_interval else None

    def send_after_commit(self: _Acking, packet: Packet, gate: CommitGate) -> None:
        """Send `packet` once the commit holding what it acknowledges is durable
        (`broker.core.commit_gate`); the PUBLISHes `hold_output` holds wait with it, so the
        client still sees its ack before its own message comes back."""
        held, self.held_out = self.held_out, None
        gate.hold(functools.partial(self._send_committed, packet, held))

    def _send_committed(self: _Acking, packet: Packet, held: list[bytes] | None) -> None:
        if self.state != CONNECTED:
            return  # gone: the client sends it again (QoS 1/2 retry on reconnect)
        self.send(packet)
        if held:
            self.link.write(b"".join(held))
