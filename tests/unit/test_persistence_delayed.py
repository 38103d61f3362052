"""broker.server.persistence for what waits on a timer: delayed publishes (`DelayedStore`, the
`delayed` table) and 5.0 wills waiting for their Will Delay Interval (`broker.wills`, the
`wills` table), and the format 1 -> 2 migration. No sockets, no event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker.core.broker import Broker
from broker.core.hooks import ClientInfo
from broker.core.message import Message
from broker.protocol.constants import MQTT_5, PropertyId
from broker.protocol.packets import Will
from broker.server.persistence import (
    FILE_NAME,
    FORMAT_VERSION,
    Persistence,
    PersistenceError,
    decode_value,
    encode_value,
)

PROPS: dict[int, Any] = {
    PropertyId.CONTENT_TYPE: "text/plain",
    PropertyId.USER_PROPERTY: [("k", "v")],
}


class Clock:
    """A settable wall clock for the broker."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(tmp_path: Path, name: str) -> dict[Any, tuple[float, Any]]:
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        return {key: (due, decode_value(blob)) for key, due, blob in db.execute(
            f"SELECT * FROM {name}")}  # fmt: skip
    finally:
        db.close()


def subscriber_state(client_id: str, filt: str) -> dict[str, Any]:
    return {"client_id": client_id, "expiry_interval": 3600, "disconnected_at": 5.0,
            "subscriptions": [[filt, 1, False, False, 0, None]]}  # fmt: skip


def info(client_id: str) -> ClientInfo:
    return ClientInfo(client_id, "user", "10.0.0.7", 51234, MQTT_5, "tcp")


def will(topic: str) -> Will:
    props: dict[int, Any] = {PropertyId.WILL_DELAY_INTERVAL: 30, **PROPS}
    return Will(topic, b"gone", 1, False, props)


# -- delayed publishes ---------------------------------------------------------------------------


def test_delayed_round_trip_and_removal(tmp_path: Path) -> None:
    broker = Broker(clock=Clock(100.0))
    store = Persistence(broker, str(tmp_path))
    store.open()
    delayed = store.delayed
    message = Message("t/x", b"\x00late", 2, True, dict(PROPS), "pub-1", 100.0, "n1")
    key = delayed.add(103.0, message)
    other = delayed.add(200.0, Message("t/y", b"y", 0))
    assert delayed.dirty == {key, other}
    assert store.flush() == 2 and not delayed.dirty
    rows = table(tmp_path, "delayed")
    assert rows[key][0] == 103.0  # the absolute due time, wall clock
    assert rows[key][1]["payload"] == b"\x00late" and rows[key][1]["publisher"] == "pub-1"
    delayed.remove(other)  # it fired: its row goes at the next flush
    assert store.flush() == 1
    assert set(table(tmp_path, "delayed")) == {key}
    store.close()

    again = Broker(clock=Clock(150.0))
    loaded = Persistence(again, str(tmp_path))
    got: list[tuple[int, float, Message]] = []
    loaded.delayed.listener = lambda k, due, m: got.append((k, due, m))
    loaded.open()
    assert loaded.loaded_delayed == 1 and not loaded.delayed.dirty  # loading is not a change
    [(k, due, back)] = got
    assert (k, due) == (key, 103.0)
    assert (back.topic, back.payload, back.qos, back.retain) == ("t/x", b"\x00late", 2, True)
    assert (back.publisher, back.node) == ("pub-1", "n1")
    assert back.properties == PROPS  # user property pairs come back as tuples
    assert loaded.delayed.pending[key][0] == 103.0
    # new ids never reuse a stored one
    assert loaded.delayed.add(300.0, Message("t/z", b"z")) > key
    loaded.close()


def test_delayed_without_a_plugin_waits_in_the_store_and_is_saved_again(tmp_path: Path) -> None:
    broker = Broker(clock=Clock(100.0))
    store = Persistence(broker, str(tmp_path))
    store.open()
    key = store.delayed.add(110.0, Message("t/x", b"x", 1))
    store.flush_all()
    store.close()
    again = Broker(clock=Clock(500.0))
    loaded = Persistence(again, str(tmp_path))
    loaded.open()  # no listener: nobody to fire it, kept
    assert list(loaded.delayed.pending) == [key]
    loaded.flush_all()  # a graceful stop keeps it on disk
    loaded.close()
    assert set(table(tmp_path, "delayed")) == {key}


def test_flush_all_rewrites_the_delayed_table(tmp_path: Path) -> None:
    broker = Broker(clock=Clock(100.0))
    store = Persistence(broker, str(tmp_path))
    store.open()
    a = store.delayed.add(110.0, Message("t/a", b"a"))
    b = store.delayed.add(120.0, Message("t/b", b"b"))
    store.flush()
    store.delayed.pending.pop(a)  # (as if lost from the dirty set)
    assert store.flush_all() == 1
    assert set(table(tmp_path, "delayed")) == {b}
    store.close()


