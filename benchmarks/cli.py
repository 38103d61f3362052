"""`minibroker-bench` / `python -m benchmarks`: an MQTT load generator in the spirit of emqtt-bench.

Subcommands: `conn`, `pub`, `sub` (building blocks), the named scenarios `fan-in`, `fan-out`,
`latency`, `conn-scale`, `many-subs`, `wildcards`, `cluster`, `spread`, then `report` (JSON
lines -> Markdown + PNG), `compare` (our broker vs mosquitto), `cluster-scale` (one node vs a
cluster) and `wildcard-goal` (many wildcard filters vs mosquitto). Any broker is a target
(`--target HOST:PORT`, or `--start minibroker|mosquitto|amqtt` to start one on a free port).
Each run prints one summary line with the generator's own CPU use, and appends one JSON object
to `--out FILE` when given.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import math
import os
import sys
from typing import Any

from benchmarks import cluster_scale, compare, memory, wildcard_goal
from benchmarks.brokers import BROKERS, RunningBroker, start_broker
from benchmarks.results import append_jsonl, make_record, read_jsonl, summary_line
from benchmarks.scenarios import DEFAULTS, SCENARIOS, Params, Settings, run_scenario
from broker.server.cli_support import CliParser, describe, run_main

__all__ = ["build_parser", "main", "parse_target"]

#: Scenario options: dest -> (flags, type, help). `%s` in help is replaced by the default.
OPTIONS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "publishers": (("-P", "--publishers"), int, "publishing clients (%s)"),
    "subscribers": (("-S", "--subscribers"), int, "subscribing clients (%s)"),
    "connections": (("-n", "--connections"), int, "connections to open and hold (%s)"),
    "qos": (("-q", "--qos"), int, "QoS of publishes and subscriptions, 0-2 (%s)"),
    "size": (("-s", "--size"), int, "payload bytes (%s)"),
    "rate": (("-r", "--rate"), float, "messages/s per publisher; 0 = as fast as acked (%s)"),
    "count": (("-L", "--count"), int, "messages per publisher (sub: in total); 0 = no limit (%s)"),
    "duration": (("-d", "--duration"), float, "seconds of publishing or holding (%s)"),
    "topic": (("-t", "--topic"), str, "topic pattern; %%i = client number, %%c = id (%s)"),
    "filter": (("-f", "--filter"), str, "subscription filter pattern (%s)"),
    "inflight": (("--inflight",), int, "unacknowledged QoS 1/2 messages per publisher (%s)"),
    "connect_rate": (("-R", "--connect-rate"), float, "connections/s; 0 = unpaced (%s)"),
    "connect_concurrency": (("--connect-concurrency",), int, "handshakes in flight at once (%s)"),
    "filters": (("--filters",), int, "unrelated wildcard filters (%s)"),
    "filter_clients": (("--filter-clients",), int, "clients holding them (%s)"),
    "topics": (("--topics",), int, "topics per publisher, published in turn (%s)"),
    "settle": (("--settle",), float, "idle seconds before reading broker memory (%s)"),
    "drain": (("--drain",), float, "max seconds to wait for deliveries after publishing (%s)"),
    "coalesce_ms": (("--coalesce-ms",), float, "subscribers batch reads this long; 0 = off (%s)"),
    "pubs_on": (("--pubs-on",), str, "publishers' targets: first, others or all (%s)"),
    "subs_on": (("--subs-on",), str, "subscribers' targets: first, others or all (%s)"),
}
#: Counts of things that must exist; every other number given must be at least 0.
AT_LEAST_ONE = (
    *("publishers", "subscribers", "connections", "inflight"),
    *("connect_concurrency", "filter_clients", "topics"),
)
PLACES = ("first", "others", "all")
_FLOW = [
    *("qos", "size", "rate", "count", "duration", "inflight", "connect_rate", "drain"),
    "coalesce_ms",
]
SCENARIO_OPTIONS: dict[str, list[str]] = {
    "conn": ["connections", "connect_rate", "connect_concurrency", "duration", "settle"],
    "pub": ["publishers", "topic", *_FLOW],
    "sub": ["subscribers", "filter", "qos", "count", "duration", "connect_rate", "coalesce_ms"],
    "fan-in": ["publishers", "subscribers", *_FLOW],
    "fan-out": ["publishers", "subscribers", *_FLOW],
    "latency": ["publishers", "qos", "size", "rate", "count", "duration", "drain"],
    "conn-scale": ["connections", "connect_rate", "connect_concurrency", "duration", "settle"],
    "many-subs": ["publishers", "filters", "filter_clients", *_FLOW],
    "wildcards": ["publishers", "filters", "filter_clients", "topics", *_FLOW],
    "cluster": ["publishers", "subscribers", *_FLOW],
    "spread": ["publishers", "subscribers", "pubs_on", "subs_on", *_FLOW],
}
HELP = {
    "conn": "open N connections at a rate and hold them",
    "pub": "P publishers at a rate or as fast as acknowledged",
    "sub": "S subscribers on a filter, counting what arrives",
    "fan-in": "P publishers -> 1 subscriber on '#'",
    "fan-out": "1 publisher -> S subscribers",
    "latency": "one-to-one at a fixed rate; p50/p95/p99/max",
    "conn-scale": "connect rate and broker memory per connection",
    "many-subs": "routing throughput with 10 vs 10,000 unrelated wildcard filters",
    "wildcards": "fan-in routed by a wildcard filter among --filters others, --topics each",
    "cluster": "publishers on the first --target, subscribers on the others",
    "spread": "publishers and subscribers placed over the --targets (--pubs-on/--subs-on)",
}


def parse_target(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (loopback) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port is not a number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    host = host.strip("[]") or "127.0.0.1"
    return host, port


def _at_least(low: int) -> Any:
    """argparse type: an integer not below `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: at least {low}")
        return value

    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target and run")
    g.add_argument(
        "--target",
        action="append",
        type=parse_target,
        metavar="HOST:PORT",
        help="broker to load; repeat for the cluster scenario (127.0.0.1:1883)",
    )
    g.add_argument("--host", help="shorthand for --target HOST:PORT with --port")
    g.add_argument("-p", "--port", type=_at_least(1), help="shorthand for --target with --host")
    g.add_argument(
        "--start",
        choices=list(BROKERS),
        help="start this broker on a free loopback port for the run",
    )
    g.add_argument(
        "--core", type=_at_least(0), default=None, help="pin a --start'ed broker to this core"
    )
    g.add_argument(
        "--broker-pid", type=_at_least(1), help="read the broker's CPU and VmRSS from /proc"
    )
    g.add_argument(
        "--procs",
        type=_at_least(0),
        default=1,
        help="load worker processes (1); 0 runs in this process",
    )
    g.add_argument("--label", help="broker name/version for the results (default: target)")
    g.add_argument("--out", metavar="FILE", help="append results as JSON lines ('-' = stdout)")
    g.add_argument(
        "--repeat", type=_at_least(1), default=1, help="run the scenario this many times"
    )
    g.add_argument("--no-uvloop", action="store_true", help="workers use asyncio, not uvloop")
    g.add_argument("--quiet", action="store_true", help="no live progress on stderr")


def _add_scenario(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=HELP[name], description=HELP[name])
    base = dataclasses.asdict(Params()) | DEFAULTS.get(name, {})
    g = p.add_argument_group("scenario")
    for dest in SCENARIO_OPTIONS[name]:
        flags, kind, text = OPTIONS[dest]
        g.add_argument(
            *flags,
            dest=dest,
            type=kind,
            default=argparse.SUPPRESS,
            # argparse %-formats help: a default such as 'bench/%i' must reach it as '%%i'
            help=text.replace("(%s)", f"({base[dest]})".replace("%", "%%")),
        )
    if name not in ("conn", "conn-scale"):
        g.add_argument(
            "--spin",
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=f"busy-poll the generator's loops while publishing, so the wake-up time of an "
            f"idle core is not measured; costs a core ({'on' if base['spin'] else 'off'})",
        )
    if name in ("pub", "sub", "fan-in", "fan-out", "cluster", "spread"):
        g.add_argument(
            "--latency",
            action="store_true",
            default=argparse.SUPPRESS,
            help="timestamp payloads (pub) / report latency percentiles (sub)",
        )
    _add_common(p)
    p.set_defaults(scenario=name)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="minibroker-bench",
        description="MQTT load generator: connections, publishers, subscribers and scenarios "
        "against any broker; results as JSON lines; reports and a comparison with mosquitto.",
        epilog="Examples: minibroker-bench fan-in --start mosquitto --out r.jsonl; "
        "minibroker-bench pub --target 127.0.0.1:1883 -P 4 -q 1 -r 500 -t 'bench/%i'; "
        "minibroker-bench report r.jsonl --charts charts; minibroker-bench compare --rounds 3",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SCENARIOS:
        _add_scenario(sub, name)
    rep = sub.add_parser("report", help="JSON lines result files -> Markdown table + PNG charts")
    rep.add_argument("files", nargs="+", help="result files written with --out")
    rep.add_argument("--baseline", help="label the ratio columns divide by (default: mosquitto*)")
    rep.add_argument("--charts", metavar="DIR", help="write PNG charts here (needs matplotlib)")
    rep.add_argument("-o", "--output", metavar="FILE", help="write the Markdown here, not stdout")
    cmp = sub.add_parser(
        "compare", help="our broker vs mosquitto: medians and ratios", description=compare.__doc__
    )
    compare.add_arguments(cmp)
    mem = sub.add_parser(
        "memory",
        help="an in-process node's RSS per idle connection and what each one holds",
        description=memory.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    memory.add_arguments(mem)
    scale = sub.add_parser(
        "cluster-scale",
        help="one node vs a cluster of N on this machine: medians and ratios",
        description=cluster_scale.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster_scale.add_arguments(scale)
    wild = sub.add_parser(
        "wildcard-goal",
        help="msg/s and CPU per message with 100 to 100,000 wildcard filters vs mosquitto",
        description=wildcard_goal.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wildcard_goal.add_arguments(wild)
    return parser


def _targets(args: argparse.Namespace) -> list[tuple[str, int]]:
    targets: list[tuple[str, int]] = list(args.target or [])
    if args.host or args.port:
        targets.append((args.host or "127.0.0.1", args.port or 1883))
    return targets or [("127.0.0.1", 1883)]


def scenario_params(args: argparse.Namespace) -> Params:
    names = [*OPTIONS, "latency", "spin"]
    given = {dest: getattr(args, dest) for dest in names if hasattr(args, dest)}
    merged = dataclasses.asdict(Params()) | DEFAULTS.get(args.scenario, {}) | given
    for dest, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        flag = OPTIONS[dest][0][-1]
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number")
        low = 1 if dest in AT_LEAST_ONE else 0
        if value < low:
            raise ValueError(f"{flag} must be at least {low}")
    for dest in ("pubs_on", "subs_on"):
        if given.get(dest, "all") not in PLACES:
            raise ValueError(f"{OPTIONS[dest][0][-1]} must be one of {', '.join(PLACES)}")
    params = Params(**merged)
    if params.qos not in (0, 1, 2):
        raise ValueError("--qos must be 0, 1 or 2")
    if params.duration <= 0:
        raise ValueError("--duration must be positive")
    return params


def _run_scenario(args: argparse.Namespace) -> int:
    try:
        params = scenario_params(args)
    except ValueError as exc:
        print(f"minibroker-bench: error: {exc}", file=sys.stderr)
        return 2
    broker: RunningBroker | None = None
    if args.start:
        try:
            broker = start_broker(args.start, core=args.core, use_uvloop=True)
        except (OSError, RuntimeError, TimeoutError) as exc:  # not installed, did not answer
            print(f"minibroker-bench: error: cannot start {args.start}: {exc}", file=sys.stderr)
            return 1
    try:
        targets = [broker.target] if broker else _targets(args)
        pid = args.broker_pid or (broker.pid if broker else None)
        label = args.label or (broker.label if broker else f"{targets[0][0]}:{targets[0][1]}")
        settings = Settings(
            targets,
            procs=args.procs,
            broker_pid=pid,
            progress=False if args.quiet else None,
            uvloop=not args.no_uvloop,
        )
        for _ in range(max(args.repeat, 1)):
            result = asyncio.run(run_scenario(args.scenario, settings, dataclasses.replace(params)))
            record = make_record(result, label, targets)
            print(summary_line(record), flush=True)
            if args.out:
                append_jsonl(args.out, [record])
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"minibroker-bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            broker.stop()
    return 0


def _report(args: argparse.Namespace) -> int:
    from benchmarks.report import render_report

    try:
        records = list(read_jsonl(args.files))
    except (OSError, ValueError) as exc:
        print(f"minibroker-bench report: error: {describe(exc)}", file=sys.stderr)
        return 1
    if not records:
        print("minibroker-bench: error: no records in those files", file=sys.stderr)
        return 1
    link_from = os.path.dirname(os.path.abspath(args.output)) if args.output else "."
    text = render_report(records, baseline=args.baseline, charts=args.charts, link_from=link_from)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "charts", None) and importlib.util.find_spec("matplotlib") is None:
        # Checked before the runs: a `compare` would otherwise measure for minutes first.
        raise RuntimeError("--charts needs matplotlib: pip install 'minibroker[bench]'")
    if args.command == "report":
        return _report(args)
    if args.command == "compare":
        return compare.run(args)
    if args.command == "cluster-scale":
        return cluster_scale.run(args)
    if args.command == "memory":
        return memory.run(args)
    if args.command == "wildcard-goal":
        return wildcard_goal.run(args)
    return _run_scenario(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `minibroker-bench` and `python -m benchmarks`; returns the exit code.

    Every error ends as one line on stderr (`--debug` adds the traceback), see cli_support.
    """
    return run_main(
        "minibroker-bench", build_parser(), argv, _dispatch, (OSError, RuntimeError, ValueError)
    )


if __name__ == "__main__":
    sys.exit(main())
