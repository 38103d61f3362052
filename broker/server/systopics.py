"""`$SYS/broker/...` topics, named and formatted as mosquitto publishes them.

They are retained, so a client subscribing to `$SYS/#` gets the latest figures at once, and
republished every `sys_interval` seconds. Filters starting with a wildcard never match them
(MQTT-4.7.2-1): a client must ask for `$SYS/...` explicitly.

The figures are read in two steps, `sys_counts` (this process's numbers) and `format_figures`
(topic -> payload), so that the workers of `start --workers N`, which are one node, can publish
node-wide figures: one worker gathers every worker's counts, adds them up (`merge_counts`) and
hands the same figures to each worker to publish (`management.workers_sys`).
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.core.broker import Broker
from broker.core.message import Message

#: Counts that are the same on every worker (each holds every retained message) or that are
#: not sums: `merge_counts` takes them from the first answer or as the largest.
_FIRST = frozenset({"retained"})
_LARGEST = frozenset({"uptime", "maximum"})


def sys_counts(broker: Broker, now: float) -> dict[str, int]:
    """This process's numbers behind the `$SYS/broker` figures at `now`."""
    counters = broker.metrics.counters
    return {
        "uptime": int(now - broker.started_at),
        "connected": len(broker.connected),
        "sessions": len(broker.sessions),
        "maximum": int(broker.stats.values["connections/max"]),
        "packets_received": counters["packets/received"],
        "packets_sent": counters["packets/sent"],
        "stored": sum(len(s.queue) + len(s.inflight) for s in broker.sessions.values()),
        "messages_received": counters["messages/received"],
        "messages_sent": counters["messages/sent"],
        "messages_dropped": counters["messages/dropped"],
        "bytes_received": counters["bytes/received"],
        "bytes_sent": counters["bytes/sent"],
        "subscriptions": len(broker.router),
        "shared": broker.shared_count,
        "retained": len(broker.retained),
        **{f"limits/{name}": int(n) for name, n in broker.limits.items()},
    }


def merge_counts(answers: Iterable[dict[str, int]]) -> dict[str, int]:
    """The counts of one node from those of its workers (the first answer first): sums, but
    the retained count of one (they all hold the same) and the largest uptime. `maximum` is
    the largest of the workers' maxima and of the node's connected clients now (the workers'
    peaks need not have been at the same time, so their sum would overstate it)."""
    merged: dict[str, int] = {}
    for counts in answers:
        for key, value in counts.items():
            have = merged.get(key)
            if have is None:
                merged[key] = value
            elif key in _LARGEST:
                merged[key] = max(have, value)
            elif key not in _FIRST:
                merged[key] = have + value
    if "maximum" in merged:
        merged["maximum"] = max(merged["maximum"], merged.get("connected", 0))
    return merged


def format_figures(counts: dict[str, int], version: str) -> dict[str, str]:
    """Topic -> payload of every `$SYS/broker` figure from `counts` (see `sys_counts`)."""
    connected = counts["connected"]
    sessions = counts["sessions"]
    stored = counts["stored"]
    limits = {k[len("limits/") :]: n for k, n in counts.items() if k.startswith("limits/")}
    return {
        "$SYS/broker/version": f"minibroker version {version}",
        "$SYS/broker/uptime": f"{counts['uptime']} seconds",
        "$SYS/broker/clients/connected": str(connected),
        "$SYS/broker/clients/active": str(connected),
        "$SYS/broker/clients/disconnected": str(sessions - connected),
        "$SYS/broker/clients/inactive": str(sessions - connected),
        "$SYS/broker/clients/total": str(sessions),
        "$SYS/broker/clients/maximum": str(counts["maximum"]),
        "$SYS/broker/messages/received": str(counts["packets_received"]),
        "$SYS/broker/messages/sent": str(counts["packets_sent"]),
        "$SYS/broker/messages/stored": str(stored),
        "$SYS/broker/store/messages/count": str(stored),
        "$SYS/broker/publish/messages/received": str(counts["messages_received"]),
        "$SYS/broker/publish/messages/sent": str(counts["messages_sent"]),
        "$SYS/broker/publish/messages/dropped": str(counts["messages_dropped"]),
        "$SYS/broker/publish/bytes/received": str(counts["bytes_received"]),
        "$SYS/broker/publish/bytes/sent": str(counts["bytes_sent"]),
        "$SYS/broker/bytes/received": str(counts["bytes_received"]),
        "$SYS/broker/bytes/sent": str(counts["bytes_sent"]),
        "$SYS/broker/subscriptions/count": str(counts["subscriptions"]),
        "$SYS/broker/shared_subscriptions/count": str(counts["shared"]),
        "$SYS/broker/retained messages/count": str(counts["retained"]),
        # What happened at each configured limit (broker.core.metrics.LIMIT_NAMES).
        **{f"$SYS/broker/limits/{name}": str(n) for name, n in limits.items()},
    }


def sys_figures(broker: Broker, version: str, now: float) -> dict[str, str]:
    """Topic -> payload of every `$SYS/broker` figure of this process at `now`."""
    return format_figures(sys_counts(broker, now), version)


def publish_figures(broker: Broker, figures: dict[str, str], now: float) -> int:
    """Publish `figures` as retained QoS 0 messages here (never forwarded: `$SYS` topics are
    each node's own); returns how many were published."""
    for topic, payload in figures.items():
        broker.publish(
            Message(topic, payload.encode(), 0, True, None, "", now, broker.node_name),
            forward=False,
        )
    return len(figures)


def publish_sys(broker: Broker, version: str, now: float) -> int:
    """Publish every figure of this process; returns how many were published."""
    return publish_figures(broker, sys_figures(broker, version, now), now)
