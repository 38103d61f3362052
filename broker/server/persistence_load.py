"""The start of persistence: open `<data_dir>/broker.db`, check it, create or migrate its
schema, load every table into the broker, then publish the wills that came due meanwhile and
hand the delayed messages back to the plugin.

Why a module of its own: reading (and refusing) a database is one job, done once at start,
with its own failure rule (`PersistenceError` stops the start rather than lose stored
sessions); writing is `broker.server.persistence`, which owns the file format's description in
its docstring. `Persistence` inherits `Loading`; this module never imports
`broker.server.persistence`, which re-exports `PersistenceError` and `FORMAT_VERSION`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Any

from broker.core.broker import Broker
from broker.core.commit_gate import CommitGate, DirtySessions
from broker.core.hlc import stamp_from_wire
from broker.core.message import message_from_dict
from broker.core.wills import pending_will_from_dict
from broker.server.delayed_store import DelayedStore
from broker.server.errors import StartupError
from broker.server.rowcodec import decode_value

log = logging.getLogger("broker.server.persistence")

FORMAT_VERSION = 4
#: older versions that `open` migrates in place (their tables are a subset of _SCHEMA's)
_MIGRATES_FROM = ("1", "2", "3")
#: the key of a tombstone row in `retained` (a cleared topic)
CLEARED = "cleared"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, message BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, state BLOB NOT NULL)",
    # version 2
    "CREATE TABLE IF NOT EXISTS wills (client_id TEXT PRIMARY KEY, deadline REAL NOT NULL,"
    " will BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS delayed (id INTEGER PRIMARY KEY, due REAL NOT NULL,"
    " message BLOB NOT NULL)",
    # version 4
    "CREATE TABLE IF NOT EXISTS kept (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
)


class PersistenceError(StartupError):
    """The persistence database cannot be opened or read; the message names the file."""


class Loading:
    """Open and load; mixed into `Persistence`, whose `__init__` sets the attributes declared
    here."""

    broker: Broker
    durable_acks: bool
    path: str
    delayed: DelayedStore
    loaded_wills: int
    loaded_delayed: int
    _db: sqlite3.Connection | None

    if TYPE_CHECKING:  # `Persistence` defines it

        def _wake(self) -> None: ...

    def open(self) -> tuple[int, int]:
        """Open (or create) the database and load it into the broker.

        Returns (retained messages, sessions) loaded; raises PersistenceError.
        """
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise self._error(f"cannot open it: {exc}") from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise self._error(f"cannot switch it to WAL mode (got {mode!r})")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise self._error(f"integrity check failed: {check!r}")
            self._prepare_schema(db)
            loaded = self._load(db)
        except sqlite3.Error as exc:
            db.close()
            raise self._error(f"cannot read it: {exc}") from None
        except BaseException:
            db.close()
            raise
        self._db = db
        log.info(
            "persistence: loaded %d retained messages, %d sessions, %d delayed wills and %d "
            "delayed messages from %s",
            loaded[0], loaded[1], self.loaded_wills, self.loaded_delayed, self.path,
        )  # fmt: skip
        self._resume_delayed()
        return loaded

    def _prepare_schema(self, db: sqlite3.Connection) -> None:
        """Create the tables, or migrate an older format in place; refuse an unknown one
        before changing anything in the file."""
        version: str | None = None
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if has_meta:
            row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            version = None if row is None else str(row[0])
        if version is not None and version != str(FORMAT_VERSION):
            if version not in _MIGRATES_FROM:
                raise self._error(f"unsupported format version {version!r}")
            log.info("persistence: migrating %s from format %s to %d", self.path, version,
                     FORMAT_VERSION)  # fmt: skip
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(FORMAT_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _load(self, db: sqlite3.Connection) -> tuple[int, int]:
        broker = self.broker
        # Bookkeeping on before the sessions are created, so that they share the set.
        dirty_sessions = DirtySessions()
        dirty_retained: set[str] = set()
        broker.dirty_sessions = dirty_sessions
        broker.dirty_retained = dirty_retained
        gate = broker.commit_gate = CommitGate(dirty_sessions, self.durable_acks)
        gate.wake = self._wake
        for session in broker.sessions.values():
            session.dirty = dirty_sessions
        retained = 0
        expired: list[str] = []
        oldest_kept = int((broker.clock() - broker.settings.retained_tombstone_ttl) * 1000)
        tombstones: list[tuple[str, Any]] = []
        for topic, blob in db.execute("SELECT topic, message FROM retained"):
            try:
                data = decode_value(blob)
                if isinstance(data, dict) and CLEARED in data:
                    stamp = stamp_from_wire(data[CLEARED])
                    if stamp is None:
                        raise ValueError("a tombstone's stamp must be [ms, counter, node]")
                    broker.hlc.restore(stamp)
                    if stamp.ms < oldest_kept:
                        expired.append(topic)  # deleted at the next flush
                    else:
                        tombstones.append((topic, stamp))
                    continue
                message = message_from_dict(data)
            except ValueError as exc:
                raise self._error(f"retained message of {topic!r} is invalid ({exc})") from None
            broker.retained.set(topic, message)
            if message.stamp is not None:  # the clock goes on from the last write stored
                broker.hlc.restore(message.stamp)
            retained += 1
        sessions = 0
        for client_id, blob in db.execute("SELECT client_id, state FROM sessions"):
            try:
                state = decode_value(blob)
                if not isinstance(state, dict) or state.get("client_id") != client_id:
                    raise ValueError("not the state of this client id")
                if state.get("expiry_interval") == 0:
                    continue
                broker.import_session(state)
            except ValueError as exc:
                raise self._error(f"session of {client_id!r} is invalid ({exc})") from None
            sessions += 1
        # Pending wills and delayed messages after the sessions they may be delivered to.
        dirty_wills: set[str] = set()
        broker.wills.dirty = dirty_wills
        self.loaded_wills = 0
        for client_id, deadline, blob in db.execute("SELECT client_id, deadline, will FROM wills"):
            try:
                data = decode_value(blob)
                if not isinstance(data, dict):
                    raise ValueError("a pending will must be a map")
                # the column is the deadline (an operator may edit it; the blob has a copy)
                pending = pending_will_from_dict(client_id, {**data, "deadline": deadline})
            except ValueError as exc:
                raise self._error(f"delayed will of {client_id!r} is invalid ({exc})") from None
            broker.wills.add(client_id, pending.info, pending.will, pending.deadline)
            self.loaded_wills += 1
        self.loaded_delayed = 0
        store = self.delayed
        store.pending.clear()
        for key, due, blob in db.execute("SELECT id, due, message FROM delayed ORDER BY id"):
            try:
                if not isinstance(key, int) or not isinstance(due, int | float):
                    raise ValueError(f"bad id or due time {key!r}, {due!r}")
                message = message_from_dict(decode_value(blob))
            except ValueError as exc:
                raise self._error(f"delayed message {key!r} is invalid ({exc})") from None
            store.pending[key] = (float(due), message)
            self.loaded_delayed += 1
        kept = gate.kept
        for key, blob in db.execute("SELECT key, value FROM kept"):
            try:
                kept.rows[key] = decode_value(blob)
            except ValueError as exc:
                raise self._error(f"kept record {key!r} is invalid ({exc})") from None
        broker.retained_gone.clear()
        for topic, stamp in sorted(tombstones, key=lambda item: item[1]):  # oldest first
            broker.retained_gone[topic] = stamp
        broker.update_stats()
        dirty_sessions.clear()
        dirty_retained.clear()
        dirty_retained.update(expired)
        dirty_wills.clear()
        store.dirty.clear()
        kept.dirty.clear()
        return retained, sessions

    def _resume_delayed(self) -> None:
        """After a load: publish the wills whose time has come (the others wait for the
        broker's tick) and hand the delayed messages to the plugin, if it is loaded. What
        this changes is recorded for the next flush."""
        broker = self.broker
        for pending in broker.wills.due(broker.clock()):
            try:
                broker.publish_will(pending.info, pending.will)
            except Exception:  # a hook's bug must not stop the start; the will is gone
                log.exception("persistence: cannot publish the will of %s", pending.client_id)
        store = self.delayed
        loaded = sorted(store.pending.items())
        store.pending.clear()
        for key, (due, message) in loaded:
            try:
                store.restore(key, due, message)
            except Exception:  # kept in the store: a later load of the plugin takes it
                log.exception("persistence: cannot reschedule delayed message %d", key)

    def _error(self, problem: str) -> PersistenceError:
        message = (
            f"{self.path}: corrupt or unreadable persistence database: {problem}; fix or move "
            "the file away (the node refuses to start rather than lose its stored sessions)"
        )
        log.error("%s", message)
        return PersistenceError(message)
