"""Frames to changing topics (`PublishFrames`, `broker.core.frames_delivery`) change nothing a
client or an operator can see: the same reads with the fast path and with every PUBLISH as a
packet give every client the same bytes, in the same order, and leave every counter the same,
whatever the wildcard filters (MQTT-4.7.1-2/3: `#` and `+`), the subscribers' versions and
options, the ACL, and a subscriber's outgoing buffer reaching `max_outgoing_buffer`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from memharness import MemBroker
from test_publish_runs_core import ASKS, Subscriber, packets_only, run_scenario

from broker.core import frames_delivery
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5
from broker.protocol.packets import Packet, PingReq, Publish
from broker.protocol.runs import PublishFrames, scan_frames

assert ASKS  # the 5.0 subscribers' CONNECT asks (Maximum Packet Size, aliases) come from there

#: Topics under a few parents, as a publisher cycling through many topics sends them.
TOPICS = [f"w/{p}/{k}" for p in range(3) for k in range(6)] + ["w/1", "a/b", "$x/w/1/1"]
#: Wildcard subscribers (version, [(filter, no_local, subscription identifier)], ask...).
WILD: list[Subscriber] = [
    (MQTT_3_1_1, [("w/+/+", False, None)]),
    (MQTT_3_1_1, [("w/1/#", False, None), ("w/+/2", False, None)]),  # overlapping: one copy
    (MQTT_3_1_1, [("+/0/+", False, None), ("a/b", False, None)]),
    (MQTT_3_1_1, [("w/#", False, None), ("#", False, None)]),  # `#` skips `$x/..` (4.7.2-1)
    (MQTT_5, [("w/+/+", False, None)]),  # the other family: today's path
    (MQTT_5, [("w/2/+", False, 5)]),  # a subscription identifier: today's path
    (MQTT_3_1_1, [("w/0/+/x", False, None), ("w/+/x/#", False, None)]),  # never match
    (MQTT_5, [("w/#", False, None)], "mps"),  # type: ignore[list-item]
    (MQTT_5, [("w/+/1", False, None)], "alias"),  # type: ignore[list-item]
]


@contextmanager
def frames_spy() -> Iterator[list[int]]:
    """How many frames each call of `handle_publish_frames` passed on as bytes."""
    calls: list[int] = []
    real = frames_delivery.handle_publish_frames

    def spy(channel: Any, frames: PublishFrames) -> Any:
        left = real(channel, frames)
        rest = sum(item.count for item in left)
        calls.append(frames.count - rest)
        return left

    with mock.patch("broker.core.channel.handle_publish_frames", spy):
        yield calls


def changing_batches() -> st.SearchStrategy[list[list[Packet]]]:
    plain = st.builds(
        Publish, topic=st.sampled_from(TOPICS), payload=st.sampled_from([b"x", b"y" * 40, b""])
    )
    other = st.one_of(
        st.builds(
            Publish, topic=st.sampled_from(TOPICS), payload=st.just(b"r"), retain=st.just(True)
        ),
        st.builds(
            Publish,
            topic=st.sampled_from(TOPICS),
            payload=st.just(b"q"),
            qos=st.just(1),
            packet_id=st.just(9),
        ),
        st.just(PingReq()),
    )
    batch = st.lists(st.one_of(plain, plain, plain, other), max_size=40)
    return st.lists(batch, min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([MQTT_3_1_1, MQTT_5]),
    changing_batches(),
    st.booleans(),
    st.sampled_from([None, "w/1/1", "a/b"]),
    st.sampled_from([None, 300, 2000]),
    st.lists(st.sampled_from(WILD), min_size=1, max_size=4),
)
def test_frames_change_nothing_a_client_or_operator_sees(
    version: int,
    batches: list[list[Packet]],
    no_local: bool,
    deny: str | None,
    cap: int | None,
    subscribers: list[Subscriber],
) -> None:
    """MQTT-4.6.0-6 (ordered topics) and beyond: every subscriber gets each publisher's
    messages in the order they were published, the same with and without the fast path."""
    args: dict[str, Any] = {
        "self_no_local": no_local,
        "deny": deny,
        "cap": cap,
        "subscribers": subscribers,
    }
    fast = run_scenario(version, batches, **args)
    with packets_only():
        reference = run_scenario(version, batches, **args)
    assert fast == reference


def test_a_read_of_changing_topics_goes_as_bytes_in_one_write() -> None:
    """Every frame of the read to the `w/+/+` subscriber, in one write, counted per message."""
    batch: list[Packet] = [Publish(f"w/{i % 3}/{i}", bytes([i]) * 10) for i in range(60)]
    subs: list[Subscriber] = [WILD[0], WILD[6]]
    writes: list[int] = []
    with frames_spy() as calls:
        fast = run_scenario(
            MQTT_3_1_1, [batch], self_no_local=False, deny=None, cap=None, subscribers=subs,
            on_sub=lambda client: _count_writes(client, writes),
        )  # fmt: skip
    assert calls == [60]
    assert writes == [1, 0], "one write to the subscriber, none to the one that never matches"
    assert fast["sub0"][0] == b"".join(encode(p) for p in batch), "the very bytes, in order"
    counters = fast["counters"]
    assert counters["messages/received"] == counters["packets/publish/received"] == 60
    assert counters["messages/sent"] == counters["messages/qos0/sent"] == 60
    with packets_only():
        reference = run_scenario(
            MQTT_3_1_1, [batch], self_no_local=False, deny=None, cap=None, subscribers=subs
        )
    assert fast == reference


def _count_writes(client: Any, writes: list[int]) -> None:
    index = len(writes)
    writes.append(0)
    link = client.link
    real = link.write

    def write(data: bytes) -> None:
        writes[index] += 1
        real(data)

    link.write = write


def test_a_frame_that_needs_the_packet_path_keeps_its_place() -> None:
    """`w/2/x` reaches a subscriber with a subscription identifier: that frame alone takes
    today's path, and the `w/+/+` subscriber still gets every frame in order (MQTT-4.6.0-6)."""
    topics = ["w/0/a", "w/1/b", "w/2/c", "w/0/d", "w/2/e", "w/1/f"]
    batch: list[Packet] = [Publish(t, t.encode()) for t in topics]
    subs: list[Subscriber] = [WILD[0], WILD[5]]
    with frames_spy() as calls:
        fast = run_scenario(
            MQTT_3_1_1, [batch], self_no_local=False, deny=None, cap=None, subscribers=subs
        )
    assert calls == [2, 1, 1], "w/0/a w/1/b | w/2/c alone | w/0/d | w/2/e alone | w/1/f"
    got = Decoder(version=MQTT_3_1_1).feed(fast["sub0"][0])
    assert [p.topic for p in got if isinstance(p, Publish)] == topics
    with packets_only():
        reference = run_scenario(
            MQTT_3_1_1, [batch], self_no_local=False, deny=None, cap=None, subscribers=subs
        )
    assert fast == reference


