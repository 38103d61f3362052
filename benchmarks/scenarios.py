"""The commands and named scenarios: each builds `LoadPlan`s, runs them and names its numbers.

Every scenario returns a `ScenarioResult` whose `metrics` hold the figures, `headline` the few
worth a table row and `primary` the one a comparison ranks by (`better` says which way). The
building blocks are `conn`, `pub` and `sub`; the named scenarios are fixed combinations:

- fan-in:     P publishers (`bench/fanin/%i`) -> 1 subscriber on `bench/fanin/#`;
- fan-out:    1 publisher -> S subscribers on the same topic (deliveries/s = received by all);
- latency:    1 publisher at a fixed rate -> 1 subscriber, send time in the payload;
- conn-scale: N idle connections; connect rate and the broker's VmRSS growth per connection;
- many-subs:  fan-in to one exact subscriber, with 10 and then 10,000 unrelated wildcard filters
              held by other clients; the ratio of the two rates shows whether routing is flat;
- wildcards:  fan-in where every message is routed by a wildcard filter (`bench/wc/+/+`) through
              a trie holding `--filters` other wildcard filters on the same paths, each publisher
              cycling through `--topics` topics (10 x 1,000 by default: more distinct topics
              than a per-topic cache remembers, so every message is matched afresh);
- cluster:    publishers on the first target, subscribers spread over the others;
- spread:     publishers and subscribers placed on the targets as `--pubs-on`/`--subs-on` say
              (`first`, `others` or `all`, round-robin); `cluster-scale` runs it against one
              node and against a cluster with the same clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.load import ConnRole, PubRole, SubRole
from benchmarks.runner import LoadPlan, Outcome, run_plan
from benchmarks.stats import latency_summary, log_histogram, rate
from benchmarks.topics import expand, path_filters, unrelated_filters

__all__ = [
    "DEFAULTS",
    "SCENARIOS",
    "Params",
    "ScenarioResult",
    "Settings",
    "make_params",
    "run_scenario",
]


@dataclass
class Params:
    """Scenario parameters; the CLI sets per-scenario defaults (see `cli.SCENARIO_DEFAULTS`)."""

    publishers: int = 1
    subscribers: int = 1
    connections: int = 100
    qos: int = 0
    size: int = 64
    rate: float = 0.0  # messages/s per publisher, 0 = as fast as acknowledged
    count: int = 0  # messages per publisher, 0 = until --duration
    duration: float = 5.0
    topic: str = "bench/%i"
    filter: str = "bench/#"
    inflight: int = 64
    connect_rate: float = 0.0  # connections/s, 0 = as fast as accepted
    connect_concurrency: int = 50  # connection handshakes in flight at once
    filters: int = 10_000  # many-subs: unrelated filters
    filter_clients: int = 100  # many-subs: clients holding them
    topics: int = 1  # topics per publisher, published in turn (`{topic}/0`, `{topic}/1`, ...)
    latency: bool = False
    settle: float = 1.0  # conn-scale: idle seconds before reading the broker's memory
    coalesce_ms: float = 1.0  # subscribers batch reads (see client.BenchClient); 0 = off
    drain: float = 10.0  # after publishing, wait at most this long for deliveries
    spin: bool = False  # busy-poll the generator's loops while publishing (load.spin)
    pubs_on: str = "first"  # spread: targets of the publishers (first, others, all)
    subs_on: str = "all"  # spread: targets of the subscribers


@dataclass
class Settings:
    """Where and how to run: targets, worker processes, the broker's pid for /proc readings."""

    targets: list[tuple[str, int]]
    procs: int = 1
    broker_pid: int | None = None
    progress: bool | None = None
    uvloop: bool = True


@dataclass
class ScenarioResult:
    scenario: str
    params: dict[str, Any]
    metrics: dict[str, float]
    primary: str
    better: str  # "higher" or "lower"
    headline: list[str]
    generator: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: latency: the samples as `stats.log_histogram` (ns) [bucket, count] pairs, so that
    #: `report` can pool rounds for a tail percentile (`stats.pooled_ratio_ci`).
    latency_hist: list[list[int]] = field(default_factory=list)


