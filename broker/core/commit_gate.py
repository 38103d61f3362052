"""Acknowledgements that wait for the commit of what they acknowledge.

Why: persistence (`broker.server.persistence`) mirrors the broker's state to disk in periodic
commits, so a SIGKILL loses what changed since the last one. An ack sent before that commit
promises something a crash can take back: a publisher's PUBACK/PUBREC for a message queued into
a persistent session, a PUBREL (the broker's "I have the PUBREC") for an outgoing QoS 2 one, a
FORWARD_ACK that lets the sending node forget a forward. Holding those acks until the commit
closes the window: what was acknowledged survives the crash, and what was not is resent.

Theory of operation
-------------------
`DirtySessions` is the set of client ids changed since the last commit (persistence's
bookkeeping, shared by every session) plus `marks`, a counter that every change to a
*persistent* session (Session Expiry above 0) moves and nothing resets. An operation reads
`marks` before and after it: if it moved, the operation changed state that only the next commit
makes durable, and its ack is parked here (`CommitGate.hold`, a callable that sends it) instead
of being sent. Clean sessions never move `marks`, so their traffic is never delayed.

The server edge owns the commit: when it takes the dirty sets for a transaction it also takes
the parked acks (`take`), and calls them once the transaction is durable; acks parked after that
snapshot wait for the next commit. The first ack parked calls `wake`, so the flusher commits at
once instead of at the end of its interval (group commit: every ack parked until the flusher
runs shares one transaction). The gate does no I/O and knows no clock.

`kept` (`KeptRecords`) is a small mapping that other layers fill and the edge commits in the same
transaction as the sessions: what a layer writes there on the loop is in the commit that holds
the session changes it made before (the edge snapshots both at once). The cluster keeps the last
forward batch it processed per sender there, so a batch resent after a restart is recognised.
The values are opaque here (anything the edge's row codec encodes).

`client_acks` is the `durable_acks` setting: whether acks to clients wait (it costs them
latency). Forward acks between nodes always wait when persistence is on: they cost no client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CommitGate", "DirtySessions", "KeptRecords", "Release"]

#: Sends one held ack (or does whatever waited for the commit).
Release = Callable[[], None]


class DirtySessions(set[str]):
    """Client ids changed since the last commit, and `marks` (see the module docstring)."""

    __slots__ = ("marks",)

    def __init__(self) -> None:
        super().__init__()
        self.marks = 0


class KeptRecords:
    """Records committed with the sessions (see the module docstring): key -> value, and the
    keys changed since the last commit. Keep it small: every key is a row."""

    __slots__ = ("dirty", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.dirty: set[str] = set()

    def get(self, key: str) -> Any:
        return self.rows.get(key)

    def put(self, key: str, value: Any) -> None:
        """Record `value` under `key`; the next commit writes it."""
        self.rows[key] = value
        self.dirty.add(key)


class CommitGate:
    """The acks waiting for the next commit (see the module docstring)."""

    __slots__ = ("client_acks", "dirty", "kept", "waiting", "wake")

    def __init__(self, dirty: DirtySessions, client_acks: bool = False) -> None:
        self.dirty = dirty
        self.client_acks = client_acks
        #: Records of other layers, committed with the sessions.
        self.kept = KeptRecords()
        self.waiting: list[Release] = []
        #: Called when the first ack is parked (the flusher commits soon); set by the edge.
        self.wake: Callable[[], None] | None = None

    @property
    def marks(self) -> int:
        """The persistent-session change count (compare before and after an operation)."""
        return self.dirty.marks

    def hold(self, release: Release) -> None:
        """Park `release` until the next commit that starts after now."""
        if not self.waiting and self.wake is not None:
            self.wake()
        self.waiting.append(release)

    def take(self) -> list[Release]:
        """The acks a commit starting now covers (the edge calls them once it is durable)."""
        waiting, self.waiting = self.waiting, []
        return waiting

    def give_back(self, releases: list[Release]) -> None:
        """A commit failed: its acks wait for the next one, ahead of the newer ones."""
        if releases:
            if not self.waiting and self.wake is not None:
                self.wake()
            self.waiting[:0] = releases
