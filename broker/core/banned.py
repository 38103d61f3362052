"""The banned list: client ids, usernames and IP addresses refused at CONNECT until `until`.

Pure state; the management plane edits it, the server persists it (through `on_change`), the
cluster replicates it, and `Channel` consults it before authentication.

Replication (`merge`, `merge_gone`): as the other replicated tables, the later write of a ban
wins by hybrid-clock stamp (`broker.core.hlc`; an entry without one, from an older node or file,
by its `at`), and a removal leaves a tombstone stamp (`gone`, bounded), so a node that was
away when a ban was lifted does not bring it back when it meets the others again.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from broker.core.hlc import Stamp, legacy_stamp, stamp_from_wire

BAN_KINDS = ("client_id", "username", "ip_address")
#: Removals remembered (their stamps) against older copies of the ban; the oldest go first.
MAX_TOMBSTONES = 10_000


@dataclass(slots=True)
class BanEntry:
    who: str
    kind: str  # one of BAN_KINDS (the API's `as`)
    reason: str = ""
    desc: str = ""
    by: str = ""
    at: float = 0.0
    until: float | None = None  # Unix seconds; None = forever
    stamp: Stamp | None = None  # the write's hybrid-clock stamp (None: ordered by `at`)

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def order(self) -> Stamp:
        return self.stamp if self.stamp is not None else legacy_stamp(int(self.at * 1000))

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
        if self.stamp is not None:
            data["hlc"] = self.stamp.to_wire()
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
            stamp=stamp_from_wire(data.get("hlc")),
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
        #: (kind, who) -> stamp of its removal (see the module docstring)
        self.gone: dict[tuple[str, str], Stamp] = {}
        self.on_change: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: BanEntry) -> BanEntry:
        """Store `entry`, replacing any ban of the same key (a write of this node's API)."""
        if entry.kind not in BAN_KINDS:
            raise ValueError(f"unknown ban kind {entry.kind!r}")
        entry.who = normalize(entry.kind, entry.who)
        key = (entry.kind, entry.who)
        self._entries[key] = entry
        self.gone.pop(key, None)
        self._changed()
        return entry

    def remove(self, kind: str, who: str, stamp: Stamp | None = None) -> bool:
        """Lift a ban; with `stamp`, remember the removal against older copies of it."""
        try:
            key = (kind, normalize(kind, who))
        except ValueError:
            return False
        if stamp is not None:
            self._bury(key, stamp)
        if self._entries.pop(key, None) is None:
            return False
        self._changed()
        return True

    def merge(self, entry: BanEntry) -> bool:
        """A peer's copy of a ban: taken if its stamp is later than what is held (a ban of
        the key, or its removal); True when it changed the table."""
        if entry.kind not in BAN_KINDS:
            raise ValueError(f"unknown ban kind {entry.kind!r}")
        entry.who = normalize(entry.kind, entry.who)
        key = (entry.kind, entry.who)
        held = self._entries.get(key)
        old = held.order() if held is not None else self.gone.get(key)
        if old is not None and entry.order() <= old:
            return False
        self._entries[key] = entry
        self.gone.pop(key, None)
        self._changed()
        return True

    def merge_gone(self, kind: str, who: str, stamp: Stamp) -> bool:
        """A peer's removal of a ban: lifts an older ban of the key; True when it did."""
        try:
            key = (kind, normalize(kind, who))
        except ValueError:
            return False
        held = self._entries.get(key)
        if held is not None and held.order() > stamp:  # at the same stamp, the removal wins
            return False
        self._bury(key, stamp)
        if held is None:
            return False
        del self._entries[key]
        self._changed()
        return True

    def _bury(self, key: tuple[str, str], stamp: Stamp) -> None:
        old = self.gone.get(key)
        if old is None or stamp > old:
            self.gone[key] = stamp
            while len(self.gone) > MAX_TOMBSTONES:
                del self.gone[next(iter(self.gone))]

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

    def replace_all(
        self, entries: list[BanEntry], gone: dict[tuple[str, str], Stamp] | None = None
    ) -> None:
        """Load a stored or replicated table in one step."""
        self._entries = {(e.kind, normalize(e.kind, e.who)): e for e in entries}
        if gone is not None:
            self.gone = dict(gone)
        self._changed()

    def stamps(self) -> list[Stamp]:
        """Every stamp held (a restart restores the clock from them)."""
        out = [e.stamp for e in self._entries.values() if e.stamp is not None]
        return out + list(self.gone.values())

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()
