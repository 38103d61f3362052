"""The cluster side of takeover: the locator over an RPC `call`, the surrender method."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cluster_fakes import FakeClient

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from broker.core.message import Message
from cluster.rpc import NodeUnreachable
from cluster.takeover import (
    SURRENDER_METHOD,
    ClusterSessionLocator,
    pick_state,
    serve_surrender,
    trim_state,
)


def locator_with(answers: dict[str, Any]) -> tuple[ClusterSessionLocator, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []

    async def call(node: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        assert method == SURRENDER_METHOD
        calls.append((node, args))
        answer = answers[node]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await asyncio.sleep(3600)
        return answer

    return ClusterSessionLocator(lambda: sorted(answers), call, timeout=1.0), calls


async def test_locator_asks_every_peer_and_keeps_the_latest_session() -> None:
    older: SessionState = {"client_id": "c", "disconnected_at": 5.0}
    newer: SessionState = {"client_id": "c", "disconnected_at": 9.0}
    locator, calls = locator_with(
        {"b": older, "c": None, "d": NodeUnreachable("d"), "e": newer, "f": "junk"}
    )
    got: list[SessionState | None] = []
    assert locator.takeover("c", False, got.append)
    assert got == []  # answered later, on the loop
    await asyncio.sleep(0.01)
    assert got == [newer]
    assert {node for node, _ in calls} == {"b", "c", "d", "e", "f"}
    assert calls[0][1] == {"client_id": "c", "clean_start": False}
    assert locator.stats == {"takeovers": 1, "sessions_moved": 1, "failures": 1}


async def test_locator_without_peers_is_not_needed() -> None:
    locator, _ = locator_with({})
    assert not locator.takeover("c", True, lambda state: pytest.fail("not called"))


async def test_close_answers_pending_takeovers_once() -> None:
    locator, _ = locator_with({"b": "hang"})
    got: list[SessionState | None] = []
    assert locator.takeover("c", False, got.append)
    await asyncio.sleep(0)
    locator.close()
    await asyncio.sleep(0.01)
    assert got == [None]


def test_pick_state() -> None:
    assert pick_state([None, None]) is None
    a: SessionState = {"disconnected_at": None}
    b: SessionState = {"disconnected_at": 1.0}
    assert pick_state([a, b]) is b and pick_state([a]) is a


def test_serve_surrender_validates_and_trims() -> None:
    broker = Broker(clock=lambda: 1.0)
    client = FakeClient(broker)
    client.connect("c", clean_start=False)
    client.subscribe("t", qos=1)
    client.drop()
    for i in range(5):
        broker.publish(Message("t", bytes(100) + b"%d" % i, 1))
    with pytest.raises(ValueError):
        serve_surrender(broker, {"client_id": 3}, "b")
    state = serve_surrender(broker, {"client_id": "c", "clean_start": False}, "b", max_bytes=400)
    assert state is not None and len(state["queue"]) == 2  # the oldest kept
    assert state["queue"][0][0]["payload"].endswith(b"0")
    assert broker.metrics.counters["messages/dropped"] >= 3
    assert serve_surrender(broker, {"client_id": "c", "clean_start": False}, "b") is None


def test_trim_state_keeps_everything_that_fits() -> None:
    state: SessionState = {"queue": [[{"payload": b"x", "topic": "t"}, 1, False, None]]}
    assert trim_state(state, 10_000) == 0 and len(state["queue"]) == 1