def _client_id(prefix: str, i: int) -> str:
    return f"bench-{prefix}-{i}"


def publishers(
    p: Params, topic: str, target: int = 0, prefix: str = "pub", targets: list[int] | None = None
) -> list[PubRole]:
    """`p.publishers` publishers on `target`, or round-robin over `targets` when given."""
    roles = []
    for i in range(p.publishers):
        cid = _client_id(prefix, i)
        roles.append(
            PubRole(
                cid,
                targets[i % len(targets)] if targets else target,
                expand(topic, i, cid),
                p.qos,
                p.size,
                p.rate,
                p.count,
                p.latency,
                p.inflight,
                p.topics,
            )
        )
    return roles


def subscribers(
    p: Params, filt: str, targets: list[int] | None = None, prefix: str = "sub"
) -> list[SubRole]:
    targets = targets or [0]
    roles = []
    for i in range(p.subscribers):
        cid = _client_id(prefix, i)
        roles.append(SubRole(cid, targets[i % len(targets)], [expand(filt, i, cid)], p.qos))
    return roles


def _plan(s: Settings, p: Params, **kw: Any) -> LoadPlan:
    kw.setdefault("latency", p.latency)
    return LoadPlan(
        targets=s.targets,
        coalesce=p.coalesce_ms / 1000.0,
        spin=p.spin,
        duration=p.duration,
        connect_rate=p.connect_rate,
        connect_concurrency=p.connect_concurrency,
        drain=p.drain,
        **kw,
    )


async def _run(s: Settings, plan: LoadPlan, title: str) -> Outcome:
    return await run_plan(
        plan,
        procs=s.procs,
        broker_pid=s.broker_pid,
        title=title,
        progress=s.progress,
        use_uvloop=s.uvloop,
    )


def _flow_metrics(out: Outcome, fanout: float | None) -> dict[str, float]:
    m: dict[str, float] = {
        "sent": out.sent,
        "received": out.recv,
        "sent_per_s": round(rate(out.sent, out.publish_s)),
        "received_per_s": round(rate(out.recv, out.recv_s)),
        "publish_s": round(out.publish_s, 3),
        "receive_s": round(out.recv_s, 3),
    }
    if out.acked:
        m["acked_per_s"] = round(rate(out.acked, out.publish_s))
    if fanout is not None and out.sent:
        # Not received by the end of the run: dropped by the broker, or still queued when the
        # drain wait ended (a broker that buffers without bound can lag far behind).
        m["loss_pct"] = round(max(0.0, 100.0 * (1 - out.recv / (out.sent * fanout))), 3)
    if out.latency_ns:
        m.update(latency_summary(out.latency_ns))
    return m


def _result(
    name: str,
    p: Params,
    out: Outcome,
    metrics: dict[str, float],
    primary: str,
    headline: list[str],
    better: str = "higher",
    phase: str = "run",
) -> ScenarioResult:
    """Wrap metrics with the generator's and the broker's CPU use over the measured phase.

    CPU % is taken over the active span: for `run`, publishing or receiving, whichever ended
    last (the idle drain wait would dilute it); for `connect`, the connect phase.
    """
    if out.failed:
        metrics["failed_connections"] = out.failed
    if out.lost_connections:
        metrics["lost_connections"] = out.lost_connections
    if phase == "connect":
        active, workers, broker_cpu = (
            out.connect_s,
            out.worker_connect_cpu_s,
            out.broker_connect_cpu_s,
        )
    else:
        active = max(out.publish_s, out.recv_s) if out.sent or out.recv else out.wall_s
        active = min(active, out.wall_s) if active > 0 else out.wall_s
        workers, broker_cpu = out.worker_cpu_s, out.broker_cpu_s

    def pct(seconds: float) -> float:
        return round(100.0 * seconds / active, 1) if active >= 0.01 else 0.0

    generator = {
        "workers": out.workers,
        "phase": phase,
        "cpu_s": round(sum(workers), 3),
        "cpu_pct": pct(sum(workers)),
        "busiest_worker_pct": pct(max(workers, default=0.0)),
        "active_s": round(active, 3),
        "spin": p.spin,
        "wall_s": round(out.wall_s, 3),
    }
    broker: dict[str, Any] = {}
    if broker_cpu is not None:
        broker["cpu_s"] = round(broker_cpu, 3)
        broker["cpu_pct"] = pct(broker_cpu)
    if out.broker_rss_kb:
        broker["rss_kb"] = out.broker_rss_kb
    return ScenarioResult(
        name, asdict(p), metrics, primary, better, headline, generator, broker, out.errors
    )


