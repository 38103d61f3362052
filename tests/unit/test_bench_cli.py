"""benchmarks.cli argument parsing, plan splitting, and the client's frames and scanner."""

from __future__ import annotations

import argparse
import asyncio
import random
from pathlib import Path
from typing import Any, cast

import pytest

from benchmarks import cli, compare
from benchmarks.client import BenchClient, FrameTemplate
from benchmarks.load import ConnRole, PubRole, SubRole
from benchmarks.runner import LoadPlan, split_plan
from benchmarks.scenarios import DEFAULTS, SCENARIOS, Params
from broker.protocol.codec import Decoder, encode, encode_publish
from broker.protocol.constants import MQTT_3_1_1
from broker.protocol.packets import PubAck, PubComp, Publish, PubRec, PubRel


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("broker.local:8883", ("broker.local", 8883)),
        ("[::1]:1883", ("::1", 1883)),
        (":1884", ("127.0.0.1", 1884)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert cli.parse_target(text) == expected


@pytest.mark.parametrize("text", ["localhost", "h:x", "h:0", "h:70000"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_target(text)


def test_every_scenario_has_a_subcommand_with_its_defaults() -> None:
    for name in SCENARIOS:
        args = _parse(name)
        params = cli.scenario_params(args)
        for key, value in DEFAULTS.get(name, {}).items():
            assert getattr(params, key) == value, (name, key)


def test_overrides_and_targets() -> None:
    args = _parse(
        "pub",
        "-P",
        "4",
        "-q",
        "1",
        "-r",
        "500",
        "-t",
        "a/%i",
        "-s",
        "10",
        "--target",
        "h1:1",
        "--target",
        "h2:2",
        "--procs",
        "3",
        "--out",
        "r.jsonl",
    )
    params = cli.scenario_params(args)
    assert (params.publishers, params.qos, params.rate, params.topic, params.size) == (
        4,
        1,
        500.0,
        "a/%i",
        10,
    )
    assert cli._targets(args) == [("h1", 1), ("h2", 2)]
    assert args.procs == 3 and args.out == "r.jsonl"
    assert cli._targets(_parse("sub")) == [("127.0.0.1", 1883)]
    assert cli._targets(_parse("sub", "-p", "1884")) == [("127.0.0.1", 1884)]


def test_options_only_where_they_mean_something() -> None:
    with pytest.raises(SystemExit):
        _parse("conn", "--qos", "1")
    assert cli.scenario_params(_parse("fan-in", "--latency")).latency is True


@pytest.mark.parametrize("argv", [["fan-in", "-q", "3"], ["pub", "-d", "0"]])
def test_invalid_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_help_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*SCENARIOS, "report", "compare"])
    assert cli.main([]) == 2


def test_report_and_compare_arguments() -> None:
    args = _parse("report", "a.jsonl", "b.jsonl", "--charts", "c", "--baseline", "m")
    assert args.files == ["a.jsonl", "b.jsonl"] and args.charts == "c"
    args = _parse("compare", "--rounds", "2", "--scenarios", "latency", "--duration", "1")
    assert args.rounds == 2 and args.scenarios == "latency" and args.duration == 1.0
    assert compare._case_params("fan-out-q0", args)["subscribers"] == 100
    assert compare._case_params("conn-scale", args) == {"duration": 1.0, "connections": 10_000}
    assert compare._case_params("fan-in-q1", args) == {"qos": 1, "duration": 1.0, "drain": 5.0}
    assert set(compare.SUITE) >= {"fan-in-q0", "fan-in-q1", "fan-out-q0", "latency"}
    # the latency case runs longer than the others (a round's p99 from more samples)
    assert compare._case_params("latency", args)["duration"] == compare.LATENCY_DURATION
    args = _parse("compare", "--duration", "1", "--latency-duration", "7")
    assert compare._case_params("latency", args) == {"rate": 1000.0, "duration": 7.0, "drain": 5.0}


def test_compare_rejects_unknown_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compare", "--scenarios", "nope"]) == 2
    assert "unknown scenarios" in capsys.readouterr().err


def test_split_plan_separates_roles_and_spreads_clients() -> None:
    subs = [SubRole(f"s{i}", 0, ["t"]) for i in range(5)]
    pubs = [PubRole(f"p{i}", 0, "t") for i in range(3)]
    conns = [ConnRole(f"c{i}", 0) for i in range(4)]
    plan = LoadPlan(targets=[("h", 1)], subs=subs, pubs=pubs, conns=conns, connect_rate=100)
    one = split_plan(plan, 1)
    assert len(one) == 1 and len(one[0].subs) == 5 and len(one[0].pubs) == 3
    four = split_plan(plan, 4)
    assert [len(w.subs) for w in four] == [3, 2, 0, 0]
    assert [len(w.pubs) for w in four] == [0, 0, 2, 1]
    assert sum(len(w.conns) for w in four) == 4
    assert all(w.connect_rate == 25 for w in four)
    only_subs = split_plan(LoadPlan(targets=[("h", 1)], subs=subs[:1]), 4)
    assert len(only_subs) == 1


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("timestamps", [False, True])
def test_frame_template_is_the_codecs_publish(qos: int, timestamps: bool) -> None:
    template = FrameTemplate("bench/7", 64, qos, timestamps)
    frame = template.frame(513, 123456789)
    (packet,) = Decoder(version=MQTT_3_1_1).feed(frame)
    assert isinstance(packet, Publish)
    assert packet.topic == "bench/7" and packet.qos == qos and len(packet.payload) == 64
    assert packet.packet_id == (513 if qos else None)
    if timestamps:
        assert int.from_bytes(packet.payload[:8], "big") == 123456789
    else:
        expected = encode_publish(
            "bench/7", b"x" * 64, qos, False, False, 513 if qos else None, None, MQTT_3_1_1
        )
        assert frame == expected
    assert (template.fixed is not None) == (qos == 0 and not timestamps)


def test_small_payloads_grow_to_hold_a_timestamp() -> None:
    assert FrameTemplate("t", 2, 0, True).size == 8
    assert FrameTemplate("t", 2, 0, False).size == 2


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def close(self) -> None:
        pass


async def test_scanner_counts_acks_and_answers_in_any_chunking() -> None:
    rng = random.Random(3)
    frames = []
    for i in range(300):
        qos = i % 3
        frames.append(FrameTemplate(f"t/{i}", rng.randint(0, 300), qos).frame(i + 1))
    frames += [encode(PubAck(7)), encode(PubComp(8)), encode(PubRec(9)), encode(PubRel(10))]
    stream = b"".join(frames)
    for _ in range(5):
        client = BenchClient()
        transport = _Transport()
        client.connection_made(cast(Any, transport))
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 200)
            client.data_received(stream[pos : pos + step])
            pos += step
        assert client.received == 300
        assert client.acked == 2  # PUBACK and PUBCOMP
        replies = Decoder(version=MQTT_3_1_1).feed(b"".join(transport.written))
        assert replies.count(PubAck(1)) == 0
        assert sum(isinstance(r, PubAck) for r in replies) == 100  # QoS 1 -> PUBACK
        assert sum(isinstance(r, PubRec) for r in replies) == 100  # QoS 2 -> PUBREC
        assert PubRel(9) in replies and PubComp(10) in replies
        assert client.rx_bytes == len(stream)
    await asyncio.sleep(0)


def test_ack_bytes_equal_the_codec() -> None:
    from benchmarks.client import _ack

    assert _ack(0x40, 300) == encode(PubAck(300))
    assert _ack(0x50, 300) == encode(PubRec(300))
    assert _ack(0x62, 300) == encode(PubRel(300))
    assert _ack(0x70, 300) == encode(PubComp(300))


def test_params_defaults_are_bounded() -> None:
    for name in SCENARIOS:
        params = Params(**(Params().__dict__ | DEFAULTS.get(name, {})))
        assert 0 < params.duration <= 60


def test_charts_without_matplotlib_is_one_line_before_any_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A fresh install has no bench extra: `--charts` says what to install, and says it before
    a `compare` spends minutes measuring (the report file need not even exist yet)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    missing = tmp_path / "results.jsonl"
    assert cli.main(["report", str(missing), "--charts", str(tmp_path / "charts")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "minibroker-bench: error: --charts needs matplotlib: pip install 'minibroker[bench]'"
    ]
