"""Retained writes ordered by hybrid-clock stamps in the broker (`Broker.retain`) and on the
wire (`cluster.replicated_state.stamp_retained`, FORWARD field `hlc`)."""

from __future__ import annotations

from broker.core.broker import Broker
from broker.core.hlc import Stamp
from broker.core.message import Message
from broker.core.retention import RETAINED_TOMBSTONES
from broker.core.settings import Settings
from cluster.replicated_state import stamp_retained
from cluster.wire import forward_body, forward_entry, parse_forward, parse_forward_batch


def _broker(name: str = "n1") -> Broker:
    return Broker(Settings(node_name=name), clock=lambda: 100.0)


def _write(topic: str, payload: bytes, stamp: Stamp | None) -> Message:
    message = Message(topic, payload, 1, True, timestamp=100.0)
    message.stamp = stamp
    return message


def test_a_local_write_is_stamped_and_beats_every_stamp_seen() -> None:
    broker = _broker()  # wall clock 100 s
    assert broker.retain(_write("t", b"remote", Stamp(130_000, 3, "n2")))  # a peer 30 s ahead
    local = _write("t", b"local", None)
    assert broker.retain(local)
    assert local.stamp is not None and local.stamp > Stamp(130_000, 3, "n2")
    stored = broker.retained.get("t")
    assert stored is not None and stored.payload == b"local" and stored.stamp == local.stamp


def test_a_write_stamped_beyond_the_drift_bound_is_refused_until_the_clock_catches_up() -> None:
    broker = _broker()  # a peer whose clock is 10 minutes ahead (beyond the 1 minute bound)
    future = _write("t", b"future", Stamp(700_000, 0, "n2"))
    assert not broker.retain(future)  # the drift rule (broker.core.hlc): rejected, refused
    assert broker.hlc.rejected == 1 and broker.hlc.peek().ms < 700_000
    assert broker.retained.get("t") is None
    assert broker.retain(_write("t", b"local", None))  # a later local write is not beaten
    stored = broker.retained.get("t")
    assert stored is not None and stored.payload == b"local"
    # within the bound of it (a stamp 30 s ahead): taken, and it moves the clock
    assert broker.retain(_write("t", b"near", Stamp(broker.hlc.peek().ms + 30_000, 0, "n2")))
    assert broker.hlc.rejected == 1


def test_writes_in_any_order_leave_the_largest_stamp() -> None:
    writes = [_write("t", f"{i}".encode(), Stamp(1000, i % 3, f"n{i}")) for i in range(6)]
    winner = max(writes, key=lambda m: m.stamp or Stamp(0, 0, "")).payload
    for order in (writes, list(reversed(writes)), writes[2:] + writes[:2]):
        broker = _broker("x")
        for w in order:
            broker.retain(_write(w.topic, w.payload, w.stamp))
        stored = broker.retained.get("t")
        assert stored is not None and stored.payload == winner


def test_tombstones_are_bounded_oldest_first() -> None:
    broker = _broker()
    for i in range(RETAINED_TOMBSTONES + 5):
        broker.retain(_write(f"gone/{i}", b"", Stamp(10 + i, 0, "n2")))
    assert len(broker.retained_gone) == RETAINED_TOMBSTONES
    assert (
        "gone/0" not in broker.retained_gone
        and f"gone/{RETAINED_TOMBSTONES}" in broker.retained_gone
    )


def test_the_stamp_travels_in_both_forward_forms_and_an_old_peer_gets_its_arrival_time() -> None:
    message = _write("t", b"v", Stamp(7, 1, "n9"))
    extra = {"kind": "retain", "hlc": [7, 1, "n9"]}
    body = {**forward_body(message, "n9"), **extra}
    single = parse_forward(body, now=200.0)
    stamp_retained(single, body)
    assert single.stamp == Stamp(7, 1, "n9")
    ((batched, got),) = parse_forward_batch(
        {"origin": "n9", "msgs": [forward_entry(message, extra)]}, now=200.0
    )[0]
    stamp_retained(batched, got)
    assert batched.stamp == Stamp(7, 1, "n9")
    old = parse_forward(forward_body(message, "n9"), now=200.0)  # no `hlc`: an older node
    stamp_retained(old, {})
    assert old.stamp == Stamp(200_000, 0, "")
