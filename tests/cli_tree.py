"""Helpers for end-to-end tests of the command lines: the argparse trees, subprocess runs.

The trees are walked from the parser objects themselves, so a new subcommand is tested the day
it is added. Subprocesses get this checkout first on PYTHONPATH and only ever talk to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import benchmarks.cli
import broker.cli

REPO = Path(__file__).resolve().parents[1]
#: At most this many CLI subprocesses at once (2 cores, shared).
PARALLEL = 4
RUN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Tool:
    name: str
    build_parser: Callable[[], argparse.ArgumentParser]
    main: Callable[[list[str] | None], int]
    argv0: tuple[str, ...]  # how to run it as a process from this checkout


TOOLS = (
    Tool(
        "minibroker", broker.cli.build_parser, broker.cli.main, (sys.executable, "-m", "broker.cli")
    ),
    Tool(
        "minibroker-bench",
        benchmarks.cli.build_parser,
        benchmarks.cli.main,
        (sys.executable, "-m", "benchmarks"),
    ),
)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The direct subcommands of a parser (aliases once)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    found[name] = sub
    return found


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the tree, the root first: (words after the program name, parser)."""
    yield path, parser
    for name, sub in subcommands(parser).items():
        yield from walk(sub, (*path, name))


def required_args(parser: argparse.ArgumentParser) -> list[str]:
    """The smallest argument list that satisfies a leaf parser's required arguments."""
    argv: list[str] = []
    positionals: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        value = str(next(iter(action.choices))) if action.choices else "x"
        if action.option_strings:
            if action.required:
                argv += [action.option_strings[-1], value]
        elif action.nargs != "?" and action.nargs != "*":
            positionals.append(value)
    return argv + positionals


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(
    argv: Sequence[str], cwd: Path = REPO, timeout: float = RUN_TIMEOUT, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded); text output captured."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_many(jobs: Sequence[Sequence[str]], **env: str) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at most PARALLEL at a time, results in the jobs' order."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(lambda argv: run(argv, **env), jobs))


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed (nobody else got it since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def one_error_line(stderr: str, prog: str) -> str:
    """Assert `stderr` is one line `<prog...>: error: ...` without a traceback; return it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prog) and ": error: " in lines[0], stderr
    return lines[0]
