"""Broker configuration: one TOML file, validated up front.

Why this shape: operators come from mosquitto and EMQX, so the top-level keys use mosquitto's
names where the meaning is the same and the node/cluster/management sections follow EMQX. Every
mistake (unknown key, wrong type, out-of-range value) is reported once, on one line, naming the
file, the section and the key, because a broker that silently ignores a typo in
``max_inflight_messages`` is worse than one that refuses to start.

File layout::

    allow_anonymous = true        # and the other mosquitto-named keys at the top level
    [node]            name, data_dir, cookie
    [listener.tcp]    bind, port, enabled
    [listener.ws]     bind, port, path, enabled
    [listener.ssl]    bind, port, enabled, certfile, keyfile, cafile, require_certificate,
                      use_identity_as_username, tls_version (MQTT over TLS, default 8883, off)
    [listener.wss]    the same plus path (MQTT over WebSocket over TLS, default 8084, off)
                      every MQTT listener also: max_connections, max_connection_rate,
                      allow_anonymous, password_file (override the top-level ones there)
    [management]      bind, port, enabled, max_row_limit, metrics_auth, default_app, dashboard,
                      max_body_size (bytes; a larger request body is answered 413)
    [[management.apps]] id, secret, name, desc, status, expired (API apps; repeatable)
    [cluster]         bind, port, join, enabled, advertise, dns_refresh_interval
                      (a join entry "dns:NAME:PORT" is re-resolved every dns_refresh_interval s)
    [alarms]          sysmem_high_watermark, procmem_high_watermark, cpu_high_watermark,
                      connections_high_watermark, check_interval
    [plugins.<name>]  enabled, plus each plugin's own keys (PLUGIN_SCHEMAS for the built-ins;
                      a plugin installed from elsewhere has its keys checked when it loads)
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.core.enhanced_auth import parse_scram_credential

__all__ = [
    "LISTENER_NAMES",
    "PLUGIN_SCHEMAS",
    "SHARED_SUBSCRIPTION_STRATEGIES",
    "WEB_HOOK_EVENTS",
    "AlarmsConfig",
    "BrokerConfig",
    "ConfigError",
    "ListenerConfig",
    "ManagementApp",
    "ManagementConfig",
    "apply_overrides",
    "check_implemented",
    "load_config",
    "parse_config",
    "parse_publish_limit",
    "validate_host_port",
]

MAX_PACKET_SIZE_LIMIT = 268_435_460  # largest MQTT packet: 1 + 4-byte varint + 268435455
MAX_SESSION_EXPIRY = 0xFFFF_FFFF  # MQTT 5 Session Expiry Interval is a four-byte integer
UNLIMITED_INFLIGHT = 65535  # MQTT 5 Receive Maximum upper bound; mosquitto's "0 = unlimited"
SHARED_SUBSCRIPTION_STRATEGIES = ("round_robin", "random", "hash_clientid", "hash_topic")
#: Events the web_hook plugin can post (EMQX's hook names).
WEB_HOOK_EVENTS = (
    "client.connected",
    "client.disconnected",
    "session.subscribed",
    "message.publish",
)


class ConfigError(Exception):
    """A configuration problem, with a one-line message fit to show the operator as is."""


@dataclass(slots=True)
class ListenerConfig:
    """One socket the node binds: MQTT/TCP, MQTT/WebSocket, management HTTP or cluster."""

    bind: str
    port: int
    enabled: bool = True
    path: str = "/mqtt"  # only meaningful for the WebSocket listener
    #: MQTT listeners only: connections open at once on this listener (0 = no per-listener
    #: limit) and new connections accepted per second (token bucket; 0 = unlimited).
    max_connections: int = 0
    max_connection_rate: float = 0.0
    #: TLS listeners only (mosquitto's names): server certificate chain and key (PEM), CA file
    #: for client certificates, whether one is required, and whether its CN is the username.
    certfile: str = ""
    keyfile: str = ""
    cafile: str = ""
    require_certificate: bool = False
    use_identity_as_username: bool = False
    tls_version: str = "tlsv1.2"  # the minimum accepted: tlsv1.2 or tlsv1.3
    #: MQTT listeners only (mosquitto's per_listener_settings): override the top-level
    #: allow_anonymous (None = the top-level value) and password_file ("" = the top-level file)
    #: for the clients that arrive on this listener.
    allow_anonymous: bool | None = None
    password_file: str = ""


#: [listener.<section>] -> the name its connections carry (`Channel.listener`, ClientInfo).
LISTENER_NAMES = {"tcp": "tcp", "ws": "ws", "ssl": "tls", "wss": "wss"}


def _tcp_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=1883)


def _ws_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=8083, path="/mqtt")


def _ssl_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=8883, enabled=False)


def _wss_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=8084, enabled=False, path="/mqtt")


@dataclass(slots=True)
class ManagementApp:
    """An API app from [[management.apps]]: HTTP Basic user `id`, password `secret`."""

    id: str
    secret: str
    name: str = ""
    desc: str = ""
    status: bool = True  # false = disabled
    expired: int | None = None  # Unix seconds after which the app is refused; None = never


@dataclass(slots=True)
class ManagementConfig(ListenerConfig):
    """The management HTTP listener plus the API's own settings (EMQX's names)."""

    max_row_limit: int = 10000  # largest `_limit`, and its default
    metrics_auth: bool = False  # GET /metrics requires an app's credentials
    default_app: bool = True  # keep EMQX's default app admin/public
    dashboard: bool = True  # serve the web dashboard under /dashboard/ on this listener
    max_body_size: int = 1_048_576  # largest HTTP request body; larger is answered 413
    apps: list[ManagementApp] = field(default_factory=list)


def _management_default() -> ManagementConfig:
    return ManagementConfig(bind="127.0.0.1", port=8080)


def _cluster_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=7946)


@dataclass(slots=True)
class AlarmsConfig:
    """High-water marks of the node's monitors (EMQX os_mon names); fractions of 1."""

    sysmem_high_watermark: float = 0.70  # used / total system memory
    procmem_high_watermark: float = 0.05  # this process's RSS / total system memory
    cpu_high_watermark: float = 0.80  # load1 / number of cores
    connections_high_watermark: int = 0  # connected clients; 0 = off
    check_interval: float = 5.0  # seconds between two checks; 0 = no timer


