"""The banned list: client ids, usernames and IP addresses refused at CONNECT until `until`.

Pure state; the management plane edits it, the server persists it (through `on_change`), the
cluster replicates it, and `Channel` consults it before authentication.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

BAN_KINDS = ("client_id", "username", "ip_address")


@dataclass(slots=True)
class BanEntry:
    who: str
    kind: str  # one of BAN_KINDS (the API's `as`)
    reason: str = ""
    desc: str = ""
    by: str = ""
    at: float = 0.0
    until: float | None = None  # Unix seconds; None = forever

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "who": self.who,
            "as": self.kind,
            "reason": self.reason,
            "desc": self.desc,
            "by": self.by,
            "at": self.at,
        }
        if self.until is not None:
            data["until"] = self.until
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BanEntry:
        until = data.get("until")
        return cls(
            who=str(data["who"]),
            kind=str(data["as"]),
            reason=str(data.get("reason", "")),
            desc=str(data.get("desc", "")),
            by=str(data.get("by", "")),
            at=float(data.get("at", 0.0)),  # type: ignore[arg-type]
            until=float(until) if until is not None else None,  # type: ignore[arg-type]
        )


def normalize(kind: str, who: str) -> str:
    """Canonical form of a ban key: IP addresses compared by value, not by spelling."""
    if kind != "ip_address":
        return who
    return str(ipaddress.ip_address(who))


class BannedTable:
    """(kind, who) -> BanEntry. `on_change` callbacks run after every add or remove."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], BanEntry] = {}
        self.on_change: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: BanEntry) -> BanEntry:
        if entry.kind not in BAN_KINDS:
            raise ValueError(f"unknown ban kind {entry.kind!r}")
        entry.who = normalize(entry.kind, entry.who)
        self._entries[(entry.kind, entry.who)] = entry
        self._changed()
        return entry

    def remove(self, kind: str, who: str) -> bool:
        try:
            key = (kind, normalize(kind, who))
        except ValueError:
            return False
        if self._entries.pop(key, None) is None:
            return False
        self._changed()
        return True

    def get(self, kind: str, who: str) -> BanEntry | None:
        return self._entries.get((kind, who))

    def entries(self) -> list[BanEntry]:
        return list(self._entries.values())

    def check(
        self, client_id: str | None, username: str | None, ip: str | None, now: float
    ) -> BanEntry | None:
        """The ban that refuses this client, if any (expired ones do not count)."""
        if not self._entries:
            return None
        candidates = []
        if client_id:
            candidates.append(("client_id", client_id))
        if username:
            candidates.append(("username", username))
        if ip:
            with contextlib.suppress(ValueError):
                candidates.append(("ip_address", normalize("ip_address", ip)))
        for key in candidates:
            entry = self._entries.get(key)
            if entry is not None and not entry.expired(now):
                return entry
        return None

    def expire(self, now: float) -> list[BanEntry]:
        """Remove and return the entries whose `until` has passed."""
        gone = [e for e in self._entries.values() if e.expired(now)]
        for entry in gone:
            del self._entries[(entry.kind, entry.who)]
        if gone:
            self._changed()
        return gone

    def replace_all(self, entries: list[BanEntry]) -> None:
        """Load a stored or replicated table in one step."""
        self._entries = {(e.kind, normalize(e.kind, e.who)): e for e in entries}
        self._changed()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()
