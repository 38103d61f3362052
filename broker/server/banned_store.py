"""The banned list on disk: `<data_dir>/banned.json`, loaded at start, saved on every change.

Why refuse to start on a corrupt file: bans are a security control. A node that quietly
started with an empty list after a bad edit or a disk fault would let banned clients back in,
so the operator is told which file is wrong and why, and decides (fix it or remove it).

Format: ``{"version": 1, "banned": [{"who": ..., "as": ..., "reason": ..., "desc": ...,
"by": ..., "at": ..., "until": ..., "hlc": ...}, ...], "gone": [[as, who, hlc], ...]}`` (the
API's banned object plus `at` and the write's hybrid-clock stamp `hlc`; `gone` are the removals
remembered, `broker.core.banned`). `hlc` and `gone` are optional: older files have neither.
"""

from __future__ import annotations

import json
import logging
import os

from broker.core.banned import BAN_KINDS, BanEntry, BannedTable, normalize
from broker.core.hlc import Stamp, stamp_from_wire
from broker.server.datafiles import write_json_atomic
from broker.server.errors import StartupError

__all__ = ["FILE_NAME", "BannedStore", "BannedStoreError"]

log = logging.getLogger(__name__)

FILE_NAME = "banned.json"
FORMAT_VERSION = 1


class BannedStoreError(StartupError):
    """The stored banned list cannot be read; the message names the file and the problem."""


class BannedStore:
    """Keeps `table` and `<data_dir>/banned.json` in step once `open()` has run."""

    def __init__(self, table: BannedTable, data_dir: str) -> None:
        self.table = table
        self.path = os.path.join(data_dir, FILE_NAME)
        self.save_errors = 0
        self._attached = False
        self._gone: dict[tuple[str, str], Stamp] = {}  # as `read` found them

    def open(self) -> int:
        """Load the file into the table (if it exists), then save on every change.

        Returns the number of entries loaded; raises BannedStoreError for a corrupt file.
        """
        entries = self.read()
        if entries is not None:
            self.table.replace_all(entries, self._gone)
            log.info("loaded %d banned entries from %s", len(entries), self.path)
        if not self._attached:
            self.table.on_change.append(self._on_change)
            self._attached = True
        return len(entries or ())

    def close(self) -> None:
        if self._attached:
            self.table.on_change.remove(self._on_change)
            self._attached = False

    def read(self) -> list[BanEntry] | None:
        """The stored entries, None when there is no file yet."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._corrupt(f"cannot read it: {exc.strerror or exc}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(f"not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("banned"), list):
            raise self._corrupt('expected an object with a "banned" array')
        if doc.get("version") != FORMAT_VERSION:
            raise self._corrupt(f"unsupported format version {doc.get('version')!r}")
        entries: list[BanEntry] = []
        for index, item in enumerate(doc["banned"]):
            try:
                entries.append(_entry(item))
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(f"entry {index} is invalid ({exc!s})") from None
        gone = doc.get("gone", [])
        self._gone = {}
        for index, item in enumerate(gone if isinstance(gone, list) else [None]):
            stamp = stamp_from_wire(item[2]) if isinstance(item, list) and len(item) == 3 else None
            if stamp is None or not all(isinstance(part, str) for part in item[:2]):
                raise self._corrupt(f"removal {index} is invalid (expected [as, who, hlc])")
            self._gone[(item[0], item[1])] = stamp
        return entries

    def save(self) -> None:
        doc: dict[str, object] = {
            "version": FORMAT_VERSION,
            "banned": [entry.to_dict() for entry in self.table.entries()],
        }
        if self.table.gone:
            doc["gone"] = [[k, w, s.to_wire()] for (k, w), s in self.table.gone.items()]
        write_json_atomic(self.path, doc)

    def _on_change(self) -> None:
        try:
            self.save()
        except OSError as exc:  # keep serving; the change holds in memory until the next save
            self.save_errors += 1
            log.error("cannot save the banned list to %s: %s", self.path, exc)

    def _corrupt(self, problem: str) -> BannedStoreError:
        message = (
            f"{self.path}: corrupt banned list: {problem}; fix the file or move it away "
            "(the node refuses to start rather than forget its bans)"
        )
        log.error("%s", message)
        return BannedStoreError(message)


def _entry(item: object) -> BanEntry:
    if not isinstance(item, dict):
        raise TypeError("not an object")
    for key in ("who", "as"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise ValueError(f"{key!r} must be a non-empty string")
    if item["as"] not in BAN_KINDS:
        raise ValueError(f"'as' must be one of {', '.join(BAN_KINDS)}, got {item['as']!r}")
    for key in ("at", "until"):
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key!r} must be a number of Unix seconds")
    normalize(item["as"], item["who"])  # an ip_address that does not parse raises ValueError
    return BanEntry.from_dict(item)
