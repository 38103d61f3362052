"""For tests of persistence's migrations: a database file as an older format wrote it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def old_format_db(path: Path, version: int) -> sqlite3.Connection:
    """An open database with the tables formats 2 and 3 had (meta, retained, sessions, wills,
    delayed) and `version` in meta; the caller adds its rows, commits and closes."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE retained (topic TEXT PRIMARY KEY, message BLOB NOT NULL)")
    db.execute("CREATE TABLE sessions (client_id TEXT PRIMARY KEY, state BLOB NOT NULL)")
    db.execute("CREATE TABLE wills (client_id TEXT PRIMARY KEY, deadline REAL NOT NULL,"
               " will BLOB NOT NULL)")  # fmt: skip
    db.execute("CREATE TABLE delayed (id INTEGER PRIMARY KEY, due REAL NOT NULL,"
               " message BLOB NOT NULL)")  # fmt: skip
    db.execute("INSERT INTO meta VALUES ('version', ?)", (str(version),))
    return db
