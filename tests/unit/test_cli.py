"""Command line and start banner, without starting a real node."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import broker
from broker import cli
from broker.server.banner import broker_version, format_banner, is_loopback
from broker.server.config import BrokerConfig


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text('allow_anonymous = false\n[node]\nname = "n1@127.0.0.1"\n', encoding="utf-8")
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text("max_inflight = 3\n", encoding="utf-8")
    return path


@pytest.fixture
def fake_node(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Stand-in for broker.app: records the config `run` was given."""
    calls: list[object] = []
    module = types.ModuleType("broker.app")

    async def run(config: BrokerConfig) -> None:
        calls.append(config)

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "broker.app", module)
    monkeypatch.setattr(
        cli, "_configure_logging", lambda verbose, fmt="text": calls.append(verbose)
    )
    return calls


# --------------------------------------------------------------------------- --test-config


def test_test_config_good(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "-c", str(good_file), "--test-config"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"configuration OK: {good_file}"
    assert err == ""


def test_test_config_bad(bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--config", str(bad_file), "--test-config"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        f"minibroker: error: {bad_file}: unknown key 'max_inflight' in [top level] "
        "(did you mean 'max_inflight_messages'?)"
    )


def test_test_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "-c", str(tmp_path / "none.toml"), "--test-config"]) == 1
    assert "cannot read configuration" in capsys.readouterr().err


def test_test_config_without_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--test-config"]) == 0
    assert capsys.readouterr().out.startswith("configuration OK: ")


def test_test_config_checks_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--test-config", "--join", "a:1,nohost"]) == 1
    assert "--join: 'nohost' is not a valid peer address" in capsys.readouterr().err


# --------------------------------------------------------------------------- start


def test_start_passes_merged_config(good_file: Path, fake_node: list[object]) -> None:
    argv = [
        "start",
        "-c",
        str(good_file),
        "--node-name",
        "cli@10.0.0.1",
        "--host",
        "0.0.0.0",
        "--mqtt-port",
        "0",
        "--ws-port",
        "18083",
        "--http-port",
        "18080",
        "--cluster-port",
        "17946",
        "--join",
        "10.0.0.2:7946, 10.0.0.3:7946",
        "--join",
        "[::1]:7946",
        "--data-dir",
        "/tmp/mb",
        "-v",
    ]
    assert cli.main(argv) == 0
    verbose, cfg = fake_node
    assert verbose is True
    assert isinstance(cfg, BrokerConfig)
    assert cfg.allow_anonymous is False  # from the file
    assert cfg.node_name == "cli@10.0.0.1"  # flag wins over the file
    assert {cfg.tcp.bind, cfg.ws.bind, cfg.management.bind, cfg.cluster.bind} == {"0.0.0.0"}
    assert (cfg.tcp.port, cfg.ws.port, cfg.management.port, cfg.cluster.port) == (
        0,
        18083,
        18080,
        17946,
    )
    assert cfg.cluster_join == ["10.0.0.2:7946", "10.0.0.3:7946", "[::1]:7946"]
    assert cfg.data_dir == "/tmp/mb"


def test_start_defaults_to_info(fake_node: list[object]) -> None:
    assert cli.main(["start"]) == 0
    assert fake_node == [False, BrokerConfig()]


def test_start_ctrl_c_exits_zero(monkeypatch: pytest.MonkeyPatch, fake_node: list[object]) -> None:
    async def interrupted(config: BrokerConfig) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["broker.app"], "run", interrupted)
    assert cli.main(["start"]) == 0


def test_start_config_error_exits_2(
    bad_file: Path, fake_node: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["start", "-c", str(bad_file)]) == 2
    assert capsys.readouterr().err.startswith(f"minibroker: error: {bad_file}: unknown key")
    assert fake_node == []  # the node never started


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["start", "--mqtt-port", "70000"], ["start", "--ws-port", "x"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("minibroker") and err.count("\n") == 1, err  # one line, no usage
    assert "error: " in err and "--help" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--help"]) == 0
    assert "--test-config" in capsys.readouterr().out


# --------------------------------------------------------------------------- version


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"minibroker {broker_version()}"
    assert broker.__version__ == "0.1.0"
    assert broker_version() == "0.1.0"


# --------------------------------------------------------------------------- banner


LOCAL = [
    ("mqtt/tcp", "127.0.0.1", 1883),
    ("mqtt/ws", "127.0.0.1", 8083),
    ("http", "127.0.0.1", 8080),
    ("cluster", "127.0.0.1", 7946),
]


def test_banner_content() -> None:
    cfg = BrokerConfig(node_name="n1@127.0.0.1")
    cfg.ws.path = "/ws"
    text = format_banner(cfg, LOCAL, "anonymous allowed")
    assert "n1@127.0.0.1" in text
    assert "0.1.0" in text
    assert "mqtt://127.0.0.1:1883" in text
    assert "ws://127.0.0.1:8083/ws" in text
    assert "http://127.0.0.1:8080" in text
    assert "127.0.0.1:7946" in text
    assert "auth: anonymous allowed" in text
    assert "WARNING" not in text
    assert len(text.splitlines()) <= 8


def test_banner_shows_bound_ephemeral_port_and_ipv6() -> None:
    text = format_banner(BrokerConfig(), [("mqtt/tcp", "::1", 40123)], "anonymous allowed")
    assert "mqtt://[::1]:40123" in text
    assert "WARNING" not in text


def test_banner_warns_anonymous_on_public_address() -> None:
    listeners = [("mqtt/tcp", "0.0.0.0", 1883), ("mqtt/ws", "127.0.0.1", 8083)]
    text = format_banner(BrokerConfig(), listeners, "anonymous allowed")
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "anonymous" in warnings[0] and "mqtt/tcp on 0.0.0.0:1883" in warnings[0]
    assert "mqtt/ws" not in warnings[0]


def test_banner_no_warning_with_password_file() -> None:
    cfg = BrokerConfig(allow_anonymous=False, password_file="/etc/passwd.mb", cookie="secret")
    listeners = [("mqtt/tcp", "0.0.0.0", 1883), ("cluster", "10.0.0.1", 7946)]
    text = format_banner(cfg, listeners, "password file /etc/passwd.mb")
    assert "auth: password file /etc/passwd.mb" in text
    assert "WARNING" not in text


def test_banner_public_management_alone_is_not_anonymous_mqtt() -> None:
    text = format_banner(BrokerConfig(), [("http", "0.0.0.0", 8080)], "anonymous allowed")
    assert "anonymous clients" not in text


def test_banner_warns_default_cookie_on_public_cluster() -> None:
    cfg = BrokerConfig(allow_anonymous=False)
    text = format_banner(cfg, [("cluster", "10.0.0.1", 7946)], "password file /x")
    assert "WARNING" in text and "cookie" in text


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
