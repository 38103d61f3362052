"""Every command line of `minibroker` (ctl included) and `minibroker-bench`, end to end.

The commands are found by walking the argparse trees (tests/cli_tree.py), never listed here.
For each: `--help` in a subprocess answers with usage on stdout and exit 0; a bad flag, a bad
value and a missing required argument are one line on stderr and exit 2; an unreachable target
(a closed port, a bad URL, a wrong secret, a port in use, an unreadable file) is one line and
exit 1. Never a traceback, unless `--debug` asks for one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_tree import (
    TOOLS,
    Tool,
    closed_port,
    one_error_line,
    required_args,
    run,
    run_many,
    subcommands,
    walk,
)

import benchmarks.cli
import broker.cli
from broker.app import NodeApp
from management import ctl

COMMANDS = [(tool, path, parser) for tool in TOOLS for path, parser in walk(tool.build_parser())]
LEAVES = [(tool, path, parser) for tool, path, parser in COMMANDS if not subcommands(parser)]
CTL_LEAVES = [
    (path, parser)
    for tool, path, parser in LEAVES
    if tool.name == "minibroker" and path[0] == "ctl"
]
BENCH_SCENARIOS = [
    path
    for tool, path, parser in LEAVES
    if tool.name == "minibroker-bench" and "--target" in parser._option_string_actions
]


def _id(tool: Tool, path: tuple[str, ...]) -> str:
    return " ".join((tool.name, *path))


def _ids(rows: list[Any]) -> list[str]:
    return [_id(row[0], row[1]) for row in rows]


def test_the_walk_reaches_every_level() -> None:
    """The walk descends into nested subparsers (ctl's groups), not just the first level."""
    depth = {tool.name: max(len(path) for t, path, _ in COMMANDS if t is tool) for tool in TOOLS}
    assert depth["minibroker"] >= 3 and depth["minibroker-bench"] >= 1
    assert len(CTL_LEAVES) > 10 and len(BENCH_SCENARIOS) > 5


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("tool", TOOLS, ids=[t.name for t in TOOLS])
def test_every_command_answers_help(tool: Tool) -> None:
    """One subprocess per command (a few at a time): usage on stdout, nothing on stderr, 0."""
    paths = [path for t, path, _ in COMMANDS if t is tool]
    results = run_many([[*tool.argv0, *path, "--help"] for path in paths])
    failures = []
    for path, proc in zip(paths, results, strict=True):
        prog = " ".join((tool.name, *path))
        if proc.returncode != 0 or not proc.stdout.startswith(f"usage: {prog}") or proc.stderr:
            failures.append(f"{prog} --help: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- usage errors


def _usage_error(tool: Tool, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert tool.main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert out == "", out
    return one_error_line(err, tool.name)


@pytest.mark.parametrize(("tool", "path", "parser"), COMMANDS, ids=_ids(COMMANDS))
def test_bad_flag_is_one_usage_line(
    tool: Tool,
    path: tuple[str, ...],
    parser: argparse.ArgumentParser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if subcommands(parser):  # a group: the missing subcommand is reported (or the flag)
        line = _usage_error(tool, [*path, "--no-such-flag"], capsys)
        assert "required" in line or "--no-such-flag" in line, line
    else:
        line = _usage_error(tool, [*path, *required_args(parser), "--no-such-flag"], capsys)
        assert "unrecognized arguments: --no-such-flag" in line, line
    assert line.endswith("--help')"), line  # where to look next


@pytest.mark.parametrize(("tool", "path", "parser"), COMMANDS, ids=_ids(COMMANDS))
def test_missing_required_argument_is_one_usage_line(
    tool: Tool,
    path: tuple[str, ...],
    parser: argparse.ArgumentParser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not subcommands(parser) and not required_args(parser):
        pytest.skip("nothing is required")
    line = _usage_error(tool, list(path), capsys)
    assert "required" in line, line


def _typed_options(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose value is checked: a type other than str, or a fixed set of choices."""
    return [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and action.nargs != 0
        and (action.choices or action.type not in (None, str))
    ]


TYPED = [
    (tool, path, parser, option)
    for tool, path, parser in COMMANDS
    if not subcommands(parser)
    for option in _typed_options(parser)
]


@pytest.mark.parametrize(
    ("tool", "path", "parser", "option"),
    TYPED,
    ids=[f"{_id(t, p)} {o}" for t, p, _, o in TYPED],
)
def test_bad_value_is_one_usage_line(
    tool: Tool,
    path: tuple[str, ...],
    parser: argparse.ArgumentParser,
    option: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = _usage_error(tool, [*path, option, "!bad", *required_args(parser)], capsys)
    assert "!bad" in line, line


@pytest.mark.parametrize(
    ("tool", "argv"),
    [
        (TOOLS[0], ["ctl", "--timeout", "-1", "status"]),
        (TOOLS[0], ["ctl", "--timeout", "nan", "clients", "list"]),
        (TOOLS[0], ["ctl", "clients", "show", ""]),  # would name the list itself in the URL
        (TOOLS[0], ["ctl", "banned", "del", "--as", "username", ""]),
        (TOOLS[1], ["pub", "-P", "0"]),
        (TOOLS[1], ["conn", "-n", "0"]),
        (TOOLS[1], ["pub", "-d", "nan"]),  # ran forever
        (TOOLS[1], ["pub", "-d", "inf"]),
        (TOOLS[1], ["pub", "-s", "-1"]),
        (TOOLS[1], ["pub", "-q", "1", "--inflight", "0"]),  # sent nothing, "successfully"
        (TOOLS[1], ["spread", "--pubs-on", "nowhere"]),
        (TOOLS[1], ["fan-in", "--procs", "-1"]),
        (TOOLS[1], ["fan-in", "--repeat", "0"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v.name,
)
def test_values_that_parse_but_make_no_sense_are_one_usage_line(
    tool: Tool, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before anything is sent or started (the target is a closed port anyway)."""
    target = ["--target", f"127.0.0.1:{closed_port()}"] if tool is TOOLS[1] else []
    _usage_error(tool, [*argv, *target], capsys)


def test_ban_end_the_platform_cannot_show_is_printed_as_is() -> None:
    assert ctl._when(None) == "forever"
    assert ctl._when(1e20) == "1e+20"  # time.localtime overflows: the list must still print
    assert ctl._when(0).startswith("19")


# --------------------------------------------------------------------------- ctl targets


def _ctl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = broker.cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("path", "parser"), CTL_LEAVES, ids=[" ".join(p) for p, _ in CTL_LEAVES])
def test_ctl_closed_port_and_bad_url_are_one_line(
    path: tuple[str, ...], parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*path, *required_args(parser)]
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = _ctl([*argv, "--url", url], capsys)
    assert code == 1 and out == "", (out, err)
    line = one_error_line(err, "minibroker ctl")
    assert line == f"minibroker ctl: error: cannot reach {url}: Connection refused"
    for bad in ("http://127.0.0.1:notaport", "http://[::1", "ftp://127.0.0.1"):
        code, out, err = _ctl([*argv, "--url", bad], capsys)
        assert code == 1 and out == "", (out, err)
        assert one_error_line(err, "minibroker ctl").startswith(
            f"minibroker ctl: error: bad URL {bad!r}"
        )


async def test_ctl_wrong_secret_is_one_line(
    app_factory: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every verb but `status` (like EMQX's /status, no auth) is refused with one line."""
    app: NodeApp = await app_factory()
    url = f"http://127.0.0.1:{app.http_port}"
    for path, parser in CTL_LEAVES:
        argv = [*path, *required_args(parser), "--url", url, "--secret", "wrong"]
        code, out, err = await asyncio.to_thread(_ctl, argv, capsys)
        if path == ("ctl", "status"):
            assert code == 0 and err == "", err
            continue
        assert code == 1 and out == "", (path, out, err)
        line = one_error_line(err, "minibroker ctl")
        assert line == f"minibroker ctl: error: authentication failed for app 'admin' at {url}"


# --------------------------------------------------------------------------- bench targets


def test_bench_scenarios_closed_port_are_one_line() -> None:
    """Each scenario, as a process with its worker process, fails at once and cleanly."""
    port = closed_port()
    argv0 = next(t.argv0 for t in TOOLS if t.name == "minibroker-bench")
    target = ["--target", f"127.0.0.1:{port}"]
    jobs = [[*argv0, *path, *target, *target] for path in BENCH_SCENARIOS]  # cluster wants 2
    for path, proc in zip(BENCH_SCENARIOS, run_many(jobs), strict=True):
        assert proc.returncode == 1, (path, proc.stdout, proc.stderr)
        line = one_error_line(proc.stderr, "minibroker-bench")
        # "Connection refused" (uvloop) or "ConnectionRefusedError: ... Connect call failed"
        assert f"cannot connect to 127.0.0.1:{port}" in line and "refused" in line.lower(), line


def test_bench_report_unreadable_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert benchmarks.cli.main(["report", str(missing)]) == 1
    line = one_error_line(capsys.readouterr().err, "minibroker-bench report")
    assert line == f"minibroker-bench report: error: {missing}: No such file or directory"
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json\n")
    assert benchmarks.cli.main(["report", str(garbage)]) == 1
    one_error_line(capsys.readouterr().err, "minibroker-bench report")


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--brokers", "nosuch"],
        ["compare", "--scenarios", "nosuch"],
        ["cluster-scale", "--workloads", "nosuch"],
        ["cluster-scale", "--nodes", "1"],
    ],
)
def test_bench_compare_bad_selection_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert benchmarks.cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, f"minibroker-bench {argv[0]}")


# --------------------------------------------------------------------------- minibroker targets


def _start_argv(tmp_path: Path, mqtt_port: int) -> list[str]:
    return [
        *("--node-name", "surface@127.0.0.1", "--host", "127.0.0.1"),
        *("--mqtt-port", str(mqtt_port), "--ws-port", "0", "--http-port", "0"),
        *("--cluster-port", "0", "--data-dir", str(tmp_path / "data")),
    ]


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def _without_logs(stderr: str) -> str:
    """A starting node logs on stderr too (say, a plugin that cannot be imported): the CLI's
    own lines are the others."""
    assert "Traceback" not in stderr, stderr
    return "".join(line for line in stderr.splitlines(True) if not LOG_LINE.match(line))


def test_start_port_in_use_and_missing_config_are_one_line(tmp_path: Path) -> None:
    argv0 = next(t.argv0 for t in TOOLS if t.name == "minibroker")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run([*argv0, "start", *_start_argv(tmp_path, port)])
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(_without_logs(proc.stderr), "minibroker")
    assert line == "minibroker: error: cannot start listeners: Address already in use " + (
        f"(127.0.0.1:{port})"
    )
    proc = run([*argv0, "start", "-c", str(tmp_path / "missing.toml")])
    assert proc.returncode == 2
    assert "cannot read configuration" in one_error_line(proc.stderr, "minibroker")


def test_cluster_port_in_use_stops_with_one_error_line(tmp_path: Path) -> None:
    """The node's own line is relayed with its `[node1]` prefix; the cluster adds one line."""
    argv0 = next(t.argv0 for t in TOOLS if t.name == "minibroker")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(
            [*argv0, "cluster", "--nodes", "2", "--base-mqtt-port", str(port)]
            + [f"--base-{kind}-port=0" for kind in ("ws", "http", "cluster")]
            + ["--data-dir", str(tmp_path / "data")]
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    own = [line for line in proc.stderr.splitlines() if not line.startswith("[node")]
    assert own == ["minibroker: error: node1 did not start"], proc.stderr
    assert "[node1] minibroker: error: cannot start listeners: Address already in use" in (
        proc.stderr
    )


def test_cluster_ports_beyond_65535_are_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any node starts (node 2 of 65535 would need port 65536)."""
    argv = ["cluster", "--nodes", "2", "--base-mqtt-port", "65535", "--data-dir", str(tmp_path)]
    assert broker.cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "minibroker")
    assert "--base-mqtt-port 65535" in line and "65536" in line
    assert not (tmp_path / "node1").exists()


def test_apps_and_passwd_unwritable_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert broker.cli.main(["apps", "--data-dir", str(not_a_dir), "add", "a", "s"]) == 1
    one_error_line(capsys.readouterr().err, "minibroker")
    assert broker.cli.main(["passwd", str(tmp_path), "user", "-b", "pw"]) == 1  # a directory
    one_error_line(capsys.readouterr().err, "minibroker")


# --------------------------------------------------------------------------- --debug


@pytest.mark.parametrize("tool", TOOLS, ids=[t.name for t in TOOLS])
def test_a_bug_is_one_line_and_debug_shows_the_traceback(
    tool: Tool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise TypeError("a bug for the test")

    if tool.name == "minibroker":
        monkeypatch.setattr(broker.cli, "_dispatch", broken)
        argv = ["version"]
    else:
        monkeypatch.setattr(benchmarks.cli, "_dispatch", broken)
        argv = ["report", "x.jsonl"]
    assert tool.main(argv) == 1
    line = one_error_line(capsys.readouterr().err, tool.name)
    assert "unexpected TypeError: a bug for the test" in line and "--debug" in line
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):  # before or after the verb
        assert tool.main(debug_argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and "TypeError: a bug for the test" in err, err


def test_help_mentions_debug() -> None:
    for tool in TOOLS:
        assert "--debug" in tool.build_parser().format_help()
