"""What the `Broker` sees of a client connection: the port it delivers, kicks and times out through.

The Broker never imports the connection classes (`broker.core.connection`, `broker.core.channel`):
they import the Broker and call its operations, and the Broker calls back only through this
protocol (EMQX's broker never calls into `emqx_channel` either; it sends to a pid). Deliveries go
through the session's `Outlet` part; the rest is what the registries and housekeeping need.
"""

from __future__ import annotations

from typing import Protocol

from broker.core.hooks import ClientInfo
from broker.core.session import Outlet
from broker.protocol.runs import PublishRun


class ClientPort(Outlet, Protocol):
    """One connected (or connecting) client, as the Broker and its readers see it."""

    client_id: str | None
    username: str | None
    peer_host: str
    peer_port: int
    #: Set once the CONNECT is accepted; what hooks are told about the client.
    info: ClientInfo | None
    # What the registries report about it (management, plugins).
    proto_name: str
    clean_start: bool
    keepalive: int
    connected_at: float

    def passes(self, run: PublishRun) -> bool:
        """True when each frame of `run` (in this client's protocol family) is the PUBLISH
        this client would be sent for its message at QoS 0 (no topic alias to apply, within
        its Maximum Packet Size)."""
        ...

    def send_run(self, run: PublishRun) -> int:
        """Write `run` (that `passes`) as QoS 0 deliveries: how many of its messages went out
        (the rest dropped, as `send_publish` drops a QoS 0 one: not connected, or over
        `max_outgoing_buffer`)."""
        ...

    def frames_room(self, v5: bool, longest: int) -> int | None:
        """None when plain QoS 0 frames of the protocol family `v5` (5.0 or 3.x), none longer
        than `longest`, are not the PUBLISHes this client would be sent for their messages
        (not connected, topic aliases, Maximum Packet Size, another family); else the bytes
        that may still be written before its QoS 0 deliveries are dropped (negative: none)."""
        ...

    def send_frames(self, data: bytes, count: int) -> None:
        """Write `data`, `count` QoS 0 PUBLISH frames for which `frames_room` allowed, in one
        write, counted per message as `send_publish` counts them."""
        ...

    def taken_over(self, session_ends: bool = True) -> None:
        """Another connection took the client id (MQTT-3.1.4-3): close with 0x8E; its will
        only if the session ends with it (`session_ends`)."""
        ...

    def kick(self) -> None:
        """An operator disconnects the client: close with 0x98."""
        ...

    def check_timeouts(self, now: float) -> None:
        """Close the connection if its CONNECT, takeover or keepalive time ran out."""
        ...

    def close(self, reason_code: int | None = None, reason: str = "", detail: str = "") -> None:
        """Close from the broker side (5.0: DISCONNECT with `reason_code`)."""
        ...
