"""amqtt as a third benchmark broker: finding it, its config, starting it (against a stand-in
script that plays amqtt's command line), `compare --brokers` and `--start` choices, and a
report with three labels. No real broker runs here: the real amqtt is started in
tests/integration/test_bench_amqtt_process.py.
"""

from __future__ import annotations

import datetime as dt
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import brokers, cli, compare
from benchmarks.brokers import amqtt_config, find_amqtt, start_amqtt, start_broker
from benchmarks.report import build_rows, markdown_table, render_report
from benchmarks.results import make_record
from benchmarks.scenarios import Params, ScenarioResult


def _executable(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def no_amqtt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No `$AMQTT_BIN`, an empty PATH and no known install path; returns the empty PATH dir."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.delenv("AMQTT_BIN", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(brokers, "AMQTT_PATHS", (str(tmp_path / "venv" / "bin" / "amqtt"),))
    return empty


# -- find_amqtt ---------------------------------------------------------------------------------


def test_find_amqtt_env_var_wins(
    no_amqtt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = _executable(no_amqtt / "amqtt")
    chosen = _executable(tmp_path / "my-amqtt")
    monkeypatch.setenv("AMQTT_BIN", str(chosen))
    assert find_amqtt() == str(chosen)
    assert on_path.exists()


def test_find_amqtt_env_var_naming_nothing_means_not_installed(
    no_amqtt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _executable(no_amqtt / "amqtt")  # not used: the variable says where amqtt is
    monkeypatch.setenv("AMQTT_BIN", str(tmp_path / "missing" / "amqtt"))
    assert find_amqtt() is None
    not_executable = tmp_path / "plain-file"
    not_executable.write_text("")
    monkeypatch.setenv("AMQTT_BIN", str(not_executable))
    assert find_amqtt() is None


def test_find_amqtt_on_path_then_venv(no_amqtt: Path, tmp_path: Path) -> None:
    assert find_amqtt() is None
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    in_venv = _executable(venv_bin / "amqtt")
    assert find_amqtt() == str(in_venv)
    on_path = _executable(no_amqtt / "amqtt")
    assert find_amqtt() == str(on_path)


def test_start_amqtt_without_amqtt_says_how_to_install(no_amqtt: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pip install amqtt"):
        start_broker("amqtt")


def test_start_broker_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="minibroker, mosquitto, amqtt"):
        start_broker("hivemq")


# -- the config -------------------------------------------------------------------------------


def test_amqtt_config_for_0_12_lists_only_anonymous_auth() -> None:
    yaml = pytest.importorskip("yaml")
    conf = yaml.safe_load(amqtt_config(18830, "0.12.1"))
    assert conf == {
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:18830"}},
        # only the plugins listed are loaded: no $SYS publisher, no packet/event logging
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    assert yaml.safe_load(amqtt_config(1, "0.13.0rc1"))["plugins"] == conf["plugins"]


@pytest.mark.parametrize("version", ["0.11.3", "0.11.0b1", "0.10.1", "?"])
def test_amqtt_config_before_0_12_uses_the_auth_section(version: str) -> None:
    yaml = pytest.importorskip("yaml")
    conf = yaml.safe_load(amqtt_config(1884, version))
    assert conf == {
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:1884"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }


# -- starting it (a stand-in script with amqtt's command line) ----------------------------------

_FAKE_AMQTT = """\
#!{python}
# Plays `amqtt`: `--version`, then `-c FILE` -> listen on the config's bind address.
import re, socket, sys
MODE = {mode!r}
if sys.argv[1:] == ["--version"]:
    print("0.12.1")
    sys.exit(0)
if MODE == "exit":
    print("config error", flush=True)
    sys.exit(1)
text = open(sys.argv[sys.argv.index("-c") + 1]).read()
host, port = re.search(r"bind: ([0-9.]+):([0-9]+)", text).groups()
print("amqtt stand-in on", port, flush=True)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, int(port)))
srv.listen(8)
while True:
    conn, _ = srv.accept()
    if MODE == "mqtt":
        conn.recv(1024)
        conn.sendall(bytes([0x20, 2, 0, 0]))
    conn.close()
"""


def _fake_amqtt(tmp_path: Path, mode: str) -> str:
    body = textwrap.dedent(_FAKE_AMQTT).format(python=sys.executable, mode=mode)
    return str(_executable(tmp_path / f"amqtt-{mode}", body))


def test_start_amqtt_writes_the_config_and_labels_the_version(tmp_path: Path) -> None:
    with start_amqtt(binary=_fake_amqtt(tmp_path, "mqtt")) as broker:
        assert (broker.name, broker.label, broker.host) == ("amqtt", "amqtt 0.12.1", "127.0.0.1")
        conf = (broker.workdir / "amqtt.yaml").read_text()
        assert conf == amqtt_config(broker.port, "0.12.1")
        assert broker.proc.poll() is None
        workdir = broker.workdir
    assert broker.proc.poll() is not None
    assert not workdir.exists()


def test_start_amqtt_raises_when_it_does_not_speak_mqtt(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not answer an MQTT CONNECT"):
        start_amqtt(binary=_fake_amqtt(tmp_path, "silent"))


def test_start_amqtt_raises_with_the_log_when_it_exits(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)did not start: broker exited.*config error"):
        start_amqtt(binary=_fake_amqtt(tmp_path, "exit"))


# -- compare and the command line ---------------------------------------------------------------


def test_compare_skips_amqtt_when_not_installed(
    no_amqtt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(compare, "find_mosquitto", lambda: "/usr/sbin/mosquitto")
    picked = compare.select_brokers("minibroker,mosquitto,amqtt")
    assert picked == ["minibroker", "mosquitto"]
    assert "amqtt is not installed" in capsys.readouterr().err


def test_compare_keeps_amqtt_when_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(compare, "find_mosquitto", lambda: None)
    monkeypatch.setattr(compare, "find_amqtt", lambda: "/opt/amqtt-venv/bin/amqtt")
    assert compare.select_brokers(" amqtt , minibroker,amqtt") == ["amqtt", "minibroker"]
    assert capsys.readouterr().err == ""
    assert compare.select_brokers("minibroker,mosquitto,amqtt") == ["minibroker", "amqtt"]
    assert "mosquitto is not installed" in capsys.readouterr().err


def test_compare_rejects_unknown_brokers(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.select_brokers("minibroker,emqx") is None
    assert cli.main(["compare", "--brokers", "minibroker,emqx"]) == 2
    assert "unknown brokers: emqx" in capsys.readouterr().err


def test_compare_default_brokers_unchanged_and_start_accepts_amqtt() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["compare"]).brokers == "minibroker,mosquitto"
    assert parser.parse_args(["fan-in", "--start", "amqtt", "--core", "0"]).start == "amqtt"
    assert parser.parse_args(["conn", "--start", "amqtt"]).start == "amqtt"


# -- a report with three brokers ----------------------------------------------------------------


def _three_broker_records() -> list[dict[str, object]]:
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    params = Params(publishers=10, subscribers=1).__dict__.copy()
    records: list[dict[str, object]] = []
    for label, rate in (
        ("minibroker 0.1.0", 100.0),
        ("mosquitto 2.0", 200.0),
        ("amqtt 0.12.1", 20.0),
    ):
        result = ScenarioResult(
            "fan-in",
            params,
            {"received_per_s": rate, "loss_pct": 0.0},
            "received_per_s",
            "higher",
            ["received_per_s", "loss_pct"],
        )
        records.append(make_record(result, label, [("127.0.0.1", 1883)], now=now))
    return records


def test_report_gives_amqtt_its_own_ratio_to_mosquitto() -> None:
    rows, labels = build_rows(_three_broker_records())
    table = markdown_table(rows, labels, baseline="mosquitto 2.0").splitlines()
    assert table[0] == (
        "| scenario | metric | minibroker 0.1.0 | mosquitto 2.0 | amqtt 0.12.1 |"
        " minibroker 0.1.0 / mosquitto 2.0 | amqtt 0.12.1 / mosquitto 2.0 |"
    )
    received = next(line for line in table if "received_per_s" in line)
    assert received.endswith("| 100 | 200 | 20 | 0.50 | 0.10 |")
    loss = next(line for line in table if "loss_pct" in line)
    assert loss.endswith("| - | - |")
    assert "amqtt 0.12.1 / mosquitto 2.0" in render_report(_three_broker_records())


def test_start_of_a_missing_broker_is_an_error_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMQTT_BIN", "/nonexistent/amqtt")
    assert cli.main(["fan-in", "--start", "amqtt", "-d", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot start amqtt" in err and "Traceback" not in err
