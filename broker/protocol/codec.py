"""The sans-IO MQTT codec: `encode(packet) -> bytes`, `Decoder().feed(bytes) -> [packet]`.

No I/O and no clock here (in the style of h11/wsproto): callers own the socket. The work is split
in three modules, re-exported from this one:

- `properties`: field primitives (Variable Byte Integer, UTF-8 string, binary data) and the MQTT
  5.0 property block with its per-packet-type table.
- `encode`: one writer per packet type plus `encode_publish`, the fast path for fan-out.
- `decode`: the incremental `Decoder`; its docstring explains the buffer and the version state.

Errors are always `ProtocolError` or a subclass (`MalformedPacket`, `PacketTooLarge`,
`UnsupportedProtocolVersion`), whichever direction they happen in.
"""

from __future__ import annotations

from broker.protocol.decode import DEFAULT_MAX_PACKET_SIZE, Decoder
from broker.protocol.encode import encode, encode_publish

__all__ = ["DEFAULT_MAX_PACKET_SIZE", "Decoder", "encode", "encode_publish"]
