"""`minibroker cluster`: what each node process is started with."""

from __future__ import annotations

from broker.cli import build_parser
from broker.cluster_cli import node_commands


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_node_i_uses_base_plus_i_minus_1_and_joins_node1() -> None:
    args = build_parser().parse_args(["cluster", "--nodes", "3", "--data-dir", "d"])
    commands = node_commands(args)
    assert len(commands) == 3
    for i, argv in enumerate(commands, start=1):
        assert argv[0] == "start"
        assert _flag(argv, "--node-name") == f"node{i}@127.0.0.1"
        assert _flag(argv, "--mqtt-port") == str(1883 + i - 1)
        assert _flag(argv, "--ws-port") == str(8083 + i - 1)
        assert _flag(argv, "--http-port") == str(8080 + i - 1)
        assert _flag(argv, "--cluster-port") == str(7946 + i - 1)
        assert _flag(argv, "--data-dir") == f"d/node{i}"
        assert _flag(argv, "--join") == (None if i == 1 else "127.0.0.1:7946")


def test_base_ports_zero_and_seed_from_the_banner() -> None:
    args = build_parser().parse_args(
        ["cluster", "--nodes", "2", "--base-mqtt-port", "0", "--base-cluster-port", "0",
         "--host", "0.0.0.0"]
    )  # fmt: skip
    first, second = node_commands(args, seed_port=40001)
    assert _flag(first, "--mqtt-port") == _flag(second, "--mqtt-port") == "0"
    assert _flag(second, "--cluster-port") == "0"
    assert _flag(second, "--join") == "127.0.0.1:40001"
    assert _flag(second, "--node-name") == "node2@127.0.0.1"  # not @0.0.0.0
    assert _flag(second, "--host") == "0.0.0.0"


def test_nodes_must_be_positive() -> None:
    from broker.cli import main

    assert main(["cluster", "--nodes", "0"]) == 2
