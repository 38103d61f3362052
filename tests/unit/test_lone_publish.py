"""`publish_lone` (a read of one plain QoS 0 PUBLISH in one call) changes nothing a client or
an operator can see: the same lone reads, with it and without it (the general way:
`lone_frame`, `handle_publish_run`; and the packet path), give every client the same bytes and
leave every counter the same, whatever the subscribers, their options, the ACL, the limits and
the bytes (valid frames, or frames with a byte changed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import test_publish_runs_core
from hypothesis import given, settings
from hypothesis import strategies as st
from runs_support import packets_only, without_lone
from test_publish_runs_core import POOL, Subscriber, run_scenario

from broker.core import lone_publish as lone_module
from broker.protocol.codec import encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5
from broker.protocol.packets import Packet, Publish

TOPICS = ["a/b", "a/c", "b/b", "$x/b", "a/b/c/d", "é/b", "a/" + "z" * 40]
#: Settings a lone read's checks depend on (each would make the run decline the read).
CONFIGS: list[dict[str, Any]] = [
    {},
    {"max_topic_levels": 2},
    {"max_topic_length": 8},
    {"publish_limit": "1000"},
    {"max_packet_size": 60},
]


class _Bytes:
    """A 'packet' that encodes to the bytes given (a changed frame: maybe not valid)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def _encode_patch(real: Any) -> Any:
    def encode_any(packet: Any, version: int = MQTT_3_1_1) -> bytes:
        if isinstance(packet, _Bytes):
            return packet.data
        return bytes(real(packet, version))

    return encode_any


@st.composite
def lone_reads(draw: st.DrawFn, version: int) -> list[Any]:
    """One PUBLISH frame per read: valid, or with one byte changed (header, topic, payload),
    or followed by more bytes (a second frame, or its first byte); topics often repeat (the
    last head checked is remembered: `Connection.lone_head`)."""
    reads: list[Any] = []
    for _ in range(draw(st.integers(1, 6))):
        packet = Publish(
            draw(st.sampled_from(TOPICS)),
            draw(st.sampled_from([b"x", b"", b"y" * 40, b"z" * 130])),
        )
        kind = draw(st.sampled_from(["valid", "valid", "changed", "more"]))
        if kind == "valid":
            reads.append([packet])
            continue
        if kind == "more":
            tail = draw(st.sampled_from([b"\x30", encode(packet, version)]))
            reads.append([_Bytes(bytes(encode(packet, version)) + tail)])
            continue
        data = bytearray(encode(packet, version))
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.sampled_from([0x00, 0x2B, 0x23, 0x24, 0x30, 0x7F, 0x80, 0xFF]))
        if at == 0:
            data[0] = 0x30  # still a plain QoS 0 PUBLISH's first byte: the other checks apply
        reads.append([_Bytes(bytes(data))])
    return reads


def _scenario(version: int, reads: list[Any], **args: Any) -> dict[str, Any]:
    with mock.patch.object(test_publish_runs_core, "encode", _encode_patch(encode)):
        return run_scenario(version, reads, **args)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([MQTT_3_1_1, MQTT_5]).flatmap(lambda v: st.tuples(st.just(v), lone_reads(v))),
    st.booleans(),
    st.sampled_from([None, "a/b", "b/b"]),
    st.sampled_from([None, 300, 2000]),
    st.sampled_from([0, 250, 5000]),
    st.lists(st.sampled_from(POOL), min_size=0, max_size=4),
    st.sampled_from(CONFIGS),
)
def test_lone_reads_change_nothing_a_client_or_operator_sees(
    drawn: tuple[int, list[Any]],
    no_local: bool,
    deny: str | None,
    cap: int | None,
    waiting: int,
    subscribers: list[Subscriber],
    config: dict[str, Any],
) -> None:
    version, reads = drawn
    args: dict[str, Any] = {
        "self_no_local": no_local,
        "deny": deny,
        "cap": cap,
        "waiting": waiting,  # bytes the subscribers left unread: `max_outgoing_buffer` drops
        "subscribers": subscribers,
        **config,
    }
    fused = _scenario(version, reads, **args)
    with without_lone():
        general = _scenario(version, reads, **args)
    assert fused == general
    with packets_only():
        reference = _scenario(version, reads, **args)
    assert fused == reference


@contextmanager
def lone_spy() -> Iterator[list[bool]]:
    """What `publish_lone` answered for each PUBLISH read of the publisher."""
    calls: list[bool] = []
    real = lone_module.publish_lone

    def spy(channel: Any, data: bytes) -> bool:
        done = real(channel, data)
        if channel.client_id == "pub" and data[:1] == b"\x30":
            calls.append(done)
        return done

    with mock.patch("broker.core.channel.publish_lone", spy):
        yield calls


ONE: list[Subscriber] = [(MQTT_3_1_1, [("a/#", False, None)]), (MQTT_3_1_1, [("a/c", False, None)])]


