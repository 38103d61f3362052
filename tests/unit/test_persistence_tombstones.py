"""Retained tombstones on disk (broker.server.persistence format 3): a clear survives a
restart with its hybrid-clock stamp, so an older write arriving later (anti-entropy from a peer
that missed the clear) does not bring the value back; tombstones expire after
`retained_tombstone_ttl`; a format 2 file is migrated in place. No sockets, no event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from persistence_support import old_format_db

from broker.core.broker import Broker
from broker.core.hlc import Stamp
from broker.core.message import Message, message_to_dict
from broker.core.settings import Settings
from broker.server.persistence import FILE_NAME, Persistence, decode_value, encode_value


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _broker(clock: Clock, ttl: int = 3600) -> Broker:
    return Broker(Settings(node_name="n1@h", retained_tombstone_ttl=ttl), clock=clock)


def _old_write(topic: str, ms: int) -> Message:
    """A retained write as a peer that missed the clear would send it (its own stamp)."""
    message = Message(topic, b"old", 1, True, timestamp=ms / 1000)
    message.stamp = Stamp(ms, 0, "n2@h")
    return message


def test_a_clear_survives_a_restart_and_beats_the_older_write(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    broker = _broker(clock)
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.publish(Message("r/a", b"v1", 1, True, timestamp=1000.0))
    clock.now = 1001.0
    broker.publish(Message("r/a", b"", 0, True, timestamp=1001.0))  # the clear
    cleared = broker.retained_gone["r/a"]
    store.flush()
    store.close()  # a crash after the flush: nothing written at stop

    again = _broker(clock)
    back = Persistence(again, str(tmp_path))
    assert back.open() == (0, 0)
    assert again.retained_gone == {"r/a": cleared}
    assert again.hlc.peek() >= cleared  # the clock goes on past the stored stamp
    # the value as written before the clear, offered again by a peer: refused
    assert again.retain(_old_write("r/a", 1000_500)) is False
    assert again.retained.get("r/a") is None
    # a write after the clear is taken (and its row replaces the tombstone)
    assert again.retain(_old_write("r/a", 1002_000)) is True
    back.flush()
    back.close()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        (blob,) = db.execute("SELECT message FROM retained WHERE topic = 'r/a'").fetchone()
    finally:
        db.close()
    assert decode_value(blob)["payload"] == b"old"


def test_tombstones_expire_in_memory_and_on_disk(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    broker = _broker(clock, ttl=60)
    store = Persistence(broker, str(tmp_path))
    store.open()
    broker.publish(Message("r/a", b"", 0, True, timestamp=1000.0))
    clock.now = 1030.0
    broker.publish(Message("r/b", b"", 0, True, timestamp=1030.0))
    store.flush()
    clock.now = 1070.0  # r/a is 70 s old, r/b 40 s
    broker.tick()
    assert list(broker.retained_gone) == ["r/b"]
    store.flush()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        assert [row[0] for row in db.execute("SELECT topic FROM retained")] == ["r/b"]
    finally:
        db.close()
    store.close()
    # past its time at the next start: not loaded, and deleted at the first flush
    clock.now = 1100.0
    again = _broker(clock, ttl=60)
    back = Persistence(again, str(tmp_path))
    back.open()
    assert again.retained_gone == {}
    assert back.flush() == 1
    db = sqlite3.connect(tmp_path / FILE_NAME)
    try:
        assert db.execute("SELECT count(*) FROM retained").fetchone() == (0,)
    finally:
        db.close()
    back.close()


def test_re_clearing_moves_a_tombstone_to_the_young_end() -> None:
    clock = Clock(1000.0)
    broker = _broker(clock, ttl=60)
    broker.publish(Message("r/a", b"", 0, True, timestamp=1000.0))
    clock.now = 1010.0
    broker.publish(Message("r/b", b"", 0, True, timestamp=1010.0))
    clock.now = 1050.0
    broker.publish(Message("r/a", b"x", 0, True, timestamp=1050.0))
    broker.publish(Message("r/a", b"", 0, True, timestamp=1050.0))
    clock.now = 1075.0  # r/b is 65 s old: gone; r/a (cleared again 25 s ago) stays
    assert broker.expire_tombstones(clock.now) == 1
    assert list(broker.retained_gone) == ["r/a"]


def test_format_2_is_migrated_and_its_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    db = old_format_db(path, 2)
    kept = Message("r/k", b"kept", 1, True, timestamp=5.0)
    db.execute("INSERT INTO retained VALUES ('r/k', ?)", (encode_value(message_to_dict(kept)),))
    db.commit()
    db.close()
    broker = _broker(Clock(1000.0))
    store = Persistence(broker, str(tmp_path))
    assert store.open() == (1, 0)
    broker.publish(Message("r/k", b"", 0, True, timestamp=1000.0))
    store.flush()
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("4",)
        (blob,) = db.execute("SELECT message FROM retained").fetchone()
    finally:
        db.close()
    assert decode_value(blob) == {"cleared": broker.retained_gone["r/k"].to_wire()}


def test_a_clear_older_than_the_ttl_removes_an_older_value_but_leaves_no_tombstone() -> None:
    clock = Clock(1000.0)
    broker = _broker(clock, ttl=60)
    assert broker.retain(_old_write("r/a", 900_000))  # a value written at 900 s
    clear = Message("r/a", b"", 0, True, timestamp=930.0)
    clear.stamp = Stamp(930_000, 0, "n2@h")  # a clear from a peer, 70 s old: past the TTL
    assert broker.retain(clear)
    assert broker.retained.get("r/a") is None and broker.retained_gone == {}
