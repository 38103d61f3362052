"""Per-listener authentication (mosquitto's per_listener_settings): `allow_anonymous` and
`password_file` in a [listener.*] section override the top-level ones for that listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from plugin_support import (
    BAD_USERNAME_OR_PASSWORD,
    NOT_AUTHORIZED,
    app_config,
    connect_code,
    running_app,
)
from test_core_support import TIMEOUT

from broker.app import NodeApp
from broker.plugins.passwd_file import set_password
from broker.server.config import ConfigError, ListenerConfig, parse_config
from broker.server.node import auth_mode, settings_from_config

V311 = aiomqtt.ProtocolVersion.V311
V5 = aiomqtt.ProtocolVersion.V5


async def ws_connect_code(app: NodeApp, identifier: str, **kwargs: Any) -> int:
    """`connect_code` over the WebSocket listener."""
    kwargs.setdefault("protocol", V311)
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            app.node.ws_port,
            identifier=identifier,
            transport="websockets",
            websocket_path="/mqtt",
            timeout=TIMEOUT,
            **kwargs,
        ):
            return 0
    except aiomqtt.MqttCodeError as exc:
        rc = exc.rc
        return int(rc.value) if isinstance(rc, PahoReasonCode) else int(rc or -1)


def tcp(**kwargs: Any) -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=0, **kwargs)


def ws(**kwargs: Any) -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=0, path="/mqtt", **kwargs)


async def test_anonymous_refused_on_tcp_accepted_on_ws(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, tcp=tcp(allow_anonymous=False), ws=ws(allow_anonymous=True))
    async with running_app(cfg) as app:
        assert await connect_code(app, "t3") in NOT_AUTHORIZED  # 0x05
        assert await connect_code(app, "t5", protocol=V5) in NOT_AUTHORIZED  # 0x87
        assert await ws_connect_code(app, "w3") == 0
        assert await ws_connect_code(app, "w5", protocol=V5) == 0


async def test_listener_override_of_a_refusing_top_level(tmp_path: Path) -> None:
    cfg = app_config(tmp_path, allow_anonymous=False, ws=ws(allow_anonymous=True))
    async with running_app(cfg) as app:
        assert await connect_code(app, "t") in NOT_AUTHORIZED  # no override: the global value
        assert await ws_connect_code(app, "w") == 0


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    global_file, ws_file = tmp_path / "passwd", tmp_path / "passwd.ws"
    set_password(str(global_file), "alice", "wonderland")
    set_password(str(ws_file), "wendy", "websocket")
    return global_file, ws_file


async def test_listener_password_file(tmp_path: Path, files: tuple[Path, Path]) -> None:
    global_file, ws_file = files
    cfg = app_config(
        tmp_path,
        password_file=str(global_file),
        allow_anonymous=False,
        ws=ws(password_file=str(ws_file)),
    )
    async with running_app(cfg) as app:
        # the ws listener checks its own file, and only it
        assert await ws_connect_code(app, "w1", username="wendy", password="websocket") == 0
        assert await ws_connect_code(app, "w2", username="wendy", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await ws_connect_code(app, "w3", username="alice", password="wonderland") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await ws_connect_code(app, "w4") in NOT_AUTHORIZED
        # tcp: the global file, as before
        assert await connect_code(app, "t1", username="alice", password="wonderland") == 0
        assert await connect_code(app, "t2", username="wendy", password="websocket") in (
            BAD_USERNAME_OR_PASSWORD
        )
        # SIGHUP re-reads the listener's file too
        set_password(str(ws_file), "walt", "w2")
        assert app.reload()["auth_passwd"] is True
        assert await ws_connect_code(app, "w5", username="walt", password="w2") == 0
        # a broken listener file: the reload fails and every file's users are kept
        ws_file.write_text("not a password line\n")
        assert app.reload()["auth_passwd"] is False
        assert await ws_connect_code(app, "w6", username="walt", password="w2") == 0
        assert await connect_code(app, "t3", username="alice", password="wonderland") == 0


async def test_listener_password_file_alone_loads_the_plugin(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    _, ws_file = files
    cfg = app_config(tmp_path, ws=ws(password_file=str(ws_file), allow_anonymous=False))
    async with running_app(cfg) as app:
        assert app.plugins.get("auth_passwd") is not None
        assert await ws_connect_code(app, "w1", username="wendy", password="websocket") == 0
        assert await ws_connect_code(app, "w2", username="wendy", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await ws_connect_code(app, "w3") in NOT_AUTHORIZED
        # tcp has no file and allows anonymous clients: no check, as without the plugin
        assert await connect_code(app, "t1") == 0
        assert await connect_code(app, "t2", username="anyone", password="x") == 0


# --------------------------------------------------------------------------- configuration


def test_config_parses_listener_auth_keys() -> None:
    cfg = parse_config(
        "allow_anonymous = true\n"
        '[listener.tcp]\nallow_anonymous = false\npassword_file = "/etc/mb/tcp.passwd"\n'
        "[listener.ws]\nallow_anonymous = true\n"
    )
    assert cfg.tcp.allow_anonymous is False
    assert cfg.tcp.password_file == "/etc/mb/tcp.passwd"
    assert cfg.ws.allow_anonymous is True and cfg.ws.password_file == ""
    assert cfg.ssl.allow_anonymous is None
    assert cfg.listener_allow_anonymous() == {"tcp": False, "ws": True}
    assert cfg.listener_password_files() == {"tcp": "/etc/mb/tcp.passwd"}
    settings = settings_from_config(cfg)
    assert settings.listener_allow_anonymous == {"tcp": False, "ws": True}
    mode = auth_mode(cfg)
    assert mode.startswith("anonymous allowed (per listener:")
    assert "tcp: password file /etc/mb/tcp.passwd" in mode and "ws: anonymous allowed" in mode


def test_config_tls_listener_is_named_tls() -> None:
    cfg = parse_config("[listener.ssl]\nallow_anonymous = false\n")
    assert cfg.listener_allow_anonymous() == {"tls": False}


def test_auth_mode_without_overrides_is_unchanged() -> None:
    assert auth_mode(parse_config("allow_anonymous = false\n")) == "anonymous refused"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[listener.tcp]\nallow_anonymous = 1\n", "'allow_anonymous' in [listener.tcp] must be"),
        ('[listener.ws]\nallow_anonymous = "no"\n', "'allow_anonymous' in [listener.ws] must be"),
        ("[listener.wss]\npassword_file = 3\n", "'password_file' in [listener.wss] must be"),
        ('[listener.ssl]\npassword_file = ""\n', "'password_file' in [listener.ssl] must not"),
        ("[listener.tcp]\nallow_anonymus = false\n", "unknown key 'allow_anonymus'"),
        ("[listener.ws]\nacl_file = 'x'\n", "unknown key 'acl_file' in [listener.ws]"),
        ("[management]\nallow_anonymous = false\n", "unknown key 'allow_anonymous'"),
        ("[cluster]\npassword_file = 'x'\n", "unknown key 'password_file' in [cluster]"),
    ],
)
def test_config_rejects_bad_listener_auth(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "broker.toml")
    assert expected in str(info.value)


def test_banner_warning_follows_each_listener() -> None:
    from broker.server.banner import format_banner

    cfg = parse_config("allow_anonymous = true\n[listener.tcp]\nallow_anonymous = false\n")
    exposed = [("mqtt/tcp", "0.0.0.0", 1883), ("mqtt/ws", "0.0.0.0", 8083)]
    text = format_banner(cfg, exposed, auth_mode(cfg))
    assert "WARNING: anonymous clients are allowed" in text
    assert "mqtt/ws on 0.0.0.0:8083" in text and "mqtt/tcp on" not in text
    cfg = parse_config("allow_anonymous = false\n")
    assert "WARNING" not in format_banner(cfg, exposed, auth_mode(cfg))
