"""`start --workers N` pieces without processes: the flag, the spec a worker gets, its config,
and how `WorkersView` merges the workers' answers into one node's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from broker.server.config import BrokerConfig
from broker.server.systopics import merge_counts
from broker.server.workers import WorkerSpec, apply_worker, joins_cluster, parse_workers
from management.workers_view import (
    WorkersView,
    _merge_listeners,
    merge_worker_answers,
    worker_member_name,
)


def test_parse_workers() -> None:
    assert parse_workers("1") == 1
    assert parse_workers("3") == 3
    assert parse_workers("auto") == (os.cpu_count() or 1)
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError):
            parse_workers(bad)


def test_spec_travels_through_the_environment() -> None:
    spec = WorkerSpec(1, 4, "/tmp/x", "c00kie", {"tcp": 1883, "ws": 8083})
    assert WorkerSpec.from_env(spec.to_env()) == spec
    assert spec.socket_path(2) == "/tmp/x/w2.sock"


def test_apply_worker(tmp_path: Path) -> None:
    first, other = BrokerConfig(), BrokerConfig()
    first.data_dir = other.data_dir = str(tmp_path)
    apply_worker(first, WorkerSpec(0, 2, "/r", "c", {"tcp": 41883}))
    apply_worker(other, WorkerSpec(1, 2, "/r", "c", {"tcp": 41883}))
    assert first.tcp.port == other.tcp.port == 41883
    assert first.management.enabled and not other.management.enabled  # worker 0 serves the API
    assert not first.cluster.enabled and not other.cluster.enabled  # no TCP cluster port
    assert first.data_dir == str(tmp_path)  # worker 0 keeps the node's data
    assert other.data_dir == str(tmp_path / "worker-1") and (tmp_path / "worker-1").is_dir()


def test_apply_worker_joining_a_cluster(tmp_path: Path) -> None:
    """`--workers 2 --join`: every worker keeps a TCP cluster listener, worker 0 on the port
    the parent chose, the others on an ephemeral one advertising the same host."""
    first, other = BrokerConfig(), BrokerConfig()
    for cfg in (first, other):
        cfg.data_dir = str(tmp_path)
        cfg.cluster_join = ["10.0.0.2:7946"]
        cfg.cluster_advertise = "10.0.0.1:17946"
    assert joins_cluster(first)
    spec = WorkerSpec(0, 2, "/r", "c", {"tcp": 41883}, cluster_port=17946)
    assert WorkerSpec.from_env(spec.to_env()) == spec
    apply_worker(first, spec)
    apply_worker(other, WorkerSpec(1, 2, "/r", "c", {"tcp": 41883}, cluster_port=17946))
    assert first.cluster.enabled and other.cluster.enabled
    assert (first.cluster.port, other.cluster.port) == (17946, 0)
    assert (first.cluster_advertise, other.cluster_advertise) == ("10.0.0.1:17946", "10.0.0.1")
    other.cluster_join = []
    assert not joins_cluster(other)
    v6 = BrokerConfig()
    v6.data_dir, v6.cluster_advertise = str(tmp_path), "[fd00::1]:17946"
    apply_worker(v6, WorkerSpec(2, 3, "/r", "c", {}, cluster_port=17946))
    assert v6.cluster_advertise == "fd00::1"  # (the form `parse_advertise` takes without a port)


def _listener(protocol: str, current: int, closed: dict[str, int]) -> dict[str, Any]:
    return {"protocol": protocol, "listen_on": "127.0.0.1:1883", "acceptors": 1,
            "max_conns": 100, "current_conns": current, "shutdown_count": closed}  # fmt: skip


def test_listeners_are_merged_per_socket() -> None:
    merged = _merge_listeners(
        [
            [_listener("mqtt:tcp", 3, {"normal": 1}), _listener("http:management", 1, {})],
            [_listener("mqtt:tcp", 4, {"normal": 2, "kicked": 1})],
        ]
    )
    tcp = next(row for row in merged if row["protocol"] == "mqtt:tcp")
    assert tcp["current_conns"] == 7 and tcp["acceptors"] == 2
    assert tcp["shutdown_count"] == {"normal": 3, "kicked": 1}
    assert len(merged) == 2


class _Ctx:
    node_name = "n@h"


def _view() -> WorkersView:
    return WorkersView(_Ctx(), None, 0, 2)  # type: ignore[arg-type]  # (merging needs neither)


def test_merge_rows_counters_and_actions() -> None:
    merge = merge_worker_answers
    rows = merge("connections", [(0, [{"client_id": "a"}]), (1, [{"client_id": "b"}])])
    assert rows == [{"client_id": "a", "worker": 0}, {"client_id": "b", "worker": 1}]
    stats = merge(
        "stats",
        [(0, {"connections/count": 2, "retained/count": 5}),
         (1, {"connections/count": 3, "retained/count": 5})],
    )  # fmt: skip
    assert stats == {"connections/count": 5, "retained/count": 5}  # retained: replicated
    assert merge("kick", [(0, False), (1, True)]) is True
    not_found = {"error": "session_not_found"}
    assert merge("subscribe", [(0, not_found), (1, "ok")]) == "ok"
    assert merge("subscribe", [(0, not_found), (1, not_found)]) == not_found
    assert merge("local_routes", [(0, ["a", "b"]), (1, ["b", "c"])]) == ["a", "b", "c"]
    assert merge("kick_banned", [(0, 1), (1, 2)]) == 3


def test_one_node_name() -> None:
    view = _view()
    assert view.node_names() == ["n@h"] and view.is_known("n@h") and not view.is_known("x")
    assert worker_member_name("n@h", 1) == "n@h/w1"


def test_sys_counts_merge_into_one_nodes_figures() -> None:
    """`$SYS` of a node of workers: sums, but one retained count (each worker holds them
    all), the longest uptime, and a maximum no smaller than the clients connected now."""
    first = {"uptime": 10, "connected": 3, "sessions": 4, "maximum": 3, "retained": 7}
    second = {"uptime": 9, "connected": 2, "sessions": 2, "maximum": 4, "retained": 7}
    first |= {"messages_received": 5, "limits/max_packet_size": 1}
    second |= {"messages_received": 6, "limits/max_packet_size": 2}
    merged = merge_counts([first, second])
    assert merged == {
        "uptime": 10,
        "connected": 5,
        "sessions": 6,
        "maximum": 5,  # 3 + 2 connected now, more than either worker's own peak
        "retained": 7,
        "messages_received": 11,
        "limits/max_packet_size": 3,
    }
    assert merge_counts([{"connected": 1, "maximum": 9}]) == {"connected": 1, "maximum": 9}
