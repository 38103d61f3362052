"""Refused logins and kicks are logged at INFO with client id, username and address, as
mosquitto logs them (issue 16): an operator reading the log can tell who was turned away."""

from __future__ import annotations

import logging

import aiomqtt
import pytest
from api_support import eventually

from broker.embedded import embedded_node

TIMEOUT = 5.0


def infos(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.getMessage().startswith(start)
    ]


async def refused(node_port: int, **kwargs: object) -> None:
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client("127.0.0.1", node_port, timeout=TIMEOUT, **kwargs):  # type: ignore[arg-type]
            pass


async def test_refused_logins_name_client_username_and_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with embedded_node(allow_anonymous=False, users={"alice": "pw"}) as node:
        await refused(node.mqtt_port, identifier="anon-1")
        await refused(node.mqtt_port, identifier="guess-1", username="alice", password="no")
        async with node.rest() as api:
            await api.post("/banned", {"who": "banned-1", "as": "client_id", "reason": "test"})
        await refused(node.mqtt_port, identifier="banned-1", username="alice", password="pw")
    lines = infos(caplog, "refused ")
    assert len(lines) == 3, lines
    assert lines[0].startswith("refused anon-1 (username None) from 127.0.0.1:")
    assert lines[0].endswith(": not_authorized")
    assert lines[1].startswith("refused guess-1 (username 'alice') from 127.0.0.1:")
    assert lines[1].endswith(": bad_username_or_password")
    assert lines[2].startswith("refused banned-1 (username 'alice') from 127.0.0.1:")
    assert lines[2].endswith(": banned")


async def test_a_kick_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with (
        embedded_node() as node,
        aiomqtt.Client("127.0.0.1", node.mqtt_port, identifier="victim", username="bob") as c,
        node.rest() as api,
    ):
        port = c._client.socket().getsockname()[1]  # the client's own port: the address logged
        await api.delete("/connections/victim")
        await eventually(lambda: bool(infos(caplog, "kicked ")))
        assert infos(caplog, "kicked ") == [
            f"kicked victim (username 'bob') from 127.0.0.1:{port} (management API)"
        ]