def test_a_slow_subscriber_drops_from_the_same_message_as_before() -> None:
    """`max_outgoing_buffer` applies per message within a read of changing topics."""
    only: list[Subscriber] = [(MQTT_3_1_1, [("w/+/+", False, None)])]
    for waiting in (0, 100, 299, 300, 301, 5000):
        for grows in (True, False):
            batch: list[Packet] = [Publish(f"w/0/{i}", b"y" * 40) for i in range(30)]
            args: dict[str, Any] = {
                "self_no_local": False, "deny": None, "cap": 300, "subscribers": only,
                "waiting": waiting, "grows": grows,
            }  # fmt: skip
            fast = run_scenario(MQTT_3_1_1, [batch], **args)
            with packets_only():
                reference = run_scenario(MQTT_3_1_1, [batch], **args)
            assert fast == reference


def test_scan_frames_stops_where_a_run_starts() -> None:
    """A frame followed by one of the same topic and length is left to `scan_run`."""
    frames = [Publish("a/1", b"x"), Publish("a/2", b"x"), Publish("a/3", b"x")]
    frames += [Publish("a/3", b"y"), Publish("a/4", b"x")]
    data = bytearray(b"".join(encode(p) for p in frames))
    found = scan_frames(data, 0, len(data), False, 1 << 20)
    assert isinstance(found, PublishFrames)
    assert found.topics == ["a/1", "a/2"]
    assert found.data == data[: found.ends[-1]]
    rest = scan_frames(data, len(found.data), len(data), False, 1 << 20)
    assert rest is None, "the run of two a/3 frames comes first"
    decoder = Decoder(version=MQTT_3_1_1)
    kinds = [type(item).__name__ for item in decoder.feed_runs(bytes(data))]
    assert kinds == ["PublishFrames", "PublishRun", "PublishRun"], "a lone frame: a run of one"


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.binary(min_size=0, max_size=6),
    st.sampled_from([b"", b"p", b"\x00", b"\x01\x02", b"q" * 140]),
    st.sampled_from(["", "cut", "len", "flags", "bad", "tail", "long"]),
)
def test_a_lone_frame_reads_as_the_scan_reads_it(
    v5: bool, topic: bytes, payload: bytes, spoil: str
) -> None:
    """`feed_runs` of a read that is one frame (`runs.lone_frame`, no scan) gives what the
    scan gives for the same bytes, valid or not: a `PublishRun` of one with the same fields,
    or the decoder's packets, or the same error (raw bytes: invalid UTF-8, U+0000, a 5.0
    property length other than 0, a topic length past the end, non-minimal lengths)."""
    body = len(topic).to_bytes(2, "big") + topic + payload
    if spoil == "cut":  # the topic length says more than there is
        body = (len(topic) + len(payload) + 3).to_bytes(2, "big") + topic + payload
    length = len(body)
    head = bytearray([0x30])
    while True:
        length, digit = divmod(length, 128)
        head.append(digit | (0x80 if length else 0))
        if not length:
            break
    if spoil == "len":  # a non-minimal Remaining Length (MQTT-1.5.5-1)
        head = bytearray([0x30, (len(body) & 0x7F) | 0x80, len(body) >> 7])
    if spoil == "flags":  # RETAIN: not a plain frame
        head[0] = 0x31
    data = bytes(head) + body
    if spoil == "bad":
        data = data[:-1] if len(data) > 2 else data
    if spoil == "tail":  # a second, partial frame after it
        data += b"\x30"
    max_size = 40 if spoil == "long" else 1 << 20

    def read(fast: bool) -> Any:
        decoder = Decoder(version=MQTT_5 if v5 else MQTT_3_1_1, max_packet_size=max_size)
        try:
            items = decoder.feed_runs(data) if fast else decoder._feed(bytearray(data), True)
        except Exception as exc:
            return type(exc), str(exc)
        if not fast:  # the scan keeps a partial frame; the lone path never takes one
            assert decoder._buf is None or spoil in ("tail", "bad", "cut", "len")
        return [
            (type(i).__name__, getattr(i, "topic", None), bytes(getattr(i, "data", b"")),
             getattr(i, "count", None), getattr(i, "frame_len", None), getattr(i, "v5", None),
             repr(i) if not hasattr(i, "data") else None)
            for i in items
        ]  # fmt: skip

    assert read(True) == read(False)