# -- delayed wills -------------------------------------------------------------------------------


def test_pending_will_round_trip_and_cancel(tmp_path: Path) -> None:
    clock = Clock(100.0)
    broker = Broker(clock=clock)
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.wills.add("dev-1", info("dev-1"), will("status/dev-1"), 130.0)
    assert store.flush() == 1
    rows = table(tmp_path, "wills")
    assert rows["dev-1"][0] == 130.0
    store.close()

    again = Broker(clock=Clock(120.0))  # restarted before the deadline
    loaded = Persistence(again, str(tmp_path))
    loaded.open()
    assert loaded.loaded_wills == 1 and not again.wills.dirty
    pending = again.wills.pending["dev-1"]
    assert pending.deadline == 130.0
    assert pending.info == info("dev-1")
    assert (pending.will.topic, pending.will.payload, pending.will.qos) == (
        "status/dev-1",
        b"gone",
        1,
    )
    assert pending.will.properties == {PropertyId.WILL_DELAY_INTERVAL: 30, **PROPS}
    # the client comes back before the deadline: the will is cancelled, its row deleted
    assert again.wills.take("dev-1") is pending
    assert loaded.flush() == 1
    assert table(tmp_path, "wills") == {}
    loaded.close()


def test_a_will_due_at_restart_is_published_at_once(tmp_path: Path) -> None:
    broker = Broker(clock=Clock(100.0))
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.import_session(subscriber_state("watcher", "status/#"))
    broker.wills.add("dev-1", info("dev-1"), will("status/dev-1"), 130.0)
    broker.wills.add("dev-2", info("dev-2"), will("status/dev-2"), 900.0)
    store.flush_all()
    store.close()

    again = Broker(clock=Clock(200.0))  # dev-1's deadline passed while the node was down
    loaded = Persistence(again, str(tmp_path))
    loaded.open()
    state = again.sessions["watcher"].export_state()
    topics = [item[0]["topic"] for item in state["queue"]]
    assert topics == ["status/dev-1"]
    props = state["queue"][0][0]["props"]
    assert PropertyId.WILL_DELAY_INTERVAL not in props  # a will property only
    assert list(again.wills.pending) == ["dev-2"]
    # both the delivery and the fired will are changes for the next flush
    assert again.dirty_sessions == {"watcher"} and again.wills.dirty == {"dev-1"}
    loaded.flush()
    assert set(table(tmp_path, "wills")) == {"dev-2"}
    loaded.close()


def test_a_bad_will_row_stops_the_start(tmp_path: Path) -> None:
    store = Persistence(Broker(), str(tmp_path))
    store.open()
    store.close()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("INSERT INTO wills VALUES ('x', 1.0, ?)", (encode_value({"info": "nope"}),))
    db.execute("INSERT INTO delayed VALUES (1, 1.0, ?)", (b"{",))
    db.commit()
    db.close()
    with pytest.raises(PersistenceError, match="delayed will of 'x' is invalid"):
        Persistence(Broker(), str(tmp_path)).open()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("DELETE FROM wills")
    db.commit()
    db.close()
    with pytest.raises(PersistenceError, match="delayed message 1 is invalid"):
        Persistence(Broker(), str(tmp_path)).open()


# -- the format version ---------------------------------------------------------------------------


def _version_1_file(path: Path) -> None:
    """A database as format 1 wrote it: meta, retained and sessions only."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE retained (topic TEXT PRIMARY KEY, message BLOB NOT NULL)")
    db.execute("CREATE TABLE sessions (client_id TEXT PRIMARY KEY, state BLOB NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('version', '1')")
    db.execute("INSERT INTO sessions VALUES ('keep', ?)",
               (encode_value(subscriber_state("keep", "t/#")),))  # fmt: skip
    db.commit()
    db.close()


def test_format_1_is_migrated_in_place(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 4
    _version_1_file(tmp_path / FILE_NAME)
    broker = Broker(clock=Clock(100.0))
    store = Persistence(broker, str(tmp_path))
    assert store.open() == (0, 1)  # the old rows are kept
    store.delayed.add(110.0, Message("t/x", b"x"))
    store.flush()
    store.close()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("4",)
        assert db.execute("SELECT count(*) FROM delayed").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM wills").fetchone() == (0,)
    finally:
        db.close()


def test_an_unknown_format_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    _version_1_file(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99'")
    db.commit()
    db.close()
    with pytest.raises(PersistenceError, match="unsupported format version '99'"):
        Persistence(Broker(), str(tmp_path)).open()
    # (only the journal mode in the header, set before the version is read, may change)
    db = sqlite3.connect(path)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    assert "delayed" not in tables and "wills" not in tables  # nothing created in it
