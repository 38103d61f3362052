"""Prometheus exposition of the broker's counters and gauges (`GET /metrics`).

Names: `minibroker_<metric with '/' -> '_'>_total` counters for the 43 metrics and
`minibroker_<stat with '/' -> '_'>` gauges for the 18 stats, each labelled `node`, and
`minibroker_cluster_<counter>_total` for each counter of the cluster runtime (e.g.
`minibroker_cluster_forward_held_dropped_total`: QoS 1/2 forwards held for a peer and dropped,
as when its `dead_hold` grace ends; EMQX's metrics have no name for it; and
`minibroker_cluster_takeover_*_total` for the session locator's, e.g. `..._apart_folded_total`:
copies folded in at a heal). The node exposes its
own figures, as every node is scraped on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.core.metrics import METRIC_NAMES, STAT_NAMES
from management.view import ClusterView

PREFIX = "minibroker_"


def metric_name(name: str) -> str:
    return PREFIX + name.replace("/", "_")


def cluster_metric_name(name: str) -> str:
    """`forward/held_dropped/peer_gone` -> `minibroker_cluster_forward_held_dropped_peer_gone`."""
    return PREFIX + "cluster_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


#: (node, metrics, stats) as the `metrics` and `stats` queries answer them.
NodeFigures = tuple[str, dict[str, int], dict[str, int]]


class BrokerCollector(Collector):
    """Yields one family per metric/stat with a sample per node, then the cluster counters."""

    def __init__(
        self, figures: list[NodeFigures], cluster: dict[str, dict[str, int]] | None = None
    ) -> None:
        self.figures = figures
        self.cluster = cluster or {}  # node -> the `cluster_counters` query's answer

    def collect(self) -> Iterator[Metric]:
        for name in METRIC_NAMES:
            counter = CounterMetricFamily(
                metric_name(name),
                f"EMQX metric {name}: counted since the node started",
                labels=["node"],
            )
            for node, metrics, _stats in self.figures:
                counter.add_metric([node], metrics.get(name, 0))
            yield counter
        for name in STAT_NAMES:
            gauge = GaugeMetricFamily(metric_name(name), f"EMQX stat {name}", labels=["node"])
            for node, _metrics, stats in self.figures:
                gauge.add_metric([node], stats.get(name, 0))
            yield gauge
        for name in sorted({name for counters in self.cluster.values() for name in counters}):
            counter = CounterMetricFamily(
                cluster_metric_name(name),
                f"cluster counter {name}: counted since the node started",
                labels=["node"],
            )
            for node, counters in self.cluster.items():
                counter.add_metric([node], counters.get(name, 0))
            yield counter


async def exposition(view: ClusterView) -> tuple[bytes, str]:
    """The text exposition of the local node's figures, and its content type."""
    node = view.local_node
    metrics = await view.call(node, "metrics", {})
    stats = await view.call(node, "stats", {})
    cluster = await view.call(node, "cluster_counters", {})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector([(node, metrics, stats)], {node: cluster}))
    return generate_latest(registry), CONTENT_TYPE_LATEST