# -- building blocks ---------------------------------------------------------------------------
async def conn(s: Settings, p: Params, name: str = "conn") -> ScenarioResult:
    roles = [ConnRole(_client_id("conn", i), i % len(s.targets)) for i in range(p.connections)]
    out = await _run(s, _plan(s, p, conns=roles, settle=p.settle), name)
    m: dict[str, float] = {
        "connections": out.connected,
        "connect_s": round(out.connect_s, 3),
        "connects_per_s": round(rate(out.connected, out.connect_s)),
    }
    conn_ms = latency_summary(out.connect_ns)
    m.update({f"connack_{k}": v for k, v in conn_ms.items() if k.endswith("_ms")})
    rss = out.broker_rss_kb
    if out.connected and "before" in rss and "ready" in rss:
        m["broker_kb_per_conn"] = round((rss["ready"] - rss["before"]) / out.connected, 3)
        m["broker_rss_mb"] = round(rss["ready"] / 1024, 1)
    headline = ["connects_per_s"]
    if "broker_kb_per_conn" in m:
        headline.insert(0, "broker_kb_per_conn")
        return _result(name, p, out, m, "broker_kb_per_conn", headline, "lower", "connect")
    return _result(name, p, out, m, "connects_per_s", headline, phase="connect")


async def pub(s: Settings, p: Params) -> ScenarioResult:
    out = await _run(s, _plan(s, p, pubs=publishers(p, p.topic)), "pub")
    m = _flow_metrics(out, None)
    return _result("pub", p, out, m, "sent_per_s", ["sent_per_s"])


async def sub(s: Settings, p: Params) -> ScenarioResult:
    targets = list(range(len(s.targets)))
    plan = _plan(s, p, subs=subscribers(p, p.filter, targets), recv_limit=p.count)
    out = await _run(s, plan, "sub")
    m = _flow_metrics(out, None)
    m["received_per_s"] = round(rate(out.recv, out.wall_s))  # over the whole window
    return _result("sub", p, out, m, "received_per_s", ["received_per_s"])


# -- named scenarios ----------------------------------------------------------------------------
async def fan_in(s: Settings, p: Params) -> ScenarioResult:
    plan = _plan(
        s,
        p,
        subs=subscribers(p, "bench/fanin/#"),
        pubs=publishers(p, "bench/fanin/%i"),
        fanout=float(p.subscribers),
    )
    out = await _run(s, plan, f"fan-in q{p.qos}")
    m = _flow_metrics(out, plan.fanout)
    head = ["received_per_s", "loss_pct"] + (["acked_per_s"] if p.qos else [])
    return _result("fan-in", p, out, m, "received_per_s", head)


async def fan_out(s: Settings, p: Params) -> ScenarioResult:
    plan = _plan(
        s,
        p,
        subs=subscribers(p, "bench/fanout"),
        pubs=publishers(p, "bench/fanout"),
        fanout=float(p.subscribers),
    )
    out = await _run(s, plan, f"fan-out q{p.qos}")
    m = _flow_metrics(out, plan.fanout)
    m["deliveries_per_s"] = m.pop("received_per_s")
    return _result("fan-out", p, out, m, "deliveries_per_s", ["deliveries_per_s", "loss_pct"])


