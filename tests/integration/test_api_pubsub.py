"""POST /mqtt/publish, /mqtt/subscribe and /mqtt/unsubscribe, checked with real MQTT clients."""

from __future__ import annotations

import base64

import pytest
from api_support import (
    Api,
    api_fixture,  # noqa: F401 (the `api` fixture)
    mqtt,
    next_message,
)

CODE_0 = {"code": 0}


async def test_publish_delivers_with_qos_to_every_topic(api: Api) -> None:
    async with mqtt(api, "sub") as sub:
        await sub.subscribe("pub/#", qos=2)
        body = {"topic": "pub/a,pub/b", "payload": "héllo", "qos": 1, "client_id": "api"}
        assert await api.ok("POST", "/api/v3/mqtt/publish", json=body) == CODE_0
        got = {}
        for _ in range(2):
            message = await next_message(sub)
            got[message.topic.value] = (message.payload, message.qos, message.retain)
        assert got == {"pub/a": ("héllo".encode(), 1, False), "pub/b": ("héllo".encode(), 1, False)}
        # `topics`, a query string (which wins over the body), and base64 payloads
        path = "/api/v3/mqtt/publish/?qos=2&topics=pub/c"
        body = {"topics": "ignored/x", "qos": 0, "payload": base64.b64encode(b"\x00\xff").decode(),
                "encoding": "base64"}  # fmt: skip
        assert await api.ok("POST", path, json=body) == CODE_0
        message = await next_message(sub)
        assert (message.topic.value, message.payload, message.qos) == ("pub/c", b"\x00\xff", 2)


async def test_publish_retain_reaches_later_subscribers(api: Api) -> None:
    body = {"topic": "ret/t", "payload": "kept", "retain": True, "qos": 1}
    assert await api.ok("POST", "/api/v3/mqtt/publish", json=body) == CODE_0
    assert api.app.broker.retained.get("ret/t") is not None
    async with mqtt(api, "late") as late:
        await late.subscribe("ret/#", qos=1)
        message = await next_message(late)
        assert (message.topic.value, message.payload, message.retain) == ("ret/t", b"kept", True)
        assert message.qos == 1


async def test_publish_form_body(api: Api) -> None:
    async with mqtt(api, "sub") as sub:
        await sub.subscribe("form/t")
        data = {"topic": "form/t", "payload": "x", "retain": "false"}
        assert await api.ok("POST", "/api/v3/mqtt/publish", data=data) == CODE_0
        assert (await next_message(sub)).payload == b"x"


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"topic": "a/+", "payload": "x"}, 400, {"message": "bad_topic", "code": 115}),
        ({"topic": "a/#"}, 400, {"message": "bad_topic", "code": 115}),
        ({"topic": "ok,bad/#"}, 400, {"message": "bad_topic", "code": 115}),
        ({"payload": "x"}, 400, {"message": "missing mandatory params: ['topic']"}),
        ({"topic": ","}, 400, {"message": "missing mandatory params: ['topic']"}),
        ({"topic": "t", "qos": 3}, 400, {"message": "bad_qos", "code": 108}),
        ({"topic": "t", "qos": "one"}, 400, {"message": "bad_qos", "code": 108}),
        ({"topic": "t", "retain": "maybe"}, 400, {"message": "bad_retain", "code": 108}),
        (
            {"topic": "t", "payload": "!", "encoding": "base64"},
            400,
            {"message": "bad_payload", "code": 108},
        ),
    ],
)
async def test_publish_bad_input(
    api: Api, body: dict[str, object], status: int, expected: dict[str, object]
) -> None:
    reply = await api.post("/api/v3/mqtt/publish", json=body)
    assert (reply.status, reply.body) == (status, expected)


async def test_subscribe_makes_a_live_session_receive_then_unsubscribe_stops(api: Api) -> None:
    async with mqtt(api, "dev/1") as client, mqtt(api, "pub") as pub:
        body = {"client_id": "dev/1", "topic": "cmd/1,cmd/all", "qos": 1}
        assert await api.ok("POST", "/api/v3/mqtt/subscribe", json=body) == CODE_0
        subs = await api.ok("GET", "/api/v3/subscriptions/dev%2F1")
        assert {(s["topic"], s["qos"]) for s in subs} == {("cmd/1", 1), ("cmd/all", 1)}
        await pub.publish("cmd/1", b"go", qos=1)
        message = await next_message(client)
        assert (message.topic.value, message.payload, message.qos) == ("cmd/1", b"go", 1)

        body = {"client_id": "dev/1", "topic": "cmd/1"}
        assert await api.ok("POST", "/api/v3/mqtt/unsubscribe", json=body) == CODE_0
        subs = await api.ok("GET", "/api/v3/subscriptions/dev%2F1")
        assert [s["topic"] for s in subs] == ["cmd/all"]
        # cmd/1 is no longer delivered; cmd/all (published after it, same QoS) still is
        await pub.publish("cmd/1", b"dropped", qos=1)
        await pub.publish("cmd/all", b"sentinel", qos=1)
        message = await next_message(client)
        assert (message.topic.value, message.payload) == ("cmd/all", b"sentinel")


async def test_subscribe_delivers_retained_and_works_on_offline_sessions(api: Api) -> None:
    async with mqtt(api, "later", clean_session=False):
        pass
    body = {"topic": "ret/a", "payload": "r", "retain": True, "qos": 1}
    assert await api.ok("POST", "/api/v3/mqtt/publish", json=body) == CODE_0
    body = {"client_id": "later", "topic": "ret/+", "qos": 1}
    assert await api.ok("POST", "/api/v3/mqtt/subscribe", json=body) == CODE_0
    async with mqtt(api, "later", clean_session=False) as client:
        message = await next_message(client)  # queued while offline
        assert (message.topic.value, message.payload) == ("ret/a", b"r")


async def test_shared_subscription_through_the_api(api: Api) -> None:
    async with mqtt(api, "w1") as w1, mqtt(api, "pub") as pub:
        body = {"client_id": "w1", "topic": "$share/g/jobs/#"}
        assert await api.ok("POST", "/api/v3/mqtt/subscribe", json=body) == CODE_0
        subs = await api.ok("GET", "/api/v3/subscriptions/w1")
        assert subs[0]["topic"] == "jobs/#"
        await pub.publish("jobs/1", b"j")
        assert (await next_message(w1)).payload == b"j"


@pytest.mark.parametrize("path", ["/api/v3/mqtt/subscribe", "/api/v3/mqtt/unsubscribe"])
async def test_subscribe_errors(api: Api, path: str) -> None:
    reply = await api.post(path, json={"client_id": "ghost", "topic": "t"})
    assert (reply.status, reply.body) == (404, {"message": "session_not_found", "code": 112})
    reply = await api.post(path, json={"topic": "t"})
    assert (reply.status, reply.body) == (
        400,
        {"message": "missing mandatory params: ['client_id']"},
    )
    async with mqtt(api, "here"):
        reply = await api.post(path, json={"client_id": "here", "topic": "a/#/b"})
        assert (reply.status, reply.body) == (400, {"message": "bad_topic", "code": 115})


async def test_publish_counts_in_metrics_and_reaches_nobody_when_unsubscribed(api: Api) -> None:
    before = (await api.ok("GET", "/api/v3/metrics"))[0]["metrics"]["messages/dropped"]
    assert await api.ok("POST", "/api/v3/mqtt/publish", json={"topic": "void"}) == CODE_0
    after = (await api.ok("GET", "/api/v3/metrics"))[0]["metrics"]["messages/dropped"]
    assert after == before + 1