class _Forwarder:
    """A cluster's `RunForwarder` as the broker sees it: `alone` says whether any other node
    has a route; no topic routes elsewhere (`run_nodes` empty)."""

    def __init__(self, alone: bool) -> None:
        self.lone = alone

    def alone(self) -> bool:
        return self.lone

    def run_nodes(self, topic: str) -> frozenset[str]:
        return frozenset()


def test_a_cluster_node_passes_frames_as_bytes_only_while_alone() -> None:
    """A node with a cluster port and no route of another node takes the fast path; once
    another node has routes, each frame goes the way a run goes (`run_nodes`, per topic),
    and the cluster's forward hook sees nothing the fast path hid from it."""
    batch: list[Packet] = [Publish(f"w/{i % 3}/{i}", b"m") for i in range(12)]
    for alone in (True, False):
        mem = MemBroker()
        forwarded: list[str] = []
        mem.broker.forward_hooks.append(lambda m, seen=forwarded: seen.append(m.topic) or 0)
        mem.broker.run_forwarder = _Forwarder(alone)  # type: ignore[assignment]
        sub, _ = mem.connect("sub")
        sub.subscribe(("w/+/+", 0))
        publisher, _ = mem.connect("pub")
        with frames_spy() as calls:
            publisher.send(*batch)
        assert calls == ([12] if alone else [0])
        got = [p.topic for p in sub.received() if isinstance(p, Publish)]
        assert got == [p.topic for p in batch if isinstance(p, Publish)]  # MQTT-4.6.0-6
        assert forwarded == [], "no other node routes these topics: nothing forwarded"