async def latency(s: Settings, p: Params) -> ScenarioResult:
    p.latency = True
    plan = _plan(
        s,
        p,
        subs=subscribers(p, "bench/latency/%i"),
        pubs=publishers(p, "bench/latency/%i"),
        fanout=1.0,
    )
    out = await _run(s, plan, "latency")
    m = _flow_metrics(out, 1.0)
    head = ["p50_ms", "p99_ms", "max_ms"]
    result = _result("latency", p, out, m, "p99_ms", head, better="lower")
    result.latency_hist = [[k, n] for k, n in sorted(log_histogram(out.latency_ns).items())]
    return result


async def conn_scale(s: Settings, p: Params) -> ScenarioResult:
    return await conn(s, p, name="conn-scale")


async def many_subs(s: Settings, p: Params) -> ScenarioResult:
    """Fan-in throughput with 10, then `p.filters`, unrelated wildcard filters held by others."""
    rates: dict[int, float] = {}
    outs: list[Outcome] = []
    subscribe_s: dict[int, float] = {}
    for total in (10, p.filters):
        lists = unrelated_filters(total, p.filter_clients)
        holders = [SubRole(_client_id("ms", k), 0, fl, 0) for k, fl in enumerate(lists)]
        plan = _plan(
            s,
            p,
            subs=[*subscribers(p, "bench/ms/pub/+"), *holders],
            pubs=publishers(p, "bench/ms/pub/%i"),
            fanout=float(p.subscribers),
        )
        out = await _run(s, plan, f"many-subs {total}")
        rates[total] = rate(out.recv, out.recv_s)
        subscribe_s[total] = out.connect_s
        outs.append(out)
    last = outs[-1]
    m = _flow_metrics(last, float(p.subscribers))
    m["received_per_s_10_filters"] = round(rates[10])
    m[f"received_per_s_{p.filters}_filters"] = round(rates[p.filters])
    m["received_per_s"] = round(rates[p.filters])
    m["filters_ratio"] = round(rates[p.filters] / rates[10], 3) if rates[10] else 0.0
    m["setup_s"] = round(subscribe_s[p.filters], 3)
    last.errors = [e for o in outs for e in o.errors]
    _cpu_per_million(m, last)
    head = ["received_per_s", "filters_ratio"]
    return _result("many-subs", p, last, m, "received_per_s", head)


def _cpu_per_million(m: dict[str, float], out: Outcome) -> None:
    """The broker's CPU seconds per 1,000,000 delivered messages (= CPU microseconds per
    message): less sensitive than msg/s to other jobs sharing the machine."""
    if out.broker_cpu_s is not None and out.recv:
        m["broker_cpu_s_per_1m"] = round(out.broker_cpu_s / out.recv * 1e6, 3)


async def wildcards(s: Settings, p: Params) -> ScenarioResult:
    """Fan-in routed by a wildcard filter through `p.filters` other wildcard filters on the same
    paths (`topics.path_filters`), publishers cycling through `p.topics` topics each."""
    lists = path_filters(p.filters, p.filter_clients, p.publishers, p.topics)
    holders = [SubRole(_client_id("wc", k), 0, fl, 0) for k, fl in enumerate(lists)]
    plan = _plan(
        s,
        p,
        subs=[*subscribers(p, "bench/wc/+/+"), *holders],
        pubs=publishers(p, "bench/wc/%i"),
        fanout=float(p.subscribers),
    )
    out = await _run(s, plan, f"wildcards {p.filters}")
    m = _flow_metrics(out, float(p.subscribers))
    m["filters"] = p.filters
    m["distinct_topics"] = p.publishers * p.topics
    m["setup_s"] = round(out.connect_s, 3)
    _cpu_per_million(m, out)
    head = ["received_per_s", "broker_cpu_s_per_1m", "loss_pct"]
    return _result("wildcards", p, out, m, "received_per_s", head)


