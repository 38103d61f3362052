"""`compare`: our broker against mosquitto (and amqtt), same machine, same run, alternating,
medians + ratios, and issue 15's goal of each row (`benchmarks/goals.py`) with whether our
broker met it in this run.

Each round runs every scenario of the suite once per broker, alternating which broker goes
first; each run gets a freshly started broker (so memory per connection starts from an idle
process) pinned to core 0 with `taskset -c 0`, while this process and its load workers are
pinned to core 1 (`os.sched_setaffinity`, what `taskset -c 1` does). Our broker runs on uvloop
when it is installed (`minibroker start --loop auto`). Every run is appended to `--out` as a
JSON line; at the end the medians and the ratio of each broker to mosquitto per scenario are
printed as Markdown. amqtt (`--brokers minibroker,mosquitto,amqtt`) runs from its own virtualenv
(`AMQTT_BIN`, PATH, or /opt/amqtt-venv) and gets its own `amqtt / mosquitto` column.
`--scenarios latency --brokers floor-epoll,minibroker,mosquitto` adds the Python floor
(`benchmarks.floor_relay`: a relay doing nothing else), judged against the goals as our broker
is: a goal the floor cannot meet, no Python broker can.

The ratio is the figure to track: absolute numbers on a shared 2-core machine are noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.brokers import (
    AMQTT_INSTALL,
    BROKERS,
    RunningBroker,
    find_amqtt,
    find_mosquitto,
    start_broker,
    tree_of,
)
from benchmarks.floor_relay import KINDS as FLOOR_KINDS
from benchmarks.report import finish_rounds, keep_run
from benchmarks.results import Record, make_record
from benchmarks.scenarios import Settings, make_params, run_scenario

__all__ = ["SUITE", "add_arguments", "main", "run", "select_brokers"]


@dataclass(frozen=True)
class Case:
    scenario: str
    overrides: dict[str, Any]
    scales_with_duration: bool = True


#: The comparison suite, in the order it runs. Sizes follow issue 5's targets.
SUITE: dict[str, Case] = {
    "fan-in-q0": Case("fan-in", {"qos": 0}),
    "fan-in-q1": Case("fan-in", {"qos": 1}),
    "fan-out-q0": Case("fan-out", {"qos": 0}),
    "latency": Case("latency", {"rate": 1000.0}),
    "conn-scale": Case("conn-scale", {"duration": 1.0}, scales_with_duration=False),
    "many-subs": Case("many-subs", {}),
    "wildcards": Case("wildcards", {}),
}


#: Seconds of each latency run: 20,000 messages at 1,000/s, so that a round's p99 is its 200th
#: slowest message rather than its 40th (4 s); `report` pools the rounds for the goal.
LATENCY_DURATION = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario and broker (3)")
    parser.add_argument(
        "--scenarios", default=",".join(SUITE), help=f"comma-separated subset of {','.join(SUITE)}"
    )
    parser.add_argument(
        "--brokers",
        default="minibroker,mosquitto",
        help=(
            "brokers to start (minibroker,mosquitto; also amqtt: minibroker,mosquitto,amqtt; "
            "and minibroker@DIR: our broker from another source tree, to compare versions in "
            "one run); mosquitto and amqtt are skipped if not installed"
        ),
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        default=4.0,
        help="publishing seconds per throughput run (4)",
    )
    parser.add_argument(
        "--latency-duration",
        type=float,
        default=LATENCY_DURATION,
        help=f"publishing seconds per latency run ({LATENCY_DURATION:g}: see LATENCY_DURATION)",
    )
    parser.add_argument(
        "--drain", type=float, default=5.0, help="max seconds to wait for deliveries after (5)"
    )
    parser.add_argument(
        "--connections", type=int, default=10_000, help="conn-scale connections (10000)"
    )
    parser.add_argument(
        "--filters",
        type=int,
        default=10_000,
        help="many-subs unrelated filters, wildcards filters on the paths (10000)",
    )
    parser.add_argument("--subscribers", type=int, default=100, help="fan-out subscribers (100)")
    parser.add_argument("--procs", type=int, default=1, help="load worker processes (1)")
    parser.add_argument("--broker-core", type=int, default=0, help="core for the brokers (0)")
    parser.add_argument("--load-core", type=int, default=1, help="core for the generator (1)")
    parser.add_argument("--no-uvloop", action="store_true", help="run our broker on asyncio")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON lines file to append to (bench-results/compare-DATE.jsonl)",
    )
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--charts", default=None, help="also draw PNG charts into this directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="no live progress")


def _pin_self(core: int) -> bool:
    """Pin this process (and so the workers it spawns) to `core`, if the machine has it."""
    with contextlib.suppress(AttributeError, OSError):
        if core in os.sched_getaffinity(0) and len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {core})
            return True
    return False


def _case_params(name: str, args: argparse.Namespace) -> dict[str, Any]:
    case = SUITE[name]
    params: dict[str, Any] = dict(case.overrides)
    if case.scales_with_duration:
        params["duration"] = args.duration
        params["drain"] = args.drain
    if case.scenario == "latency":
        params["duration"] = args.latency_duration
    if case.scenario == "conn-scale":
        params["connections"] = args.connections
    if case.scenario in ("many-subs", "wildcards"):
        params["filters"] = args.filters
    if case.scenario == "fan-out":
        params["subscribers"] = args.subscribers
    return params


def _one_run(broker_name: str, name: str, args: argparse.Namespace, round_no: int) -> Record | None:
    case = SUITE[name]
    broker: RunningBroker = start_broker(
        broker_name, core=args.broker_core, use_uvloop=not args.no_uvloop
    )
    try:
        settings = Settings(
            targets=[broker.target],
            procs=args.procs,
            broker_pid=broker.pid,
            progress=False if args.quiet else None,
        )
        params = make_params(case.scenario, **_case_params(name, args))
        result = asyncio.run(run_scenario(case.scenario, settings, params))
        alive = broker.proc.poll() is None
    except Exception as exc:  # one failed run must not lose the others
        print(f"{broker.label} {name}: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    finally:
        broker.stop()
    if not alive:
        result.errors.append("the broker exited during the run")
    return make_record(
        result,
        broker.label,
        [broker.target],
        extra={
            "round": round_no,
            "case": name,
            "pinned": {"broker": args.broker_core, "load": args.load_core},
        },
    )


def select_brokers(spec: str) -> list[str] | None:
    """The brokers of `--brokers` that can run here, in order and without repeats; the optional
    ones that are not installed are left out with a note on stderr. None (after a message) when
    a name is unknown."""
    brokers = list(dict.fromkeys(b.strip() for b in spec.split(",") if b.strip()))
    unknown = [
        b
        for b in brokers
        if b not in BROKERS
        and not b.startswith("minibroker@")
        and b.removeprefix("floor-") not in FLOOR_KINDS
    ]
    for name in brokers:
        try:
            tree_of(name)
        except ValueError as exc:
            print(f"minibroker-bench compare: error: {exc}", file=sys.stderr)
            return None
    if unknown:
        print(
            f"minibroker-bench compare: error: unknown brokers: {', '.join(unknown)} "
            f"(known: {', '.join(BROKERS)}, minibroker@DIR, "
            f"{', '.join('floor-' + k for k in FLOOR_KINDS)})",
            file=sys.stderr,
        )
        return None
    if "mosquitto" in brokers and find_mosquitto() is None:
        print("mosquitto is not installed (apt-get install -y mosquitto): skipped", file=sys.stderr)
        brokers.remove("mosquitto")
    if "amqtt" in brokers and find_amqtt() is None:
        print(
            f"amqtt is not installed ({AMQTT_INSTALL}, or set AMQTT_BIN): skipped",
            file=sys.stderr,
        )
        brokers.remove("amqtt")
    return brokers


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        print(
            f"minibroker-bench compare: error: unknown scenarios: {', '.join(unknown)} "
            f"(known: {', '.join(SUITE)})",
            file=sys.stderr,
        )
        return 2
    brokers = select_brokers(args.brokers)
    if brokers is None:
        return 2
    if any(b.startswith("floor-") for b in brokers) and set(names) != {"latency"}:
        print(
            "minibroker-bench compare: error: the floor-* relays (benchmarks.floor_relay) "
            "serve one subscriber and run only --scenarios latency",
            file=sys.stderr,
        )
        return 2
    if not brokers:
        print("no broker to run", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join("bench-results", f"compare-{stamp}.jsonl")
    if not _pin_self(args.load_core):
        print("note: generator not pinned (fewer than 2 usable cores)", file=sys.stderr)
    records: list[Record] = []
    started = time.monotonic()
    for round_no in range(1, args.rounds + 1):
        for name in names:
            order = brokers if round_no % 2 else list(reversed(brokers))
            for broker_name in order:
                keep_run(_one_run(broker_name, name, args, round_no), records, out, round_no)
    return finish_rounds(records, out, started, args.markdown, args.charts, goals=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=(__doc__ or "").split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
