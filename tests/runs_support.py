"""For tests of the fast paths: which way each run went (`broker.core.handle_publish`,
`broker.core.acked_runs`), the packet path alone as the reference, and a node's counters as its
REST API gives them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import aiohttp

from broker.app import NodeApp
from broker.core import acked_runs as acked_runs_module
from broker.core import frames_delivery as frames_module
from broker.core import handle_publish as handle_publish_module
from broker.core import lone_publish as lone_module
from broker.protocol.codec import Decoder

__all__ = ["acked_spy", "packets_only", "rest_metrics", "run_spy", "without_lone"]


@contextmanager
def run_spy() -> Iterator[list[int]]:
    """What `handle_publish_run` answered per run: +count taken as bytes, -count handed back
    to the packet path; +count per call of `handle_publish_frames` that took frames; +1 per
    lone read `publish_lone` took."""
    calls: list[int] = []
    real = handle_publish_module.handle_publish_run

    def spy(channel: Any, run: Any) -> bool:
        done = real(channel, run)
        calls.append(run.count if done else -run.count)
        return done

    real_frames = frames_module.handle_publish_frames

    def frames_spy(channel: Any, frames: Any) -> Any:
        """Frames to changing topics: +the frames taken as bytes (what is left comes back
        as a run of one, seen by `spy`, and as frames again)."""
        left = real_frames(channel, frames)
        taken = frames.count - sum(item.count for item in left)
        if taken:
            calls.append(taken)
        return left

    real_lone = lone_module.publish_lone

    def lone_spy(channel: Any, data: bytes) -> bool:
        """A lone read taken whole (`publish_lone`): +1; else the spies above see it."""
        done = real_lone(channel, data)
        if done:
            calls.append(1)
        return done

    with (
        mock.patch("broker.core.channel.handle_publish_run", spy),
        mock.patch("broker.core.channel.handle_publish_frames", frames_spy),
        mock.patch("broker.core.channel.publish_lone", lone_spy),
    ):
        yield calls


@contextmanager
def acked_spy() -> Iterator[list[int]]:
    """What `handle_acked_run` answered per run: +count handled, -count handed back."""
    calls: list[int] = []
    real = acked_runs_module.handle_acked_run

    def spy(channel: Any, run: Any) -> bool:
        done = real(channel, run)
        calls.append(run.count if done else -run.count)
        return done

    with mock.patch("broker.core.channel.handle_acked_run", spy):
        yield calls


@contextmanager
def packets_only() -> Iterator[None]:
    """The reference: every PUBLISH decoded into a packet, as before the fast paths."""
    with (
        mock.patch.object(Decoder, "feed_runs", lambda self, data: self.feed(data)),
        mock.patch("broker.core.channel.publish_lone", _never),
    ):
        yield


@contextmanager
def without_lone() -> Iterator[None]:
    """Runs as ever, but no read taken by `publish_lone`: the general way for lone reads."""
    with mock.patch("broker.core.channel.publish_lone", _never):
        yield


def _never(channel: Any, data: bytes) -> bool:
    return False


async def rest_metrics(app: NodeApp) -> dict[str, int]:
    """`GET /api/v3/nodes/<node>/metrics` of `app` (either API format)."""
    auth = "Basic " + base64.b64encode(b"admin:public").decode()
    url = f"http://127.0.0.1:{app.http_port}/api/v3/nodes/{app.config.node_name}/metrics"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": auth}) as reply,
    ):
        assert reply.status == 200, await reply.text()
        body: dict[str, Any] = await reply.json()
    data: dict[str, int] = body.get("data", body)
    return data