@dataclass(slots=True)
class BrokerConfig:
    """Everything the node needs to start; defaults match a config-less mosquitto 2.0 / EMQX."""

    allow_anonymous: bool = True
    password_file: str = ""
    acl_file: str = ""
    max_inflight_messages: int = 32
    max_queued_messages: int = 1000
    max_packet_size: int = 1_048_576
    max_keepalive: int = 65535
    sys_interval: float = 10
    persistence: bool = False
    #: Milliseconds between two flushes of what changed to `<data_dir>/broker.db` (mosquitto's
    #: autosave_interval): at most this much of acknowledged messages is lost on a crash.
    persistence_interval: int = 1000
    session_expiry_interval: int = 7200
    retain_available: bool = True
    max_connections: int = 0
    shared_subscription_strategy: str = "round_robin"
    max_outgoing_buffer: int = 8 * 1024 * 1024
    # Limits (README "Security and limits"); 0 = unlimited where not said otherwise.
    max_queued_bytes: int = 0  # payload bytes queued per session
    max_topic_levels: int = 128  # EMQX's default
    max_topic_length: int = 65535
    max_subscriptions: int = 0  # per client
    #: EMQX's publish_limit: "N,Ss" (N PUBLISH per S seconds) or N per second; "" = off.
    publish_limit: str = ""
    # MQTT 5.0 (EMQX's names where it has the setting; see README "MQTT 5.0 features").
    max_awaiting_rel: int = 100
    max_topic_alias: int = 65535
    outgoing_topic_alias_maximum: int = 128
    max_qos_allowed: int = 2
    wildcard_subscription_available: bool = True
    shared_subscription_available: bool = True
    subscription_identifier_available: bool = True
    server_keepalive: int = 0
    response_information: str = ""
    #: SCRAM-SHA-256 users for enhanced authentication: user name -> stored credential.
    scram_credentials: dict[str, str] = field(default_factory=dict)
    node_name: str = "minibroker@127.0.0.1"
    data_dir: str = "./data"
    cookie: str = "minibroker"
    tcp: ListenerConfig = field(default_factory=_tcp_default)
    ws: ListenerConfig = field(default_factory=_ws_default)
    ssl: ListenerConfig = field(default_factory=_ssl_default)
    wss: ListenerConfig = field(default_factory=_wss_default)
    management: ManagementConfig = field(default_factory=_management_default)
    cluster: ListenerConfig = field(default_factory=_cluster_default)
    cluster_join: list[str] = field(default_factory=list)
    #: Seconds between two resolutions of the `dns:NAME:PORT` entries of `cluster_join`.
    cluster_dns_refresh_interval: float = 30.0
    #: The cluster address peers dial ("host" or "host:port"); "" = the bind address (127.0.0.1
    #: for a wildcard bind) and the bound port.
    cluster_advertise: str = ""
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    #: plugin name -> its validated [plugins.<name>] table (only the keys the file sets)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def mqtt_listeners(self) -> dict[str, ListenerConfig]:
        """The MQTT listeners by the name their connections carry: tcp, ws, tls, wss."""
        return {name: getattr(self, section) for section, name in LISTENER_NAMES.items()}

    def listener_allow_anonymous(self) -> dict[str, bool]:
        """Listener name -> its own allow_anonymous, for the listeners that set one."""
        return {
            name: listener.allow_anonymous
            for name, listener in self.mqtt_listeners().items()
            if listener.allow_anonymous is not None
        }

    def listener_password_files(self) -> dict[str, str]:
        """Listener name -> its own password file, for the listeners that set one."""
        return {
            name: listener.password_file
            for name, listener in self.mqtt_listeners().items()
            if listener.password_file
        }


