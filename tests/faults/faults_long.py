"""Two faults beyond the first scenarios (issue 14): a partition longer than `[cluster] dead_hold`,
and a node whose wall clock is off (libfaketime).

* `long_partition`: node 2 is cut off for longer than its peers' detection bound plus a short
  `dead_hold` (`DEAD_HOLD`), so each side declares the other dead, holds what it has for it for
  the grace, then purges its routes and drops and counts what it held (`cluster.dead_hold`).
  The property `held_or_counted` holds that policy to account: every acknowledged QoS 1/2
  message for a persistent session on the other side of the split is delivered, or counted in
  `minibroker_cluster_forward_held_dropped` (the nodes' Prometheus `/metrics`); the ones acked
  after the publisher's node purged the far node's routes are told apart in the note.
* `skew_behind` / `skew_ahead`: no network fault; node 1 runs under libfaketime with its wall
  clock (only: `FAKETIME_DONT_FAKE_MONOTONIC`, so its timers and the asyncio loop run at the
  right pace) `SKEW` seconds behind or ahead. A QoS 2 message carries its origin node's hybrid
  clock stamp and a session copy skips one stamped before it arrived (`Broker.late_for`): the
  roaming session (a takeover every 3 s) shows what the skew costs in `takeover_no_loss` and
  `qos2_exactly_once`.
"""

from __future__ import annotations

import asyncio
import glob
import json
import re
import time
from collections import Counter

import aiohttp
from faults_checker import Result
from faults_scenarios import ADMIN, Ctx, Options

#: The grace of a dead peer in `long_partition` (the default is 60 s).
DEAD_HOLD = 3.0
#: Seconds of the cut in `long_partition` (short profile): a dead verdict takes up to the
#: detection bound (5 s for 3 nodes), then `DEAD_HOLD`, then a few seconds with routes purged.
LONG_CUT = 12.0
#: The wall-clock offset of the skewed node, seconds.
SKEW = 2.0
HELD_DROPPED = "minibroker_cluster_forward_held_dropped_total"
PURGED = re.compile(r"node (n\d+)@\S+ still dead after")


def faketime_lib() -> str | None:
    """libfaketime's preload library (Debian package `faketime`), None if not installed."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def skewed(node: int, seconds: float) -> Options:
    """Node `node`'s wall clock `seconds` off (monotonic clocks untouched); the scenario's
    property `clock_skew` checks that the node really ran with it."""
    lib = faketime_lib()
    if lib is None:
        raise RuntimeError("libfaketime is not installed (apt-get install faketime)")
    env = {"LD_PRELOAD": lib, "FAKETIME": f"{seconds:+g}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    async def seen(ctx: Ctx, results: dict[str, Result]) -> dict[str, Result]:
        return {"clock_skew": await _skew_seen(ctx, node, seconds)}

    return Options(env={node: env}, extra=seen)


async def _http_get(port: int, path: str) -> str | None:
    """The body of an authenticated GET to a node's HTTP port; None when it cannot be had."""
    try:
        async with (
            aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"http://127.0.0.1:{port}{path}") as reply,
        ):
            return await reply.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _broker_time(port: int) -> float | None:
    """The node's wall clock as its REST API shows it (`datetime` of /brokers, in seconds)."""
    text = await _http_get(port, "/api/v3/brokers/")
    if text is None:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    rows = body.get("data", body) if isinstance(body, dict) else body
    try:
        return time.mktime(time.strptime(rows[0]["datetime"], "%Y-%m-%d %H:%M:%S"))
    except (LookupError, TypeError, ValueError):
        return None


async def _skew_seen(ctx: Ctx, node: int, seconds: float) -> Result:
    """The skewed node's wall clock minus another node's, read at once (1 s resolution): a
    violation unless within 1.5 s of `seconds` (libfaketime not applied, or applied wrong)."""
    r = Result("clock_skew")
    other = (node + 1) % ctx.cluster.n
    for _ in range(3):
        pair = await asyncio.gather(*(_broker_time(ctx.cluster.http[i]) for i in (node, other)))
        r.checked += 1
        if None in pair:
            r.bad("a node's time unread")
            continue
        gap = pair[0] - pair[1]  # type: ignore[operator]
        r.note = f"n{node} minus n{other}: {gap:+.0f} s (wanted {seconds:+g} s)"
        if abs(gap - seconds) > 1.5:
            r.bad(r.note)
    return r


