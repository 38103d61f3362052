"""Persistence: retained messages, persistent sessions, delayed wills and delayed publishes in
`<data_dir>/broker.db` (SQLite, WAL).

Theory of operation
-------------------
The broker keeps everything in memory; this module mirrors it to disk. The hot path only
records *what* changed: `Broker.dirty_retained` (topics), `Broker.dirty_sessions` (client
ids; `Session.touch` is a set.add), `WillTimers.dirty` (client ids with a will waiting for its
Will Delay Interval) and `DelayedStore.dirty` (ids of `$delayed/...` messages of the
delayed_publish plugin). Every `persistence_interval` the flusher takes these sets and writes,
in one transaction, the current state of each changed row (or deletes it when it is gone). A
graceful stop rewrites every table in full. Nothing is written for a session with Session
Expiry 0 (a clean session): it ends with its connection anyway.

Pending wills and delayed publishes are stored with their absolute due time on the wall clock
(the node's `broker.clock`), since a monotonic clock means nothing after a restart. At start,
after the sessions and retained messages are in place, a will whose time has come is published
at once and the others wait again in `broker.wills`; the delayed messages go back into the
`DelayedStore`, whose `listener` (the plugin, when loaded) schedules them, those already due at
once. A message or will that fires is deleted at the next flush (after a crash inside that
window it fires again: at least once, like the rest of the durability model).

The plugin is handed the store (`PluginContext.delayed_store`, from the node's persistence through
the plugin manager): the plugins load before this store
opens, and may be loaded and unloaded at runtime, so the store outlives any one plugin
instance; what the plugin has not taken stays in the store (and on disk).

Durability window: SQLite runs in WAL mode with `synchronous = FULL`, so a committed flush
survives a SIGKILL and a power loss. What changed after the last commit is lost on a crash: at
most `persistence_interval` milliseconds of changes (plus the time of one flush).

Acks that wait for a commit (`broker.core.commit_gate`): the FORWARD_ACK of a cluster batch that
went into a persistent session always, and with `durable_acks` the PUBACK/PUBREC of a message
queued into one and the PUBREL/PUBCOMP of a persistent session's QoS 2 flow. The first ack
parked wakes the flusher, which commits after one more loop turn (group commit: every ack
parked until then shares the transaction) instead of at the end of its interval; acks parked
while a commit is being written wait for the next one, which starts as soon as it is done. The
rows are built on the event loop and written by one thread (a single writer), so the loop
serves clients during the fsync. With these, an acknowledged message is on disk before its ack
leaves: a SIGKILL loses only what was not acknowledged yet, which the sender sends again.

A database that cannot be opened or read (not an SQLite file, a bad row, an unknown format
version) stops the start with a `PersistenceError` naming the file: a broker that silently
started empty would drop every queued message of its persistent sessions.

Rows are tagged JSON (bytes as `{"$b": base64}`, maps with non-string keys as `{"$m": pairs}`):
retained `topic -> message_to_dict` or, for a cleared topic, `topic -> {"cleared": stamp}`
(the tombstone, `Broker.retained_gone`, with its hybrid-clock stamp `[ms, counter, node]`),
sessions `client_id -> Session.export_state()`, wills `client_id, deadline ->
pending_will_to_dict`, delayed `id, due -> message_to_dict`, kept `key -> value` (the gate's
`KeptRecords`, opaque here: the cluster's last forward batch per sender, written in the same
transaction as the sessions that batch changed).

Why tombstones are stored: a node that restarted without them would take an older value of a
cleared topic from a peer that missed the clear (anti-entropy) and serve it again. They are
kept `retained_tombstone_ttl` seconds after the clear (by the stamp's wall time): one past its
time is not loaded, and its row is deleted at the next flush.

Format versions (`meta.version`): 1 had retained and sessions; 2 adds `wills` and `delayed`; 3
adds tombstone rows to `retained` (a version 2 node would read one as a broken message, so the
version is raised although no table changed); 4 adds `kept`. A version 1, 2 or 3 file is
migrated in place at open (the missing empty tables are created, the version raised, in one
transaction); any other version stops the start, the file untouched.

Where each part lives: this module writes (the dirty sets taken, rows built on the loop and
written by one thread, the flusher, the graceful stop); opening and loading the file (schema,
migration, `PersistenceError`) is `broker.server.persistence_load`, and the delayed messages'
store is `broker.server.delayed_store`; both are re-exported here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import sqlite3
import time
from typing import Any

from broker.core.broker import Broker
from broker.core.commit_gate import Release
from broker.core.message import Message, message_to_dict
from broker.core.wills import pending_will_to_dict
from broker.server.delayed_store import DelayedStore
from broker.server.persistence_load import CLEARED, FORMAT_VERSION, Loading, PersistenceError
from broker.server.rowcodec import decode_value, encode_value

__all__ = [
    "FILE_NAME",
    "FORMAT_VERSION",
    "DelayedStore",
    "Persistence",
    "PersistenceError",
    "decode_value",
    "encode_value",
]

log = logging.getLogger(__name__)

FILE_NAME = "broker.db"
#: Tests only (off when unset): seconds every commit waits before it starts, so a test can
#: SIGKILL a node between a change and its commit (tests/integration/test_takeover_park.py).
COMMIT_DELAY_ENV = "MINIBROKER_TEST_COMMIT_DELAY"

#: table -> its key column, in the order a flush writes them
_KEYS = {
    "sessions": "client_id", "retained": "topic", "wills": "client_id", "delayed": "id",
    "kept": "key",
}  # fmt: skip

#: rows to write and keys to delete (of one table)
_Rows = tuple[list[tuple[Any, ...]], list[Any]]
#: the same, by table
_Changes = dict[str, _Rows]
#: the keys a flush took from the dirty sets: sessions, retained, wills, delayed, kept
_Taken = tuple[list[str], list[str], list[str], list[int], list[str]]


class Persistence(Loading):
    """Mirrors `broker`'s retained messages, persistent sessions, pending delayed wills and
    delayed publishes into `<data_dir>/broker.db`."""

    def __init__(
        self, broker: Broker, data_dir: str, interval_ms: int = 1000, durable_acks: bool = False
    ) -> None:
        self.broker = broker
        #: `durable_acks`: acks to clients wait for the commit too (`broker.core.commit_gate`)
        self.durable_acks = durable_acks
        self.path = os.path.join(data_dir, FILE_NAME)
        self.interval = max(interval_ms, 1) / 1000.0
        self.flushes = 0
        self.save_errors = 0
        self.last_flush_rows = 0
        #: `COMMIT_DELAY_ENV` (tests only; 0 when unset or malformed).
        self.test_delay = _seconds(os.environ.get(COMMIT_DELAY_ENV, ""))
        #: `$delayed` messages of the delayed_publish plugin, handed to it by the plugin
        #: manager (`PluginContext.delayed_store`)
        self.delayed = DelayedStore()
        #: what the last `open` loaded besides retained messages and sessions
        self.loaded_wills = 0
        self.loaded_delayed = 0
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        #: the flusher sleeps on this until its interval ends or an ack waits (`_wake`)
        self._wakeup: asyncio.Future[None] | None = None
        #: the one thread that writes (started with the flusher)
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        #: a commit being written by the thread, and the acks it releases
        self._in_flight: tuple[asyncio.Future[None], list[Release]] | None = None

    # -- writing -----------------------------------------------------------------------------

    def flush(self) -> int:
        """Write what changed since the last flush, then send the acks that waited for it;
        returns the rows written or deleted.

        On a write error the changes (and acks) are kept for the next flush and the error is
        raised.
        """
        taken = self._take()
        releases = self._take_acks()
        if taken is None:
            self._release(releases)
            return 0
        try:
            self._write(self._rows(taken), full=False)
        except BaseException:
            self._give_back(taken, releases)
            raise
        self._release(releases)
        return sum(len(keys) for keys in taken)

    async def _flush_async(self) -> int:
        """`flush`, with the write done by the writer thread while the loop goes on."""
        taken = self._take()
        releases = self._take_acks()
        if taken is None:
            self._release(releases)
            return 0
        writer = self._writer
        assert writer is not None
        try:
            write = functools.partial(self._write, self._rows(taken), full=False)
            future = asyncio.get_running_loop().run_in_executor(writer, write)
        except BaseException:
            self._give_back(taken, releases)
            raise
        self._in_flight = (future, releases)
        try:
            await asyncio.shield(future)  # a cancel (stop) leaves the write to `stop`
        except Exception:
            self._in_flight = None
            self._give_back(taken, releases)
            raise
        self._in_flight = None
        self._release(releases)
        return sum(len(keys) for keys in taken)

    def _take(self) -> _Taken | None:
        """Take the keys of the dirty sets (cleared in place, never replaced: every session
        holds the set); None when there is nothing to write."""
        broker = self.broker
        dirty_sessions, dirty_retained = broker.dirty_sessions, broker.dirty_retained
        dirty_wills, dirty_delayed = broker.wills.dirty, self.delayed.dirty
        if self._db is None or dirty_sessions is None or dirty_retained is None:
            return None
        if dirty_wills is None or broker.commit_gate is None:
            return None
        dirty_kept = broker.commit_gate.kept.dirty
        if not (dirty_sessions or dirty_retained or dirty_wills or dirty_delayed or dirty_kept):
            return None
        taken = (list(dirty_sessions), list(dirty_retained), list(dirty_wills),
                 list(dirty_delayed), list(dirty_kept))  # fmt: skip
        dirty_kept.clear()
        dirty_sessions.clear()
        dirty_retained.clear()
        dirty_wills.clear()
        dirty_delayed.clear()
        return taken

    def _rows(self, taken: _Taken) -> _Changes:
        client_ids, topics, will_ids, delayed_ids, kept_keys = taken
        return {
            "sessions": self._session_rows(client_ids),
            "retained": self._retained_rows(topics),
            "wills": self._will_rows(will_ids),
            "delayed": self._delayed_rows(delayed_ids),
            "kept": self._kept_rows(kept_keys),
        }

    def _give_back(self, taken: _Taken, releases: list[Release]) -> None:
        """A write failed: its changes and acks wait for the next flush."""
        broker = self.broker
        client_ids, topics, will_ids, delayed_ids, kept_keys = taken
        for dirty, keys in ((broker.dirty_sessions, client_ids), (broker.dirty_retained, topics),
                            (broker.wills.dirty, will_ids)):  # fmt: skip
            if dirty is not None:
                dirty.update(keys)
        self.delayed.dirty.update(delayed_ids)
        gate = broker.commit_gate
        if gate is not None:
            gate.kept.dirty.update(kept_keys)
            gate.give_back(releases)

    def _take_acks(self) -> list[Release]:
        gate = self.broker.commit_gate
        return gate.take() if gate is not None else []

    def _release(self, releases: list[Release]) -> None:
        """The commit that covers these acks is durable: send them."""
        for release in releases:
            try:
                release()
            except Exception:  # one connection's trouble must not keep the others' acks
                log.exception("persistence: cannot send an ack after a commit")

    def flush_all(self) -> int:
        """Rewrite every table from memory (graceful stop); returns the rows written."""
        broker = self.broker
        gate = broker.commit_gate
        if self._db is None:
            return 0
        changes: _Changes = {
            "sessions": self._session_rows(list(broker.sessions)),
            "retained": self._retained_rows(
                list(broker.retained.topics()) + list(broker.retained_gone)
            ),
            "wills": self._will_rows(list(broker.wills.pending)),
            "delayed": self._delayed_rows(list(self.delayed.pending)),
            "kept": self._kept_rows(list(gate.kept.rows) if gate is not None else []),
        }
        self._write(changes, full=True)
        if gate is not None:
            gate.kept.dirty.clear()
        for dirty in (broker.dirty_sessions, broker.dirty_retained, broker.wills.dirty):
            if dirty is not None:
                dirty.clear()
        self.delayed.dirty.clear()
        return sum(len(rows) for rows, _ in changes.values())

    def _session_rows(self, client_ids: list[str]) -> _Rows:
        rows: list[tuple[Any, ...]] = []
        gone: list[Any] = []
        sessions = self.broker.sessions
        for client_id in client_ids:
            session = sessions.get(client_id)
            if session is None or session.expiry_interval == 0:
                gone.append(client_id)  # clean sessions are never stored
            else:
                state = self.broker.late_hold.on_disk(client_id, session.export_state())
                rows.append((client_id, encode_value(state)))
        return rows, gone

    def _retained_rows(self, topics: list[str]) -> _Rows:
        rows: list[tuple[Any, ...]] = []
        gone: list[Any] = []
        retained = self.broker.retained
        cleared = self.broker.retained_gone
        for topic in topics:
            message: Message | None = retained.get(topic)
            if message is None:
                stamp = cleared.get(topic)
                if stamp is None:
                    gone.append(topic)
                else:  # a tombstone, kept across a restart
                    rows.append((topic, encode_value({CLEARED: stamp.to_wire()})))
            else:
                rows.append((topic, encode_value(message_to_dict(message))))
        return rows, gone

    def _will_rows(self, client_ids: list[str]) -> _Rows:
        rows: list[tuple[Any, ...]] = []
        gone: list[Any] = []
        pending_wills = self.broker.wills.pending
        for client_id in client_ids:
            pending = pending_wills.get(client_id)
            if pending is None:
                gone.append(client_id)
            else:
                blob = encode_value(pending_will_to_dict(pending))
                rows.append((client_id, pending.deadline, blob))
        return rows, gone

    def _delayed_rows(self, keys: list[int]) -> _Rows:
        rows: list[tuple[Any, ...]] = []
        gone: list[Any] = []
        pending = self.delayed.pending
        for key in keys:
            entry = pending.get(key)
            if entry is None:
                gone.append(key)
            else:
                rows.append((key, entry[0], encode_value(message_to_dict(entry[1]))))
        return rows, gone

    def _kept_rows(self, keys: list[str]) -> _Rows:
        gate = self.broker.commit_gate
        kept = gate.kept.rows if gate is not None else {}
        rows = [(key, encode_value(kept[key])) for key in keys if key in kept]
        return rows, [key for key in keys if key not in kept]

    def _write(self, changes: _Changes, *, full: bool) -> None:
        """One transaction: per table, (all rows first when `full`) the deletions, then the
        rows written."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, (rows, gone) in changes.items():
                key = _KEYS[table]
                if full:
                    db.execute(f"DELETE FROM {table}")
                if gone:
                    db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k in gone])
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.flushes += 1
        self.last_flush_rows = sum(len(rows) + len(gone) for rows, gone in changes.values())

    # -- the flusher -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher (after `open`)."""
        if self._task is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "persistence-writer")
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _wake(self) -> None:
        """An ack waits for a commit: end the flusher's sleep (`CommitGate.wake`)."""
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gate = self.broker.commit_gate
            if gate is None or not gate.waiting:  # else acks wait: commit at once
                wakeup = self._wakeup = loop.create_future()
                timer = loop.call_later(self.interval, self._wake)
                try:
                    await wakeup
                finally:
                    self._wakeup = None
                    timer.cancel()
            await asyncio.sleep(0)  # group commit: what this loop turn parks joins it
            if self.test_delay:
                await asyncio.sleep(self.test_delay)
            started = time.monotonic()
            try:
                rows = await self._flush_async()
            except (OSError, sqlite3.Error) as exc:  # keep serving; retried after an interval
                self.save_errors += 1
                log.error("persistence: cannot write %s: %s", self.path, exc)
                await asyncio.sleep(self.interval)
                continue
            except Exception:  # a bug: the flusher must go on (acks wait for it)
                self.save_errors += 1
                log.exception("persistence: cannot flush to %s", self.path)
                await asyncio.sleep(self.interval)
                continue
            if rows:
                log.debug("persistence: flushed %d rows in %.1f ms", rows,
                          (time.monotonic() - started) * 1000)  # fmt: skip

    async def stop(self) -> None:
        """Stop the flusher, write everything (graceful stop), send the acks still waiting
        and close the database."""
        releases: list[Release] = []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._in_flight is not None:  # the write the cancel left running: let it end
            future, releases = self._in_flight
            self._in_flight = None
            with contextlib.suppress(OSError, sqlite3.Error):
                await future
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._db is None:
            return
        try:
            rows = self.flush_all()
            log.info("persistence: saved %d rows to %s", rows, self.path)
            self._release(releases + self._take_acks())
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if 0 < value < 3600 else 0.0
