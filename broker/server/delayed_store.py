"""`DelayedStore`: the `$delayed/...` messages of the delayed_publish plugin waiting to be
published, as persistence mirrors them.

Why a module of its own: it is the meeting point of two owners that come and go separately --
the plugin (loaded and unloaded at runtime) and the node's persistence (`broker.server.
persistence`, which writes it and loads it at start) -- and neither needs the other's code.
`broker.server.persistence` re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.core.message import Message

#: Told about a delayed message loaded from disk: (id, due wall-clock time, message).
DelayedListener = Callable[[int, float, Message], None]


class DelayedStore:
    """The `$delayed/...` messages waiting to be published, as persistence mirrors them.

    The delayed_publish plugin owns the timers and calls `add` when it accepts a message and
    `remove` when it fires it; this holds the (due, message) pairs the flusher writes. Rows
    loaded at start are handed to `listener` (the plugin's scheduler) when one is set, and in
    any case kept in `pending`, so a plugin loaded later takes them too.
    """

    __slots__ = ("_next_id", "dirty", "listener", "pending")

    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, Message]] = {}
        #: ids added or removed since the last flush
        self.dirty: set[int] = set()
        self.listener: DelayedListener | None = None
        self._next_id = 0

    def add(self, due: float, message: Message) -> int:
        """Record a message to publish at wall-clock time `due`; returns its id."""
        self._next_id += 1
        key = self._next_id
        self.pending[key] = (due, message)
        self.dirty.add(key)
        return key

    def remove(self, key: int) -> None:
        """The message `key` was published (or dropped): forget it."""
        if self.pending.pop(key, None) is not None:
            self.dirty.add(key)

    def restore(self, key: int, due: float, message: Message) -> None:
        """A message loaded from disk: keep it, and tell the listener."""
        self.pending[key] = (due, message)
        self._next_id = max(self._next_id, key)
        if self.listener is not None:
            self.listener(key, due, message)

    def __len__(self) -> int:
        return len(self.pending)