def test_acl_answers_are_remembered_across_reads_until_a_reload(tmp_path: Any) -> None:
    """With the acl_file plugin (a pure authorize hook), a topic's publish decision is asked
    once, not once per read, and a reload (new rules) voids every remembered answer."""
    from types import SimpleNamespace

    from broker.plugins.acl_file import Acl, AclFilePlugin

    acl = tmp_path / "acl"
    acl.write_text("topic read w/#\ntopic write w/0/#\n")  # anonymous clients
    mem = MemBroker()
    plugin = AclFilePlugin()
    ctx = SimpleNamespace(broker=mem.broker, config={"file": str(acl)}, node_config=None)
    plugin.load(ctx)  # type: ignore[arg-type]
    sub, _ = mem.connect("sub")
    sub.subscribe(("w/+/+", 0))
    publisher, _ = mem.connect("pub")
    batch: list[Packet] = [Publish(f"w/{i % 2}/{i % 4}", b"m") for i in range(8)]
    asked: list[str] = []
    real = Acl.check

    def check(self: Acl, client_id: str, username: str | None, access: int, topic: str) -> bool:
        asked.append(topic)
        return real(self, client_id, username, access, topic)

    def topics() -> list[str]:
        return [p.topic for p in sub.received() if isinstance(p, Publish)]

    with mock.patch.object(Acl, "check", check):
        publisher.send(*batch)
        assert topics() == ["w/0/0", "w/0/2", "w/0/0", "w/0/2"]
        assert sorted(asked) == ["w/0/0", "w/0/2", "w/1/1", "w/1/3"], "once per topic"
        asked.clear()
        publisher.send(*batch)  # the next read: every answer remembered
        assert topics() == ["w/0/0", "w/0/2", "w/0/0", "w/0/2"]
        assert asked == []
        acl.write_text("topic read w/#\ntopic write w/1/#\n")
        assert plugin.reload()
        publisher.send(*batch)  # the new rules apply at once
        assert topics() == ["w/1/1", "w/1/3", "w/1/1", "w/1/3"]
        assert sorted(asked) == ["w/0/0", "w/0/2", "w/1/1", "w/1/3"]
    plugin.unload()
    assert mem.broker.hooks.authorize == mem.broker.hooks.pure_authorize == []


def test_an_authorize_hook_not_known_pure_is_asked_every_read() -> None:
    """A hook not in `Hooks.pure_authorize` may answer differently each time: asked once
    per topic and read, and its new answer applies to the next read."""
    mem = MemBroker()
    denied = {"w/0/0"}
    asked: list[str] = []

    def hook(info: Any, action: str, topic: str) -> bool:
        asked.append(topic)
        return topic not in denied

    mem.broker.hooks.authorize.append(hook)
    sub, _ = mem.connect("sub")
    sub.subscribe(("w/+/+", 0))
    publisher, _ = mem.connect("pub")
    batch: list[Packet] = [Publish("w/0/0", b"a"), Publish("w/0/1", b"b")] * 2
    for read in range(3):
        asked.clear()
        publisher.send(*batch)
        assert sorted(asked) == ["w/0/0", "w/0/1"]
        got = [p.topic for p in sub.received() if isinstance(p, Publish)]
        assert got == (["w/0/1", "w/0/1"] if read < 2 else ["w/0/0", "w/0/1"] * 2)
        if read == 1:
            denied.clear()
