"""Flow control on a channel: `Channel.hold_input` stops reading a client (through its link's
`pause_reading`) until `release_input` or at most `MAX_HOLD` seconds; a congested forward
comes back from `Broker.publish` as `wait_drained`, which the publishing connection acts on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.core.broker import Broker, Forwarded
from broker.core.channel import CLOSED, Channel
from broker.core.connection_close import MAX_HOLD
from broker.core.message import Message
from broker.protocol.codec import encode
from broker.protocol.packets import Connect, Publish


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingLink:
    """A channel's link that records pause/resume calls."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def buffered(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def connected(client_id: str = "pub") -> tuple[Broker, Channel, RecordingLink, Clock]:
    clock = Clock()
    broker = Broker(clock=clock)
    link = RecordingLink()
    channel = Channel(broker, link, "127.0.0.1", 50000)
    channel.data_received(encode(Connect(client_id)))
    assert not link.closed and link.out  # CONNACK
    return broker, channel, link, clock


def test_hold_pauses_the_link_and_a_second_hold_returns_false() -> None:
    _, channel, link, clock = connected()
    assert channel.hold_input()
    assert link.calls == ["pause"]
    assert channel.held_at == clock.now
    assert not channel.hold_input(), "already held"
    assert link.calls == ["pause"], "no second pause"


def test_release_resumes_the_link_once() -> None:
    _, channel, link, _ = connected()
    channel.release_input()
    assert link.calls == [], "not held: nothing to resume"
    channel.hold_input()
    channel.release_input()
    assert link.calls == ["pause", "resume"]
    assert channel.held_at is None
    channel.release_input()
    assert link.calls == ["pause", "resume"], "a second release does nothing"
    assert channel.hold_input(), "can be held again once released"


def test_a_release_for_an_earlier_hold_does_not_end_a_later_one() -> None:
    _, channel, link, clock = connected()
    first = channel.hold_input()
    channel.check_timeouts(clock.now + MAX_HOLD + 1)  # the safety net ends the first hold
    second = channel.hold_input()
    assert first and second and first != second
    channel.release_input(first)  # the first hold's drain callback, late
    assert channel.held_at is not None, "still held: that release was for the first hold"
    channel.release_input(second)
    assert link.calls == ["pause", "resume", "pause", "resume"]


def test_a_hold_at_clock_zero_is_still_a_hold() -> None:
    broker = Broker(clock=lambda: 0.0)
    link = RecordingLink()
    channel = Channel(broker, link)
    channel.data_received(encode(Connect("zero")))
    assert channel.hold_input()
    assert not channel.hold_input()
    channel.release_input()
    assert link.calls == ["pause", "resume"]


def test_check_timeouts_releases_a_hold_older_than_max_hold() -> None:
    _, channel, link, clock = connected()
    channel.hold_input()
    channel.check_timeouts(clock.now + MAX_HOLD)
    assert link.calls == ["pause"], "not past MAX_HOLD yet"
    channel.check_timeouts(clock.now + MAX_HOLD + 0.1)
    assert link.calls == ["pause", "resume"]
    assert channel.held_at is None


def test_broker_tick_releases_a_forgotten_hold() -> None:
    broker, channel, link, clock = connected()
    channel.hold_input()
    clock.now += MAX_HOLD + 1
    broker.tick()
    assert link.calls == ["pause", "resume"]


def test_a_closed_channel_is_not_held() -> None:
    _, channel, link, _ = connected()
    channel.close()
    assert channel.state == CLOSED
    assert not channel.hold_input()
    assert link.calls == []
    assert channel.held_at is None


def test_publish_reports_back_pressure_and_the_client_publisher_is_held() -> None:
    """A congested forward comes back from `Broker.publish` as a value (`wait_drained`); the
    publishing connection stops reading and hands over its resume callback."""
    broker, channel, link, _ = connected()
    waiting: list[Callable[[], None]] = []

    def wait_drained(resume: Callable[[], None]) -> bool:
        waiting.append(resume)
        return True

    def hook(message: Message) -> Forwarded:
        return Forwarded(1, wait_drained)

    broker.forward_hooks.append(hook)
    published = broker.publish(Message("rest/1", b"x"))  # another origin: just told
    assert published.deliveries == 1 and published.wait_drained is wait_drained
    assert not waiting and link.calls == []
    channel.data_received(encode(Publish("a/1", b"x")) + encode(Publish("a/2", b"y")))
    assert link.calls == ["pause"] and len(waiting) == 1, "held once, on the first PUBLISH"
    waiting[0]()
    assert link.calls == ["pause", "resume"] and channel.held_at is None


def test_a_wait_that_is_not_needed_releases_at_once() -> None:
    broker, channel, link, _ = connected()
    broker.forward_hooks.append(lambda message: Forwarded(1, lambda resume: False))
    channel.data_received(encode(Publish("a/1", b"x")))
    assert link.calls == ["pause", "resume"] and channel.held_at is None


def test_a_forward_hook_that_raises_propagates_and_holds_nothing() -> None:
    broker, channel, link, _ = connected()

    def hook(message: Message) -> int:
        raise RuntimeError("boom")

    broker.forward_hooks.append(hook)
    with pytest.raises(RuntimeError, match="boom"):
        channel.data_received(encode(Publish("a/1", b"x")))
    assert channel.held_at is None and link.calls == []


def test_a_forward_hook_can_hold_the_publisher_and_the_rest_of_the_read_is_still_handled() -> None:
    broker, channel, link, _ = connected()
    topics: list[str] = []

    def hook(message: Message) -> Forwarded:
        topics.append(message.topic)
        return Forwarded(0, lambda resume: True)

    broker.forward_hooks.append(hook)
    channel.data_received(b"".join(encode(Publish(f"a/{i}", b"x")) for i in range(3)))
    assert topics == ["a/0", "a/1", "a/2"], "what was read already is handled"
    assert link.calls == ["pause"]
    assert channel.held_at is not None
