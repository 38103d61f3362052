"""Replicated tables on disk: `<data_dir>/tables/<name>.json`, loaded at start, saved on change.

Why refuse to start on a corrupt file: these tables hold credentials (auth_clientid,
auth_username). A node that quietly started without a table would turn a deleted or changed
password into "unknown client" (which the next plugin or allow_anonymous may accept), so the
operator is told which file is wrong and decides, as for `banned.json`.

A file changed by another program while the node runs (`minibroker apps add|delete` edits
`tables/apps.json`) is merged, not overwritten: `refresh(name)` takes its rows (the newer row of
each key wins, as from a peer), and a save first merges a file that changed since this store
last read or wrote it.

Format: ``{"version": 1, "table": <name>, "rows": [{"key", "at", "value"}, ...]}`` (a row of
`broker.core.replicated`; `value` null is a deletion kept so that it wins over older copies).
"""

from __future__ import annotations

import json
import logging
import os

from broker.core.replicated import ReplicatedTable, ReplicatedTables, Row, valid_table_name
from broker.server.datafiles import write_atomic
from broker.server.errors import StartupError

__all__ = ["DIR_NAME", "ReplicatedStore", "ReplicatedStoreError"]

log = logging.getLogger(__name__)

DIR_NAME = "tables"
FORMAT_VERSION = 1


class ReplicatedStoreError(StartupError):
    """A stored table cannot be read; the message names the file and the problem."""


class ReplicatedStore:
    """Keeps every table of `tables` and its file in step once `open()` has run."""

    def __init__(self, tables: ReplicatedTables, data_dir: str) -> None:
        self.tables = tables
        self.directory = os.path.join(data_dir, DIR_NAME)
        self.save_errors = 0
        self._attached = False
        #: identity (mtime, inode, size) of each file as this store last read or wrote it
        self._seen: dict[str, tuple[int, int, int] | None] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.json")

    def _identity(self, name: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path(name))
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def refresh(self, name: str) -> int:
        """Merge table `name`'s file if another program changed it since this store read or
        wrote it (one stat otherwise); rows changed. A file that cannot be read now is logged
        and left alone: the table in memory stays in force."""
        identity = self._identity(name)
        if identity is None or identity == self._seen.get(name):
            return 0
        self._seen[name] = identity
        try:
            rows = self.read(name)
        except ReplicatedStoreError:
            return 0
        return self.tables.table(name).merge(rows)

    def open(self) -> int:
        """Load every stored table, then save each table when it changes. Returns the number
        of rows loaded; raises ReplicatedStoreError for a corrupt file."""
        loaded = 0
        try:
            files = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            files = []
        except OSError as exc:
            raise self._corrupt(self.directory, f"cannot list it: {exc.strerror or exc}") from None
        for file in files:
            name, ext = os.path.splitext(file)
            if ext != ".json" or not valid_table_name(name):
                continue  # temporary files of an interrupted save, or foreign files
            self._seen[name] = self._identity(name)
            rows = self.read(name)
            table = self.tables.table(name)
            table.replace_all(rows)  # before attaching: loading does not rewrite the file
            loaded += len(rows)
            log.info("loaded table %s: %d rows (%d live) from %s",
                     name, len(rows), len(table), self.path(name))  # fmt: skip
        if not self._attached:
            self.tables.on_change.append(self._on_change)
            self._attached = True
        return loaded

    def close(self) -> None:
        if self._attached:
            self.tables.on_change.remove(self._on_change)
            self._attached = False

    def read(self, name: str) -> list[Row]:
        path = self.path(name)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise self._corrupt(path, f"cannot read it: {exc.strerror or exc}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(path, f"not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
            raise self._corrupt(path, 'expected an object with a "rows" array')
        if doc.get("version") != FORMAT_VERSION:
            raise self._corrupt(path, f"unsupported format version {doc.get('version')!r}")
        if doc.get("table") != name:
            raise self._corrupt(path, f"it holds table {doc.get('table')!r}, not {name!r}")
        rows: list[Row] = []
        for index, item in enumerate(doc["rows"]):
            try:
                if not isinstance(item, dict):
                    raise TypeError("not an object")
                rows.append(Row.from_dict(item))
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(path, f"row {index} is invalid ({exc!s})") from None
        return rows

    def save(self, table: ReplicatedTable) -> None:
        """The whole table, compact (the C encoder: an indented dump of a table of thousands
        took longer than the two fsyncs of the atomic write)."""
        doc = {"version": FORMAT_VERSION, "table": table.name, "rows": table.dump()}
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        write_atomic(self.path(table.name), (text + "\n").encode("utf-8"))
        self._seen[table.name] = self._identity(table.name)

    def _on_change(self, table: ReplicatedTable) -> None:
        if self.refresh(table.name):  # merged a file changed elsewhere: that merge saved
            return
        try:
            self.save(table)
        except OSError as exc:  # keep serving; the change holds in memory until the next save
            self.save_errors += 1
            log.error("cannot save table %s to %s: %s", table.name, self.path(table.name), exc)

    @staticmethod
    def _corrupt(path: str, problem: str) -> ReplicatedStoreError:
        message = (
            f"{path}: corrupt replicated table: {problem}; fix the file or move it away "
            "(the node refuses to start rather than forget credentials)"
        )
        log.error("%s", message)
        return ReplicatedStoreError(message)
