"""The hybrid logical clock (`broker.core.hlc`): unit cases and hypothesis properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core.hlc import HybridClock, Stamp, legacy_stamp, stamp_from_wire


class Wall:
    """A wall clock the test moves (seconds)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_now_follows_the_wall_clock_and_counts_within_a_millisecond() -> None:
    wall = Wall(1.0)
    clock = HybridClock("a", wall)
    assert clock.now() == Stamp(1000, 0, "a")
    assert clock.now() == Stamp(1000, 1, "a")
    wall.t = 2.0
    assert clock.now() == Stamp(2000, 0, "a")


def test_a_wall_clock_that_goes_back_does_not_take_the_clock_back() -> None:
    wall = Wall(5.0)
    clock = HybridClock("a", wall)
    first = clock.now()
    wall.t = 1.0
    assert clock.now() > first


def test_update_orders_the_next_stamp_after_a_peer_ahead_of_us() -> None:
    clock = HybridClock("a", Wall(1.0))
    peer = Stamp(1500, 7, "b")  # b's clock is half a second ahead
    assert clock.update(peer)
    assert clock.now() > peer


def test_node_name_breaks_ties_so_two_nodes_never_give_equal_stamps() -> None:
    a, b = HybridClock("a", Wall(1.0)), HybridClock("b", Wall(1.0))
    sa, sb = a.now(), b.now()
    assert sa != sb and (sa < sb) == ("a" < "b")


def test_a_stamp_beyond_the_drift_bound_is_not_taken_into_the_clock() -> None:
    clock = HybridClock("a", Wall(1.0), max_drift_ms=100)
    assert not clock.update(Stamp(1000 + 101, 0, "b"))
    assert clock.rejected == 1
    assert clock.now().ms == 1000


def test_legacy_stamps_sort_before_stamps_of_the_same_millisecond() -> None:
    assert legacy_stamp(1000) < Stamp(1000, 0, "a")


def test_stamp_wire_round_trip_and_malformed_values() -> None:
    stamp = Stamp(12, 3, "n1@h")
    assert stamp_from_wire(stamp.to_wire()) == stamp
    for bad in (None, [1, 2], [1, 2, 3], [-1, 0, "a"], [True, 0, "a"], "x", [1.5, 0, "a"]):
        assert stamp_from_wire(bad) is None


def test_restore_keeps_order_across_a_restart_even_beyond_the_drift_bound() -> None:
    clock = HybridClock("a", Wall(1.0), max_drift_ms=10)
    clock.restore(Stamp(9_000, 4, "a"))
    assert clock.now() > Stamp(9_000, 4, "a")


# -- properties ---------------------------------------------------------------------------------


def wall_seconds(ms: int) -> float:
    """The wall time that reads as exactly `ms` milliseconds: `ms / 1000` can read one less once
    scaled back (1.001 * 1000 < 1001 in floating point), which made a peer `DRIFT` ahead look
    one millisecond further ahead than the bound."""
    return (ms + 0.5) / 1000


DRIFT = 5_000
walls = st.integers(min_value=0, max_value=10_000)  # ms
#: an operation: ("tick", wall ms) or ("recv", wall ms, peer stamp ms offset, peer counter)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), walls),
        st.tuples(
            st.just("recv"),
            walls,
            st.integers(min_value=-DRIFT, max_value=DRIFT),
            st.integers(min_value=0, max_value=50),
        ),
    ),
    max_size=60,
)


@given(ops)
def test_property_stamps_strictly_increase_and_receive_beats_both_inputs(
    steps: list[tuple[object, ...]],
) -> None:
    wall = Wall(0.0)
    clock = HybridClock("me", wall, max_drift_ms=DRIFT)
    last = clock.peek()
    for step in steps:
        wall.t = wall_seconds(int(step[1]))  # type: ignore[call-overload]
        if step[0] == "tick":
            stamp = clock.now()
            assert stamp > last  # monotonic, whatever the wall clock did
            last = stamp
        else:
            peer = Stamp(max(0, int(step[1]) + int(step[2])), int(step[3]), "peer")  # type: ignore[call-overload]
            before = clock.peek()
            assert clock.update(peer)
            after = clock.now()
            assert after > peer and after > before  # receive() > both inputs
            last = after


@given(ops)
def test_property_drift_from_the_largest_wall_time_seen_stays_bounded(
    steps: list[tuple[object, ...]],
) -> None:
    wall = Wall(0.0)
    clock = HybridClock("me", wall, max_drift_ms=DRIFT)
    top_wall = 0
    for step in steps:
        ms = int(step[1])  # type: ignore[call-overload]
        wall.t = wall_seconds(ms)
        top_wall = max(top_wall, ms)
        if step[0] == "tick":
            clock.now()
        else:
            # a peer anywhere, even far beyond the bound: the clock never follows it that far
            clock.update(Stamp(ms + 3 * int(step[2]), int(step[3]), "peer"))  # type: ignore[call-overload]
        assert clock.peek().ms - top_wall <= DRIFT
