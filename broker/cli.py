"""Command line and composition root: ``minibroker start|cluster|version|apps|...``.

Why here: this is the only module allowed to import every layer. It turns a TOML file plus
command-line flags into one validated ``BrokerConfig`` and hands it to the node runtime, which
owns listeners, signals and the banner. Flags win over the file.

Exit codes: 0 success or Ctrl-C, 1 ``--test-config`` found a problem or a runtime error (a
port in use, a node that cannot be reached), 2 bad usage or a configuration error at start.
Every error is one line on stderr; ``--debug`` adds the traceback (broker/server/cli_support).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from broker.cluster_cli import add_cluster_parser, cluster_main
from broker.plugins.passwd_file import add_passwd_parser, passwd_main
from broker.server.banner import broker_version
from broker.server.cli_support import CliParser, describe, run_main
from broker.server.config import (
    BrokerConfig,
    ConfigError,
    apply_overrides,
    load_config,
)
from broker.server.config.reference import render_reference
from broker.server.errors import StartupError
from broker.server.logs import LOG_FORMATS
from broker.server.logs import configure as configure_logging
from management.apps import add_apps_parser, apps_main
from management.ctl import add_ctl_parser, ctl_main

__all__ = ["build_parser", "main"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _port(text: str) -> int:
    """argparse type for a port: 0 (ephemeral) or 1..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate from main() so tests and docs can inspect it."""
    parser = CliParser(prog="minibroker", description="An MQTT 3.1.1/5.0 broker with clustering.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser("start", help="run a broker node in the foreground")
    start.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
    start.add_argument("--node-name", metavar="NAME", help="node name, e.g. minibroker@10.0.0.1")
    start.add_argument("--host", metavar="ADDR", help="bind address for every listener")
    start.add_argument("--mqtt-port", type=_port, metavar="N", help="MQTT/TCP port (1883)")
    start.add_argument("--ws-port", type=_port, metavar="N", help="MQTT/WebSocket port (8083)")
    start.add_argument("--http-port", type=_port, metavar="N", help="management API port (8080)")
    start.add_argument("--cluster-port", type=_port, metavar="N", help="cluster port (7946)")
    start.add_argument(
        "--join",
        action="append",
        metavar="HOST:PORT,...",
        help="cluster peers to join (comma-separated, may be repeated); dns:NAME:PORT joins "
        "every A/AAAA record of NAME, re-resolved periodically",
    )
    start.add_argument(
        "--advertise", metavar="HOST[:PORT]",
        help="the cluster address peers dial ([cluster] advertise), e.g. the pod IP",
    )  # fmt: skip
    start.add_argument("--data-dir", metavar="DIR", help="directory for persistent state")
    start.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    start.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="log lines: human-readable text (default) or JSON lines",
    )  # fmt: skip
    start.add_argument(
        "--loop", choices=LOOPS, default="asyncio",
        help="event loop: asyncio's (the default), uvloop (`pip install uvloop`), or auto = "
        "uvloop when it is installed; asyncio's is within about 5%% of uvloop here, and only "
        "it counts accept() failures for lack of file descriptors (max_open_files)",
    )  # fmt: skip
    start.add_argument(
        "--workers", default="1", metavar="N",
        help="worker processes sharing the MQTT/WebSocket ports (SO_REUSEPORT), one node to "
        "the API; auto = one per core (default 1)",
    )  # fmt: skip
    start.add_argument(
        "--test-config",
        action="store_true",
        help="check the configuration file and flags, then exit",
    )

    add_cluster_parser(sub, _port)
    add_ctl_parser(sub)
    sub.add_parser("version", help="print the version and exit")
    sub.add_parser(
        "config-reference",
        help="print every configuration key with its type, default and meaning (Markdown)",
    )
    add_apps_parser(sub)
    add_passwd_parser(sub)
    return parser


def _join_list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _config_from_args(args: argparse.Namespace) -> BrokerConfig:
    return apply_overrides(
        load_config(args.config),
        node_name=args.node_name,
        host=args.host,
        mqtt_port=args.mqtt_port,
        ws_port=args.ws_port,
        http_port=args.http_port,
        cluster_port=args.cluster_port,
        join=_join_list(args.join),
        data_dir=args.data_dir,
        advertise=getattr(args, "advertise", None),
    )


def _configure_logging(verbose: bool, fmt: str = "text") -> None:
    configure_logging(logging.DEBUG if verbose else logging.INFO, fmt)


def _error(message: str) -> None:
    print(f"minibroker: error: {message}", file=sys.stderr)


LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for `--loop`: uvloop's when asked for or, with `auto`, when installed;
    else asyncio's own, on the selector that serves the lean transports from the loop's own
    epoll (`broker.server.lean_selector`). Raises ImportError for `uvloop` without uvloop."""
    from broker.server.lean_selector import new_event_loop

    if choice == "asyncio":
        return new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _test_config(args: argparse.Namespace) -> int:
    """`start --test-config`: the file, then what `start` reads besides it (TLS, password and
    ACL files, plugins, data files); every problem on its own line, exit 1 if any."""
    try:
        cfg = _config_from_args(args)
    except ConfigError as exc:
        problems = exc.problems
    else:
        from broker.plugins.preflight import preflight

        logging.disable(logging.CRITICAL)  # the plugins' own load messages are not the answer
        try:
            problems = preflight(cfg)
        finally:
            logging.disable(logging.NOTSET)
    for problem in problems:
        _error(problem)
    if problems:
        return 1
    print(f"configuration OK: {args.config or '(built-in defaults)'}")
    return 0


