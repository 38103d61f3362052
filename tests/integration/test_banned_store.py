"""Bans in <data_dir>/banned.json: saved on each change, loaded at start, corrupt = no start."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from plugin_support import NOT_AUTHORIZED, app_config, connect_code, running_app

from broker.core.banned import BanEntry, BannedTable
from broker.server.banned_store import BannedStore, BannedStoreError
from broker.server.errors import StartupError


def _file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "banned.json"


async def test_ban_survives_restart(tmp_path: Path) -> None:
    cfg = app_config(tmp_path)
    async with running_app(cfg) as app:
        assert await connect_code(app, "evil") == 0
        app.broker.banned.add(
            BanEntry("evil", "client_id", reason="spam", by="test", at=time.time())
        )
        app.broker.banned.add(BanEntry("10.9.8.7", "ip_address"))
        app.broker.banned.add(BanEntry("gone", "username"))
        assert app.broker.banned.remove("username", "gone")
        assert await connect_code(app, "evil") in NOT_AUTHORIZED
    stored = json.loads(_file(tmp_path).read_text())
    assert stored["version"] == 1
    assert {(e["who"], e["as"]) for e in stored["banned"]} == {
        ("evil", "client_id"),
        ("10.9.8.7", "ip_address"),
    }
    assert not list(_file(tmp_path).parent.glob(".banned.json.*"))  # no temp files left

    async with running_app(cfg) as app:  # same data dir: the bans are back
        entry = app.broker.banned.get("client_id", "evil")
        assert entry is not None and entry.reason == "spam" and entry.by == "test"
        assert len(app.broker.banned) == 2
        assert await connect_code(app, "evil") in NOT_AUTHORIZED
        assert await connect_code(app, "good") == 0
        app.broker.banned.remove("client_id", "evil")
    async with running_app(cfg) as app:
        assert await connect_code(app, "evil") == 0
        assert len(app.broker.banned) == 1


async def test_expired_removal_is_saved(tmp_path: Path) -> None:
    async with running_app(app_config(tmp_path)) as app:
        app.broker.banned.add(BanEntry("short", "client_id", until=time.time() - 1))
        assert "short" in _file(tmp_path).read_text()
        app.broker.tick()  # housekeeping drops expired bans
        assert json.loads(_file(tmp_path).read_text())["banned"] == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["evil"]', 'expected an object with a "banned" array'),
        ('{"version": 9, "banned": []}', "unsupported format version 9"),
        ('{"version": 1, "banned": [{"who": "x"}]}', "entry 0 is invalid"),
        ('{"version": 1, "banned": [{"who": "x", "as": "nick"}]}', "entry 0 is invalid"),
        ('{"version": 1, "banned": [{"who": "1.2.3", "as": "ip_address"}]}', "entry 0"),
        ('{"version": 1, "banned": [{"who": "x", "as": "client_id", "until": "soon"}]}', "until"),
    ],
)
async def test_corrupt_file_refuses_start(tmp_path: Path, content: str, problem: str) -> None:
    path = _file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(StartupError) as info:
        async with running_app(app_config(tmp_path)):
            pass
    message = str(info.value)
    assert isinstance(info.value, BannedStoreError)
    assert message.startswith(f"{path}: corrupt banned list: ") and problem in message
    assert path.read_text() == content  # left as it was for the operator to look at


def test_store_without_a_node(tmp_path: Path) -> None:
    table = BannedTable()
    store = BannedStore(table, str(tmp_path))
    assert store.open() == 0
    table.add(BanEntry("::ffff:0:1", "ip_address"))
    other = BannedTable()
    assert BannedStore(other, str(tmp_path)).open() == 1
    assert [e.who for e in other.entries()] == [e.who for e in table.entries()]
    store.close()
    table.add(BanEntry("later", "client_id"))  # no longer saved
    assert "later" not in (tmp_path / "banned.json").read_text()
