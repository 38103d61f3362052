"""`compare --brokers minibroker,minibroker@DIR`: two versions of our broker in one run.

The second tree is this checkout itself (any directory holding `broker/cli.py` is a tree), so
the test needs no second checkout; what it checks is that the broker really runs from that
tree (its process gets the tree first on PYTHONPATH) and gets its own label and column.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import compare
from benchmarks.brokers import mqtt_probe, start_broker, tree_of

HERE = Path(__file__).resolve().parents[2]


def test_tree_of_names_only_minibroker_at_a_source_tree(tmp_path: Path) -> None:
    assert tree_of("minibroker") is None and tree_of("mosquitto") is None
    assert tree_of(f"minibroker@{HERE}") == HERE
    with pytest.raises(ValueError, match="not a minibroker source tree"):
        tree_of(f"minibroker@{tmp_path}")


def test_select_brokers_keeps_a_tree_and_refuses_a_wrong_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(compare, "find_mosquitto", lambda: None)
    spec = f"minibroker,minibroker@{HERE}"
    assert compare.select_brokers(spec) == ["minibroker", f"minibroker@{HERE}"]
    assert compare.select_brokers(f"minibroker@{tmp_path}") is None
    assert "not a minibroker source tree" in capsys.readouterr().err


def test_a_broker_from_another_tree_runs_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = tmp_path / "broker"  # a `broker` package in the caller's working directory
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the working directory shadowed DIR')\n")
    monkeypatch.chdir(tmp_path)
    broker = start_broker(f"minibroker@{HERE}", use_uvloop=False)
    try:
        assert Path(f"/proc/{broker.pid}/cwd").resolve() == HERE
        assert broker.label.startswith("minibroker@") and broker.label.endswith("(asyncio)")
        assert mqtt_probe(broker.host, broker.port)
        environ = Path(f"/proc/{broker.pid}/environ").read_bytes().split(b"\0")
        path = next(v for v in environ if v.startswith(b"PYTHONPATH="))
        assert path.split(b"=", 1)[1].split(b":")[0] == str(HERE).encode()
    finally:
        broker.stop()


def test_the_floor_relays_run_the_latency_scenario_only(capsys: pytest.CaptureFixture[str]) -> None:
    """`compare --brokers floor-epoll` is known, but its relay serves one subscriber and no
    topics: any scenario other than latency is refused before anything starts."""
    assert compare.select_brokers("floor-epoll,floor-asyncio") == ["floor-epoll", "floor-asyncio"]
    assert compare.select_brokers("floor-uring") is None
    assert compare.main(["--scenarios", "latency,fan-in-q0", "--brokers", "floor-epoll"]) == 2
    assert "run only --scenarios latency" in capsys.readouterr().err
