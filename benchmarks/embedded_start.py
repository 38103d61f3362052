"""How long until an embedded node, or an in-process cluster, is ready (`broker.embedded`).

`python -m benchmarks.embedded_start [--rounds N] [--nodes 3]` starts a node and a cluster
`--rounds` times in one process and prints the median and worst wall time from the call to the
moment clients can connect (for a cluster: every node sees every other), then the same for the
first start of the process (imports already done, plugin discovery not). Timing belongs here,
not in the tests; the targets of issue 16 are < 50 ms for a node and < 300 ms for 3 nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from broker.embedded import embedded_cluster, embedded_node


async def time_node() -> float:
    start = time.perf_counter()
    node = await embedded_node().start()
    ready = time.perf_counter() - start
    await node.stop()
    return ready


async def time_cluster(size: int) -> float:
    start = time.perf_counter()
    cluster = await embedded_cluster(size).start()
    ready = time.perf_counter() - start
    await cluster.stop()
    return ready


def summary(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"{label:<24} median {statistics.median(ms):7.1f} ms   best {ms[0]:7.1f} ms   "
        f"worst {ms[-1]:7.1f} ms   ({len(ms)} starts)"
    )


async def main(rounds: int, nodes: int) -> None:
    first_node = await time_node()
    first_cluster = await time_cluster(nodes)
    node_times = [await time_node() for _ in range(rounds)]
    cluster_times = [await time_cluster(nodes) for _ in range(rounds)]
    print(f"first node in the process: {first_node * 1000:.1f} ms")
    print(f"first {nodes}-node cluster:      {first_cluster * 1000:.1f} ms")
    print(summary("embedded node", node_times))
    print(summary(f"{nodes}-node cluster", cluster_times))


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20, help="starts of each (20)")
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (3)")
    args = parser.parse_args()
    asyncio.run(main(max(1, args.rounds), max(1, args.nodes)))


if __name__ == "__main__":
    run()
