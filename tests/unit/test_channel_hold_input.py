"""Flow control on a channel: `Channel.hold_input` stops reading a client (through its link's
`pause_reading`) until `release_input` or at most `MAX_HOLD` seconds; `Broker.reading` names the
channel whose input is being handled, whom a forward hook can hold back."""

from __future__ import annotations

import pytest

from broker.core.broker import Broker
from broker.core.channel import CLOSED, MAX_HOLD, Channel
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


def test_broker_reading_is_the_channel_during_a_publish_and_none_after() -> None:
    broker, channel, _, _ = connected()
    seen: list[tuple[str, Channel | None]] = []

    def hook(message: Message) -> int:
        seen.append((message.topic, broker.reading))
        return 0

    broker.forward_hooks.append(hook)
    assert broker.reading is None
    channel.data_received(encode(Publish("a/1", b"x")) + encode(Publish("a/2", b"y")))
    assert seen == [("a/1", channel), ("a/2", channel)]
    assert broker.reading is None


def test_broker_reading_is_reset_when_a_handler_raises() -> None:
    broker, channel, _, _ = connected()

    def hook(message: Message) -> int:
        assert broker.reading is channel
        raise RuntimeError("boom")

    broker.forward_hooks.append(hook)
    with pytest.raises(RuntimeError, match="boom"):
        channel.data_received(encode(Publish("a/1", b"x")))
    assert broker.reading is None


def test_a_forward_hook_can_hold_the_publisher_and_the_rest_of_the_read_is_still_handled() -> None:
    broker, channel, link, _ = connected()
    topics: list[str] = []

    def hook(message: Message) -> int:
        topics.append(message.topic)
        reading = broker.reading
        assert reading is not None
        reading.hold_input()
        return 0

    broker.forward_hooks.append(hook)
    channel.data_received(b"".join(encode(Publish(f"a/{i}", b"x")) for i in range(3)))
    assert topics == ["a/0", "a/1", "a/2"], "what was read already is handled"
    assert link.calls == ["pause"]
    assert channel.held_at is not None
