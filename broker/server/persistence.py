"""Persistence: retained messages and persistent sessions in `<data_dir>/broker.db` (SQLite, WAL).

Theory of operation
-------------------
The broker keeps everything in memory; this module mirrors it to disk. The hot path only
records *what* changed: `Broker.dirty_retained` (topics) and `Broker.dirty_sessions` (client
ids; `Session.touch` is a set.add). Every `persistence_interval` the flusher takes both sets and
writes, in one transaction, the current state of each changed topic and session (or deletes its
row when it is gone). A graceful stop rewrites both tables in full. Nothing is written for a
session with Session Expiry 0 (a clean session): it ends with its connection anyway.

Durability window: SQLite runs in WAL mode with `synchronous = FULL`, so a committed flush
survives a SIGKILL and a power loss. What changed after the last commit is lost on a crash: at
most `persistence_interval` milliseconds of acknowledged messages (plus the time of one flush).

A database that cannot be opened or read (not an SQLite file, a bad row, an unknown format
version) stops the start with a `PersistenceError` naming the file: a broker that silently
started empty would drop every queued message of its persistent sessions.

Rows are tagged JSON (bytes as `{"$b": base64}`, maps with non-string keys as `{"$m": pairs}`):
retained `topic -> message_to_dict`, sessions `client_id -> Session.export_state()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
import time
from typing import Any

from broker.core.broker import Broker
from broker.core.message import Message, message_from_dict, message_to_dict
from broker.server.errors import StartupError

__all__ = ["FILE_NAME", "Persistence", "PersistenceError", "decode_value", "encode_value"]

log = logging.getLogger(__name__)

FILE_NAME = "broker.db"
FORMAT_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, message BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, state BLOB NOT NULL)",
)


class PersistenceError(StartupError):
    """The persistence database cannot be opened or read; the message names the file."""


# -- row encoding ------------------------------------------------------------------------------


def _pack(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in ("$b", "$m") for k in value):
            return {k: _pack(v) for k, v in value.items()}
        return {"$m": [[_pack(k), _pack(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_pack(v) for v in value]
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$b" in value:
            return base64.b64decode(value["$b"], validate=True)
        if len(value) == 1 and "$m" in value:
            return {_unpack(k): _unpack(v) for k, v in value["$m"]}
        return {k: _unpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v) for v in value]
    return value


def encode_value(value: Any) -> bytes:
    """Tagged JSON of a msgpack-able value (bytes and int-keyed maps survive the trip)."""
    return json.dumps(_pack(value), separators=(",", ":")).encode("utf-8")


def decode_value(data: bytes) -> Any:
    """The inverse of `encode_value`; raises ValueError on anything malformed."""
    try:
        return _unpack(json.loads(bytes(data).decode("utf-8")))
    except (TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None


# -- the store ---------------------------------------------------------------------------------


class Persistence:
    """Mirrors `broker`'s retained messages and persistent sessions into `<data_dir>/broker.db`."""

    def __init__(self, broker: Broker, data_dir: str, interval_ms: int = 1000) -> None:
        self.broker = broker
        self.path = os.path.join(data_dir, FILE_NAME)
        self.interval = max(interval_ms, 1) / 1000.0
        self.flushes = 0
        self.save_errors = 0
        self.last_flush_rows = 0
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    # -- start: open and load ----------------------------------------------------------------

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
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('version', ?)", (str(FORMAT_VERSION),))
            elif row[0] != str(FORMAT_VERSION):
                raise self._error(f"unsupported format version {row[0]!r}")
            loaded = self._load(db)
        except sqlite3.Error as exc:
            db.close()
            raise self._error(f"cannot read it: {exc}") from None
        except BaseException:
            db.close()
            raise
        self._db = db
        log.info(
            "persistence: loaded %d retained messages and %d sessions from %s",
            loaded[0], loaded[1], self.path,
        )  # fmt: skip
        return loaded

    def _load(self, db: sqlite3.Connection) -> tuple[int, int]:
        broker = self.broker
        # Bookkeeping on before the sessions are created, so that they share the set.
        dirty_sessions: set[str] = set()
        dirty_retained: set[str] = set()
        broker.dirty_sessions = dirty_sessions
        broker.dirty_retained = dirty_retained
        for session in broker.sessions.values():
            session.dirty = dirty_sessions
        retained = 0
        for topic, blob in db.execute("SELECT topic, message FROM retained"):
            try:
                message = message_from_dict(decode_value(blob))
            except ValueError as exc:
                raise self._error(f"retained message of {topic!r} is invalid ({exc})") from None
            broker.retained.set(topic, message)
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
        broker.update_stats()
        dirty_sessions.clear()
        dirty_retained.clear()
        return retained, sessions

    # -- writing -----------------------------------------------------------------------------

    def flush(self) -> int:
        """Write what changed since the last flush; returns the rows written or deleted.

        On a write error the changes are kept for the next flush and the error is raised.
        """
        broker = self.broker
        dirty_sessions, dirty_retained = broker.dirty_sessions, broker.dirty_retained
        if self._db is None or dirty_sessions is None or dirty_retained is None:
            return 0
        if not dirty_sessions and not dirty_retained:
            return 0
        client_ids = list(dirty_sessions)
        topics = list(dirty_retained)
        dirty_sessions.clear()  # (cleared, never replaced: every session holds this set)
        dirty_retained.clear()
        try:
            session_rows, gone_sessions = self._session_rows(client_ids)
            retained_rows, gone_topics = self._retained_rows(topics)
            self._write(session_rows, gone_sessions, retained_rows, gone_topics, full=False)
        except BaseException:
            dirty_sessions.update(client_ids)
            dirty_retained.update(topics)
            raise
        return len(client_ids) + len(topics)

    def flush_all(self) -> int:
        """Rewrite both tables from memory (graceful stop); returns the rows written."""
        broker = self.broker
        if self._db is None:
            return 0
        session_rows, _ = self._session_rows(list(broker.sessions))
        retained_rows, _ = self._retained_rows(list(broker.retained.topics()))
        self._write(session_rows, [], retained_rows, [], full=True)
        if broker.dirty_sessions is not None:
            broker.dirty_sessions.clear()
        if broker.dirty_retained is not None:
            broker.dirty_retained.clear()
        return len(session_rows) + len(retained_rows)

    def _session_rows(self, client_ids: list[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
        rows: list[tuple[str, bytes]] = []
        gone: list[str] = []
        sessions = self.broker.sessions
        for client_id in client_ids:
            session = sessions.get(client_id)
            if session is None or session.expiry_interval == 0:
                gone.append(client_id)  # clean sessions are never stored
            else:
                rows.append((client_id, encode_value(session.export_state())))
        return rows, gone

    def _retained_rows(self, topics: list[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
        rows: list[tuple[str, bytes]] = []
        gone: list[str] = []
        retained = self.broker.retained
        for topic in topics:
            message: Message | None = retained.get(topic)
            if message is None:
                gone.append(topic)
            else:
                rows.append((topic, encode_value(message_to_dict(message))))
        return rows, gone

    def _write(
        self,
        session_rows: list[tuple[str, bytes]],
        gone_sessions: list[str],
        retained_rows: list[tuple[str, bytes]],
        gone_topics: list[str],
        *,
        full: bool,
    ) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            if full:
                db.execute("DELETE FROM sessions")
                db.execute("DELETE FROM retained")
            db.executemany(
                "DELETE FROM sessions WHERE client_id = ?", [(c,) for c in gone_sessions]
            )
            db.executemany("DELETE FROM retained WHERE topic = ?", [(t,) for t in gone_topics])
            db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)", session_rows)
            db.executemany("INSERT OR REPLACE INTO retained VALUES (?, ?)", retained_rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.flushes += 1
        self.last_flush_rows = len(session_rows) + len(gone_sessions)
        self.last_flush_rows += len(retained_rows) + len(gone_topics)

    # -- the periodic flusher ----------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic flush (after `open`)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            started = time.monotonic()
            try:
                rows = self.flush()
            except (OSError, sqlite3.Error) as exc:  # keep serving; retried at the next flush
                self.save_errors += 1
                log.error("persistence: cannot write %s: %s", self.path, exc)
                continue
            if rows:
                log.debug("persistence: flushed %d rows in %.1f ms", rows,
                          (time.monotonic() - started) * 1000)  # fmt: skip

    async def stop(self) -> None:
        """Stop the flusher, write everything (graceful stop) and close the database."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._db is None:
            return
        try:
            rows = self.flush_all()
            log.info("persistence: saved %d rows to %s", rows, self.path)
        except (OSError, sqlite3.Error) as exc:
            self.save_errors += 1
            log.error("persistence: cannot save to %s at stop: %s", self.path, exc)
        finally:
            self.close()

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _error(self, problem: str) -> PersistenceError:
        message = (
            f"{self.path}: corrupt or unreadable persistence database: {problem}; fix or move "
            "the file away (the node refuses to start rather than lose its stored sessions)"
        )
        log.error("%s", message)
        return PersistenceError(message)