async def cluster(s: Settings, p: Params) -> ScenarioResult:
    if len(s.targets) < 2:
        raise ValueError("the cluster scenario needs at least two --target HOST:PORT")
    others = list(range(1, len(s.targets)))
    plan = _plan(
        s,
        p,
        subs=subscribers(p, "bench/cluster/#", others),
        pubs=publishers(p, "bench/cluster/%i", target=0),
        fanout=float(p.subscribers),
    )
    out = await _run(s, plan, "cluster")
    m = _flow_metrics(out, plan.fanout)
    m["deliveries_per_s"] = m.pop("received_per_s")
    m["nodes"] = len(s.targets)
    return _result("cluster", p, out, m, "deliveries_per_s", ["deliveries_per_s", "loss_pct"])


PLACEMENTS = ("first", "others", "all")


def placement(where: str, targets: int) -> list[int]:
    """Target indexes for `first`, `others` (all but the first; the first alone if it is the
    only one) or `all`."""
    if where not in PLACEMENTS:
        raise ValueError(f"placement {where!r} is not one of {', '.join(PLACEMENTS)}")
    if where == "first" or targets == 1:
        return [0]
    if where == "others":
        return list(range(1, targets))
    return list(range(targets))


async def spread(s: Settings, p: Params) -> ScenarioResult:
    """Every publisher's messages reach every subscriber (topic `bench/spread/%i`, filter
    `bench/spread/#`), with the clients placed over the targets by `pubs_on`/`subs_on`."""
    n = len(s.targets)
    plan = _plan(
        s,
        p,
        subs=subscribers(p, "bench/spread/#", placement(p.subs_on, n)),
        pubs=publishers(p, "bench/spread/%i", targets=placement(p.pubs_on, n)),
        fanout=float(p.subscribers),
        # In a cluster the subscriptions must reach the publishers' nodes before publishing.
        settle=max(p.settle, 1.0) if n > 1 else 0.0,
    )
    out = await _run(s, plan, f"spread {p.pubs_on}->{p.subs_on}")
    m = _flow_metrics(out, plan.fanout)
    m["deliveries_per_s"] = m.pop("received_per_s")
    m["nodes"] = n
    return _result("spread", p, out, m, "deliveries_per_s", ["deliveries_per_s", "loss_pct"])


Scenario = Callable[[Settings, Params], Awaitable[ScenarioResult]]
SCENARIOS: dict[str, Scenario] = {
    "conn": conn,
    "pub": pub,
    "sub": sub,
    "fan-in": fan_in,
    "fan-out": fan_out,
    "latency": latency,
    "conn-scale": conn_scale,
    "many-subs": many_subs,
    "wildcards": wildcards,
    "cluster": cluster,
    "spread": spread,
}


#: Per-scenario defaults over `Params()`; sized so each run takes seconds, not minutes.
DEFAULTS: dict[str, dict[str, Any]] = {
    "conn": {"connections": 1000, "duration": 5.0},
    "pub": {"publishers": 10, "topic": "bench/%i"},
    "sub": {"subscribers": 10, "filter": "bench/#", "duration": 10.0},
    "fan-in": {"publishers": 10, "subscribers": 1},
    "fan-out": {"publishers": 1, "subscribers": 100},
    "latency": {"publishers": 1, "subscribers": 1, "rate": 1000.0, "latency": True, "spin": True},
    "conn-scale": {"connections": 10_000, "duration": 1.0},
    "many-subs": {"publishers": 10, "subscribers": 1, "filters": 10_000, "filter_clients": 100},
    "wildcards": {
        "publishers": 10,
        "subscribers": 1,
        "filters": 10_000,
        "filter_clients": 100,
        "topics": 1000,
    },
    "cluster": {"publishers": 1, "subscribers": 10},
    "spread": {"publishers": 1, "subscribers": 100, "settle": 0.0},
}


def make_params(name: str, **overrides: Any) -> Params:
    """`Params` with the scenario's defaults, then `overrides` (unknown names are an error)."""
    merged = {**DEFAULTS.get(name, {}), **overrides}
    return Params(**merged)


async def run_scenario(name: str, settings: Settings, params: Params) -> ScenarioResult:
    return await SCENARIOS[name](settings, params)
