"""Mutual TLS on the cluster link: both ends prove they hold a certificate of the cluster CA.

Why mutual: the cookie alone is a shared secret sent in clear, so anyone on the path could read
it and every message after it. With `LinkTLS` the accepting side requires a client certificate
signed by the cluster CA (`CERT_REQUIRED`) and the dialling side checks the server's the same
way; the cookie stays as a second factor inside the encrypted channel. Hostnames are checked only
when asked (`verify_hostname`): nodes of a cluster are usually dialled by addresses that their
certificates do not name, and the CA is the cluster's own.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["LinkTLS", "make_link_tls", "tls_failure_reason"]


@dataclass(frozen=True, slots=True)
class LinkTLS:
    """The two contexts of one node: `server` for accepted links, `client` for dialled ones."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    verify_hostname: bool = False


def _context(purpose: int, certfile: str, keyfile: str, cafile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile or None)
    ctx.load_verify_locations(cafile=cafile)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_link_tls(
    certfile: str, keyfile: str, cafile: str, verify_hostname: bool = False
) -> LinkTLS:
    """Both contexts from PEM files; raises ValueError with a readable reason."""
    missing = [n for n, v in (("tls_certfile", certfile), ("tls_cafile", cafile)) if not v]
    if missing:
        raise ValueError(f"TLS on the cluster link needs {' and '.join(missing)}")
    try:
        server = _context(ssl.PROTOCOL_TLS_SERVER, certfile, keyfile, cafile)
        client = _context(ssl.PROTOCOL_TLS_CLIENT, certfile, keyfile, cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the cluster certificate, key or CA: {exc}") from None
    client.check_hostname = verify_hostname
    return LinkTLS(server, client, verify_hostname)


def tls_failure_reason(exc: BaseException) -> str:
    """What an operator needs from a failed handshake, in one phrase."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    text = str(reason)
    if text in (
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNEXPECTED_MESSAGE",
        "RECORD_LAYER_FAILURE",
    ):
        return f"{text} (the peer does not speak TLS: is [cluster] tls_enable set on it?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message}"
    return text
