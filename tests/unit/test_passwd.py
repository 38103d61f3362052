"""The mosquitto password-file format: our hashes, mosquitto_passwd's, and `minibroker passwd`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from broker import cli
from broker.plugins.passwd_file import (
    PasswordFileError,
    delete_user,
    hash_password,
    read_password_file,
    set_password,
    verify_password,
)

needs_mosquitto_passwd = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed"
)
needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None, reason="mosquitto broker not installed"
)


# --------------------------------------------------------------------------- the format


def test_hash_format_is_mosquittos() -> None:
    encoded = hash_password("secret")
    tag, iterations, salt, digest = encoded.split("$")[1:]
    assert (tag, iterations) == ("7", "101")
    assert len(base64.b64decode(salt, validate=True)) == 12
    assert len(base64.b64decode(digest, validate=True)) == 64
    assert verify_password("secret", encoded)
    assert verify_password(b"secret", encoded)
    assert not verify_password("Secret", encoded)
    assert hash_password("secret") != encoded  # a fresh salt every time


def test_known_vector() -> None:
    salt = bytes(range(12))
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101, 64)
    encoded = hash_password("pw", salt=salt)
    assert encoded == (
        f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(expected).decode()}"
    )


def test_sha512_format_verified() -> None:
    salt = b"0123456789ab"
    digest = hashlib.sha512(b"pw" + salt).digest()
    encoded = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify_password("pw", encoded) and not verify_password("px", encoded)


@pytest.mark.parametrize(
    "encoded",
    ["", "plain", "$7$101$", "$7$x$AAAA$AAAA", "$7$0$AAAA$AAAA", "$7$101$!!$AAAA", "$7$101$AAAA$",
     "$5$AAAA$AAAA", "$6$AAAA"],
)  # fmt: skip
def test_malformed_never_verifies(encoded: str) -> None:
    assert verify_password("", encoded) is False


def test_file_edit_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("# users\n\nbob:" + hash_password("b") + "\n")
    path.chmod(0o640)
    assert set_password(str(path), "alice", "a") is False
    assert set_password(str(path), "bob", "b2") is True
    lines = path.read_text().splitlines()
    assert lines[:2] == ["# users", ""]
    assert [line.split(":")[0] for line in lines[2:]] == ["bob", "alice"]
    users = read_password_file(str(path))
    assert verify_password("b2", users["bob"]) and verify_password("a", users["alice"])
    assert delete_user(str(path), "bob") is True
    assert delete_user(str(path), "bob") is False
    assert list(read_password_file(str(path))) == ["alice"]
    assert path.stat().st_mode & 0o777 == 0o640  # the rewritten file keeps its permissions


def test_unhashed_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("alice:plaintext\n")
    with pytest.raises(PasswordFileError, match=r"pw:1: the password of 'alice' is not hashed"):
        read_password_file(str(path))
    with pytest.raises(PasswordFileError, match="cannot read"):
        read_password_file(str(tmp_path / "missing"))
    with pytest.raises(PasswordFileError, match="invalid username"):
        set_password(str(path), "a:b", "x")


# --------------------------------------------------------------------------- the CLI


def test_cli_batch_create_update_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "sub" / "pw")
    assert cli.main(["passwd", path, "alice", "-b", "one"]) == 0
    assert cli.main(["passwd", path, "alice", "-b", "two"]) == 0
    assert cli.main(["passwd", path, "bob", "-b", "three"]) == 0
    users = read_password_file(path)
    assert verify_password("two", users["alice"]) and verify_password("three", users["bob"])
    assert Path(path).stat().st_mode & 0o777 == 0o600  # a new file is private
    assert cli.main(["passwd", path, "alice", "-D"]) == 0
    assert list(read_password_file(path)) == ["bob"]
    assert cli.main(["passwd", path, "alice", "-D"]) == 1
    assert "not in" in capsys.readouterr().err
    assert cli.main(["passwd", path, "x", "-D", "-b", "pw"]) == 2  # one or the other


def test_cli_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["s3cret", "s3cret", "a", "b"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    path = str(tmp_path / "pw")
    assert cli.main(["passwd", path, "carol"]) == 0
    assert verify_password("s3cret", read_password_file(path)["carol"])
    assert cli.main(["passwd", path, "dave"]) == 1  # the two entries differ
    assert "dave" not in read_password_file(path)


# --------------------------------------------------------------------------- mosquitto


@needs_mosquitto_passwd
@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ["sha512-pbkdf2", "sha512"])
def test_file_from_mosquitto_passwd_verifies(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "pw"
    for user, password in [("alice", "wonder land"), ("bob", "b:ob$7$")]:
        subprocess.run(
            ["mosquitto_passwd", "-H", algorithm, *(["-c"] if user == "alice" else []),
             "-b", str(path), user, password],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
    users = read_password_file(str(path))
    assert users["alice"].startswith("$7$" if algorithm == "sha512-pbkdf2" else "$6$")
    assert verify_password("wonder land", users["alice"])
    assert verify_password("b:ob$7$", users["bob"])
    assert not verify_password("wonder", users["alice"])


@needs_mosquitto_passwd
@pytest.mark.interop
def test_mosquitto_passwd_edits_our_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    set_password(str(path), "alice", "ours")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(path), "bob", "theirs"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    users = read_password_file(str(path))
    assert verify_password("ours", users["alice"]) and verify_password("theirs", users["bob"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _mosquitto(tmp_path: Path, password_file: Path) -> Iterator[int]:
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {password_file}\n"
        "user root\npersistence false\nlog_dest stderr\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def _connects(port: int, username: str, password: str) -> bool:
    """True if mosquitto accepts the credentials (retrying while it is still starting)."""
    async with asyncio.timeout(10):
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", port, username=username, password=password, timeout=5
                ):
                    return True
            except aiomqtt.MqttCodeError:
                return False
            except aiomqtt.MqttError:  # not listening yet
                await asyncio.sleep(0.05)


@needs_mosquitto
@pytest.mark.interop
async def test_mosquitto_accepts_our_hashes(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    set_password(str(path), "alice", "from minibroker")
    with _mosquitto(tmp_path, path) as port:
        assert await _connects(port, "alice", "from minibroker")
        assert not await _connects(port, "alice", "wrong")
