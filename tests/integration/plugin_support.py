"""Helpers for the plugin, alarm and banned-store tests (this module holds no tests).

`running_app` starts a whole `NodeApp` (banned store, plugins, alarms, listeners) on ephemeral
loopback ports and always stops it; `connect_code` tells how a CONNECT was answered.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
from conftest import make_config
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from test_core_support import TIMEOUT

from broker.app import NodeApp
from broker.server.config import BrokerConfig

__all__ = [
    "app_config",
    "client",
    "connect_code",
    "json_payload",
    "running_app",
    "suback",
]

#: CONNACK answers as paho reports them (3.1.1 codes are mapped onto 5.0 reason codes)
BAD_USERNAME_OR_PASSWORD = {4, 0x86}
NOT_AUTHORIZED = {5, 0x87}


def app_config(tmp_path: Path, **overrides: Any) -> BrokerConfig:
    return make_config(tmp_path, **overrides)


@contextlib.asynccontextmanager
async def running_app(config: BrokerConfig) -> AsyncIterator[NodeApp]:
    app = NodeApp(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def client(app: NodeApp, identifier: str | None = None, **kwargs: Any) -> aiomqtt.Client:
    """An MQTT 3.1.1 aiomqtt client for `app` (use as `async with`)."""
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V311)
    kwargs.setdefault("timeout", TIMEOUT)
    return aiomqtt.Client("127.0.0.1", app.node.tcp_port, identifier=identifier, **kwargs)


async def connect_code(app: NodeApp, identifier: str, **kwargs: Any) -> int:
    """0 if the broker accepts the CONNECT, else the refusal code paho reports."""
    try:
        async with client(app, identifier, **kwargs):
            return 0
    except aiomqtt.MqttCodeError as exc:
        rc = exc.rc
        return int(rc.value) if isinstance(rc, PahoReasonCode) else int(rc or -1)


def json_payload(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, bytes | bytearray)
    value = json.loads(bytes(message.payload))
    assert isinstance(value, dict)
    return value


async def suback(c: aiomqtt.Client, topic_filter: str, qos: int = 0) -> int:
    """SUBSCRIBE one filter; the granted QoS, or 0x80 for a refusal."""
    result = await c.subscribe(topic_filter, qos)
    (code,) = result
    return int(code.value) if isinstance(code, PahoReasonCode) else int(code)
