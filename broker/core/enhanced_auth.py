"""MQTT 5.0 enhanced authentication (section 4.12): pluggable methods, and SCRAM-SHA-256.

Theory of operation
-------------------
A client names an Authentication Method in CONNECT (with optional Authentication Data). The
channel looks the method up (`find_method`): first the methods plugins registered in
`Hooks.auth_methods`, then the built-in SCRAM-SHA-256 when `scram_credentials` are configured.
An unknown method is refused with CONNACK 0x8C (Bad authentication method).

A method is a factory: `(client_id, username) -> Authenticator`, one object per exchange (the
CONNECT one, then one per re-authentication). The authenticator is driven by the channel:

    start(data)  for the CONNECT (or the AUTH 0x19 that starts a re-authentication)
    step(data)   for every AUTH 0x18 (Continue authentication) from the client

each returning an `AuthResult`: CONTINUE (the server sends AUTH 0x18 with `data`), SUCCESS (the
CONNACK, or AUTH 0x00 when re-authenticating, carries `data`; `username` is the identity the
method proved) or FAIL (CONNACK with `reason_code`, or DISCONNECT when re-authenticating).

SCRAM-SHA-256 (RFC 5802 with the hash of RFC 7677) keeps only salted credentials: per user the
salt, the iteration count, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey =
HMAC(SaltedPassword, "Server Key"), written as RFC 5803 does::

    SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>

`scram_credential(password)` makes such an entry (also `python -m broker.core.enhanced_auth`).
The exchange in MQTT terms::

    CONNECT  method "SCRAM-SHA-256", data "n,,n=user,r=<client nonce>"
    AUTH 0x18  data "r=<client nonce><server nonce>,s=<salt>,i=<iterations>"
    AUTH 0x18  data "c=biws,r=<nonce>,p=<client proof>"
    CONNACK 0x00  data "v=<server signature>"        (or CONNACK 0x86 on a wrong proof)

An unknown user gets a made-up salt derived from the name, so the exchange looks the same as for
a real user until the proof fails (RFC 5802 section 9). Channel binding is not offered: a client
asking for it ("p=") fails. User names are used as sent (no SASLprep), with "=2C"/"=3D" decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

from broker.protocol.constants import ReasonCode

if TYPE_CHECKING:
    from broker.core.settings import Settings

__all__ = [
    "CONTINUE",
    "FAIL",
    "SCRAM_SHA_256",
    "SUCCESS",
    "AuthMethod",
    "AuthResult",
    "Authenticator",
    "ScramCredential",
    "ScramSha256",
    "find_method",
    "parse_scram_credential",
    "scram_credential",
]

CONTINUE, SUCCESS, FAIL = 0, 1, 2
SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096  # RFC 7677 section 4: at least 4096


class AuthResult(NamedTuple):
    """What one authentication step decided (module docstring)."""

    status: int
    data: bytes | None = None
    username: str | None = None
    reason_code: int = ReasonCode.NOT_AUTHORIZED
    reason: str = ""


class Authenticator(Protocol):
    """One authentication exchange of one connection."""

    def start(self, data: bytes | None) -> AuthResult: ...

    def step(self, data: bytes | None) -> AuthResult: ...


#: A registered method: (client id, CONNECT user name) -> a fresh exchange.
AuthMethod = Callable[[str, "str | None"], Authenticator]


def find_method(
    registered: Mapping[str, AuthMethod], settings: Settings, name: str
) -> AuthMethod | None:
    """The method called `name`: a plugin's (`Hooks.auth_methods`, passed in), else the
    built-in SCRAM-SHA-256 if configured."""
    method = registered.get(name)
    if method is not None:
        return method
    if name == SCRAM_SHA_256 and settings.scram_credentials:
        credentials = settings.scram_credentials
        return lambda client_id, username: ScramSha256(credentials)
    return None


# --------------------------------------------------------------------------- credentials


class ScramCredential(NamedTuple):
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _keys(salted: bytes) -> tuple[bytes, bytes]:
    client_key = _hmac(salted, b"Client Key")
    return hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


def scram_credential(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """A stored SCRAM-SHA-256 credential for `password` (RFC 5803 form; module docstring)."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    stored_key, server_key = _keys(salted)
    return f"{SCRAM_SHA_256}${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def parse_scram_credential(text: str) -> ScramCredential:
    """Read a stored credential; ValueError names what is wrong."""
    try:
        scheme, params, keys = text.split("$")
        iterations_text, salt_text = params.split(":")
        stored_text, server_text = keys.split(":")
    except ValueError:
        raise ValueError(
            f"expected {SCRAM_SHA_256}$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        ) from None
    if scheme != SCRAM_SHA_256:
        raise ValueError(f"unsupported scheme {scheme!r} (only {SCRAM_SHA_256})")
    if not iterations_text.isdigit() or int(iterations_text) < 1:
        raise ValueError(f"iteration count must be a positive integer, got {iterations_text!r}")
    try:
        salt, stored, server = _unb64(salt_text), _unb64(stored_text), _unb64(server_text)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("salt and keys must be base64") from None
    if len(stored) != 32 or len(server) != 32 or not salt:
        raise ValueError("StoredKey and ServerKey must be 32 bytes and the salt not empty")
    return ScramCredential(salt, int(iterations_text), stored, server)


# --------------------------------------------------------------------------- SCRAM exchange

#: Secret for the made-up salts of unknown users (stable for the life of the process).
_DECOY_SECRET = secrets.token_bytes(32)


def _fail(reason: str, code: int = ReasonCode.NOT_AUTHORIZED) -> AuthResult:
    return AuthResult(FAIL, None, None, code, reason)


def _attributes(message: str) -> list[tuple[str, str]]:
    """`a=1,b=2` -> [("a", "1"), ("b", "2")]; ValueError for an item without "x=" form."""
    out = []
    for item in message.split(","):
        if len(item) < 2 or item[1] != "=" or not item[0].isalpha():
            raise ValueError(f"bad SCRAM attribute {item!r}")
        out.append((item[0], item[2:]))
    return out


def _decode_name(name: str) -> str:
    """RFC 5802 saslname: "=2C" is ",", "=3D" is "=", any other "=" is an error."""
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ValueError("bad escape in user name")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramSha256:
    """The server side of one SCRAM-SHA-256 exchange (module docstring)."""

    __slots__ = (
        "_client_first_bare",
        "_credential",
        "_credentials",
        "_done",
        "_gs2_header",
        "_nonce",
        "_server_first",
        "_username",
    )

    def __init__(
        self, credentials: Mapping[str, str], server_nonce: Callable[[], str] | None = None
    ) -> None:
        self._credentials = credentials
        self._nonce = (server_nonce or (lambda: secrets.token_urlsafe(18)))()
        self._credential: ScramCredential | None = None
        self._username = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._done = False

    def start(self, data: bytes | None) -> AuthResult:
        if self._server_first:
            return _fail("SCRAM exchange already started", ReasonCode.PROTOCOL_ERROR)
        try:
            text = (data or b"").decode("utf-8")
            cbind, authzid, bare = text.split(",", 2)
            if cbind == "p" or cbind.startswith("p="):
                return _fail("channel binding is not supported")
            if cbind not in ("n", "y") or (authzid and not authzid.startswith("a=")):
                raise ValueError("bad GS2 header")
            attrs = _attributes(bare)
            if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
                raise ValueError("client-first-message needs n= then r=")
            if any(key == "m" for key, _ in attrs):
                raise ValueError("mandatory extensions are not supported")
            username = _decode_name(attrs[0][1])
            client_nonce = attrs[1][1]
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            self._done = True
            return _fail(f"malformed SCRAM client-first-message: {exc}")
        stored = self._credentials.get(username)
        credential = None
        if stored is not None:
            try:
                credential = parse_scram_credential(stored)
            except ValueError:
                credential = None  # a bad entry authenticates nobody
        self._username = username
        self._credential = credential
        if credential is None:  # a decoy, so unknown users look like known ones
            salt = _hmac(_DECOY_SECRET, username.encode("utf-8"))[:16]
            salt_b64, iterations = _b64(salt), DEFAULT_ITERATIONS
        else:
            salt_b64, iterations = _b64(credential.salt), credential.iterations
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = bare
        self._server_first = f"r={client_nonce}{self._nonce},s={salt_b64},i={iterations}"
        return AuthResult(CONTINUE, self._server_first.encode("utf-8"))

    def step(self, data: bytes | None) -> AuthResult:
        if not self._server_first or self._done:
            return _fail("unexpected SCRAM message", ReasonCode.PROTOCOL_ERROR)
        self._done = True
        try:
            text = (data or b"").decode("utf-8")
            without_proof, sep, proof_b64 = text.rpartition(",p=")
            if not sep:
                raise ValueError("client-final-message without proof")
            attrs = dict(_attributes(without_proof))
            proof = _unb64(proof_b64)
        except (ValueError, binascii.Error) as exc:
            return _fail(f"malformed SCRAM client-final-message: {exc}")
        expected_nonce = self._server_first[2 : self._server_first.index(",")]
        if attrs.get("r") != expected_nonce:
            return _fail("SCRAM nonce mismatch")
        if attrs.get("c") != _b64(self._gs2_header.encode("utf-8")):
            return _fail("SCRAM channel binding mismatch")
        credential = self._credential
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        if credential is None or len(proof) != 32:
            return _fail("bad user name or password", ReasonCode.BAD_USER_NAME_OR_PASSWORD)
        signature = _hmac(credential.stored_key, auth_message.encode("utf-8"))
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), credential.stored_key):
            return _fail("bad user name or password", ReasonCode.BAD_USER_NAME_OR_PASSWORD)
        server_signature = _hmac(credential.server_key, auth_message.encode("utf-8"))
        return AuthResult(SUCCESS, b"v=" + _b64(server_signature).encode("ascii"), self._username)


