"""Settings the core acts on. The server's config loader maps its file/CLI config onto this."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Settings:
    node_name: str = "minibroker@127.0.0.1"
    allow_anonymous: bool = True
    max_inflight_messages: int = 32
    max_queued_messages: int = 1000
    max_packet_size: int = 1_048_576
    max_keepalive: int = 65535
    session_expiry_interval: int = 7200
    retain_available: bool = True
    max_connections: int = 0
    shared_subscription_strategy: str = "round_robin"
    max_outgoing_buffer: int = 8 * 1024 * 1024
    max_awaiting_rel: int = 100
    topic_alias_maximum: int = 65535
    queue_qos0_messages: bool = False
