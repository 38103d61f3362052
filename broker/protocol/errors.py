"""The only exceptions the protocol package raises on bad input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.protocol.constants import ReasonCode

if TYPE_CHECKING:
    from broker.protocol.acked_runs import AckedRun
    from broker.protocol.packets import Packet
    from broker.protocol.runs import PublishRun


class ProtocolError(Exception):
    """Input that breaks the MQTT rules. `reason_code` is the 5.0 code to close the connection with.

    `packets`: when raised by `Decoder.feed`, the packets that were decoded completely from the
    same call before the offending one (in order), so the caller may still act on them; from
    `Decoder.feed_runs`, runs among them.
    """

    reason_code: int = ReasonCode.PROTOCOL_ERROR
    packets: list[Packet | PublishRun | AckedRun]

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code
        self.packets = []


class MalformedPacket(ProtocolError):
    """Bytes that cannot be parsed as the packet they claim to be (reason code 0x81)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class PacketTooLarge(ProtocolError):
    """A packet whose declared size exceeds the configured maximum (reason code 0x95)."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(ProtocolError):
    """CONNECT with a protocol name/level we do not speak (0x84; 0x01 in 3.1.1).

    `protocol_level` is the level byte the client sent (None if unknown), so the broker can answer
    in the client's own dialect: CONNACK 0x84 with properties if it is 5, else 3.1.1 code 0x01.
    """

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(
        self, message: str, reason_code: int | None = None, *, protocol_level: int | None = None
    ) -> None:
        super().__init__(message, reason_code)
        self.protocol_level = protocol_level
