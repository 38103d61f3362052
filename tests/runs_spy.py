"""Which way each QoS 0 run went, for tests of the fast path (`broker.core.handle_publish`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from broker.core import handle_publish as handle_publish_module

__all__ = ["run_spy"]


@contextmanager
def run_spy() -> Iterator[list[int]]:
    """What `handle_publish_run` answered per run: +count taken as bytes, -count handed back
    to the packet path."""
    calls: list[int] = []
    real = handle_publish_module.handle_publish_run

    def spy(channel: Any, run: Any) -> bool:
        done = real(channel, run)
        calls.append(run.count if done else -run.count)
        return done

    with mock.patch("broker.core.channel.handle_publish_run", spy):
        yield calls
