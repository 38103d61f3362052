"""broker.server.persistence without sockets: the row codec, dirty tracking, what a flush
writes, and that a failed write keeps the changes for the next flush."""

from __future__ import annotations

import sqlite3
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from broker.core.broker import Broker
from broker.core.message import Message
from broker.protocol.constants import PropertyId
from broker.server.persistence import FILE_NAME, Persistence, decode_value, encode_value


def state(client_id: str, expiry: int = 3600) -> dict[str, Any]:
    return {"client_id": client_id, "expiry_interval": expiry, "disconnected_at": 5.0,
            "subscriptions": [["t/#", 1, False, False, 0, None]]}  # fmt: skip


def rows(tmp_path: Path, table: str) -> dict[str, Any]:
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        return {key: decode_value(blob) for key, blob in db.execute(f"SELECT * FROM {table}")}
    finally:
        db.close()


def test_codec_round_trips_bytes_and_int_keyed_maps() -> None:
    value = {
        "payload": b"\x00\xff",
        "props": {1: 1, 9: b"corr", 38: [("k", "v")]},
        "$b": "a plain key that looks like a tag",
        "list": [None, True, 1.5, {"x": b""}],
    }
    back = decode_value(encode_value(value))
    assert back == {**value, "props": {1: 1, 9: b"corr", 38: [["k", "v"]]}}


def test_codec_rejects_garbage() -> None:
    for blob in (b"\xff\xfe", b"{", b'{"$b": "***"}', b'{"$m": [[[1], 2]]}'):
        with pytest.raises(ValueError):
            decode_value(blob)


def test_flush_writes_what_changed_and_nothing_for_clean_sessions(tmp_path: Path) -> None:
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    assert store.open() == (0, 0)
    broker.import_session(state("keep"))
    broker.import_session(state("clean", expiry=0))
    props = {PropertyId.CORRELATION_DATA: b"\x01", PropertyId.USER_PROPERTY: [("a", "b")]}
    broker.publish(Message("t/1", b"hello", 1, True, props, "p", 100.0))
    assert broker.dirty_sessions == {"keep", "clean"}
    assert broker.dirty_retained == {"t/1"}
    assert store.flush() == 3
    assert not broker.dirty_sessions and not broker.dirty_retained
    sessions = rows(tmp_path, "sessions")
    assert set(sessions) == {"keep"}
    assert [item[0]["payload"] for item in sessions["keep"]["queue"]] == [b"hello"]
    retained = rows(tmp_path, "retained")
    assert retained["t/1"]["props"] == {9: b"\x01", 38: [["a", "b"]]}
    assert store.flush() == 0  # nothing changed: nothing written
    # a discarded session deletes its row; a retained clear leaves its tombstone (its stamp)
    broker.publish(Message("t/1", b"", 0, True))
    broker.discard_session("keep")
    assert store.flush() >= 2
    assert rows(tmp_path, "sessions") == {}
    assert rows(tmp_path, "retained") == {"t/1": {"cleared": broker.retained_gone["t/1"].to_wire()}}
    store.close()


def test_reopen_loads_and_keeps_wall_clock_disconnect_time(tmp_path: Path) -> None:
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.import_session(state("keep"))
    broker.publish(Message("r", b"x", 1, True, None, "p", 100.0))
    store.flush_all()
    store.close()
    again = Broker(clock=lambda: 200.0)
    loaded = Persistence(again, str(tmp_path))
    assert loaded.open() == (1, 1)
    session = again.sessions["keep"]
    assert session.disconnected_at == 5.0
    assert session.dirty is again.dirty_sessions  # the loaded sessions are tracked too
    assert not again.dirty_sessions  # loading is not a change
    assert again.retained.get("r") is not None
    assert set(again.router.filters()) == {"t/#"}
    loaded.close()


def test_a_failed_write_keeps_the_changes_for_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.import_session(state("keep"))

    def fail(*args: object, **kw: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write", fail)
    with pytest.raises(sqlite3.OperationalError):
        store.flush()
    assert broker.dirty_sessions == {"keep"}
    monkeypatch.undo()
    assert store.flush() == 1
    assert set(rows(tmp_path, "sessions")) == {"keep"}
    store.close()


def test_late_copies_parked_for_a_held_session_are_written_with_it(tmp_path: Path) -> None:
    """A copy resumed behind a partition parks its late QoS 2 copies (`broker.core.late_hold`);
    the peer that sent them was acknowledged once they were committed, so they are on disk, at
    the end of the session's queue: a restart delivers them (nothing is lost)."""
    broker = Broker(clock=lambda: 100.0)
    store = Persistence(broker, str(tmp_path))
    store.open()
    subscribed = {**state("held"), "subscriptions": [["w/#", 2, False, False, 0, None]]}
    broker.import_session(subscribed)
    store.flush()
    broker.late_hold.hold("held")
    late = Message("w/1", b"late", 2, False, None, "p", 100.0, "peer")
    late.stamp = broker.hlc.now()._replace(node="peer")
    broker.publish(late, forward=False, shared=False)
    assert broker.sessions["held"].queue == deque()  # parked, not queued
    assert broker.dirty_sessions == {"held"}
    store.flush()
    saved = rows(tmp_path, "sessions")["held"]
    assert [(item[0]["payload"], item[1]) for item in saved["queue"]] == [(b"late", 2)]
