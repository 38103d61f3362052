"""A bounded hypothesis campaign over the live connection driver (`tests/fuzz/driver.py`).

Each example is one connection fed a random packet sequence (our packet classes, encoded, maybe
mutated, randomly chunked) on a broker where a healthy QoS 1 publisher/subscriber pair keeps
running. The rule: the input is accepted or rejected with our protocol error, the connection ends
cleanly, and the healthy pair sees every message. The long campaigns are the `fuzz_*.py`
scripts next to the driver (README "Reliability").
"""

from __future__ import annotations

import os
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core.channel import Channel
from broker.protocol.codec import encode
from broker.protocol.constants import ReasonCode
from broker.protocol.packets import ConnAck, Connect, Disconnect

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))

from driver import Driver, FakeLink
from fuzz_corpus import ByteSource

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.binary(min_size=0, max_size=400))
def test_channel_accepts_or_rejects_any_packet_sequence(data: bytes) -> None:
    driver = Driver()
    for _ in range(3):  # several connections in a row on the same broker
        driver.run(ByteSource(data))
        data = data[len(data) // 3 :]


@_SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_channel_survives_seeded_random_sequences(seed: int) -> None:
    driver = Driver(max_packet_size=512)
    rng = random.Random(seed)
    for _ in range(5):
        driver.run(rng)


@pytest.mark.fuzz
def test_channel_long_campaign() -> None:
    """The long variant (deselected by default: `pytest -m fuzz`)."""
    driver = Driver()
    rng = random.Random(20261125)
    for _ in range(50_000):
        driver.run(rng)


# --------------------------------------------------------------------------- fuzz findings


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("pipelined", [False, True])
def test_second_connect_of_unknown_version_is_a_protocol_error_not_a_connack(
    version: int, pipelined: bool
) -> None:
    """Found by fuzz_driver: a CONNECT with an unknown protocol level after a good one was
    answered with a (3.1.1) CONNACK on the open connection; it is a second CONNECT
    (MQTT-3.1.0-2): DISCONNECT 0x82 in 5.0, a bare close in 3.1.1."""
    driver = Driver()
    link = FakeLink()
    channel = Channel(driver.broker, link, "10.0.0.1", 1)
    first = encode(Connect("twice", version), version)
    bad = b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01x"  # level 6
    if pipelined:
        channel.data_received(first + bad)
    else:
        channel.data_received(first)
        channel.data_received(bad)
    sent = link.take(version)
    assert isinstance(sent[0], ConnAck) and sent[0].reason_code == 0
    if version == 5:
        assert [(type(p), p.reason_code) for p in sent[1:]] == [  # type: ignore[union-attr]
            (Disconnect, ReasonCode.PROTOCOL_ERROR)
        ]
    else:
        assert sent[1:] == []
    assert link.closed and channel.version == version
    channel.connection_lost()
    driver.check_healthy(b"")
