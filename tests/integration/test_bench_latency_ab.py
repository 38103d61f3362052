"""`python -m benchmarks.latency_ab` against real brokers it starts itself (ours on both loops,
mosquitto): every message sent comes back through each broker, and each gets a row. Nothing
about speed is asserted (that is the benchmark's output, not a test)."""

from __future__ import annotations

import re
import shutil

import pytest

from benchmarks import latency_ab


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_every_broker_gets_its_messages_and_a_row(
    loop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    brokers = ["minibroker"] + (["mosquitto"] if shutil.which("mosquitto") else [])
    argv = ["--seconds", "0.2", "--rate", "200", "--block", "5", "--loop", loop, *brokers]
    assert latency_ab.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| (minibroker|mosquitto)", line)]
    assert len(rows) == len(brokers), out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) >= 5, row  # at least one block of lone messages went through
        assert all(float(c) >= 0 for c in cells[2:]), row


def test_the_publish_frame_has_the_right_remaining_length() -> None:
    """MQTT-2.2.3: the remaining length is a variable byte integer (7 bits a byte)."""
    assert latency_ab._packet(0x30, b"x" * 5) == b"\x30\x05xxxxx"
    assert latency_ab._packet(0x30, b"x" * 200)[:3] == b"\x30\xc8\x01"


def test_the_python_floor_relays_every_message_and_gets_a_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`floor-epoll` and `floor-asyncio` (`benchmarks.floor_relay`) answer the client's CONNECT
    and SUBSCRIBE and relay each PUBLISH as read: every message comes back, as through a broker."""
    argv = ["--seconds", "0.2", "--rate", "200", "--block", "5", "floor-epoll", "floor-asyncio"]
    assert latency_ab.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| Python floor")]
    assert len(rows) == 2, out
    for row in rows:
        assert int(row.strip("|").split("|")[1]) >= 5, row
