"""The event loops a node serves on, for the test modules that run on each of them: asyncio's
own (the lean transport's `Poller` with its own epoll), asyncio's on the `LeanSelector` (what
`minibroker start --loop asyncio` runs: the transports' sockets in the loop's epoll) and
uvloop's (when installed)."""

from __future__ import annotations

import asyncio

import pytest

from broker.server.lean_selector import new_event_loop

try:
    import uvloop
except ImportError:  # optional: the `bench` extra
    uvloop = None  # type: ignore[assignment]

__all__ = ["LOOPS", "LeanSelectorPolicy", "loop_policy"]

#: The `params` of a module's `event_loop_policy` fixture.
LOOPS = ["asyncio", "asyncio-lean-selector", "uvloop"]


class LeanSelectorPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's loop on the `LeanSelector`: the loop of every test (tests/conftest.py)."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return new_event_loop()


def loop_policy(name: str) -> asyncio.AbstractEventLoopPolicy:
    """The policy for one of `LOOPS`; skips the test when uvloop is not installed."""
    if name == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed")
        return uvloop.EventLoopPolicy()  # type: ignore[no-any-return]
    if name == "asyncio-lean-selector":
        return LeanSelectorPolicy()
    return asyncio.DefaultEventLoopPolicy()
