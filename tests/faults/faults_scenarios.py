"""The scenarios: a cluster, the workload, one fault schedule, the heal, then the checker.

Each scenario returns its checker results; `run_scenario` always tears the cluster down. The
short profile runs each fault once with short holds; the long one (`MINIBROKER_FAULTS=long`)
repeats the faults and holds them longer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from faults_checker import Result, check, deaths_from_logs, heal_result, report
from faults_nodes import Cluster
from faults_proxy import Shape
from faults_workload import History, Plan, Workload

from cluster.membership_config import MembershipConfig

#: The longest wait for convergence after the last heal: the property's own bound (the
#: detection bound plus one push/pull anti-entropy round).
PUSH_PULL = MembershipConfig().push_pull_interval
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:public").decode()}
LONG = os.environ.get("MINIBROKER_FAULTS", "short") == "long"


@dataclass
class Options:
    """What a scenario changes in the nodes (more TOML, environment per node) and the
    properties it adds, checked before the nodes stop (`extra(ctx, results)`)."""

    config: str = ""
    env: dict[int, dict[str, str]] = field(default_factory=dict)
    extra: Callable[[Ctx, dict[str, Result]], Awaitable[dict[str, Result]]] | None = None


@dataclass
class Ctx:
    cluster: Cluster
    h: History
    w: Workload
    rounds: int  # 1 in the short profile
    #: the convergence measurement of the last heal (`converge_after`), None before one
    measure: asyncio.Task[dict[str, float | None]] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    bans: int = 0

    def _up(self) -> set[int]:
        return {i for i in range(self.cluster.n) if self.cluster.up(i)}

    def mark(self, label: str) -> None:
        self.h.fault(label, self.cluster.net.layout, self._up())

    def partition(self, groups: list[list[int]]) -> None:
        self.cluster.net.partition(groups)
        self.mark(f"partition {groups}")
        if self.measure is not None:  # the next fault came first: that heal is not measured
            self.measure.cancel()
            self.measure = None
        for group in groups:  # a ban made on each side while apart (REST, written on its side)
            self.bans += 1
            who = f"fault-ban-{self.bans}"
            self.tasks.append(asyncio.create_task(_ban(self.cluster.http[group[0]], who)))

    def heal(self) -> None:
        self.cluster.net.heal()
        self.mark("heal")
        if self.measure is not None:
            self.measure.cancel()
        bound = MembershipConfig().detection_bound(self.cluster.n) + PUSH_PULL
        self.measure = asyncio.create_task(converge_after(self.cluster, time.monotonic(), bound))

    def kill(self, i: int) -> None:
        self.cluster.kill(i)
        self.mark(f"kill n{i}")

    async def restart(self, i: int) -> None:
        await self.cluster.restart(i)
        self.mark(f"restart n{i}")

    def pause(self, i: int) -> None:
        self.cluster.pause(i)
        self.mark(f"pause n{i}")

    def resume(self, i: int) -> None:
        self.cluster.resume(i)
        self.mark(f"resume n{i}")


async def _members(port: int) -> int:
    try:
        async with (
            aiohttp.ClientSession(headers=ADMIN) as http,
            http.get(f"http://127.0.0.1:{port}/api/v3/nodes") as reply,
        ):
            body = await reply.json()
            return sum(1 for n in body if n.get("node_status") == "Running")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0


async def _ban(port: int, who: str) -> None:
    """Ban client id `who` through node `port`'s API (bounded; a failure is left as it is)."""
    body = {"who": who, "as": "client_id", "reason": "faults harness"}
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(f"http://127.0.0.1:{port}/api/v3/banned", json=body) as reply,
        ):
            await reply.read()


def _rows(body: Any) -> list[Any]:
    """The rows of an API answer (a bare list, or EMQX's `data` / our paged `items`)."""
    if isinstance(body, dict):
        body = body.get("data", body.get("items", []))
        if isinstance(body, dict):
            body = body.get("items", [])
    return body if isinstance(body, list) else []


