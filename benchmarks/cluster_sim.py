"""Cluster membership and route sync at 10, 100 and 1,000 nodes, on the in-memory network.

Runs the real `cluster.membership` / `cluster.sync` code on `cluster.sim.SimNetwork` (virtual
time, 1-5 ms latency, no loss, default `MembershipConfig`) and prints a Markdown table. Times are
in *rounds* = probe intervals (0.5 s with the defaults). Per N, in order:

1. join: all N nodes join through one seed at t=0; rounds until every node holds every other
   node alive;
2. msgs (bytes) per node per second, during the join and in a quiet cluster (after all gossip
   queues have drained; a 10 s window);
3. route (gossip): one node announces a filter; rounds until every node has the route;
4. dead: that node is killed; rounds until every other node holds it dead (its routes are purged
   at the same moment);
5. route (push/pull only): route gossip switched off on every node; another node announces a
   filter; rounds until every node has it through push/pull anti-entropy alone. The push/pull
   period grows with N (memberlist's scaling: 10 s up to 32 nodes, 60 s at 1,000), so this is
   slow by design; it bounds how long a lost delta can stay missing.

Simplifications: byte counts come from encoding a random 10% of the messages with the real codec
(every message below 1,000 nodes is cheap enough, but the sample keeps the 1,000-node run short);
convergence is checked every 0.1 round (every round in the push/pull phase), so a figure may be
that much late; the push/pull phase is capped by `--pp-timeout` virtual seconds (">" in the
table when reached).

Usage: `python -m benchmarks.cluster_sim [--sizes 10,100,1000] [--seed 1]`
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster.members import MemberState
from cluster.membership import MembershipConfig
from cluster.sim import SimNetwork, SimStats


@dataclass
class Result:
    n: int
    join_rounds: float
    join_msgs: float
    join_bytes: float
    quiet_msgs: float
    quiet_bytes: float
    route_rounds: float
    dead_rounds: float
    pp_rounds: float | None
    pp_cap: float
    wall: float


def _rate(before: SimStats, after: SimStats, n: int, seconds: float) -> tuple[float, float]:
    span = max(seconds, 1e-9) * n
    return (after.messages - before.messages) / span, (after.bytes - before.bytes) / span


def _until(sim: SimNetwork, predicate: Callable[[], bool], timeout: float, step: float) -> float:
    took = sim.run_until_true(predicate, timeout, step)
    if took is None:
        raise RuntimeError(f"no convergence within {timeout} s of virtual time")
    return took


def run(n: int, seed: int, pp_timeout: float) -> Result:
    started = time.perf_counter()
    config = MembershipConfig()
    interval = config.probe_interval
    step = interval / 10
    sim = SimNetwork(config, seed=seed, measure_bytes=True, byte_sample=0.1, record_events=False)
    rng = random.Random(seed)
    names = sim.start_cluster(n)

    before = sim.stats.snapshot()
    join = _until(sim, sim.all_know_all, 120, step)
    join_msgs, join_bytes = _rate(before, sim.stats, n, join)

    _until(sim, sim.quiet, 120, step)
    before = sim.stats.snapshot()
    sim.run_for(10)
    quiet_msgs, quiet_bytes = _rate(before, sim.stats, n, 10)

    origin, other = rng.sample(names[1:], 2)
    sim.announce(origin, "bench/gossip/#")
    route = _until(sim, lambda: sim.route_everywhere("bench/gossip/#", origin), 60, step)

    sim.kill(origin)
    dead = _until(sim, lambda: sim.states_of(origin) <= {MemberState.DEAD, None}, 120, step)
    if not sim.route_nowhere(origin):
        raise RuntimeError("a dead node's routes were not purged")

    for node in sim.live_nodes():
        node.sync.gossip = False
    sim.announce(other, "bench/pushpull")
    pp_step = interval  # slow by nature: checked once a round
    pp = sim.run_until_true(
        lambda: sim.route_everywhere("bench/pushpull", other), pp_timeout, pp_step
    )
    return Result(
        n,
        join / interval,
        join_msgs,
        join_bytes,
        quiet_msgs,
        quiet_bytes,
        route / interval,
        dead / interval,
        None if pp is None else pp / interval,
        pp_timeout / interval,
        time.perf_counter() - started,
    )


def table(results: list[Result]) -> str:
    lines = [
        "| nodes | join (rounds) | msgs/node/s join | bytes/node/s join | msgs/node/s quiet "
        "| bytes/node/s quiet | route by gossip (rounds) | dead known by all (rounds) "
        "| route by push/pull only (rounds) | wall time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        pp = f"{r.pp_rounds:.1f}" if r.pp_rounds is not None else f"> {r.pp_cap:.0f}"
        lines.append(
            f"| {r.n:,} | {r.join_rounds:.1f} | {r.join_msgs:.1f} | {r.join_bytes:,.0f} "
            f"| {r.quiet_msgs:.1f} | {r.quiet_bytes:,.0f} | {r.route_rounds:.1f} "
            f"| {r.dead_rounds:.1f} | {pp} | {r.wall:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated node counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pp-timeout", type=float, default=600.0, help="virtual seconds for the push/pull phase"
    )
    args = parser.parse_args(argv)
    config = MembershipConfig()
    print(
        f"probe interval {config.probe_interval} s, probe timeout {config.probe_timeout} s, "
        f"gossip every {config.gossip_interval} s to {config.gossip_nodes}, retransmit mult "
        f"{config.retransmit_mult}, suspicion mult {config.suspicion_mult}, push/pull every "
        f"{config.push_pull_interval} s (scaled above 32 nodes); 1 round = 1 probe interval\n",
        file=sys.stderr,
    )
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(run(size, args.seed, args.pp_timeout))
        print(f"N={size}: done in {results[-1].wall:.1f} s", file=sys.stderr)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