# --------------------------------------------------------------------------- client side


class ScramClient:
    """The client side of SCRAM-SHA-256, for tests and tools (RFC 5802 section 3)."""

    def __init__(self, username: str, password: str, nonce: str | None = None) -> None:
        self.username = username
        self.password = password
        self.nonce = nonce or secrets.token_urlsafe(18)
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.client_first_bare = f"n={name},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.client_first_bare).encode("utf-8")

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode("utf-8")
        attrs = dict(_attributes(text))
        nonce, salt, iterations = attrs["r"], _unb64(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise ValueError("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode("utf-8"), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = ",".join((self.client_first_bare, text, without_proof)).encode("utf-8")
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> bool:
        """True if the server proved it knows the credential (its `v=` signature)."""
        return server_final == b"v=" + _b64(self.server_signature).encode("ascii")


def _main() -> None:  # pragma: no cover - a tiny operator tool
    import getpass
    import json
    import sys

    args = sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m broker.core.enhanced_auth USERNAME   (reads the password)")
        raise SystemExit(2)
    password = getpass.getpass(f"password for {args[0]}: ")
    print("# under [scram_credentials] in the broker's TOML file:")
    print(f"{json.dumps(args[0])} = {json.dumps(scram_credential(password))}")


if __name__ == "__main__":  # pragma: no cover
    _main()
