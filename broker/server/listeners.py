"""Per-listener bookkeeping: live connection count, limit and why connections ended."""

from __future__ import annotations

from collections import Counter


class ListenerStats:
    """Counts for one listener (EMQX's `current_conns`, `max_conns`, `shutdown_count`)."""

    def __init__(self, protocol: str, bind: str, port: int, max_conns: int = 0) -> None:
        self.protocol = protocol
        self.bind = bind
        self.port = port
        self.max_conns = max_conns
        self.current = 0
        self.refused = 0
        self.shutdown_count: Counter[str] = Counter()

    def accepting(self) -> bool:
        return self.max_conns <= 0 or self.current < self.max_conns

    def opened(self) -> None:
        self.current += 1

    def closed(self, reason: str) -> None:
        self.current -= 1
        self.shutdown_count[reason] += 1

    @property
    def listen_on(self) -> str:
        return f"{self.bind}:{self.port}"