async def node_view(cluster: Cluster, i: int) -> dict[str, Any] | None:
    """What node i holds of the replicated state: its route table and retained messages (its
    API answers from its own copy) and its banned list (its `banned.json`); None if down."""
    base = f"http://127.0.0.1:{cluster.http[i]}/api/v3"
    try:
        async with aiohttp.ClientSession(
            headers=ADMIN, timeout=aiohttp.ClientTimeout(total=2)
        ) as http:
            async with http.get(f"{base}/routes?_limit=100000") as reply:
                routes = frozenset((r["topic"], r["node"]) for r in _rows(await reply.json()))
            async with http.get(f"{base}/retained?_limit=100000") as reply:
                rows = _rows(await reply.json())
                retained = {  # `$SYS/...` are each node's own
                    r["topic"]: r.get("payload") for r in rows if not r["topic"].startswith("$")
                }
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return None
    try:
        doc = json.loads((cluster.tmp / f"data{i}" / "banned.json").read_text())
        bans = frozenset((e["as"], e["who"]) for e in doc["banned"])
    except FileNotFoundError:
        bans = frozenset()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {"routes": routes, "retained": retained, "bans": bans}


KINDS = ("routes", "retained", "bans")


async def converge_after(cluster: Cluster, since: float, bound: float) -> dict[str, float | None]:
    """Seconds from `since` (a heal) until every node holds the same routes, retained messages
    and bans (each kind on its own; None: not within `bound`), polling every 0.2 s."""
    out: dict[str, float | None] = {}
    while len(out) < len(KINDS) and time.monotonic() - since < bound:
        views = await asyncio.gather(*(node_view(cluster, i) for i in range(cluster.n)))
        now = time.monotonic() - since
        for kind in KINDS:
            if kind in out or any(v is None for v in views):
                continue
            first = views[0][kind]  # type: ignore[index]
            if all(v[kind] == first for v in views):  # type: ignore[index]
                out[kind] = now
        await asyncio.sleep(0.2)
    return {kind: out.get(kind) for kind in KINDS}


