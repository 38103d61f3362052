"""`spread` (clients placed over the targets) and `cluster-scale` (one node vs a cluster)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import cli, cluster_scale
from benchmarks.report import variant
from benchmarks.scenarios import Settings, make_params, placement, run_scenario
from broker.server.node import Node


@pytest.mark.parametrize(
    ("where", "targets", "expected"),
    [
        ("first", 3, [0]),
        ("others", 3, [1, 2]),
        ("all", 3, [0, 1, 2]),
        ("others", 1, [0]),  # alone, the first is all there is
        ("all", 1, [0]),
    ],
)
def test_placement(where: str, targets: int, expected: list[int]) -> None:
    assert placement(where, targets) == expected


def test_placement_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="placement"):
        placement("middle", 2)


def test_spread_rows_name_their_placement() -> None:
    record = {
        "scenario": "spread",
        "params": {"qos": 0, "publishers": 1, "subscribers": 100, "size": 64,
                   "pubs_on": "first", "subs_on": "all"},
    }  # fmt: skip
    assert variant(record) == "spread q0 1p/100s first->all 64B"


def test_cli_has_spread_and_cluster_scale() -> None:
    args = cli.build_parser().parse_args(
        ["spread", "--pubs-on", "all", "--subs-on", "first", "-P", "3", "--target", ":1883"]
    )
    params = cli.scenario_params(args)
    assert (params.pubs_on, params.subs_on, params.publishers) == ("all", "first", 3)
    args = cli.build_parser().parse_args(
        ["cluster-scale", "--nodes", "3", "--workloads", "fan-out", "-S", "10", "--rounds", "1"]
    )
    assert (args.nodes, args.workloads, args.subscribers, args.rounds) == (3, "fan-out", 10, 1)


@pytest.mark.parametrize("argv", [["--workloads", "nope"], ["--nodes", "1"]])
def test_cluster_scale_rejects_bad_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cluster-scale", *argv]) == 2
    assert "cluster-scale" in capsys.readouterr().err


def test_workloads_place_fan_out_and_fan_in() -> None:
    fan_out, fan_in = cluster_scale.WORKLOADS["fan-out"], cluster_scale.WORKLOADS["fan-in"]
    assert (fan_out.pubs_on, fan_out.subs_on) == ("first", "all")
    assert (fan_in.pubs_on, fan_in.subs_on) == ("all", "first")


async def test_spread_delivers_to_subscribers_on_every_target(node: Node) -> None:
    # One node named twice: the placement logic runs, and every message reaches everyone.
    target = ("127.0.0.1", node.tcp_port)
    settings = Settings(targets=[target, target], procs=0, progress=False)
    params = make_params(
        "spread", publishers=2, subscribers=4, pubs_on="all", subs_on="all", count=50,
        duration=4.0, settle=0.0,
    )  # fmt: skip
    async with asyncio.timeout(10):
        result = await run_scenario("spread", settings, params)
    assert result.errors == []
    assert result.metrics["sent"] == 100
    assert result.metrics["received"] == 400
    assert result.metrics["loss_pct"] == 0.0
    assert result.metrics["nodes"] == 2
