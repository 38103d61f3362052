"""The banned list through the API: stored, listed, enforced at once and at CONNECT, lifted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from api_support import (
    Api,
    api_fixture,  # noqa: F401 (the `api` fixture)
    check,
    eventually,
    mqtt,
)
from rawclient import RawClient

from broker.protocol.constants import MQTT_3_1_1, MQTT_5
from broker.protocol.packets import ConnAck, Disconnect


async def connack_code(api: Api, client_id: str, version: int, **fields: object) -> int:
    client, packet = await RawClient.connect(api.tcp_port, client_id, version, **fields)
    try:
        assert isinstance(packet, ConnAck)
        return packet.reason_code
    finally:
        await client.close()


async def test_ban_client_id_kicks_refuses_and_lifts(api: Api) -> None:
    client, packet = await RawClient.connect(api.tcp_port, "bad/guy", MQTT_5)
    assert isinstance(packet, ConnAck) and packet.reason_code == 0
    try:
        body = {"who": "bad/guy", "as": "client_id", "reason": "abuse", "desc": "spam"}
        reply = await api.post("/api/v3/banned", json=body)
        assert reply.status == 201
        check(reply.body, "banned")
        assert {k: reply.body[k] for k in ("who", "as", "reason", "desc", "by")} == {
            **body, "by": "admin"}  # fmt: skip
        assert "until" not in reply.body  # forever
        packet = await client.recv()
        assert isinstance(packet, Disconnect) and packet.reason_code == 0x98
        assert await client.closed()
    finally:
        await client.close()
    assert await connack_code(api, "bad/guy", MQTT_3_1_1) == 0x05  # not authorized
    assert await connack_code(api, "bad/guy", MQTT_5) == 0x87
    assert await connack_code(api, "good", MQTT_3_1_1) == 0

    page = await api.ok("GET", "/api/v3/banned/")
    check(page, "page:banned")
    assert page["meta"]["count"] == 1 and page["items"][0]["who"] == "bad/guy"

    assert await api.ok("DELETE", "/api/v3/banned/bad%2Fguy?as=client_id") == "ok"
    assert await connack_code(api, "bad/guy", MQTT_3_1_1) == 0
    assert (await api.ok("GET", "/api/v3/banned"))["items"] == []


async def test_ban_username_and_ip_address(api: Api) -> None:
    async with mqtt(api, "u1", username="mallory"):
        reply = await api.post("/api/v3/banned/", json={"who": "mallory", "as": "username"})
        assert reply.status == 201
        await eventually(lambda: "u1" not in api.app.broker.connected)
    assert await connack_code(api, "u2", MQTT_5, username="mallory") == 0x87
    assert await connack_code(api, "u3", MQTT_5, username="alice") == 0

    async with mqtt(api, "local1"):
        reply = await api.post("/api/v3/banned", json={"who": "127.0.0.1", "as": "ip_address",
                                                       "until": time.time() + 3600})  # fmt: skip
        assert reply.status == 201 and reply.body["until"] > time.time()
        await eventually(lambda: not api.app.broker.connected)
    assert await connack_code(api, "any", MQTT_3_1_1) == 0x05
    # query string form; the IP is compared by value (::ffff: forms are other addresses)
    assert await api.ok("DELETE", "/api/v3/banned/127.0.0.1", json={"as": "ip_address"}) == "ok"
    assert await connack_code(api, "any", MQTT_3_1_1) == 0
    page = await api.ok("GET", "/api/v3/banned?_limit=1")
    assert page["meta"] == {"page": 1, "limit": 1, "count": 1}  # the username ban remains


async def test_expired_ban_does_not_refuse(api: Api) -> None:
    body = {"who": "late", "as": "client_id", "until": time.time() - 1}
    assert (await api.post("/api/v3/banned", json=body)).status == 201
    assert await connack_code(api, "late", MQTT_3_1_1) == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "missing mandatory params: ['who', 'as']"),
        ({"who": "x"}, "missing mandatory params: ['as']"),
        ({"as": "client_id"}, "missing mandatory params: ['who']"),
        ({"who": "x", "as": "clientid"}, "bad_as"),
        ({"who": "not-an-ip", "as": "ip_address"}, "bad_ip_address"),
        ({"who": "x", "as": "client_id", "until": "soon"}, "bad_until"),
    ],
)
async def test_create_banned_bad_input(api: Api, body: dict[str, object], message: str) -> None:
    reply = await api.post("/api/v3/banned", json=body)
    assert reply.status == 400 and reply.body["message"] == message


async def test_delete_banned_needs_a_valid_as(api: Api) -> None:
    reply = await api.delete("/api/v3/banned/x")
    assert (reply.status, reply.body) == (400, {"message": "missing mandatory params: ['as']"})
    reply = await api.delete("/api/v3/banned/x?as=nick")
    assert (reply.status, reply.body["message"]) == (400, "bad_as")
    # lifting a ban that does not exist is fine (as EMQX)
    assert await api.ok("DELETE", "/api/v3/banned/x?as=username") == "ok"


async def test_ban_is_persisted_through_the_banned_table(api: Api) -> None:
    assert (await api.post("/api/v3/banned", json={"who": "p", "as": "client_id"})).status == 201
    entry = api.app.broker.banned.get("client_id", "p")
    assert entry is not None and entry.by == "admin" and entry.at > 0
    stored = Path(api.app.config.data_dir, "banned.json").read_text()  # broker.server.banned_store
    assert '"p"' in stored
    assert await api.ok("DELETE", "/api/v3/banned/p?as=client_id") == "ok"
    doc = json.loads(Path(api.app.config.data_dir, "banned.json").read_text())
    assert all(e["who"] != "p" for e in doc["banned"])
    # the removal is remembered with its stamp, so an older copy from a peer cannot undo it
    assert [g[:2] for g in doc["gone"]] == [["client_id", "p"]]
