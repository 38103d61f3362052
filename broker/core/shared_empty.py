"""Shared read-only empty containers: what per-connection objects hold until they need their own.

An empty deque costs 760 bytes and an empty dict 64; an idle connection needs neither its own
inflight window, nor a queue, nor a subscription table. Its object points at one of these shared
empties instead, and the first write replaces it with its own (see `broker.core.session`).
Writing to a shared empty raises TypeError: a forgotten "take your own" is loud, not a leak of
one client's state into every other's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["SharedEmptyDeque", "SharedEmptyDict"]


class SharedEmptyDict(dict[Any, Any]):
    """An empty dict shared by the objects that have not needed their own yet: reading it is
    reading an empty dict, writing to it is a bug (the owner must take its own first)."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("shared empty dict: take your own first")

    def setdefault(self, key: Any, default: Any = None) -> Any:
        raise TypeError("shared empty dict: take your own first")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("shared empty dict: take your own first")

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]
        raise TypeError("shared empty dict: take your own first")


class SharedEmptyDeque(deque[Any]):
    """The deque counterpart of `SharedEmptyDict`."""

    def append(self, item: Any) -> None:
        raise TypeError("shared empty deque: take your own first")

    def appendleft(self, item: Any) -> None:
        raise TypeError("shared empty deque: take your own first")

    def extend(self, items: Any) -> None:
        raise TypeError("shared empty deque: take your own first")

    def extendleft(self, items: Any) -> None:
        raise TypeError("shared empty deque: take your own first")

    def insert(self, index: int, item: Any) -> None:
        raise TypeError("shared empty deque: take your own first")

    def __iadd__(self, other: Any) -> Any:  # type: ignore[misc]
        raise TypeError("shared empty deque: take your own first")