# --------------------------------------------------------------------------- value checks
# A check takes the raw TOML value and a description of where it came from ("'port' in
# [listener.tcp]") and returns the converted value or raises a message without the file prefix.

_Check = Callable[[object, str], Any]
_IntCheck = Callable[[object, str], int]


class _Invalid(Exception):
    """Internal: a value check failed; the caller adds the file name."""


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return f"{_toml_type(value)} {value!r}"


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"{where} must be true or false, got {_show(value)}")
    return value


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{where} must be an integer, got {_show(value)}")
    return value


def _int_range(lo: int, hi: int | None, why: str = "") -> _IntCheck:
    def check(value: object, where: str) -> int:
        n = _int(value, where)
        if n < lo or (hi is not None and n > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise _Invalid(f"{where} must be {bound}, got {n}{why}")
        return n

    return check


def _inflight(value: object, where: str) -> int:
    n = _int_range(0, UNLIMITED_INFLIGHT)(value, where)
    return UNLIMITED_INFLIGHT if n == 0 else n  # mosquitto: 0 means "no limit"


def _queued(value: object, where: str) -> int:
    n = _int(value, where)
    if n < 1:
        raise _Invalid(
            f"{where} must be >= 1, got {n}: queues are bounded so that one offline client "
            "cannot exhaust the broker's memory (unlike mosquitto, 0 = unlimited is not allowed)"
        )
    return n


def _seconds(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{where} must be a number of seconds, got {_show(value)}")
    if not math.isfinite(value) or value < 0:
        raise _Invalid(f"{where} must be >= 0 seconds (0 disables it), got {value}")
    return float(value)


def _fraction(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{where} must be a number, got {_show(value)}")
    if not math.isfinite(value) or not 0 < value <= 1:
        raise _Invalid(f"{where} must be a fraction above 0 and at most 1 (0.7 = 70%), got {value}")
    return float(value)


def _positive(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{where} must be a number, got {_show(value)}")
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(f"{where} must be a number above 0, got {value}")
    return float(value)


def _rate(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{where} must be a number per second, got {_show(value)}")
    if not math.isfinite(value) or value < 0:
        raise _Invalid(f"{where} must be >= 0 per second (0 = unlimited), got {value}")
    return float(value)


_PUBLISH_LIMIT_RE = re.compile(r"^\s*(\d+)\s*,\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_publish_limit(text: str) -> tuple[float, float] | None:
    """EMQX's `publish_limit`: "N,Ss" (also "N,S", "N,Ms"/"N,Mm") or "N" per second ->
    (messages per second, burst); "" or "0" -> None (off). Raises ValueError."""
    text = text.strip()
    if not text or text == "0":
        return None
    if text.isdigit():
        return float(text), float(text)
    match = _PUBLISH_LIMIT_RE.match(text)
    if match is None:
        raise ValueError(f'expected "N,seconds" such as "100,10s" or N per second, got {text!r}')
    count, span, unit = int(match[1]), float(match[2]), match[3] or "s"
    seconds = span / 1000 if unit == "ms" else span * 60 if unit == "m" else span
    if count <= 0 or seconds <= 0:
        raise ValueError(f"publish_limit needs a count and a time above 0, got {text!r}")
    return count / seconds, float(count)


def _publish_limit(value: object, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else ""
    if not isinstance(value, str):
        raise _Invalid(f'{where} must be "N,seconds" or a number per second, got {_show(value)}')
    try:
        parse_publish_limit(value)
    except ValueError as exc:
        raise _Invalid(f"{where}: {exc}") from None
    return value


def _tls_version(value: object, where: str) -> str:
    s = _str(value, where)
    if s not in ("tlsv1.2", "tlsv1.3"):
        raise _Invalid(f'{where} must be "tlsv1.2" or "tlsv1.3" (the minimum), got {s!r}')
    return s


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{where} must be a string, got {_show(value)}")
    return value


def _nonempty_str(value: object, where: str) -> str:
    s = _str(value, where)
    if not s.strip():
        raise _Invalid(f"{where} must not be empty")
    return s


def _node_name(value: object, where: str) -> str:
    s = _nonempty_str(value, where)
    if any(c.isspace() for c in s) or len(s) > 255:
        raise _Invalid(f"{where} must be at most 255 characters without spaces, got {s!r}")
    return s


def _bind(value: object, where: str) -> str:
    s = _str(value, where)
    if not s or any(c.isspace() for c in s):
        raise _Invalid(
            f"{where} must be an address or host name without spaces "
            f'(use "0.0.0.0" or "::" for all interfaces), got {s!r}'
        )
    return s


def _port(value: object, where: str) -> int:
    return _int_range(0, 65535, " (0 picks a free port)")(value, where)


def _ws_path(value: object, where: str) -> str:
    s = _str(value, where)
    if not s.startswith("/") or any(c.isspace() for c in s):
        raise _Invalid(f"{where} must be a URL path starting with '/', got {s!r}")
    return s


def _http_url(value: object, where: str) -> str:
    s = _str(value, where)
    if not re.match(r"^https?://[^\s/]+", s) or any(c.isspace() for c in s):
        raise _Invalid(f"{where} must be an http:// or https:// URL, got {s!r}")
    return s


def _web_hook_events(value: object, where: str) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(f"{where} must be an array of event names, got {_show(value)}")
    for item in value:
        if item not in WEB_HOOK_EVENTS:
            raise _Invalid(
                f"{where} entries must be among {', '.join(WEB_HOOK_EVENTS)}, got {_show(item)}"
            )
    return list(value)


def _payload_encoding(value: object, where: str) -> str:
    s = _str(value, where)
    if s not in ("plain", "base64"):
        raise _Invalid(f'{where} must be "plain" or "base64", got {s!r}')
    return s


def _strategy(value: object, where: str) -> str:
    s = _str(value, where)
    if s not in SHARED_SUBSCRIPTION_STRATEGIES:
        raise _Invalid(
            f"{where} must be one of {', '.join(SHARED_SUBSCRIPTION_STRATEGIES)}, got {s!r}"
        )
    return s


def _scram_credentials(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(
            f"{where} must be a table of user name = stored credential, got {_show(value)}"
        )
    out: dict[str, str] = {}
    for user, entry in value.items():
        if not isinstance(entry, str):
            raise _Invalid(f"{where}: the entry of {user!r} must be a string, got {_show(entry)}")
        try:
            parse_scram_credential(entry)
        except ValueError as exc:
            raise _Invalid(
                f"{where}: the entry of {user!r} is not a SCRAM-SHA-256 credential ({exc}); "
                "make one with: python -m broker.core.enhanced_auth USERNAME"
            ) from None
        out[user] = entry
    return out


def _advertise(value: object, where: str) -> str:
    """`host`, `host:port` or `[ipv6]:port` (no port: the bound cluster port)."""
    text = _str(value, where).strip()
    if not text:
        return ""
    try:
        validate_host_port(text if _has_port(text) else f"{_bracket(text)}:1")
    except ConfigError as exc:
        raise _Invalid(f"{where}: {exc}") from None
    return text


def _has_port(text: str) -> bool:
    return text.startswith("[") or (text.count(":") == 1)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _join_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(f'{where} must be an array of "host:port" strings, got {_show(value)}')
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f'{where} entries must be "host:port" strings, got {_show(item)}')
        text = item.strip()
        try:
            # "dns:NAME:PORT": every A/AAAA record of NAME, re-resolved (cluster discovery)
            validate_host_port(text[4:] if text.startswith("dns:") else text)
        except ConfigError as exc:
            raise _Invalid(f"{where}: {exc}") from None
        out.append(item.strip())
    return out


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def validate_host_port(s: str) -> tuple[str, int]:
    """Parse a peer address ``host:port`` or ``[ipv6]:port``; port must be 1..65535.

    Returned host has no brackets, ready for ``asyncio.open_connection``.
    """
    text = s.strip()
    usage = f"{s!r} is not a valid peer address: expected HOST:PORT or [IPv6]:PORT"
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(usage)
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{usage} ({host!r} is not an IPv6 address)") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(usage)
        if ":" in host:
            raise ConfigError(f"{usage} (put IPv6 addresses in brackets: [{host}]:{port_text})")
        if not _HOSTNAME_RE.match(host):
            raise ConfigError(f"{usage} ({host!r} is not a host name or address)")
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigError(f"{usage} (port {port_text!r} is not a number)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{usage} (port must be between 1 and 65535, got {port})")
    return host, port


# --------------------------------------------------------------------------- schema
# TOML key -> (BrokerConfig / ListenerConfig attribute, check).

_Schema = Mapping[str, tuple[str, _Check]]

_TOP: _Schema = {
    "allow_anonymous": ("allow_anonymous", _bool),
    "password_file": ("password_file", _str),
    "acl_file": ("acl_file", _str),
    "max_inflight_messages": ("max_inflight_messages", _inflight),
    "max_queued_messages": ("max_queued_messages", _queued),
    "max_packet_size": ("max_packet_size", _int_range(1, MAX_PACKET_SIZE_LIMIT)),
    "max_keepalive": ("max_keepalive", _int_range(0, 65535)),
    "sys_interval": ("sys_interval", _seconds),
    "persistence": ("persistence", _bool),
    "persistence_interval": ("persistence_interval", _int_range(10, 3_600_000, " (milliseconds)")),
    "session_expiry_interval": ("session_expiry_interval", _int_range(0, MAX_SESSION_EXPIRY)),
    "retain_available": ("retain_available", _bool),
    "max_connections": ("max_connections", _int_range(0, None, " (0 = unlimited)")),
    "shared_subscription_strategy": ("shared_subscription_strategy", _strategy),
    "max_outgoing_buffer": ("max_outgoing_buffer", _int_range(1, None)),
    "max_queued_bytes": ("max_queued_bytes", _int_range(0, None, " (0 = unlimited)")),
    "max_topic_levels": ("max_topic_levels", _int_range(0, None, " (0 = unlimited)")),
    "max_topic_length": ("max_topic_length", _int_range(0, 65535, " (0 = unlimited)")),
    "max_subscriptions": ("max_subscriptions", _int_range(0, None, " (0 = unlimited)")),
    "publish_limit": ("publish_limit", _publish_limit),
    "max_awaiting_rel": ("max_awaiting_rel", _int_range(1, 65535, " (the Receive Maximum)")),
    "max_topic_alias": ("max_topic_alias", _int_range(0, 65535, " (0 = no topic aliases)")),
    "outgoing_topic_alias_maximum": ("outgoing_topic_alias_maximum", _int_range(0, 65535)),
    "max_qos_allowed": ("max_qos_allowed", _int_range(0, 2)),
    "wildcard_subscription_available": ("wildcard_subscription_available", _bool),
    "shared_subscription_available": ("shared_subscription_available", _bool),
    "subscription_identifier_available": ("subscription_identifier_available", _bool),
    "server_keepalive": ("server_keepalive", _int_range(0, 65535, " (0 = the client's)")),
    "response_information": ("response_information", _str),
    "scram_credentials": ("scram_credentials", _scram_credentials),
}

_NODE: _Schema = {
    "name": ("node_name", _node_name),
    "data_dir": ("data_dir", _nonempty_str),
    "cookie": ("cookie", _nonempty_str),
}

_LISTENER: _Schema = {
    "bind": ("bind", _bind),
    "port": ("port", _port),
    "enabled": ("enabled", _bool),
}

_MQTT_LISTENER: _Schema = {
    **_LISTENER,
    "max_connections": ("max_connections", _int_range(0, None, " (0 = no per-listener limit)")),
    "max_connection_rate": ("max_connection_rate", _rate),
    "allow_anonymous": ("allow_anonymous", _bool),
    "password_file": ("password_file", _nonempty_str),
}

_WS_LISTENER: _Schema = {**_MQTT_LISTENER, "path": ("path", _ws_path)}

_SSL_LISTENER: _Schema = {
    **_MQTT_LISTENER,
    "certfile": ("certfile", _str),
    "keyfile": ("keyfile", _str),
    "cafile": ("cafile", _str),
    "require_certificate": ("require_certificate", _bool),
    "use_identity_as_username": ("use_identity_as_username", _bool),
    "tls_version": ("tls_version", _tls_version),
}

_WSS_LISTENER: _Schema = {**_SSL_LISTENER, "path": ("path", _ws_path)}

_CLUSTER: _Schema = {
    **_LISTENER,
    "join": ("join", _join_list),
    "advertise": ("advertise", _advertise),
    "dns_refresh_interval": ("dns_refresh_interval", _positive),
}

_APP: _Schema = {
    "id": ("id", _nonempty_str),
    "secret": ("secret", _nonempty_str),
    "name": ("name", _str),
    "desc": ("desc", _str),
    "status": ("status", _bool),
    "expired": ("expired", _int_range(0, None, " (Unix seconds)")),
}


def _apps(value: object, where: str) -> list[ManagementApp]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _Invalid(
            f"{where} must be an array of tables [[management.apps]], got {_show(value)}"
        )
    apps: list[ManagementApp] = []
    for item in value:
        fields: dict[str, Any] = {}
        for key, raw in item.items():
            if key not in _APP:
                raise _Invalid(f"unknown key '{key}' in [[management.apps]]{_suggest(key, _APP)}")
            fields[key] = _APP[key][1](raw, f"'{key}' in [[management.apps]]")
        missing = [key for key in ("id", "secret") if key not in fields]
        if missing:
            raise _Invalid(f"[[management.apps]] needs {' and '.join(repr(k) for k in missing)}")
        if any(app.id == fields["id"] for app in apps):
            raise _Invalid(f"[[management.apps]] defines app {fields['id']!r} twice")
        apps.append(ManagementApp(**fields))
    return apps


_MANAGEMENT: _Schema = {
    **_LISTENER,
    "max_row_limit": ("max_row_limit", _int_range(1, None)),
    "metrics_auth": ("metrics_auth", _bool),
    "default_app": ("default_app", _bool),
    "dashboard": ("dashboard", _bool),
    "max_body_size": ("max_body_size", _int_range(1024, None)),
    "apps": ("apps", _apps),
}

_ALARMS: _Schema = {
    "sysmem_high_watermark": ("sysmem_high_watermark", _fraction),
    "procmem_high_watermark": ("procmem_high_watermark", _fraction),
    "cpu_high_watermark": ("cpu_high_watermark", _positive),
    "connections_high_watermark": ("connections_high_watermark", _int_range(0, None, " (0 = off)")),
    "check_interval": ("check_interval", _seconds),
}

_PLUGIN_ENABLED: _Schema = {"enabled": ("enabled", _bool)}
_FILE_PLUGIN: _Schema = {**_PLUGIN_ENABLED, "file": ("file", _nonempty_str)}

#: The keys of each built-in plugin's [plugins.<name>] table. A table for another name is kept
#: as is (only `enabled` checked here); the plugin manager checks it against that plugin's keys.
PLUGIN_SCHEMAS: dict[str, _Schema] = {
    "auth_passwd": _FILE_PLUGIN,
    "acl_file": _FILE_PLUGIN,
    "delayed_publish": {**_PLUGIN_ENABLED, "max_pending": ("max_pending", _int_range(1, None))},
    "web_hook": {
        **_PLUGIN_ENABLED,
        "url": ("url", _http_url),
        "events": ("events", _web_hook_events),
        "queue_size": ("queue_size", _int_range(1, None)),
        "max_retries": ("max_retries", _int_range(0, 100)),
        "retry_backoff": ("retry_backoff", _seconds),
        "timeout": ("timeout", _positive),
        "encode_payload": ("encode_payload", _payload_encoding),
    },
    "presence": {**_PLUGIN_ENABLED, "qos": ("qos", _int_range(0, 2))},
    # credentials come from the REST API (replicated tables), not from the config
    "auth_clientid": _PLUGIN_ENABLED,
    "auth_username": _PLUGIN_ENABLED,
}

# Every table the file may contain, by its dotted name.
_SECTIONS = (
    "node",
    "listener",
    "listener.tcp",
    "listener.ws",
    "listener.ssl",
    "listener.wss",
    "management",
    "management.apps",
    "cluster",
    "alarms",
    "plugins",
    *(f"plugins.{name}" for name in PLUGIN_SCHEMAS),
)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _suggest_section(name: str) -> str:
    close = difflib.get_close_matches(name, _SECTIONS, n=1, cutoff=0.6)
    return f" (did you mean [{close[0]}]?)" if close else ""


class _Loader:
    """Walks the parsed TOML document and fills a BrokerConfig, failing on the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {message}")

    def table(self, doc: Mapping[str, object], key: str, section: str) -> dict[str, object]:
        value = doc[key]
        if not isinstance(value, dict):
            full = key if section == "top level" else f"{section}.{key}"
            raise self.fail(f"'{key}' in [{section}] must be a table [{full}], got {_show(value)}")
        return value

    def fill(self, values: Mapping[str, object], schema: _Schema, section: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key not in schema:
                raise self.fail(f"unknown key '{key}' in [{section}]{_suggest(key, schema)}")
            attr, check = schema[key]
            try:
                out[attr] = check(value, f"'{key}' in [{section}]")
            except _Invalid as exc:
                raise self.fail(str(exc)) from None
        return out

    def listener(
        self, values: Mapping[str, object], schema: _Schema, section: str, default: ListenerConfig
    ) -> ListenerConfig:
        return dataclasses.replace(default, **self.fill(values, schema, section))

    def load(self, doc: dict[str, object]) -> BrokerConfig:
        cfg = BrokerConfig()
        top: dict[str, object] = {}
        for key, value in doc.items():
            if key in _TOP:
                top[key] = value
            elif key == "node":
                for attr, v in self.fill(self.table(doc, key, "top level"), _NODE, "node").items():
                    setattr(cfg, attr, v)
            elif key == "listener":
                self.listeners(cfg, self.table(doc, key, "top level"))
            elif key == "management":
                values = self.table(doc, key, "top level")
                cfg.management = dataclasses.replace(
                    cfg.management, **self.fill(values, _MANAGEMENT, key)
                )
            elif key == "cluster":
                fields = self.fill(self.table(doc, key, "top level"), _CLUSTER, key)
                if "join" in fields:
                    cfg.cluster_join = fields.pop("join")
                if "advertise" in fields:
                    cfg.cluster_advertise = fields.pop("advertise")
                if "dns_refresh_interval" in fields:
                    cfg.cluster_dns_refresh_interval = fields.pop("dns_refresh_interval")
                cfg.cluster = dataclasses.replace(cfg.cluster, **fields)
            elif key == "alarms":
                values = self.table(doc, key, "top level")
                cfg.alarms = dataclasses.replace(cfg.alarms, **self.fill(values, _ALARMS, key))
            elif key == "plugins":
                self.plugins(cfg, self.table(doc, key, "top level"))
            elif isinstance(value, dict):
                raise self.fail(f"unknown section [{key}]{_suggest_section(key)}")
            else:
                raise self.fail(f"unknown key '{key}' in [top level]{_suggest(key, _TOP)}")
        for attr, v in self.fill(top, _TOP, "top level").items():
            setattr(cfg, attr, v)
        for name, top_key in (("auth_passwd", "password_file"), ("acl_file", "acl_file")):
            file = cfg.plugins.get(name, {}).get("file")
            if file and getattr(cfg, top_key) and file != getattr(cfg, top_key):
                raise self.fail(
                    f"'{top_key}' at the top level and 'file' in [plugins.{name}] name different "
                    "files; set only one of them"
                )
        return cfg

    def plugins(self, cfg: BrokerConfig, tables: dict[str, object]) -> None:
        for name in tables:
            section = f"plugins.{name}"
            values = self.table(tables, name, "plugins")
            schema = PLUGIN_SCHEMAS.get(name)
            if schema is None:  # not a built-in: its own keys are checked when it loads
                checked = self.fill({k: v for k, v in values.items() if k == "enabled"},
                                    _PLUGIN_ENABLED, section)  # fmt: skip
                cfg.plugins[name] = {**values, **checked}
                continue
            fields = self.fill(values, schema, section)
            if name == "web_hook" and fields.get("enabled") and "url" not in fields:
                raise self.fail(f"'url' in [{section}] is required when the plugin is enabled")
            cfg.plugins[name] = fields

    def listeners(self, cfg: BrokerConfig, tables: dict[str, object]) -> None:
        for kind in tables:
            section = f"listener.{kind}"
            if kind not in ("tcp", "ws", "ssl", "wss"):
                raise self.fail(f"unknown section [{section}]{_suggest_section(section)}")
            values = self.table(tables, kind, "listener")
            if kind == "tcp":
                cfg.tcp = self.listener(values, _MQTT_LISTENER, section, cfg.tcp)
            elif kind == "ws":
                cfg.ws = self.listener(values, _WS_LISTENER, section, cfg.ws)
            else:
                schema = _SSL_LISTENER if kind == "ssl" else _WSS_LISTENER
                tls = self.listener(values, schema, section, getattr(cfg, kind))
                self.check_tls(tls, section)
                setattr(cfg, kind, tls)

    def check_tls(self, tls: ListenerConfig, section: str) -> None:
        if tls.enabled and not (tls.certfile and tls.keyfile):
            raise self.fail(f"[{section}] is enabled: set 'certfile' and 'keyfile'")
        if tls.require_certificate and not tls.cafile:
            raise self.fail(f"'require_certificate' in [{section}] needs 'cafile'")
        if tls.use_identity_as_username and not tls.require_certificate:
            raise self.fail(
                f"'use_identity_as_username' in [{section}] needs 'require_certificate = true'"
            )


#: Keys the loader knows (they keep their mosquitto meaning) whose feature has not landed yet.
#: Refusing them beats silently running without the authentication or durability they ask for.
NOT_YET_IMPLEMENTED: dict[str, str] = {}


def check_implemented(cfg: BrokerConfig) -> None:
    """Raise ConfigError for a setting whose feature this version does not have yet."""
    for key, feature in NOT_YET_IMPLEMENTED.items():
        if getattr(cfg, key):
            raise ConfigError(f"{key!r}: {feature} is not implemented in this version yet")


def parse_config(text: str, source: str = "<string>") -> BrokerConfig:
    """Parse and validate TOML text; ``source`` names the file in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return _Loader(source).load(doc)


def load_config(path: str | os.PathLike[str] | None) -> BrokerConfig:
    """Read one TOML file; ``None`` means "no file": built-in defaults."""
    if path is None:
        return BrokerConfig()
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read configuration: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 at byte {exc.start}") from None
    return parse_config(text, source)


def _override(check: _Check, value: object, flag: str) -> Any:
    try:
        return check(value, flag)
    except _Invalid as exc:
        raise ConfigError(f"command line: {exc}") from None


def apply_overrides(
    cfg: BrokerConfig,
    *,
    node_name: str | None = None,
    host: str | None = None,
    mqtt_port: int | None = None,
    ws_port: int | None = None,
    http_port: int | None = None,
    cluster_port: int | None = None,
    join: Iterable[str] | None = None,
    data_dir: str | None = None,
    advertise: str | None = None,
) -> BrokerConfig:
    """Return a copy of ``cfg`` with command-line values applied (flags win over the file).

    ``host`` sets the bind address of every listener; ``join`` replaces the file's list.
    The input config is not modified.
    """
    out = dataclasses.replace(
        cfg,
        tcp=dataclasses.replace(cfg.tcp),
        ws=dataclasses.replace(cfg.ws),
        ssl=dataclasses.replace(cfg.ssl),
        wss=dataclasses.replace(cfg.wss),
        management=dataclasses.replace(cfg.management, apps=list(cfg.management.apps)),
        cluster=dataclasses.replace(cfg.cluster),
        cluster_join=list(cfg.cluster_join),
        alarms=dataclasses.replace(cfg.alarms),
        plugins={name: dict(table) for name, table in cfg.plugins.items()},
        scram_credentials=dict(cfg.scram_credentials),
    )
    if node_name is not None:
        out.node_name = _override(_node_name, node_name, "--node-name")
    if data_dir is not None:
        out.data_dir = _override(_nonempty_str, data_dir, "--data-dir")
    if host is not None:
        bind = _override(_bind, host, "--host")
        for listener in (out.tcp, out.ws, out.ssl, out.wss, out.management, out.cluster):
            listener.bind = bind
    ports = (
        (mqtt_port, out.tcp, "--mqtt-port"),
        (ws_port, out.ws, "--ws-port"),
        (http_port, out.management, "--http-port"),
        (cluster_port, out.cluster, "--cluster-port"),
    )
    for port, listener, flag in ports:
        if port is not None:
            listener.port = _override(_port, port, flag)
    if join is not None:
        out.cluster_join = _override(_join_list, list(join), "--join")
    if advertise is not None:
        out.cluster_advertise = _override(_advertise, advertise, "--advertise")
    return out