@pytest.mark.parametrize(
    ("topic", "subscribers", "config", "taken"),
    [
        ("a/c", ONE, {}, True),  # the common case: two exact-topic / wildcard subscribers
        ("a/c", [], {}, True),  # nobody: dropped, counted
        ("a/b", POOL[:4], {}, False),  # a subscription identifier (sub3, `+/b`)
        ("a/c", [(MQTT_5, [("a/c", False, None)])], {}, False),  # another family
        ("$x/b", ONE, {}, False),
        ("a/c", ONE, {"publish_limit": "1000"}, False),
        ("a/c", ONE, {"max_topic_levels": 1}, False),
        ("a/c", ONE, {"max_topic_levels": 2}, True),
    ],
)
def test_which_lone_reads_are_taken_whole(
    topic: str, subscribers: list[Subscriber], config: dict[str, Any], taken: bool
) -> None:
    """Taken in one call (+1) or left to the general way (which then answers), and the same
    outcome either way."""
    batch: list[Packet] = [Publish(topic, b"lone")]
    args: dict[str, Any] = {
        "self_no_local": True, "deny": None, "cap": None, "subscribers": subscribers, **config
    }  # fmt: skip
    with lone_spy() as calls:
        fused = run_scenario(MQTT_3_1_1, [batch], **args)
    assert calls == [taken]
    with packets_only():
        reference = run_scenario(MQTT_3_1_1, [batch], **args)
    assert fused == reference


def test_a_denied_lone_message_is_dropped_and_counted() -> None:
    batch: list[Packet] = [Publish("a/c", b"no")]
    args: dict[str, Any] = {"self_no_local": False, "deny": "a/c", "cap": None}
    with lone_spy() as calls:
        fused = run_scenario(MQTT_3_1_1, [batch], subscribers=ONE, **args)
    assert calls == [True]
    assert fused["counters"]["messages/dropped"] == 1
    assert "messages/sent" not in fused["counters"]
    with packets_only():
        assert fused == run_scenario(MQTT_3_1_1, [batch], subscribers=ONE, **args)


#: Reads that start as a plain QoS 0 PUBLISH but that `lone_frame` does not take.
ODD_READS = [
    b"\x30\x8a\x00\x00\x03a/cxxxxx",  # a non-minimal Remaining Length (MQTT-1.5.5-1)
    b"\x30\x07\x00\x09a/cxx",  # the topic runs past the frame
    b"\x30\x07\x00\x03a/cxx\x30",  # more than one frame's bytes
    b"\x30\x06\x00\x03a/cx"[:-1],  # less
    b"\x30\x07\x00\x03a\xffcxx",  # not UTF-8 (MQTT-1.5.3-1)
    b"\x30\x07\x00\x03a\x00cxx",  # U+0000 (MQTT-1.5.3-2)
    b"\x30\x07\x00\x03a/+xx",  # a wildcard (MQTT-3.3.2-2)
    b"\x30\x05\x00\x00xxx",  # an empty topic (MQTT-4.7.3-1)
]


@pytest.mark.parametrize("data", ODD_READS)
def test_odd_lone_reads_go_the_general_way(data: bytes) -> None:
    """Each is left to the general way (which closes the connection or takes what is there),
    and what every client gets and every counter is what the packet path gives."""
    reads: list[Any] = [[_Bytes(data)], [Publish("a/c", b"after")]]
    args: dict[str, Any] = {"self_no_local": False, "deny": None, "cap": None, "subscribers": ONE}
    with lone_spy() as calls:
        fused = _scenario(MQTT_3_1_1, reads, **args)
    assert calls[0] is False
    with packets_only():
        assert fused == _scenario(MQTT_3_1_1, reads, **args)


def test_an_acl_hook_sees_the_counters_as_the_general_way_leaves_them() -> None:
    """`publish_lone` counts after its writes, but not when a hook is asked in between."""

    def observed() -> list[tuple[int, ...]]:
        seen: list[tuple[int, ...]] = []

        def hook(client: Any) -> None:
            broker = client.channel.broker
            counters = broker.metrics.counters

            def authorize(info: Any, action: str, topic: str) -> None:
                if action == "publish":
                    pub = broker.connected["pub"]
                    seen.append(
                        (counters["messages/received"], counters["bytes/received"],
                         pub.recv_oct, pub.recv_msg, counters["messages/sent"])
                    )  # fmt: skip

            if not broker.hooks.authorize:  # (called for each subscriber)
                broker.hooks.authorize.append(authorize)

        args: dict[str, Any] = {"self_no_local": False, "deny": None, "cap": None}
        run_scenario(MQTT_3_1_1, [[Publish("a/c", b"1")]], subscribers=ONE, on_sub=hook, **args)
        return seen

    with lone_spy() as calls:
        fused = observed()
    assert calls == [True]
    with packets_only():
        assert fused == observed()
