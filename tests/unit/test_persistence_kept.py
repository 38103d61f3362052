"""The `kept` table (broker.server.persistence format 4): the commit gate's `KeptRecords` are
written in the same transaction as the sessions and read back at open, which is how the
cluster's forward de-duplication (`cluster.outbox.Inbox`) survives a SIGKILL between the commit
of a batch and its FORWARD_ACK; and the format 3 -> 4 migration. No sockets, no event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from persistence_support import old_format_db

from broker.core.broker import Broker
from broker.core.commit_gate import KeptRecords
from broker.core.message import Message, message_to_dict
from broker.server.persistence import (
    FILE_NAME,
    FORMAT_VERSION,
    Persistence,
    PersistenceError,
    decode_value,
    encode_value,
)
from cluster.outbox import KEPT_PREFIX, Inbox


def state(client_id: str) -> dict[str, Any]:
    """An offline persistent session subscribed to t/#."""
    return {"client_id": client_id, "expiry_interval": 3600, "disconnected_at": 5.0,
            "subscriptions": [["t/#", 2, False, False, 0, None]]}  # fmt: skip


def kept_rows(tmp_path: Path) -> dict[str, Any]:
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        return {key: decode_value(blob) for key, blob in db.execute("SELECT * FROM kept")}
    finally:
        db.close()


def kept_of(broker: Broker) -> KeptRecords:
    gate = broker.commit_gate
    assert gate is not None  # (set by Persistence.open)
    return gate.kept


def queued(broker: Broker, client_id: str) -> list[bytes]:
    return [item[0]["payload"] for item in broker.sessions[client_id].export_state()["queue"]]


def receive_batch(broker: Broker, inbox: Inbox, seq: int, payload: bytes) -> bool:
    """What the receiver does with a numbered batch from n2 (epoch 7) of one QoS 2 message."""
    if not inbox.accept("n2", 7, seq, kept_of(broker)):
        return False
    broker.publish(Message("t/x", payload, 2, False, timestamp=100.0))
    return True


def test_the_record_is_committed_with_the_sessions_and_loaded_at_start(tmp_path: Path) -> None:
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.import_session(state("keep"))
    store.flush()
    inbox = Inbox()
    assert receive_batch(broker, inbox, 1, b"one")
    assert receive_batch(broker, inbox, 2, b"two")
    assert not receive_batch(broker, inbox, 2, b"two")  # a resend in the same run
    flushes = store.flushes
    assert store.flush() == 2  # the session and the record ...
    assert store.flushes == flushes + 1  # ... in one transaction
    assert kept_rows(tmp_path) == {KEPT_PREFIX + "n2": [7, 2]}
    store.close()  # a SIGKILL: no flush_all
    # The next run: the sender resends batch 2 (its ack never left) and then sends batch 3.
    again = Broker(clock=lambda: 200.0)
    reopened = Persistence(again, str(tmp_path))
    assert reopened.open() == (0, 1)
    assert queued(again, "keep") == [b"one", b"two"]
    assert not kept_of(again).dirty  # loading is not a change
    inbox = Inbox()
    assert not receive_batch(again, inbox, 2, b"two")  # recognised: only acknowledged
    assert not receive_batch(again, inbox, 1, b"one")
    assert receive_batch(again, inbox, 3, b"three")
    assert queued(again, "keep") == [b"one", b"two", b"three"]
    reopened.flush()
    assert kept_rows(tmp_path) == {KEPT_PREFIX + "n2": [7, 3]}
    # A new run of the sender replaces its record: one row per sender name.
    assert inbox.accept("n2", 8, 1, kept_of(again))
    assert inbox.accept("n3", 1, 1, kept_of(again))
    reopened.flush()
    assert kept_rows(tmp_path) == {KEPT_PREFIX + "n2": [8, 1], KEPT_PREFIX + "n3": [1, 1]}
    reopened.close()


def test_flush_all_rewrites_the_records_and_a_failed_write_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    store.open()
    kept = kept_of(broker)
    kept.put("a", [1, 2])

    def fail(*args: object, **kw: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write", fail)
    with pytest.raises(sqlite3.OperationalError):
        store.flush()
    assert kept.dirty == {"a"}
    monkeypatch.undo()
    assert store.flush() == 1 and not kept.dirty
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("INSERT INTO kept VALUES ('stale', ?)", (encode_value([0, 0]),))
    db.commit()
    db.close()
    kept.put("b", {"any": b"\x00"})  # opaque: whatever the row codec encodes
    assert store.flush_all() == 2
    assert kept_rows(tmp_path) == {"a": [1, 2], "b": {"any": b"\x00"}}
    store.close()


def test_a_malformed_record_is_not_a_duplicate_and_a_bad_row_stops_the_start(
    tmp_path: Path,
) -> None:
    kept = KeptRecords()
    kept.rows[KEPT_PREFIX + "n2"] = "garbage"
    assert Inbox().accept("n2", 7, 1, kept)  # nothing to compare with: processed
    assert kept.rows[KEPT_PREFIX + "n2"] == [7, 1]
    store = Persistence(Broker(), str(tmp_path))
    store.open()
    store.close()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("INSERT INTO kept VALUES ('x', ?)", (b"{",))
    db.commit()
    db.close()
    with pytest.raises(PersistenceError, match="kept record 'x' is invalid"):
        Persistence(Broker(), str(tmp_path)).open()


def test_format_3_is_migrated_in_place(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 4
    path = tmp_path / FILE_NAME
    db = old_format_db(path, 3)
    message = Message("r/k", b"kept", 1, True, timestamp=5.0)
    db.execute("INSERT INTO retained VALUES ('r/k', ?)", (encode_value(message_to_dict(message)),))
    db.execute("INSERT INTO sessions VALUES ('keep', ?)", (encode_value(state("keep")),))
    db.commit()
    db.close()
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    assert store.open() == (1, 1)  # the old rows are kept
    assert not kept_of(broker).rows
    assert Inbox().accept("n2", 7, 1, kept_of(broker))
    store.flush()
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("4",)
    finally:
        db.close()
    assert kept_rows(tmp_path) == {KEPT_PREFIX + "n2": [7, 1]}
