"""auth_passwd with real clients: the password file decides while loaded, not after unload."""

from __future__ import annotations

from pathlib import Path

import pytest
from plugin_support import (
    BAD_USERNAME_OR_PASSWORD,
    NOT_AUTHORIZED,
    app_config,
    connect_code,
    running_app,
)

from broker.plugins.passwd_file import set_password
from broker.server.errors import StartupError


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    set_password(str(path), "alice", "wonderland")
    set_password(str(path), "bob", b"builder")
    return path


async def test_password_file_decides_while_loaded(tmp_path: Path, passwd: Path) -> None:
    cfg = app_config(tmp_path, password_file=str(passwd), allow_anonymous=False)
    async with running_app(cfg) as app:
        assert app.plugins.get("auth_passwd") is not None  # loaded at start by password_file
        assert await connect_code(app, "c1", username="alice", password="wonderland") == 0
        assert await connect_code(app, "c2", username="bob", password="builder") == 0
        assert await connect_code(app, "c3", username="alice", password="nope") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await connect_code(app, "c4", username="mallory", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await connect_code(app, "c5", username="alice") in BAD_USERNAME_OR_PASSWORD
        # no username: no opinion from the plugin, allow_anonymous = false refuses
        assert await connect_code(app, "c6") in NOT_AUTHORIZED


async def test_anonymous_follows_allow_anonymous(tmp_path: Path, passwd: Path) -> None:
    cfg = app_config(tmp_path, password_file=str(passwd), allow_anonymous=True)
    async with running_app(cfg) as app:
        assert await connect_code(app, "anon") == 0
        assert await connect_code(app, "bad", username="alice", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )


async def test_unload_and_load_again(tmp_path: Path, passwd: Path) -> None:
    cfg = app_config(tmp_path, plugins={"auth_passwd": {"enabled": True, "file": str(passwd)}})
    async with running_app(cfg) as app:
        hooks = app.broker.hooks.authenticate
        assert len(hooks) == 1
        assert await connect_code(app, "w1", username="alice", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )
        app.plugins.unload("auth_passwd")
        assert hooks == []
        # nothing checks passwords any more: allow_anonymous (true) lets everyone in
        assert await connect_code(app, "w2", username="alice", password="x") == 0
        # the file is read again on load: a user added meanwhile is known
        set_password(str(passwd), "carol", "c")
        app.plugins.load("auth_passwd")
        assert await connect_code(app, "w3", username="carol", password="c") == 0
        assert await connect_code(app, "w4", username="alice", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )


async def test_missing_password_file_refuses_to_start(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, password_file=str(tmp_path / "missing"))
    with pytest.raises(StartupError, match=r"auth_passwd.*missing"):
        async with running_app(cfg):
            pass
