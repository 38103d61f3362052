"""Settings the core acts on. The server's config loader maps its file/CLI config onto this."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Settings:
    node_name: str = "minibroker@127.0.0.1"
    allow_anonymous: bool = True
    #: Per-listener overrides of allow_anonymous: listener name (tcp, ws, tls, wss) -> value.
    listener_allow_anonymous: dict[str, bool] = field(default_factory=dict)
    max_inflight_messages: int = 32
    max_queued_messages: int = 1000
    max_packet_size: int = 1_048_576
    max_keepalive: int = 65535
    session_expiry_interval: int = 7200
    retain_available: bool = True
    max_connections: int = 0
    shared_subscription_strategy: str = "round_robin"
    max_outgoing_buffer: int = 8 * 1024 * 1024
    #: Limits (0 = unlimited): payload bytes queued per session, topic levels and length,
    #: subscriptions per client, and the publish rate (messages per second, burst) or None.
    max_queued_bytes: int = 0
    max_topic_levels: int = 0
    max_topic_length: int = 0
    max_subscriptions: int = 0
    publish_limit: tuple[float, float] | None = None
    max_awaiting_rel: int = 100
    topic_alias_maximum: int = 65535
    queue_qos0_messages: bool = False
    # MQTT 5.0 capabilities announced in CONNACK and enforced (see README "MQTT 5.0 features").
    max_qos_allowed: int = 2
    wildcard_subscription_available: bool = True
    shared_subscription_available: bool = True
    subscription_identifier_available: bool = True
    #: Server Keep Alive imposed on 5.0 clients; 0 = the client's own (capped by max_keepalive).
    server_keepalive: int = 0
    #: Response Information for clients that send Request Response Information = 1; "" = none.
    response_information: str = ""
    #: Topic aliases this server uses towards a client that allows them; 0 = never.
    outgoing_topic_alias_maximum: int = 128
    #: SCRAM-SHA-256 users: user name -> stored credential (`enhanced_auth.scram_credential`).
    scram_credentials: dict[str, str] = field(default_factory=dict)