async def _until(check_: Callable[[], Awaitable[bool]], timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check_():
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    return None


async def run_scenario(
    name: str,
    n: int,
    plan: Plan,
    faults: Callable[[Ctx], Awaitable[None]],
    tmp: Path,
    rounds: int = 1,
    shape: Shape | None = None,
    options: Options | None = None,
) -> tuple[dict[str, Result], str]:
    options = options or Options()
    cluster = Cluster(n, tmp, shape is not None, options.config, options.env)
    h = History(n)
    w = Workload(h, lambda i: cluster.mqtt[i], plan)
    settle = MembershipConfig().detection_bound(n)
    try:
        await cluster.start()

        async def formed() -> bool:
            counts = await asyncio.gather(*(_members(p) for p in cluster.http))
            return all(c == n for c in counts)

        if await _until(formed, 30) is None:
            raise RuntimeError(f"{name}: the {n} nodes did not form one cluster")
        if shape is not None:
            for proxy in cluster.proxies:
                proxy.shape = shape
        w.start_subscribers()
        wanted = {f"sub{i}" for i in plan.sub_nodes} | {f"shr{i}" for i in plan.sub_nodes}
        if await _until(lambda: _true(wanted | {"roam"} <= w.subscribed), 20) is None:
            raise RuntimeError(f"{name}: subscribers not up: {wanted - w.subscribed}")
        await asyncio.sleep(1.5)  # the subscriptions' routes spread
        h.faults[0].time = time.monotonic()
        w.start_publishers()
        ctx = Ctx(cluster, h, w, rounds)
        await faults(ctx)
        if len(cluster.net.layout) > 1:
            ctx.heal()
        for i in range(n):
            if i in cluster.paused:
                ctx.resume(i)
        healed = h.faults[-1].time
        await asyncio.sleep(1.0)
        await w.stop()
        converge = await ctx.measure if ctx.measure is not None else None
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
        views: dict[int, dict[str, str] | None] = {}
        reads = 0

        async def agree() -> bool:
            nonlocal reads
            reads += 1
            got = await asyncio.gather(*(w.read_retained(i) for i in range(n)))
            views.update(enumerate(got))
            return all(v is not None for v in got) and all(v == got[0] for v in got)

        bound = settle + PUSH_PULL
        if await _until(agree, bound) is None:
            note = f"still apart {bound:.0f} s after the writes stopped ({reads} reads)"
        else:
            note = (
                f"agreed at read {reads}, {time.monotonic() - healed:.1f} s after the last fault"
                " change"
            )
        await _drain(w)
        deaths = deaths_from_logs({i: cluster.log_lines(i, " is dead") for i in range(n)})
        results = check(h, plan.sub_nodes, settle, views, deaths, note)
        results["heal_converge"] = heal_result(converge, settle + PUSH_PULL)
        if options.extra is not None:  # a scenario's own properties (e.g. faults_long.py)
            results.update(await options.extra(ctx, results))
        counts = Counter(f"{op.kind}:{op.outcome}" for op in h.ops)
        labels = [f.label for f in h.faults[1:]]
        faults_seen = ", ".join(labels[:6]) + (
            f", ... ({len(labels)} in all)" if labels[6:] else ""
        )
        text = report(f"{name} (n={n}; {faults_seen})", results, counts)
        return results, text
    finally:
        await w.close()
        await cluster.close()


async def _true(value: bool) -> bool:
    return value


async def _drain(w: Workload) -> None:
    """Wait until no message arrived for 2 s (at most 15 s): queued sessions deliver."""
    start = time.monotonic()
    seen = -1
    while time.monotonic() - start < 15:
        count = sum(1 for op in w.h.ops if op.kind == "recv")
        if count == seen:
            return
        seen = count
        await asyncio.sleep(2.0)


# -- fault schedules ------------------------------------------------------------------------------


async def baseline(ctx: Ctx) -> None:
    """No fault: what the workload sees on a healthy cluster (the reference for the rest)."""
    await asyncio.sleep(8 * ctx.rounds)


async def isolate(ctx: Ctx, node: int, hold: float) -> None:
    for _ in range(ctx.rounds):
        await asyncio.sleep(2)
        others = [i for i in range(ctx.cluster.n) if i != node]
        ctx.partition([[node], others])
        await asyncio.sleep(hold)
        ctx.heal()
        await asyncio.sleep(2)


async def split_2_3(ctx: Ctx) -> None:
    for _ in range(ctx.rounds):
        await asyncio.sleep(2)
        ctx.partition([[0, 1], [2, 3, 4]])
        await asyncio.sleep(7)
        ctx.heal()
        await asyncio.sleep(2)


async def flapping(ctx: Ctx) -> None:
    for k in range(6 * ctx.rounds):
        ctx.partition(
            [[k % ctx.cluster.n], [i for i in range(ctx.cluster.n) if i != k % ctx.cluster.n]]
        )
        await asyncio.sleep(0.8)
        ctx.heal()
        await asyncio.sleep(0.8)


async def pause(ctx: Ctx) -> None:
    for _ in range(ctx.rounds):
        await asyncio.sleep(2)
        ctx.pause(1)
        await asyncio.sleep(8)
        ctx.resume(1)
        await asyncio.sleep(2)


async def kill_during_takeover(ctx: Ctx) -> None:
    """The roaming session moves from node k to node k+1; node k is killed as it does."""
    for k in range(2 * ctx.rounds):
        old = ctx.w.roam_node
        await asyncio.sleep(2)
        ctx.w.roam_node = (old + 1) % ctx.cluster.n
        await asyncio.sleep(0.05)  # the new CONNECT is on its way: the takeover RPC runs
        ctx.kill(old)
        await asyncio.sleep(3)
        await ctx.restart(old)
        await asyncio.sleep(2)
        del k


async def restart_each(ctx: Ctx) -> None:
    for _ in range(ctx.rounds):
        for i in range(ctx.cluster.n):
            ctx.kill(i)
            await asyncio.sleep(1)
            await ctx.restart(i)
            await asyncio.sleep(3)


async def cpu_load(ctx: Ctx) -> None:
    """Node 1 starved for 10 s: it runs 0.15 s of every 0.5 s (SIGSTOP/SIGCONT duty cycle; not
    a fault in the log: the node is running, slowly, and its ACKs still arrive)."""
    await asyncio.sleep(2)
    proc = ctx.cluster.procs[1]
    assert proc is not None
    ctx.mark("load n1")  # a marker only: the layout and the live set do not change
    end = time.monotonic() + 10 * ctx.rounds
    while time.monotonic() < end:
        os.kill(proc.proc.pid, signal.SIGSTOP)  # our own child, by its PID
        try:
            await asyncio.sleep(0.35)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.15)
    ctx.mark("load n1 ends")
