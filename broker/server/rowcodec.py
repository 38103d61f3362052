"""The row encoding of `broker.server.persistence`: tagged JSON of msgpack-able values.

Why JSON with tags: the rows stay readable with the `sqlite3` shell, and the values persisted
(session state, messages) hold bytes and maps with non-string keys, which plain JSON has not:
bytes become `{"$b": base64}`, such maps `{"$m": [[key, value], ...]}`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["decode_value", "encode_value"]


def _pack(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in ("$b", "$m") for k in value):
            return {k: _pack(v) for k, v in value.items()}
        return {"$m": [[_pack(k), _pack(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_pack(v) for v in value]
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$b" in value:
            return base64.b64decode(value["$b"], validate=True)
        if len(value) == 1 and "$m" in value:
            return {_unpack(k): _unpack(v) for k, v in value["$m"]}
        return {k: _unpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v) for v in value]
    return value


def encode_value(value: Any) -> bytes:
    """Tagged JSON of a msgpack-able value (bytes and int-keyed maps survive the trip)."""
    return json.dumps(_pack(value), separators=(",", ":")).encode("utf-8")


def decode_value(data: bytes) -> Any:
    """The inverse of `encode_value`; raises ValueError on anything malformed."""
    try:
        return _unpack(json.loads(bytes(data).decode("utf-8")))
    except (TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
