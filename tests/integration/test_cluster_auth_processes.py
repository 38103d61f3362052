"""auth_username / auth_clientid across two real node processes started with the CLI.

The plugins are enabled by the TOML file (`[plugins.auth_*] enabled = true`, allow_anonymous
off). Credentials written through one node's API are checked at CONNECT on the other (aiomqtt);
a node killed with SIGKILL and restarted takes a deletion made while it was dead; both killed
with SIGKILL, a node restarted alone still has the credentials on disk (each write is fsynced
before the API answers). Only processes this module started are signalled, by PID.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from plugin_support import BAD_USERNAME_OR_PASSWORD, NOT_AUTHORIZED
from test_cluster_processes import NodeProc, api, node_list, spawn, stop, until

pytestmark = pytest.mark.cluster

N1, N2 = "auth1@127.0.0.1", "auth2@127.0.0.1"
CONFIG = """\
allow_anonymous = false

[plugins.auth_clientid]
enabled = true

[plugins.auth_username]
enabled = true
"""


class Pair:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "minibroker.toml"
        self.config.write_text(CONFIG)
        self.procs: list[NodeProc] = []

    def start(self, name: str, join: NodeProc | None = None) -> NodeProc:
        short = name.split("@")[0]
        node = spawn(name, self.tmp / short, join.ports["cluster"] if join else None,
                     self.tmp / f"{short}.log", ("--config", str(self.config)))  # fmt: skip
        self.procs.append(node)
        return node

    def kill(self, node: NodeProc) -> None:
        node.proc.kill()  # SIGKILL to our own child, by its PID
        node.proc.wait(10)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    nodes = Pair(tmp_path)
    try:
        yield nodes
    finally:
        for node in nodes.procs:
            stop(node)


async def connect(node: NodeProc, client_id: str, username: str, password: str) -> int:
    """0 when accepted, else the refusal code paho reports."""
    try:
        async with aiomqtt.Client("127.0.0.1", node.mqtt, identifier=client_id, timeout=8,
                                  username=username, password=password,
                                  protocol=aiomqtt.ProtocolVersion.V311):  # fmt: skip
            return 0
    except aiomqtt.MqttCodeError as exc:
        rc = exc.rc
        return int(rc.value) if isinstance(rc, PahoReasonCode) else int(rc or -1)


async def test_credentials_across_processes_sigkill_and_restart(pair: Pair) -> None:
    n1 = pair.start(N1)
    n2 = pair.start(N2, n1)
    await until(lambda: _both(n1, [N1, N2]), timeout=20)
    assert await api(n1, "POST", "/api/v3/auth_username",
                     json={"username": "u1", "password": "p1"}) == (200, "ok")  # fmt: skip
    assert await api(n2, "POST", "/api/v3/auth_clientid",
                     json={"clientid": "d1", "password": "p2"}) == (200, "ok")  # fmt: skip
    for node in (n1, n2):
        assert await connect(node, "c", "u1", "p1") == 0
        assert await connect(node, "d1", "x", "p2") == 0
        assert await connect(node, "c", "u1", "bad") in BAD_USERNAME_OR_PASSWORD

    # n2 dies; u1 is deleted meanwhile; n2 restarted (same data dir) takes the deletion
    pair.kill(n2)
    status, _ = await api(n1, "DELETE", "/api/v3/auth_username/u1")
    assert status == 200
    n2 = pair.start(N2, n1)

    async def u1_refused_on_n2() -> bool:
        return await connect(n2, "c", "u1", "p1") in NOT_AUTHORIZED

    await until(u1_refused_on_n2, timeout=20)
    assert await connect(n2, "d1", "x", "p2") == 0

    # both die; n1 alone comes back with what it had written to disk
    pair.kill(n1)
    pair.kill(n2)
    n1 = pair.start(N1)
    assert await connect(n1, "d1", "x", "p2") == 0
    assert await connect(n1, "d1", "x", "p1") in BAD_USERNAME_OR_PASSWORD
    assert await connect(n1, "c", "u1", "p1") in NOT_AUTHORIZED
    assert await api(n1, "GET", "/api/v3/auth_clientid") == (200, ["d1"])


async def _both(node: NodeProc, names: list[str]) -> bool:
    return sorted(await node_list(node)) == sorted(names)
