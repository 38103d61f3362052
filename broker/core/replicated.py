"""Small tables kept the same on every node: key -> record, the last writer wins.

Why a table of its own kind: the credentials of the auth_clientid and auth_username plugins (and
any later table of the same nature) must be identical on every node, survive a restart, and come
back into line after a node was away, also for deletions. The banned list solves the first two
(`broker.core.banned`, written on every node, persisted per node); this module adds what deletes
need to converge: every row carries `at`, the wall-clock time given by the node that took the
write, and `stamp`, that node's hybrid-clock stamp (`broker.core.hlc`: wall time, a counter and
the node's name, so two writes of one key in the same millisecond on two nodes are still
ordered, the same way everywhere); a deletion leaves a tombstone (`value` None) with its own.
A row without a stamp (an older node, a file edited by `minibroker apps`) is ordered by `at`.

Theory of operation
-------------------
* A write is stamped once (by the management API) and applied unchanged on every running node;
  applying the same row twice, or in any order with other rows, gives the same table (`merge`
  is commutative, associative and idempotent: the larger `(stamp, tombstone, value)` wins).
* A node that was away and the peers it meets pull each other's whole dump (cluster side:
  `cluster.replicas`, RPC `tables_dump`); both keep the newer row of each key, so a credential
  deleted while the node was down stays deleted, and one changed on the lone node is not lost.
* Tombstones are kept (they are a key and a time); a later write of the key replaces them.

Pure state, no I/O: the server persists the tables through `on_change`
(`broker.server.replicated_store`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.core.hlc import Stamp, legacy_stamp, stamp_from_wire

__all__ = ["ReplicatedTable", "ReplicatedTables", "Row", "valid_table_name"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def valid_table_name(name: object) -> bool:
    """A table name is also a file name: lower-case letters, digits and `_`, 64 at most."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    at: float
    #: the record (plain, msgpack- and JSON-able data); None for a deleted key (a tombstone)
    value: Mapping[str, Any] | None
    #: the writer's hybrid-clock stamp; None: ordered by `at` (`hlc.legacy_stamp`)
    stamp: Stamp | None = None

    def order(self) -> tuple[Stamp, bool, str, float]:
        """What decides between two rows of one key: the later write (stamp) wins; at the
        same stamp a deletion wins (the safe side for credentials), then the larger value, then
        the later `at`: a total order on what a row holds, so every merge order ends the same
        (hypothesis found two tombstones with one stamp and different times)."""
        text = "" if self.value is None else json.dumps(self.value, sort_keys=True, default=str)
        stamp = self.stamp if self.stamp is not None else legacy_stamp(int(self.at * 1000))
        return (stamp, self.value is None, text, self.at)

    def to_dict(self) -> dict[str, Any]:
        value = None if self.value is None else dict(self.value)
        out = {"key": self.key, "at": self.at, "value": value}
        if self.stamp is not None:
            out["hlc"] = self.stamp.to_wire()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        """Raises ValueError/TypeError/KeyError for a malformed row (stored or received)."""
        key, at, value = data["key"], data["at"], data.get("value")
        if not isinstance(key, str) or not key:
            raise ValueError("'key' must be a non-empty string")
        if isinstance(at, bool) or not isinstance(at, int | float) or at != at:
            raise ValueError("'at' must be a number")
        if value is not None and not isinstance(value, Mapping):
            raise ValueError("'value' must be an object or null")
        stamp = None
        if data.get("hlc") is not None:
            stamp = stamp_from_wire(data["hlc"])
            if stamp is None:
                raise ValueError("'hlc' must be [ms, counter, node]")
        return cls(key, float(at), None if value is None else dict(value), stamp)


class ReplicatedTable:
    """One table. `on_change` callbacks run (with the table) after every change."""

    def __init__(self, name: str) -> None:
        if not valid_table_name(name):
            raise ValueError(f"bad table name {name!r}")
        self.name = name
        self._rows: dict[str, Row] = {}
        self.on_change: list[Callable[[ReplicatedTable], None]] = []

    def __len__(self) -> int:
        return sum(1 for row in self._rows.values() if row.value is not None)

    def get(self, key: str) -> Mapping[str, Any] | None:
        """The record of a live key; None for an unknown or deleted one."""
        row = self._rows.get(key)
        return None if row is None else row.value

    def row(self, key: str) -> Row | None:
        """The row of `key`, tombstones included."""
        return self._rows.get(key)

    def keys(self) -> list[str]:
        """The live keys, sorted."""
        return sorted(key for key, row in self._rows.items() if row.value is not None)

    def put(
        self, key: str, value: Mapping[str, Any], at: float, stamp: Stamp | None = None
    ) -> bool:
        """Store `value` unless a newer row of `key` is there; True when it was taken."""
        return self._apply([Row(key, at, dict(value), stamp)]) == 1

    def delete(self, key: str, at: float, stamp: Stamp | None = None) -> bool:
        """Delete `key` (a tombstone at `at`) unless a newer row is there; True when taken."""
        return self._apply([Row(key, at, None, stamp)]) == 1

    def stamps(self) -> list[Stamp]:
        """The stamps of the rows that have one (a restart restores the clock from them)."""
        return [row.stamp for row in self._rows.values() if row.stamp is not None]

    def dump(self) -> list[dict[str, Any]]:
        """Every row, tombstones included, by key (what is persisted and exchanged)."""
        return [self._rows[key].to_dict() for key in sorted(self._rows)]

    def merge(self, rows: Iterable[Row]) -> int:
        """Keep the winner of each key; returns how many rows changed."""
        return self._apply(rows)

    def replace_all(self, rows: Iterable[Row]) -> None:
        """Load a stored table in one step."""
        self._rows = {row.key: row for row in rows}
        self._changed()

    def _apply(self, rows: Iterable[Row]) -> int:
        changed = 0
        for row in rows:
            old = self._rows.get(row.key)
            if old is None or row.order() > old.order():
                self._rows[row.key] = row
                changed += 1
        if changed:
            self._changed()
        return changed

    def _changed(self) -> None:
        for callback in self.on_change:
            callback(self)


class ReplicatedTables:
    """Every replicated table of a node, by name; a table exists once it is asked for."""

    def __init__(self) -> None:
        self._tables: dict[str, ReplicatedTable] = {}
        #: run with the table after any change to any table (the store saves that table)
        self.on_change: list[Callable[[ReplicatedTable], None]] = []

    def table(self, name: str) -> ReplicatedTable:
        table = self._tables.get(name)
        if table is None:
            table = ReplicatedTable(name)
            table.on_change.append(self._changed)
            self._tables[name] = table
        return table

    def names(self) -> list[str]:
        return sorted(self._tables)

    def stamps(self) -> list[Stamp]:
        return [stamp for table in self._tables.values() for stamp in table.stamps()]

    def dump_all(self) -> dict[str, list[dict[str, Any]]]:
        return {name: table.dump() for name, table in sorted(self._tables.items())}

    def merge_all(self, doc: object) -> int:
        """Merge a peer's `dump_all`; malformed tables and rows are skipped. Rows changed."""
        if not isinstance(doc, Mapping):
            return 0
        changed = 0
        for name, rows in doc.items():
            if not valid_table_name(name) or not isinstance(rows, list):
                continue
            parsed: list[Row] = []
            for item in rows:
                try:
                    parsed.append(Row.from_dict(item))
                except (KeyError, TypeError, ValueError):
                    continue
            changed += self.table(name).merge(parsed)
        return changed

    def _changed(self, table: ReplicatedTable) -> None:
        for callback in self.on_change:
            callback(table)