async def long_partition(ctx: Ctx) -> None:
    for _ in range(ctx.rounds):
        await asyncio.sleep(2)
        ctx.partition([[2], [0, 1]])
        await asyncio.sleep(LONG_CUT)
        ctx.heal()
        await asyncio.sleep(3)


async def skew_schedule(ctx: Ctx) -> None:
    """No fault: the roaming session moves 5 times per round among the three nodes."""
    await asyncio.sleep(15 * ctx.rounds)


async def _held_dropped(port: int) -> int | None:
    """The node's `forward/held_dropped` counter from its Prometheus exposition."""
    text = await _http_get(port, "/metrics")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(HELD_DROPPED + "{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0  # no forward was ever held and dropped on this node


async def held_or_counted(ctx: Ctx, results: dict[str, Result]) -> dict[str, Result]:
    """Every acknowledged QoS 1/2 message for a persistent session (`sub<j>`) on another node
    is delivered or counted, whatever the network did meanwhile. The counter is per node and
    per forward (one plain forward per message and far node: one `sub<j>` each), so the check
    is by totals: violations = undelivered - counted, when positive. The note splits the
    undelivered ones: acknowledged while the two nodes were cut apart (within the publisher's
    node's grace for the far node, or after it) or while linked (a heal not yet noticed)."""
    del results
    cluster, h = ctx.cluster, ctx.h
    counted = await asyncio.gather(*(_held_dropped(p) for p in cluster.http))
    names = {name.split("@")[0]: i for i, name in enumerate(cluster.names)}
    ended: list[tuple[int, float, int]] = []  # (observer, time, target): a grace ended
    for i in range(cluster.n):
        for t, text in cluster.log_lines(i, "still dead after"):
            match = PURGED.search(text)
            if match and match.group(1) in names:
                ended.append((i, t, names[match.group(1)]))
    got: Counter[tuple[str, str]] = Counter(
        (op.process, op.value) for op in h.ops if op.kind == "recv"
    )
    sub_nodes = sorted({int(op.process[3:]) for op in h.ops if op.process.startswith("sub")})
    start = h.faults[1].time if len(h.faults) > 1 else h.faults[0].time
    r = Result("held_or_counted")
    missing = Counter({"within the grace": 0, "after the grace": 0, "while linked": 0})
    for op in h.ops:
        if op.kind != "publish" or op.outcome != "ok" or op.qos < 1:
            continue
        state = h.state(op.end)
        for j in sub_nodes:
            if j == op.node or j not in state.up or op.node not in state.up:
                continue
            r.checked += 1
            if got[(f"sub{j}", op.value)]:
                continue
            if h.reachable(op.end, op.node, j):
                missing["while linked"] += 1
            elif any(o == op.node and d == j and start <= t <= op.end for o, t, d in ended):
                missing["after the grace"] += 1
            else:
                missing["within the grace"] += 1
            if len(r.examples) < 5:
                r.examples.append(f"{op.value} acked by n{op.node} not at sub{j}")
    total = sum(c or 0 for c in counted)
    lost = sum(missing.values())
    r.violations = max(0, lost - total)
    if any(c is None for c in counted):  # a node's counter unread: nothing can be claimed
        r.violations = max(r.violations, 1)
    r.note = (
        f"undelivered {lost} ({', '.join(f'{v} {k}' for k, v in missing.items())}); "
        f"counted held_dropped {total} {counted}; {len(ended)} graces ended (logged)"
    )
    return {"held_or_counted": r}


LONG_PARTITION = Options(config=f"[cluster]\ndead_hold = {DEAD_HOLD}\n", extra=held_or_counted)
