"""The settings the core acts on, each declared once (see `broker.core.schema`).

`CoreOptions` holds the configuration-file settings the core reads, with their TOML names,
defaults, ranges and docs; the server's `BrokerConfig` extends it with the settings of the
edges, and its loader validates both from these declarations. `Settings` is what a `Broker`
is given: the options plus what the server derives for the core (per-listener overrides) and
the parsed form of `publish_limit`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from broker.core.schema import setting

__all__ = [
    "MAX_PACKET_SIZE_LIMIT",
    "MAX_SESSION_EXPIRY",
    "SHARED_SUBSCRIPTION_STRATEGIES",
    "UNLIMITED_INFLIGHT",
    "CoreOptions",
    "Settings",
    "parse_publish_limit",
]

MAX_PACKET_SIZE_LIMIT = 268_435_460  # largest MQTT packet: 1 + 4-byte varint + 268435455
MAX_SESSION_EXPIRY = 0xFFFF_FFFF  # MQTT 5 Session Expiry Interval is a four-byte integer
UNLIMITED_INFLIGHT = 65535  # MQTT 5 Receive Maximum upper bound; mosquitto's "0 = unlimited"
SHARED_SUBSCRIPTION_STRATEGIES = ("round_robin", "random", "hash_clientid", "hash_topic")
_U16 = 65535


@dataclass(slots=True)
class CoreOptions:
    """The file's settings the core acts on (top level, and `[node] name`)."""

    node_name: str = setting(
        "minibroker@127.0.0.1", section="node", key="name", kind="node_name",
        doc="node name, name@host; unique in a cluster",
    )  # fmt: skip
    allow_anonymous: bool = setting(True, doc="false: clients without a username are refused")
    max_inflight_messages: int = setting(
        32, lo=0, hi=UNLIMITED_INFLIGHT, kind="inflight", note="0 = 65535",
        doc="QoS 1/2 messages in flight to one client",
    )  # fmt: skip
    max_queued_messages: int = setting(
        1000, lo=1, kind="queued",
        doc="per-session queue beyond the inflight window; overflow dropped and counted",
    )  # fmt: skip
    max_packet_size: int = setting(
        1_048_576, lo=1, hi=MAX_PACKET_SIZE_LIMIT,
        doc="bytes; checked on the fixed header, before the body is buffered",
    )  # fmt: skip
    max_keepalive: int = setting(
        _U16, lo=0, hi=_U16,
        doc="5.0 clients are told (Server Keep Alive); 3.x clients asking more are refused",
    )  # fmt: skip
    session_expiry_interval: int = setting(
        7200, lo=0, hi=MAX_SESSION_EXPIRY,
        doc="seconds an abandoned persistent session is kept (caps 5.0 clients too)",
    )  # fmt: skip
    retain_available: bool = setting(True, doc="false: a retained PUBLISH is refused")
    retained_tombstone_ttl: int = setting(
        86_400, lo=1,
        doc="seconds the clear of a retained topic is remembered (and persisted), so that a "
        "node back with the old value cannot revive it; a node away longer should start empty",
    )  # fmt: skip
    max_connections: int = setting(
        0, lo=0, note="0 = unlimited", doc="clients connected at once; more are closed at accept"
    )
    shared_subscription_strategy: str = setting(
        "round_robin", choices=SHARED_SUBSCRIPTION_STRATEGIES,
        doc="how a shared subscription's group picks the member that gets a message",
    )  # fmt: skip
    max_outgoing_buffer: int = setting(
        8 * 1024 * 1024, lo=1,
        doc="bytes queued to one slow client before its QoS 0 messages are dropped",
    )  # fmt: skip
    max_queued_bytes: int = setting(
        0, lo=0, note="0 = unlimited", doc="payload bytes queued per session"
    )
    max_topic_levels: int = setting(
        128, lo=0, note="0 = unlimited", doc="levels of a topic or filter (EMQX's default)"
    )
    max_topic_length: int = setting(
        _U16, lo=0, hi=_U16, note="0 = unlimited", doc="UTF-8 bytes of a topic or filter"
    )
    max_subscriptions: int = setting(0, lo=0, note="0 = unlimited", doc="subscriptions per client")
    publish_limit: str = setting(
        "", kind="publish_limit",
        doc='PUBLISH rate per client, EMQX syntax "100,10s" or N per second; "" = off',
    )  # fmt: skip
    max_awaiting_rel: int = setting(
        100, lo=1, hi=_U16, note="the Receive Maximum",
        doc="unacknowledged incoming QoS 2 PUBLISH per client (5.0 Receive Maximum)",
    )  # fmt: skip
    max_topic_alias: int = setting(
        _U16, lo=0, hi=_U16, note="0 = no topic aliases",
        doc="Topic Alias Maximum announced to 5.0 clients",
    )  # fmt: skip
    outgoing_topic_alias_maximum: int = setting(
        128, lo=0, hi=_U16, doc="topic aliases the server uses towards a client; 0 = never"
    )
    max_qos_allowed: int = setting(
        2, lo=0, hi=2, doc="highest QoS accepted and granted (announced to 5.0 clients below 2)"
    )
    wildcard_subscription_available: bool = setting(
        True, doc="false: filters with + or # are refused (announced to 5.0 clients)"
    )
    shared_subscription_available: bool = setting(
        True, doc="false: $share/ filters are refused (announced to 5.0 clients)"
    )
    subscription_identifier_available: bool = setting(
        True, doc="false: Subscription Identifiers are refused (announced to 5.0 clients)"
    )
    server_keepalive: int = setting(
        0, lo=0, hi=_U16, note="0 = the client's",
        doc="Server Keep Alive imposed on 5.0 clients",
    )  # fmt: skip
    response_information: str = setting(
        "", doc='Response Information for 5.0 clients that request it; "" = none'
    )
    scram_credentials: dict[str, str] = setting(
        factory=dict, kind="scram", secret=True,
        doc="SCRAM-SHA-256 users: a table of user name = stored credential",
    )  # fmt: skip


@dataclass(slots=True)
class Settings(CoreOptions):
    """What a `Broker` is given: the options, plus what only the server can derive."""

    #: Per-listener overrides of allow_anonymous: listener name (tcp, ws, tls, wss) -> value.
    listener_allow_anonymous: dict[str, bool] = field(default_factory=dict)
    #: Queue QoS 0 messages for offline persistent sessions (not a file setting).
    queue_qos0_messages: bool = False
    #: `publish_limit` parsed: (messages per second, burst), or None = off.
    publish_rate: tuple[float, float] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.publish_rate = parse_publish_limit(self.publish_limit)


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
