"""`cluster.first_sync`: what a node with seeds waits for before its MQTT listeners open.

The first peer's whole route table merged (a push/pull, `RouteSync.on_full_state`) ends the
wait; without one the wait ends at its timeout and says so. The real processes are in
tests/integration/test_cluster_first_sync.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from cluster.delegate import MemberEvent
from cluster.first_sync import FirstSync
from cluster.routes import RouteTable
from cluster.sync import RouteSync


def test_a_peers_table_merged_is_told_and_a_malformed_one_is_not() -> None:
    peer = RouteTable("b", 2)
    peer.local_update("t/#", True)
    sync = RouteSync(RouteTable("a", 1))
    sync.on_event(MemberEvent("join", "b", ("127.0.0.1", 2), 2))
    first = FirstSync()
    sync.on_full_state = first.seen
    sync.merge_remote_state(None, join=True, now=0.0)  # no table in it: not a sync
    assert not first.done
    sync.merge_remote_state(peer.state_for_push_pull(), join=True, now=0.0)
    assert first.done and first.merged == 1
    assert sync.table.remote_match("t/x") == {"b"}  # merged before it was told


async def test_wait_ends_at_the_first_merge() -> None:
    first = FirstSync()
    waiting = asyncio.create_task(first.wait(30.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    first.seen()
    async with asyncio.timeout(5):
        assert await waiting is True


async def test_wait_without_a_peer_ends_at_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    first = FirstSync()
    with caplog.at_level(logging.WARNING, logger="cluster.first_sync"):
        assert await first.wait(0.05) is False
    assert "no peer answered within sync_timeout" in caplog.text
    assert await FirstSync().wait(0) is False  # 0: do not wait at all
