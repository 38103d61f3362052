"""`$SYS/broker/...` topics, named and formatted as mosquitto publishes them.

They are retained, so a client subscribing to `$SYS/#` gets the latest figures at once, and
republished every `sys_interval` seconds. Filters starting with a wildcard never match them
(MQTT-4.7.2-1): a client must ask for `$SYS/...` explicitly.
"""

from __future__ import annotations

from broker.core.broker import Broker
from broker.core.message import Message


def sys_figures(broker: Broker, version: str, now: float) -> dict[str, str]:
    """Topic -> payload of every `$SYS/broker` figure at `now`."""
    counters = broker.metrics.counters
    stats = broker.stats.values
    connected = len(broker.connected)
    sessions = len(broker.sessions)
    stored = sum(len(s.queue) + len(s.inflight) for s in broker.sessions.values())
    return {
        "$SYS/broker/version": f"minibroker version {version}",
        "$SYS/broker/uptime": f"{int(now - broker.started_at)} seconds",
        "$SYS/broker/clients/connected": str(connected),
        "$SYS/broker/clients/active": str(connected),
        "$SYS/broker/clients/disconnected": str(sessions - connected),
        "$SYS/broker/clients/inactive": str(sessions - connected),
        "$SYS/broker/clients/total": str(sessions),
        "$SYS/broker/clients/maximum": str(stats["connections/max"]),
        "$SYS/broker/messages/received": str(counters["packets/received"]),
        "$SYS/broker/messages/sent": str(counters["packets/sent"]),
        "$SYS/broker/messages/stored": str(stored),
        "$SYS/broker/store/messages/count": str(stored),
        "$SYS/broker/publish/messages/received": str(counters["messages/received"]),
        "$SYS/broker/publish/messages/sent": str(counters["messages/sent"]),
        "$SYS/broker/publish/messages/dropped": str(counters["messages/dropped"]),
        "$SYS/broker/publish/bytes/received": str(counters["bytes/received"]),
        "$SYS/broker/publish/bytes/sent": str(counters["bytes/sent"]),
        "$SYS/broker/bytes/received": str(counters["bytes/received"]),
        "$SYS/broker/bytes/sent": str(counters["bytes/sent"]),
        "$SYS/broker/subscriptions/count": str(len(broker.router)),
        "$SYS/broker/shared_subscriptions/count": str(broker.shared_count),
        "$SYS/broker/retained messages/count": str(len(broker.retained)),
        # What happened at each configured limit (broker.core.metrics.LIMIT_NAMES).
        **{f"$SYS/broker/limits/{name}": str(n) for name, n in broker.limits.items()},
    }


def publish_sys(broker: Broker, version: str, now: float) -> int:
    """Publish every figure as a retained QoS 0 message; returns how many were published."""
    figures = sys_figures(broker, version, now)
    for topic, payload in figures.items():
        broker.publish(
            Message(topic, payload.encode(), 0, True, None, "", now, broker.node_name),
            forward=False,
        )
    return len(figures)