def _start(args: argparse.Namespace, argv: list[str]) -> int:
    from broker.server.workers import WORKER_ENV, WorkerSpec, apply_worker, parse_workers

    try:
        workers = parse_workers(args.workers)
    except ValueError:
        _error(f"--workers: expected a number >= 1 or auto, got {args.workers!r}")
        return 2
    if args.test_config:
        return _test_config(args)
    try:
        cfg = _config_from_args(args)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    worker_env = os.environ.pop(WORKER_ENV, None)
    worker = WorkerSpec.from_env(worker_env) if worker_env else None
    if worker is not None:
        apply_worker(cfg, worker)
    elif workers > 1:
        _configure_logging(args.verbose, args.log_format)
        from broker.server.workers import supervise

        try:
            return supervise(cfg, workers, argv)
        except OSError as exc:  # a port in use, found while reserving the ports
            _error(f"cannot start listeners: {describe(exc)}")
            return 1
    try:
        factory = loop_factory(args.loop)
    except ImportError:
        _error("--loop uvloop: uvloop is not installed (pip install uvloop)")
        return 2
    _configure_logging(args.verbose, args.log_format)
    # Imported here so `version` and `--test-config` stay fast and free of runtime imports.
    from broker.app import run as run_node

    # Ctrl-C before the node installed its signal handlers is still a clean stop.
    try:
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run_node(cfg) if worker is None else run_node(cfg, worker))
    except StartupError as exc:  # a corrupt data file, a plugin that cannot load
        _error(str(exc))
        return 1
    except OSError as exc:  # typically a port already in use
        _error(f"cannot start listeners: {describe(exc)}")
        return 1
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "apps":
        return apps_main(args)
    if args.command == "passwd":
        return passwd_main(args)
    if args.command == "cluster":
        return cluster_main(args)
    if args.command == "ctl":
        return ctl_main(args)
    if args.command == "version":
        print(f"minibroker {broker_version()}")
        return 0
    if args.command == "config-reference":
        print(render_reference(), end="")
        return 0
    return _start(args, list(getattr(args, "argv", None) or sys.argv[1:]))


def _with_argv(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Keep the command line on the parsed arguments: `start --workers N` runs it N times."""
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minibroker`` console script; returns the process exit code.

    Every error ends as one line on stderr (``--debug`` adds the traceback), see cli_support.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    return run_main(
        "minibroker",
        build_parser(),
        words,
        lambda args: _dispatch(_with_argv(args, words)),
        (OSError, ConfigError, StartupError),
    )


if __name__ == "__main__":
    sys.exit(main())
