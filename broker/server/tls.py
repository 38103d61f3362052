"""TLS for the MQTT/TLS and WebSocket/TLS listeners: one `ssl.SSLContext` per listener.

TLS 1.2 is the floor (`tls_version = "tlsv1.3"` raises it). With `cafile`, client certificates
are checked against it; `require_certificate` makes one mandatory (the handshake fails
without), and `use_identity_as_username` makes the certificate's subject CN the client's
username, as mosquitto does: such a client is authenticated by its certificate, and the
username and password of its CONNECT are not used.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from broker.server.config import ListenerConfig
from broker.server.errors import StartupError

__all__ = ["cert_common_name", "make_ssl_context"]


def make_ssl_context(listener: ListenerConfig, section: str) -> ssl.SSLContext:
    """The server context `listener` asks for; StartupError with a readable reason."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if listener.tls_version == "tlsv1.3" else ssl.TLSVersion.TLSv1_2
    )
    missing = [
        f"{key} {path!r}"
        for key in ("certfile", "keyfile", "cafile")
        if (path := getattr(listener, key)) and not os.path.isfile(path)
    ]
    if missing:
        raise StartupError(f"[{section}]: no such file: {', '.join(missing)}")
    try:
        ctx.load_cert_chain(listener.certfile, listener.keyfile)
        if listener.cafile:
            ctx.load_verify_locations(cafile=listener.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"[{section}]: cannot load the TLS certificate, key or CA: {exc}"
        ) from None
    if listener.require_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif listener.cafile:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def cert_common_name(peercert: Any) -> str | None:
    """The subject CN of a certificate as `SSLSocket.getpeercert()` gives it, or None."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                return value
    return None
