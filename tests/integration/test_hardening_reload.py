"""SIGHUP reloads the password and ACL files atomically; a bad file is logged, the old one kept.

In process through `NodeApp.reload()` (what the SIGHUP handler calls), and once through a real
CLI process sent SIGHUP by its own PID. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rawclient import RawClient
from test_cli_node_process import ENTRY, REPO, START_TIMEOUT, TIMEOUT, cli_env
from test_core_support import raw_connect, raw_subscribe

from broker.plugins.passwd_file import hash_password
from broker.protocol.constants import MQTT_3_1_1, SUBACK_FAILURE_311
from broker.protocol.packets import ConnAck

FAST = 1000  # PBKDF2 iterations: enough for a test


def write_passwords(path: Path, users: dict[str, str]) -> None:
    path.write_text(
        "".join(f"{user}:{hash_password(pw, iterations=FAST)}\n" for user, pw in users.items())
    )


async def connack_code(port: int, username: str, password: str) -> int:
    client, ack = await RawClient.connect(
        port, f"c-{username}-{password}", MQTT_3_1_1, username=username, password=password.encode()
    )
    assert isinstance(ack, ConnAck)
    await client.close()
    return ack.reason_code


async def test_reload_password_and_acl_files(
    tmp_path: Path, app_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    write_passwords(passwd, {"alice": "one"})
    acl.write_text("topic read a/#\n")
    app = await app_factory(password_file=str(passwd), acl_file=str(acl))
    port = app.node.tcp_port
    assert await connack_code(port, "alice", "one") == 0
    assert await connack_code(port, "bob", "two") == 4  # bad user name or password

    # New files: bob joins, alice's password changes; the ACL now grants b/# and not a/#.
    write_passwords(passwd, {"alice": "uno", "bob": "two"})
    acl.write_text("topic read b/#\n")
    assert app.reload() == {"auth_passwd": True, "acl_file": True}
    assert await connack_code(port, "bob", "two") == 0
    assert await connack_code(port, "alice", "one") == 4
    client, _ = await raw_connect(app.node, "anon-sub")
    assert await raw_subscribe(client, ("a/x", 0), ("b/x", 0)) == [SUBACK_FAILURE_311, 0]

    # Broken files: the error is logged loudly and the rules loaded before stay in force.
    passwd.write_text("this line has no colon\n")
    acl.write_text("topic read b/#\nfrobnicate everything\n")
    with caplog.at_level(logging.ERROR):
        assert app.reload() == {"auth_passwd": False, "acl_file": False}
    failures = [r for r in caplog.records if "RELOAD FAILED" in r.getMessage()]
    assert {r.levelno for r in failures} == {logging.ERROR} and len(failures) == 2
    assert await connack_code(port, "bob", "two") == 0
    assert await raw_subscribe(client, ("a/y", 0), ("b/y", 0), packet_id=2) == [
        SUBACK_FAILURE_311, 0,
    ]  # fmt: skip

    # A missing file is as bad as a broken one.
    passwd.unlink()
    assert app.reload()["auth_passwd"] is False
    assert await connack_code(port, "bob", "two") == 0
    await client.close()


async def test_reload_without_file_plugins_is_a_no_op(app_factory: Callable[..., Any]) -> None:
    app = await app_factory()
    assert app.reload() == {}


async def _eventually_async(check: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_cli_sighup_reloads_password_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    write_passwords(passwd, {"alice": "one"})
    config = tmp_path / "broker.toml"
    config.write_text(f"allow_anonymous = false\npassword_file = {str(passwd)!r}\n")
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ENTRY, "start", "-c", str(config),
            "--host", "127.0.0.1", "--mqtt-port", "0", "--ws-port", "0",
            "--http-port", "0", "--cluster-port", "0", "--data-dir", str(tmp_path / "data"),
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=REPO, env=cli_env(),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = ""
        async with asyncio.timeout(START_TIMEOUT):
            while "auth:" not in banner:
                line = await proc.stdout.readline()
                if not line:
                    pytest.fail(f"CLI exited early: {stderr_path.read_text()}")
                banner += line.decode()
        match = re.search(r"mqtt://127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        port = int(match.group(1))
        assert await connack_code(port, "alice", "one") == 0

        write_passwords(passwd, {"alice": "two"})
        proc.send_signal(signal.SIGHUP)  # our own child, by its PID

        async def changed() -> bool:
            return await connack_code(port, "alice", "two") == 0

        await _eventually_async(changed)
        assert await connack_code(port, "alice", "one") == 4  # bad user name or password

        passwd.write_text("garbage without a colon\n")
        proc.send_signal(signal.SIGHUP)

        async def logged() -> bool:
            return "RELOAD FAILED" in stderr_path.read_text()

        await _eventually_async(logged)
        assert await connack_code(port, "alice", "two") == 0  # the old file is kept
        assert proc.returncode is None  # and the node keeps running
    finally:
        if proc.returncode is None:
            proc.kill()  # our own child, by its PID
            await proc.wait()
