"""`minibroker start --test-config` checks what `start` checks, and names every problem.

Before issue 16 it read the TOML only: a `password_file` that did not exist was "configuration
OK", then `start` failed. Each test writes real files into tmp_path; nothing binds a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import cli
from broker.plugins.passwd_file import set_password


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'{body}\n[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = cli.main(["start", "-c", str(path), "--test-config"])
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line], out


def test_good_password_and_acl_files_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_password(str(tmp_path / "passwd"), "alice", "pw")
    (tmp_path / "acl").write_text("user alice\ntopic readwrite a/#\n")
    path = write_config(
        tmp_path, f'password_file = "{tmp_path / "passwd"}"\nacl_file = "{tmp_path / "acl"}"'
    )
    code, errors, out = check(path, capsys)
    assert (code, errors) == (0, [])
    assert out.strip() == f"configuration OK: {path}"
    assert not (tmp_path / "data").exists()  # a check writes nothing


def test_missing_password_and_acl_files_are_both_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path, f'password_file = "{tmp_path / "nope"}"\nacl_file = "{tmp_path / "nacl"}"'
    )
    code, errors, out = check(path, capsys)
    assert code == 1 and out == ""
    assert len(errors) == 2, errors
    assert "plugin auth_passwd cannot load" in errors[0] and str(tmp_path / "nope") in errors[0]
    assert "plugin acl_file cannot load" in errors[1] and str(tmp_path / "nacl") in errors[1]


def test_files_that_do_not_parse_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "passwd").write_text("alice:plaintext\n")
    (tmp_path / "acl").write_text("user\n")
    path = write_config(
        tmp_path, f'password_file = "{tmp_path / "passwd"}"\nacl_file = "{tmp_path / "acl"}"'
    )
    code, errors, _ = check(path, capsys)
    assert code == 1 and len(errors) == 2, errors
    assert "not hashed" in errors[0]
    assert f"{tmp_path / 'acl'}:1" in errors[1]


def test_tls_files_are_checked_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    path = write_config(
        tmp_path,
        f'[listener.ssl]\nenabled = true\ncertfile = "{tmp_path / "cert.pem"}"\n'
        f'keyfile = "{tmp_path / "key.pem"}"\n'
        f'[listener.wss]\nenabled = true\ncertfile = "{tmp_path / "garbage.pem"}"\n'
        f'keyfile = "{tmp_path / "garbage.pem"}"',
    )
    code, errors, _ = check(path, capsys)
    assert code == 1 and len(errors) == 2, errors
    assert errors[0].startswith("minibroker: error: [listener.ssl]: no such file: certfile")
    assert "keyfile" in errors[0]
    assert errors[1].startswith("minibroker: error: [listener.wss]: cannot load the TLS")


def test_every_problem_of_the_file_itself_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path,
        "max_inflight = 3\nmax_qos_allowed = 7\n[listener.tcp]\nport = -1\n",
    )
    code, errors, _ = check(path, capsys)
    assert code == 1
    assert len(errors) == 3, errors
    for expected in ("'max_inflight'", "'max_qos_allowed' in [top level]", "[listener.tcp]"):
        assert sum(expected in error for error in errors) == 1, (expected, errors)


def test_a_plugin_that_is_not_installed_and_a_bad_file_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'acl_file = "{tmp_path / "nacl"}"\n[plugins.nosuch]\n')
    code, errors, _ = check(path, capsys)
    assert code == 1 and len(errors) == 2, errors
    assert "[plugins.nosuch] configures a plugin that is not installed" in errors[0]
    assert "plugin acl_file cannot load" in errors[1]


def test_corrupt_data_files_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "loaded_plugins.json").write_text("{not json")
    (data / "banned.json").write_text("[1, 2")
    code, errors, _ = check(write_config(tmp_path, ""), capsys)
    assert code == 1 and len(errors) == 2, errors
    assert "loaded_plugins.json: corrupt list of loaded plugins" in errors[0]
    assert "banned.json" in errors[1]
