"""Per-listener bookkeeping: live connection count, limits and why connections ended.

`admit` is asked once per accepted connection, before any byte is read: it refuses when the
node's total `max_connections`, the listener's own `max_connections` or its
`max_connection_rate` (a token bucket: `rate` tokens a second, a burst of as many, at least 1)
is reached. Each refusal is counted on the listener and in `broker.limits` under the limit's
name. `accept_paused` counts the other way a connection is turned away: the process is out of
file descriptors and asyncio stops accepting for a while (see `broker.server.node`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.core.broker import Broker


class ListenerStats:
    """Counts for one listener (EMQX's `current_conns`, `max_conns`, `shutdown_count`)."""

    def __init__(
        self,
        protocol: str,
        bind: str,
        port: int,
        max_conns: int = 0,
        rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protocol = protocol
        self.bind = bind
        self.port = port
        self.max_conns = max_conns
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()
        self.current = 0
        self.refused = 0
        self.shutdown_count: Counter[str] = Counter()

    def accepting(self) -> bool:
        return self.max_conns <= 0 or self.current < self.max_conns

    def _take_token(self) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def admit(self, broker: Broker) -> bool:
        """May one more connection in? A refusal is counted here and in `broker.limits`."""
        if not broker.accepting():
            limit = "max_connections"
        elif not self.accepting():
            limit = "max_listener_connections"
        elif not self._take_token():
            limit = "max_connection_rate"
        else:
            return True
        self.refused += 1
        broker.limits[limit] += 1
        return False

    def accept_paused(self, broker: Broker) -> None:
        """accept() failed with EMFILE/ENFILE and asyncio paused this listener: one refusal,
        counted as `max_open_files` (once per pause, not per failed accept())."""
        self.refused += 1
        broker.limits["max_open_files"] += 1

    def opened(self) -> None:
        self.current += 1

    def closed(self, reason: str) -> None:
        self.current -= 1
        self.shutdown_count[reason] += 1

    @property
    def listen_on(self) -> str:
        return f"{self.bind}:{self.port}"
