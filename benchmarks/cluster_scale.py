"""`cluster-scale`: does a cluster of N nodes deliver more than one node, on this machine?

Each round runs every workload twice with the same clients: against one node pinned to core 0,
then against N nodes joined into a cluster, node i pinned to core i modulo the cores this
process may use. Every run gets freshly started nodes; the generator is left unpinned in both,
since a cluster of two on a 2-core machine leaves it no core of its own. The workloads place
their clients with the `spread` scenario:

- fan-out: 1 publisher on the first node -> S subscribers round-robin over all the nodes; the
  delivery work (one write per subscriber) splits over the nodes, each node receives each
  message once (a cluster forwards a message once per node, not once per subscriber);
- fan-in:  P publishers round-robin over all the nodes -> 1 subscriber on the first node; the
  decoding of the publishers' traffic splits, the delivery does not.

The table gives medians and the ratio `N nodes / 1 node` per workload: above 1 means the
cluster delivered more than one node did. With `--tls` every round also runs the cluster with
mutual TLS on its links (`[cluster] tls_*`, certificates of a throwaway `trustme` CA), labelled
`N nodes, TLS`: its cost is the difference from the plain cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.brokers import RunningBroker, start_minibroker, start_minibroker_cluster
from benchmarks.report import finish_rounds, keep_run
from benchmarks.results import Record, make_record
from benchmarks.scenarios import Settings, make_params, run_scenario

__all__ = ["WORKLOADS", "add_arguments", "run"]


@dataclass(frozen=True)
class Workload:
    pubs_on: str
    subs_on: str
    size_option: str  # which option sets its client count: "subscribers" or "publishers"


WORKLOADS: dict[str, Workload] = {
    "fan-out": Workload("first", "all", "subscribers"),
    "fan-in": Workload("all", "first", "publishers"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=2, help="nodes in the cluster (2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per workload and size (3)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}"
    )
    parser.add_argument("-d", "--duration", type=float, default=4.0, help="seconds (4)")
    parser.add_argument("--drain", type=float, default=5.0, help="max drain seconds (5)")
    parser.add_argument("-S", "--subscribers", type=int, default=100, help="fan-out (100)")
    parser.add_argument("-P", "--publishers", type=int, default=10, help="fan-in (10)")
    parser.add_argument("-q", "--qos", type=int, default=0, help="QoS (0)")
    parser.add_argument("--procs", type=int, default=1, help="load worker processes (1)")
    parser.add_argument("--no-uvloop", action="store_true", help="run the nodes on asyncio")
    parser.add_argument("--out", default=None, help="JSON lines file to append to")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--charts", default=None, help="also draw PNG charts into this directory")
    parser.add_argument("--quiet", action="store_true", help="no live progress")
    parser.add_argument(
        "--tls", action="store_true", help="also run the cluster with TLS on its links"
    )


def _cores(nodes: int) -> list[int | None]:
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) < 2:
        return [None] * nodes
    return [usable[i % len(usable)] for i in range(nodes)]


def _one_run(
    name: str, nodes: int, args: argparse.Namespace, round_no: int, tls: bool = False
) -> Record | None:
    work = WORKLOADS[name]
    cores = _cores(nodes)
    started: list[RunningBroker] = []
    try:
        if nodes == 1:
            started = [start_minibroker(cores[0], use_uvloop=not args.no_uvloop)]
        else:
            started = start_minibroker_cluster(cores, use_uvloop=not args.no_uvloop, tls=tls)
        overrides: dict[str, Any] = {
            "qos": args.qos,
            "duration": args.duration,
            "drain": args.drain,
            "pubs_on": work.pubs_on,
            "subs_on": work.subs_on,
            "publishers": 1,
            "subscribers": 1,
            work.size_option: getattr(args, work.size_option),
        }
        settings = Settings(
            targets=[b.target for b in started],
            procs=args.procs,
            broker_pid=started[0].pid,
            progress=False if args.quiet else None,
        )
        result = asyncio.run(run_scenario("spread", settings, make_params("spread", **overrides)))
        dead = [b.name for b in started if b.proc.poll() is not None]
    except Exception as exc:  # one failed run must not lose the others
        print(f"{nodes} node(s) {name}: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    finally:
        for broker in started:
            broker.stop()
    if dead:
        result.errors.append(f"exited during the run: {', '.join(dead)}")
    # The CPU figure read from /proc is the first node's only.
    result.broker = {f"node1_{k}": v for k, v in result.broker.items()}
    label = f"minibroker, {nodes} node{'s' if nodes > 1 else ''}{', TLS' if tls else ''}"
    return make_record(
        result,
        label,
        settings.targets,
        extra={"round": round_no, "case": name, "nodes": nodes, "cores": cores, "tls": tls},
    )


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or args.nodes < 2:
        problem = f"unknown workloads: {', '.join(unknown)}" if unknown else "--nodes must be >= 2"
        print(f"minibroker-bench cluster-scale: error: {problem}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join("bench-results", f"cluster-scale-{stamp}.jsonl")
    records: list[Record] = []
    started = time.monotonic()
    for round_no in range(1, args.rounds + 1):
        for name in names:
            runs = [(1, False), (args.nodes, False)] + ([(args.nodes, True)] if args.tls else [])
            if not round_no % 2:
                runs.reverse()
            for nodes, tls in runs:
                keep_run(_one_run(name, nodes, args, round_no, tls), records, out, round_no)
    baseline = "minibroker, 1 node"
    return finish_rounds(records, out, started, args.markdown, args.charts, baseline)
