"""What rides on membership sees it through this interface (memberlist's delegate.go and
event_delegate.go): broadcasts to piggyback, full state for push/pull, and member events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cluster.wire import Address

EventKind = Literal["join", "alive", "suspect", "dead", "left"]


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """`join`: a new member, or a new run (epoch) of a known one; `alive`: back from suspect or
    dead in the same run; `suspect`, `dead`, `left`: that run's state changed."""

    kind: EventKind
    name: str
    address: Address
    epoch: int


class Delegate:
    """Hooks for what rides on membership (routes); every method is optional.

    As memberlist's Delegate and EventDelegate, it is never handed the membership itself:
    what it needs to know of the members it learns from `on_event`.
    """

    def has_broadcasts(self) -> bool:
        return False

    def broadcasts(self, limit: int, max_bytes: int, max_items: int) -> list[Any]:
        """Items (wire form) to piggyback; `limit` is the current retransmit limit."""
        return []

    def receive_broadcasts(self, items: list[Any], now: float) -> None:
        """Items another node piggybacked (untrusted: validate)."""

    def local_state(self, join: bool) -> Any:
        """This node's full state for a push/pull (wire form)."""
        return None

    def merge_remote_state(self, state: Any, join: bool, now: float) -> None:
        """A peer's `local_state` (untrusted: validate); members are merged before."""

    def on_event(self, event: MemberEvent) -> None:
        """A member joined, came back, became suspect, died or left."""
